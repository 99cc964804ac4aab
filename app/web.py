"""The Gradio page: Create, Atlas, Library, About. Each public handler is one API endpoint that
calls the service with a named, typed request; no module-level state, no work at import time."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
from PIL import Image

from app import web_views as views
from app.service import GenerateRequest, LoraRequest, LoratlasService, Recipe, ServiceError

UI_MODES = ("gated", "cmlora", "composite", "switch", "merge")
MAX_STYLES = 6  # style rows on the Create tab
SIZES = ("native", "64x64", "128x128", "256x256", "512x512", "768x768", "1024x1024")
UPLOAD_TYPES = [".safetensors", ".bin", ".pt", ".pth", ".ckpt"]  # pickles too: refused by bytes
RECIPE_TYPES = [".json", ".png"]
OUTPUT_TTL_S = 24 * 3600
QUEUE_MAX_SIZE = 64  # requests waiting; enough for bursts from several users
DEFAULT_CONCURRENCY = 4  # light endpoints (retrieve, atlas, cards) served side by side
REPORT_HEADERS = ["file", "result", "style", "why / what to do", "seconds"]
LIBRARY_HEADERS = ["slug", "name", "family", "tags", "source", "usable here"]


@dataclass
class StyleSlot:
    """One row of the chosen styles: name and reasons, a weight slider, a remove button."""

    row: gr.Row
    label: gr.Markdown
    weight: gr.Slider
    remove: gr.Button


class WebApp:
    """Wires page events to one service object; every piece of per-user state lives in the
    browser session (component values, gr.State)."""

    def __init__(self, service: LoratlasService, outputs_dir: str | Path | None = None) -> None:
        self.service = service
        self.outputs_dir = Path(outputs_dir or os.environ.get("LORATLAS_OUTPUTS")
                                or Path(tempfile.gettempdir()) / "loratlas-outputs")

    # -- service access --------------------------------------------------------------------
    def _call(self, action: str, *args, **kwargs):
        """Call one service action; a bad request becomes a message on the page."""
        method = getattr(self.service, action, None)
        if method is None:
            raise gr.Error(f"This server's Loratlas has no '{action}' yet; update it.")
        try:
            return method(*args, **kwargs)
        except ServiceError as exc:
            raise gr.Error(str(exc)) from exc

    def _request_dir(self) -> Path:
        """A fresh folder for one request's images and recipe; old ones are pruned."""
        self.outputs_dir.mkdir(parents=True, exist_ok=True)
        cutoff = time.time() - OUTPUT_TTL_S
        for old in self.outputs_dir.iterdir():
            if old.is_dir() and old.stat().st_mtime < cutoff:
                shutil.rmtree(old, ignore_errors=True)
        folder = self.outputs_dir / uuid.uuid4().hex[:12]
        folder.mkdir()
        return folder

    # -- Create: API actions ---------------------------------------------------------------
    def retrieve(self, prompt: str, k: int = 3) -> dict:
        """Styles that fit the prompt, best first, each with its reasons."""
        if not prompt or not prompt.strip():
            raise gr.Error("Type a prompt first.")
        return self._call("retrieve", prompt, k=int(k)).to_json()

    def generate(self, prompt: str, styles: list | None, mode: str, steps: int, seed: int,
                 size: str, count: int, content_guidance: float | None = None,
                 style_default: bool = False,
                 progress: gr.Progress = gr.Progress()):  # noqa: B008
        """Generate images; returns the images, the recipe (text and file) and the gate map.
        `content_guidance`: the base model's own guidance added over the first steps (0: off;
        fusion/content_guidance.py); None, or `style_default`: what the style recommends when
        it is the only one, else off."""
        if not prompt or not prompt.strip():
            raise gr.Error("Type a prompt first.")
        width, height = parse_size(size)
        count = int(count)
        request = GenerateRequest(prompt=prompt, loras=lora_requests(styles), mode=mode,
                                  steps=int(steps), seed=int(seed), num_images=count,
                                  width=width, height=height,
                                  content_guidance=None if style_default or
                                  content_guidance is None else float(content_guidance))
        folder = self._request_dir()

        def on_step(image: int, step: int, total: int) -> None:
            progress((image * total + step) / (count * total), desc="denoising")

        result = self._call("generate", request, out_dir=folder, on_step=on_step)
        return self._result_outputs(result, folder)

    def replay(self, recipe_file: str | None):
        """Regenerate exactly from a recipe (.json) or a PNG written by Loratlas; also fills the
        form with the recipe's settings."""
        if not recipe_file:
            raise gr.Error("Choose a recipe: a .json file or a PNG made by Loratlas.")
        try:
            recipe = Recipe.load(recipe_file)
        except (ValueError, TypeError, OSError) as exc:
            raise gr.Error(f"{Path(recipe_file).name} is not a Loratlas recipe: {exc}") from exc
        for lora in recipe.loras:
            check_slug(lora.ref)
        folder = self._request_dir()
        result = self._call("replay", recipe, out_dir=folder)
        styles = [{"slug": lora.ref, "name": lora.ref, "weight": lora.weight,
                   "reasons": "from the recipe", "origin": "manual"} for lora in recipe.loras]
        return (*self._result_outputs(result, folder), recipe.prompt, styles, recipe.mode,
                recipe.steps, recipe.seed, f"{recipe.width}x{recipe.height}", recipe.num_images,
                recipe.content_guidance, False,
                recipe.prompt)  # last: the prompt the page set itself (no suggestions for it)

    def _result_outputs(self, result, folder: Path):
        recipe_text = json.dumps(result.recipe, indent=2)
        recipe_file = folder / "loratlas_recipe.json"
        recipe_file.write_text(recipe_text)
        images = result.files or result.images
        seed = int(result.recipe.get("seed", 0))
        gallery = [(image, f"seed {seed + i}") for i, image in enumerate(images)]
        gate_map = getattr(result, "gates", None) or getattr(result, "gate_map", None)
        heatmap = views.gate_heatmap(gate_map)
        return gallery, recipe_text, str(recipe_file), heatmap, gate_map

    # -- Create: page-only helpers (not API) -------------------------------------------------
    def retrieve_as_you_type(self, prompt: str, set_by_page: str | None = None
                             ) -> tuple[dict | None, str]:
        """Like retrieve, but quiet: a message instead of an error while the user types or
        pastes; nothing for a prompt the page itself filled in (a replayed recipe keeps its
        own styles)."""
        if not prompt or len(prompt.strip()) < 3 or prompt == set_by_page:
            return None, ""
        try:
            return self.retrieve(prompt), ""
        except gr.Error as exc:
            return None, f"Style suggestions unavailable: {exc.message}"

    def shown_content_guidance(self, styles: list | None, mode: str, style_default: bool):
        """While "As the style recommends" is ticked, the slider shows the content guidance
        the request will get (the service resolves it as `generate` does); unticked, it keeps
        the user's value."""
        if not style_default:
            return gr.update()
        try:
            planned = self._call("plan", GenerateRequest(prompt="", loras=lora_requests(styles),
                                                         mode=mode))
        except gr.Error:  # a style removed meanwhile: Generate will say so
            return gr.update()
        return gr.update(value=float(planned.content_guidance))

    def settle_suggestions(self, prompt: str, styles: list | None, dismissed: list) -> list:
        """The styles to generate with. Suggestions made for an earlier state of the prompt
        (Generate pressed before the last ones arrived) are made again for this prompt first,
        so the image has the styles the rows show; the user's own rows stay as they are."""
        styles = list(styles or [])
        if all(s.get("origin") != "auto" or s.get("prompt") == prompt for s in styles):
            return styles
        hits, _ = self.retrieve_as_you_type(prompt)
        return self.merge_hits(hits, styles, dismissed)[0] if hits else styles

    @staticmethod
    def merge_hits(hits: dict | None, styles: list | None, dismissed: list) -> tuple[list, str]:
        """Suggested styles replace the previous suggestions; added ones and weights stay."""
        styles = list(styles or [])
        if not hits:
            return styles, ""
        kept = [s for s in styles if s.get("origin") != "auto"]
        previous = {s["slug"]: s for s in styles}
        taken = {s["slug"] for s in kept}
        for hit in hits.get("hits", []):
            if hit["slug"] in taken or hit["slug"] in dismissed:
                continue
            weight = previous.get(hit["slug"], {}).get("weight", 1.0)
            kept.append({"slug": hit["slug"], "name": hit.get("name", hit["slug"]),
                         "weight": weight, "reasons": views.reasons_text(hit.get("reasons")),
                         "origin": "auto", "prompt": hits.get("prompt")})
            taken.add(hit["slug"])
        note = "" if hits.get("hits") else "No style in the library fits this prompt."
        return kept[:MAX_STYLES], note

    @staticmethod
    def add_style(slug: str | None, styles: list | None, dismissed: list,
                  label: str = "") -> tuple[list, list]:
        styles = list(styles or [])
        if slug and all(s["slug"] != slug for s in styles):
            if len(styles) >= MAX_STYLES:
                raise gr.Error(f"At most {MAX_STYLES} styles at once: remove one first.")
            styles.append({"slug": slug, "name": label or slug, "weight": 1.0, "reasons": "",
                           "origin": "manual"})
        return styles, [d for d in dismissed if d != slug]

    def add_from_search(self, slug: str | None, styles: list | None,
                        dismissed: list) -> tuple[list, list, None]:
        """A style picked in the search box joins the chosen ones (and the box clears)."""
        if not slug:
            return list(styles or []), dismissed, None
        name = self._call("style_card", slug).name
        return (*self.add_style(slug, styles, dismissed, name), None)

    def style_choices(self) -> gr.Dropdown:
        """The styles that can be applied to the loaded base, for the "add a style" search."""
        summaries = self._call("library_list")
        return gr.Dropdown(choices=[(f"{s.name} · {', '.join(s.tags[:3])}".rstrip(" ·"), s.slug)
                                    for s in summaries if s.applicable], value=None)

    # -- Atlas ------------------------------------------------------------------------------
    def atlas(self) -> dict:
        """Every style's position, cluster and thumbnail, and the clusters' labels."""
        return self._call("atlas").to_json()

    def library_list(self, text: str = "", family: str | None = None,
                     tags: list[str] | None = None) -> list[dict]:
        """The styles matching a search text, a base family and tags (all when empty)."""
        found = self._call("library_list", text or "", family or None, list(tags or []) or None)
        return [s.to_json() for s in found]

    def style_card(self, slug: str) -> dict | None:
        """Everything about one style: metadata, thumbnails, nearest styles, cluster."""
        if not slug:
            return None
        return self._call("style_card", slug).to_json()

    def recommend(self, liked: list[str] | None, k: int = 5) -> list[dict]:
        """Styles you may like, from the styles liked or used in this session."""
        if not liked:
            return []
        return [s.to_json() for s in self._call("recommend", list(liked), k=int(k))]

    def filter_choices(self) -> tuple[gr.Dropdown, gr.Dropdown]:
        summaries = self._call("library_list")
        families = sorted({s.family for s in summaries})
        tags = sorted({t for s in summaries for t in s.tags})
        return gr.Dropdown(choices=families), gr.Dropdown(choices=tags)

    @staticmethod
    def render_map(atlas: dict | None, matches: list | None) -> str:
        highlight = None if matches is None else [m["slug"] for m in matches]
        return views.atlas_html(atlas, highlight)

    @staticmethod
    def render_card(card: dict | None):
        thumbnails = [Image.open(p).convert("RGB") for p in (card or {}).get("thumbnails", [])
                      if Path(p).is_file()]
        usable = bool(card) and card.get("applicable", True)
        return (views.card_markdown(card), thumbnails,
                gr.Button(interactive=usable), gr.Button(interactive=bool(card)))

    @staticmethod
    def use_style(card: dict | None, styles: list | None, dismissed: list, liked: list | None):
        """"Use this style": add it to Create, remember it for recommendations, switch tab."""
        if not card:
            raise gr.Error("Open a style's card first (click a point on the map).")
        styles, dismissed = WebApp.add_style(card["slug"], styles, dismissed, card["name"])
        return styles, dismissed, remember(liked, card["slug"]), gr.Tabs(selected="create")

    @staticmethod
    def like_style(card: dict | None, liked: list | None) -> list:
        return remember(liked, card["slug"]) if card else list(liked or [])

    @staticmethod
    def render_recommendations(recommended: list | None) -> list[list]:
        return [[s["slug"], s["name"], ", ".join(s.get("tags", []))] for s in recommended or []]

    # -- Library ----------------------------------------------------------------------------
    def upload(self, files: list[str] | None,
               progress: gr.Progress = gr.Progress()) -> list[dict]:  # noqa: B008
        """Add LoRA files to the library: each is validated, stored, rendered and indexed, or
        refused with the reason; one report per file."""
        paths = [str(f) for f in files or []]
        if not paths:
            raise gr.Error("Choose one or more LoRA files (.safetensors) to add.")

        names = [Path(p).name for p in paths]

        def on_progress(index: int, step: str, fraction: float) -> None:
            """The service reports (file index, step name, fraction of that file done)."""
            done = (int(index) + min(1.0, max(0.0, float(fraction)))) / len(paths)
            progress(done, desc=f"{names[int(index)]}: {step}")

        return [r.to_json() for r in self._call("upload", paths, on_progress=on_progress)]

    def edit_style(self, slug: str, name: str | None = None, tags: list[str] | str | None = None,
                   description: str | None = None) -> dict:
        """Change a style's name, tags or description (empty fields are left as they are)."""
        if not slug:
            raise gr.Error("Choose a style to edit (click a row of the library).")
        if isinstance(tags, str):
            tags = [t.strip() for t in tags.split(",") if t.strip()]
        return self._call("edit_style", slug, name=name or None, tags=tags or None,
                          description=description or None).to_json()

    def remove_style(self, slug: str) -> dict:
        """Delete a style from the library (its file, index entry and atlas point)."""
        if not slug:
            raise gr.Error("Choose a style to delete (click a row of the library).")
        self._call("remove_style", slug)
        return {"removed": slug}

    def inspect(self, file_path: str | None) -> dict:
        """Read and check one file without adding it: format, family, rank, problems."""
        if not file_path:
            raise gr.Error("Choose a .safetensors file to inspect.")
        return self._call("inspect", file_path).to_json()

    def library_table(self) -> list[list]:
        return [[s.slug, s.name, s.family, ", ".join(s.tags), s.source,
                 "yes" if s.applicable else "no"] for s in self._call("library_list")]

    def pick_row(self, table, event: gr.SelectData):
        """A click on a library row fills the edit form from the style's card."""
        slug = table.iloc[event.index[0], 0] if hasattr(table, "iloc") else \
            table[event.index[0]][0]
        card = self._call("style_card", str(slug))
        return card.slug, card.name, ", ".join(card.tags), card.description

    # -- About ------------------------------------------------------------------------------
    def about(self) -> dict:
        """The base model and library in use, their sizes, and software versions."""
        return self._call("about")

    # -- the page ---------------------------------------------------------------------------
    def build(self) -> gr.Blocks:
        with gr.Blocks(title="Loratlas", fill_width=True) as demo:
            gr.Markdown(f"# Loratlas\nFind, blend and browse style LoRAs · base model: "
                        f"{self.service.base_note}")
            with gr.Tabs() as tabs:
                with gr.Tab("Create", id="create"):
                    create = self._build_create()
                with gr.Tab("Atlas", id="atlas") as atlas_tab:
                    self._build_atlas(atlas_tab, tabs, create)
                with gr.Tab("Library", id="library") as library_tab:
                    self._build_library(library_tab, create)
                with gr.Tab("About", id="about") as about_tab:
                    about_md = gr.Markdown()
                    about_json = gr.JSON(label="Details")
                    about_tab.select(self.about, None, about_json, api_name="about").then(
                        about_markdown, about_json, about_md, api_visibility="private")
            demo.load(self.style_choices, None, create["add"], api_visibility="private")
        return demo

    def _build_create(self) -> dict:
        modes = available_modes()
        with gr.Row():
            with gr.Column(scale=3):
                prompt = gr.Textbox(label="Prompt", lines=2, elem_id="prompt",
                                    placeholder="a red star, chunky blocks like an old video game")
                with gr.Row():
                    find = gr.Button("Find styles", elem_id="find-styles")
                    run = gr.Button("Generate", variant="primary", elem_id="generate")
                status = gr.Markdown(elem_id="style-status")
                gr.Markdown("**Styles** (suggested as you type; remove any, or add one below)")
                slots = []
                for i in range(MAX_STYLES):
                    with gr.Row(visible=False, elem_classes="style-row") as row:
                        label = gr.Markdown(elem_id=f"style-label-{i}", scale=3)
                        weight = gr.Slider(0, 2, value=1.0, step=0.05, label="weight", scale=2,
                                           elem_id=f"style-weight-{i}")
                        remove = gr.Button("✕", size="sm", scale=0, min_width=40,
                                           elem_id=f"style-remove-{i}")
                    slots.append(StyleSlot(row, label, weight, remove))
                add = gr.Dropdown(label="Add a style (type to search the library)",
                                  choices=[], value=None, elem_id="add-style")
                with gr.Accordion("Chosen styles as JSON (the API's `styles` input)", open=False):
                    styles = gr.JSON(value=[], label="styles")
                mode = gr.Radio(list(modes), value=modes[0], label="Blending mode")
                with gr.Row():
                    steps = gr.Slider(1, 50, value=20, step=1, label="Steps")
                    seed = gr.Number(value=0, precision=0, label="Seed")
                    size = gr.Dropdown(list(SIZES), value="native", label="Size",
                                       allow_custom_value=True)
                    count = gr.Slider(1, 4, value=1, step=1, label="Images")
                with gr.Row():
                    keep = gr.Slider(
                        0, 4, value=0, step=0.25, elem_id="content-guidance", scale=3,
                        interactive=False,
                        label="Keep the prompt's content (content guidance; 0: off)",
                        info="When a style loses the prompt's shapes: the base model's own "
                             "guidance on the first steps, one more pass on each")
                    keep_default = gr.Checkbox(
                        value=True, elem_id="content-guidance-default", scale=1,
                        label="As the style recommends",
                        info="A style used alone may recommend a setting (recorded in the "
                             "recipe); blends get none")
            with gr.Column(scale=4):
                gallery = gr.Gallery(label="Images", columns=2, elem_id="gallery", format="png",
                                     object_fit="contain", preview=False, fit_columns=False)
                gate_image = gr.Image(
                    label="Gate map (network blocks × denoising steps, one panel per style)",
                    visible=False, type="pil", elem_id="gate-map")
                with gr.Accordion("Recipe", open=False):
                    recipe = gr.Code(label="Recipe", language="json")
                    gate_json = gr.JSON(label="Gate values")
                download = gr.DownloadButton("Download recipe (.json)", elem_id="recipe-download")
                with gr.Row():
                    recipe_in = gr.File(label="Replay a recipe (.json or a Loratlas PNG)",
                                        file_types=RECIPE_TYPES, type="filepath")
                    replay = gr.Button("Replay", elem_id="replay")
        dismissed = gr.State([])
        replayed = gr.State("")  # the prompt a replay put in the box
        hits = gr.JSON(visible=False)
        k = gr.Number(value=3, precision=0, visible=False)

        find.click(self.retrieve, [prompt, k], hits, api_name="retrieve",
                   concurrency_id="light").then(
            self.merge_hits, [hits, styles, dismissed], [styles, status],
            api_visibility="private")
        # .change, not .input: Gradio's textbox sends `input` from key events only, so a
        # prompt pasted with the mouse would get no suggestions
        prompt.change(self.retrieve_as_you_type, [prompt, replayed], [hits, status],
                      trigger_mode="always_last", show_progress="hidden",
                      api_visibility="private", concurrency_id="light").then(
            self.merge_hits, [hits, styles, dismissed], [styles, status],
            api_visibility="private", show_progress="hidden")
        styles.change(slot_updates(slots), styles, self._slot_outputs(slots),
                      api_visibility="private", show_progress="hidden", queue=False)
        for i, slot in enumerate(slots):
            slot.weight.input(set_weight(i), [styles, slot.weight], styles,
                              api_visibility="private", show_progress="hidden", queue=False)
            slot.remove.click(remove_slot(i), [styles, dismissed], [styles, dismissed],
                              api_visibility="private", queue=False)
        add.input(self.add_from_search, [add, styles, dismissed], [styles, dismissed, add],
                  api_visibility="private")

        results = [gallery, recipe, download, gate_image, gate_json]
        run.click(self.settle_suggestions, [prompt, styles, dismissed], styles,
                  api_visibility="private", concurrency_id="light").then(
            self.generate, inputs_kwargs={
                "prompt": prompt, "styles": styles, "mode": mode, "steps": steps, "seed": seed,
                "size": size, "count": count, "content_guidance": keep,
                "style_default": keep_default}, outputs=results,
            api_name="generate",
            concurrency_id="generate", concurrency_limit=1).then(
            show_gate_map, gate_json, gate_image, api_visibility="private", queue=False)
        keep_default.change(lambda on: gr.update(interactive=not on), keep_default, keep,
                            api_visibility="private", show_progress="hidden", queue=False)
        for changed in (styles, mode, keep_default):
            changed.change(self.shown_content_guidance, [styles, mode, keep_default], keep,
                           api_visibility="private", show_progress="hidden",
                           concurrency_id="light")
        form = [prompt, styles, mode, steps, seed, size, count, keep, keep_default]
        replay.click(self.replay, recipe_in, [*results, *form, replayed],
                     api_name="replay", concurrency_id="generate", concurrency_limit=1).then(
            show_gate_map, gate_json, gate_image, api_visibility="private", queue=False)
        return {"styles": styles, "dismissed": dismissed, "add": add}

    @staticmethod
    def _slot_outputs(slots: list[StyleSlot]) -> list:
        return [c for s in slots for c in (s.row, s.label, s.weight)]

    def _build_atlas(self, atlas_tab: gr.Tab, tabs: gr.Tabs, create: dict) -> None:
        with gr.Row():
            text = gr.Textbox(label="Search", placeholder="name, tag or description",
                              scale=3, elem_id="atlas-search")
            family = gr.Dropdown(label="Family", choices=[], value=None, scale=1,
                                 allow_custom_value=True)
            tags = gr.Dropdown(label="Tags", choices=[], multiselect=True, scale=2,
                               allow_custom_value=True)
            refresh = gr.Button("Refresh", scale=0)
        with gr.Row():
            with gr.Column(scale=3):
                atlas_map = gr.HTML(views.atlas_html(None), css_template=views.ATLAS_CSS,
                                    js_on_load=views.ATLAS_JS, elem_id="atlas-map")
            with gr.Column(scale=2):
                slug = gr.Textbox(label="Style", elem_id="card-slug",
                                  placeholder="click a point, or type a slug")
                card_md = gr.Markdown(views.card_markdown(None), elem_id="style-card")
                thumbs = gr.Gallery(label="Thumbnails", columns=4, height=140, preview=False,
                                    allow_preview=False, object_fit="contain",
                                    elem_classes="style-thumbs")
                with gr.Row():
                    use = gr.Button("Use this style", variant="primary", interactive=False,
                                    elem_id="use-style")
                    like = gr.Button("♥ Like", interactive=False, elem_id="like-style")
                liked = gr.Dropdown(label="Liked or used in this session", multiselect=True,
                                    allow_custom_value=True, choices=[], value=[])
                how_many = gr.Number(value=5, precision=0, visible=False)
                recs = gr.Dataframe(headers=["slug", "name", "tags"], label="You may like",
                                    interactive=False, elem_id="recommendations")
        atlas_json = gr.JSON(visible=False)
        matches = gr.JSON(visible=False)
        card = gr.JSON(visible=False)
        recommended = gr.JSON(visible=False)

        gr.on([atlas_tab.select, refresh.click], self.atlas, None, atlas_json, api_name="atlas",
              concurrency_id="light").then(
            self.render_map, [atlas_json, matches], atlas_map, api_visibility="private").then(
            self.filter_choices, None, [family, tags], api_visibility="private")
        gr.on([text.submit, family.change, tags.change], self.library_list,
              inputs_kwargs={"text": text, "family": family, "tags": tags}, outputs=matches,
              api_name="library_list", concurrency_id="light").then(
            self.render_map, [atlas_json, matches], atlas_map, api_visibility="private")
        atlas_map.click(picked_slug, None, slug, api_visibility="private", queue=False)
        slug.change(self.style_card, slug, card, api_name="style_card",
                    concurrency_id="light").then(
            self.render_card, card, [card_md, thumbs, use, like], api_visibility="private")
        use.click(self.use_style, [card, create["styles"], create["dismissed"], liked],
                  [create["styles"], create["dismissed"], liked, tabs], api_visibility="private")
        like.click(self.like_style, [card, liked], liked, api_visibility="private")
        liked.change(self.recommend, [liked, how_many], recommended, api_name="recommend",
                     concurrency_id="light").then(
            self.render_recommendations, recommended, recs, api_visibility="private")
        recs.select(picked_row_slug, recs, slug, api_visibility="private")

    def _build_library(self, library_tab: gr.Tab, create: dict) -> None:
        gr.Markdown("Add LoRA files (`.safetensors`; pickled `.bin/.pt/.ckpt` files are refused "
                    "unread). Each is checked, stored, rendered and placed on the atlas.")
        with gr.Row():
            files = gr.File(label="LoRA files", file_count="multiple", file_types=UPLOAD_TYPES,
                            type="filepath", elem_id="upload-files")
            with gr.Column():
                add = gr.Button("Add to library", variant="primary", elem_id="upload")
                reports = gr.JSON(visible=False)
                table = gr.Dataframe(headers=REPORT_HEADERS, label="Import report",
                                     interactive=False, wrap=True, elem_id="upload-report",
                                     column_widths=["20%", "13%", "14%", "44%", "9%"])
        library = gr.Dataframe(headers=LIBRARY_HEADERS, label="Library (click a row to edit)",
                               interactive=False, elem_id="library-table")
        with gr.Row():
            slug = gr.Textbox(label="Style (slug)", interactive=True)
            name = gr.Textbox(label="Name")
            tags = gr.Textbox(label="Tags (comma-separated)")
        description = gr.Textbox(label="Description", lines=2)
        with gr.Row():
            save = gr.Button("Save changes")
            delete = gr.Button("Delete style", variant="stop")
        edited = gr.JSON(label="Result", visible=False)
        with gr.Accordion("Inspect a file without adding it", open=False):
            probe = gr.File(label="LoRA file", file_types=UPLOAD_TYPES, type="filepath")
            probe_report = gr.JSON(label="Report")
        probe.upload(self.inspect, probe, probe_report, api_name="inspect",
                     concurrency_id="upload", concurrency_limit=1)

        add.click(self.upload, files, reports, api_name="upload", concurrency_id="upload",
                  concurrency_limit=1).then(
            lambda r: views.report_rows(r or []), reports, table, api_visibility="private").then(
            self.library_table, None, library, api_visibility="private").then(
            self.style_choices, None, create["add"], api_visibility="private")
        library_tab.select(self.library_table, None, library, api_visibility="private")
        library.select(self.pick_row, library, [slug, name, tags, description],
                       api_visibility="private")
        save.click(self.edit_style, inputs_kwargs={"slug": slug, "name": name, "tags": tags,
                                                   "description": description},
                   outputs=edited, api_name="edit_style").then(
            self.library_table, None, library, api_visibility="private").then(
            self.style_choices, None, create["add"], api_visibility="private")
        delete.click(self.remove_style, slug, edited, api_name="remove_style").then(
            self.library_table, None, library, api_visibility="private").then(
            self.style_choices, None, create["add"], api_visibility="private")


# -- small pure helpers the events use ------------------------------------------------------
def available_modes() -> tuple[str, ...]:
    """The blending modes this engine runs, in the page's order (gated first once it exists)."""
    from fusion.recipe import MODES

    return tuple(m for m in UI_MODES if m in MODES) or ("merge",)


def parse_size(size: str | None) -> tuple[int | None, int | None]:
    if not size or size == "native":
        return None, None
    try:
        width, height = (int(v) for v in str(size).lower().replace("×", "x").split("x"))
    except ValueError as exc:
        raise gr.Error(f"Size '{size}' should look like 512x512, or 'native'.") from exc
    return width, height


def lora_requests(styles: list | None) -> list[LoraRequest]:
    """The API's `styles`: [{"slug", "weight"}] (or "slug:weight" strings) → typed requests.
    Only library slugs: a public page never reads a file path a visitor names."""
    requests = []
    for item in styles or []:
        if isinstance(item, str):
            request = LoraRequest.parse(item)
        elif isinstance(item, dict) and (item.get("slug") or item.get("ref")):
            request = LoraRequest(ref=str(item.get("slug") or item["ref"]),
                                  weight=float(item.get("weight", 1.0)))
        else:
            raise gr.Error(f"Style {item!r}: give {{'slug': ..., 'weight': ...}} or 'slug:0.8'.")
        check_slug(request.ref)
        requests.append(request)
    return requests


def check_slug(ref: str) -> None:
    if not ref or "/" in ref or "\\" in ref or ref.startswith(".") or \
            ref.lower().endswith((".safetensors", ".bin", ".pt", ".ckpt")):
        raise gr.Error(f"Style '{ref}': name a library style by its slug (see the Atlas or "
                       "/library_list); add files in the Library tab.")


def show_gate_map(gate_map: dict | None) -> gr.Image:
    return gr.Image(visible=bool(gate_map))


def remember(liked: list | None, slug: str) -> list:
    liked = list(liked or [])
    return liked if slug in liked else [*liked, slug]


def slot_updates(slots: list[StyleSlot]):
    def update(styles: list | None) -> dict:
        styles = list(styles or [])
        out = {}
        for i, slot in enumerate(slots):
            style = styles[i] if i < len(styles) else None
            out[slot.row] = gr.Row(visible=style is not None)
            out[slot.label] = views.style_row_markdown(style) if style else ""
            out[slot.weight] = float(style.get("weight", 1.0)) if style else 1.0
        return out

    return update


def set_weight(index: int):
    def update(styles: list | None, weight: float) -> list:
        styles = [dict(s) for s in styles or []]
        if index < len(styles):
            styles[index]["weight"] = float(weight)
        return styles

    return update


def remove_slot(index: int):
    def update(styles: list | None, dismissed: list) -> tuple[list, list]:
        styles = list(styles or [])
        if index < len(styles):
            gone = styles.pop(index)
            dismissed = [*dismissed, gone["slug"]]
        return styles, dismissed

    return update


def picked_slug(event: gr.EventData) -> str:
    return getattr(event, "slug", "") or ""


def picked_row_slug(table, event: gr.SelectData) -> str:
    row = event.index[0]
    return str(table.iloc[row, 0] if hasattr(table, "iloc") else table[row][0])


def about_markdown(about: dict | None) -> str:
    if not about:
        return ""
    lines = []
    for key, value in about.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k} {v}" for k, v in value.items()) or "none"
        lines.append(f"- **{key.replace('_', ' ')}**: {value}")
    return "\n".join(lines)


def serve(service: LoratlasService, host: str = "127.0.0.1", port: int = 7860,
          outputs_dir: str | Path | None = None, **launch_kwargs) -> gr.Blocks:
    """Build and serve the page: the queue sized for several users, uploads limited in size and
    type, only the outputs folder served, the library's own files never. Returns the Blocks
    (blocking unless `prevent_thread_lock=True`)."""
    app = WebApp(service, outputs_dir)
    demo = app.build()
    demo.queue(default_concurrency_limit=DEFAULT_CONCURRENCY, max_size=QUEUE_MAX_SIZE)
    app.outputs_dir.mkdir(parents=True, exist_ok=True)
    library = getattr(service, "library_dir", None)
    blocked = [str(library())] if callable(library) else None
    launch_kwargs.setdefault("ssr_mode", False)  # one Python server; no Node.js in the image
    demo.launch(server_name=host, server_port=port, show_error=True,
                max_file_size=f"{service.config.max_upload_mb}mb",
                allowed_paths=[str(app.outputs_dir)], blocked_paths=blocked,
                footer_links=["api", "gradio"], css=views.PAGE_CSS, **launch_kwargs)
    return demo


def launch(service: LoratlasService, host: str = "127.0.0.1", port: int = 7860) -> None:
    """`loratlas serve`: serve until interrupted."""
    serve(service, host, port)
