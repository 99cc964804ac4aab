"""A fake LoratlasService for UI wiring tests: the service contract, no model, instant answers.
It records every call so tests can check the page sends named, typed requests."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from app.library_api import (
    AtlasCluster,
    AtlasPoint,
    AtlasView,
    StyleCard,
    StyleSummary,
    UploadReport,
)
from app.service import (
    GenerateRequest,
    GenerateResult,
    InspectResult,
    RetrieveResult,
    ServiceConfig,
    ServiceError,
)

COLOURS = {"neon-night": (255, 0, 200), "pixel-art": (40, 200, 40), "old-photo": (150, 120, 90)}


class FakeService:
    """Three styles, one of another family; generation paints a flat colour per style."""

    base_note = "a fake base (tests)"

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.config = ServiceConfig(library=str(self.folder / "library"))
        self.calls: list[tuple[str, object]] = []
        self.cards: dict[str, StyleCard] = {}
        for i, (slug, colour) in enumerate(COLOURS.items()):
            thumb = self.folder / f"{slug}.png"
            Image.new("RGB", (64, 64), colour).save(thumb)
            self.cards[slug] = StyleCard(
                slug=slug, name=slug.replace("-", " ").title(), family="starter",
                tags=[slug.split("-")[0], "fake"], source="starter", thumbnail=str(thumb),
                applicable=True, description=f"the {slug} look", thumbnails=[str(thumb)],
                cluster="bright" if i < 2 else "muted", format="kohya", rank=4)
        self.cards["sd15-ink"] = StyleCard(
            slug="sd15-ink", name="SD15 Ink", family="sd1", tags=["ink"], source="upload",
            thumbnail=None, applicable=False)

    # -- generation ----------------------------------------------------------------------
    def retrieve(self, prompt: str, k: int = 3) -> RetrieveResult:
        self.calls.append(("retrieve", prompt))
        if not prompt.strip():
            raise ServiceError("the prompt is empty")
        words = set(prompt.lower().replace(",", " ").split())
        hits = [{"slug": s, "name": c.name, "score": 5.0,
                 "reasons": {"clause": prompt, "views": {"metadata": 0.5, "probes": 0.2},
                             "matched_words": sorted(words & set(c.tags))}}
                for s, c in self.cards.items() if c.applicable and words & set(c.tags)]
        return RetrieveResult(prompt, hits[:k])

    def generate(self, request: GenerateRequest, out_dir=None, on_step=None) -> GenerateResult:
        self.calls.append(("generate", request))
        if request.mode not in ("merge", "switch", "composite", "cmlora", "gated"):
            raise ServiceError(f"mode '{request.mode}' is not one of the five modes")
        for lora in request.loras:
            if lora.ref not in self.cards:
                raise ServiceError(f"LoRA '{lora.ref}' is not in the library")
        recipe = {"prompt": request.prompt, "base_model": "fake", "base_family": "starter",
                  "seed": request.seed, "steps": request.steps, "mode": request.mode,
                  "num_images": request.num_images, "width": request.width or 64,
                  "height": request.height or 64,
                  "content_guidance": request.content_guidance or 0.0,  # no style recommends
                  "loras": [{"ref": x.ref, "sha256": "0" * 64, "weight": x.weight}
                            for x in request.loras]}
        return self._images(recipe, out_dir, on_step, gated=request.mode == "gated")

    def plan(self, request: GenerateRequest) -> SimpleNamespace:
        """As the real service resolves an unset content guidance (fusion.engine
        .recommended_settings): the only style's recommendation, in the modes that run it."""
        self.calls.append(("plan", request))
        for lora in request.loras:
            if lora.ref not in self.cards:
                raise ServiceError(f"LoRA '{lora.ref}' is not in the library")
        own = {}
        if len(request.loras) == 1 and request.mode in ("merge", "switch", "gated"):
            own = self.cards[request.loras[0].ref].recommended or {}
        chosen = request.content_guidance
        return SimpleNamespace(content_guidance=own.get("content_guidance", 0.0)
                               if chosen is None else chosen)

    def replay(self, recipe, out_dir=None) -> GenerateResult:
        self.calls.append(("replay", recipe))
        data = {k: v for k, v in vars(recipe).items()}
        data["loras"] = [vars(x) for x in recipe.loras]
        return self._images(data, out_dir, None, gated=False)

    def _images(self, recipe: dict, out_dir, on_step, gated: bool) -> GenerateResult:
        colour = (128, 128, 128)
        for lora in recipe["loras"]:
            colour = COLOURS.get(lora["ref"], colour)
        files, images = [], []
        for i in range(recipe["num_images"]):
            for step in range(recipe["steps"]):
                if on_step:
                    on_step(i, step + 1, recipe["steps"])
            image = Image.new("RGB", (recipe["width"], recipe["height"]), colour)
            images.append(image)
            if out_dir is not None:
                info = PngInfo()
                info.add_text("loratlas-recipe", json.dumps({**recipe, "seed": recipe["seed"] + i,
                                                              "num_images": 1}))
                path = Path(out_dir) / f"fake_{i}.png"
                image.save(path, pnginfo=info)
                files.append(str(path))
        result = GenerateResult(files, recipe, 0.01, images)
        if gated:  # what the gated mode adds: layers × steps × LoRAs
            k = max(1, len(recipe["loras"]))
            result.gates = {"layers": ["down.0", "mid", "up.0"],
                               "loras": [x["ref"] for x in recipe["loras"]] or ["none"],
                               "sources": ["learned"] * k, "steps": recipe["steps"],
                               "values": [[[0.1 * (s + 1) + 0.2 * j for j in range(k)]
                                           for s in range(recipe["steps"])] for _ in range(3)]}
        return result

    def inspect(self, path) -> InspectResult:
        self.calls.append(("inspect", path))
        head = Path(path).read_bytes()[:2]
        if head in (b"PK", b"\x80\x02", b"\x80\x04"):
            return InspectResult(False, "pickle", None, None, None, 0, None, {}, [],
                                 [{"code": "pickle", "message": "pickled file: refused"}])
        return InspectResult(True, "kohya", "sd1", 4, 4.0, 10, "F16", {}, [], [])

    # -- library and atlas ---------------------------------------------------------------
    def library_files(self) -> dict[str, Path]:
        return {slug: self.folder / f"{slug}.safetensors" for slug in self.cards}

    def library_list(self, text: str = "", family: str | None = None,
                     tags: list[str] | None = None) -> list[StyleSummary]:
        self.calls.append(("library_list", (text, family, tags)))
        found = []
        for card in self.cards.values():
            if text and text.lower() not in (card.name + " " + " ".join(card.tags)).lower():
                continue
            if family and card.family != family:
                continue
            if tags and not set(tags) & set(card.tags):
                continue
            found.append(StyleSummary(card.slug, card.name, card.family, card.tags, card.source,
                                      card.thumbnail, card.applicable))
        return found

    def style_card(self, slug: str) -> StyleCard:
        self.calls.append(("style_card", slug))
        if slug not in self.cards:
            raise ServiceError(f"no style '{slug}' in the library")
        return self.cards[slug]

    def atlas(self) -> AtlasView:
        self.calls.append(("atlas", None))
        points = [AtlasPoint(c.slug, c.name, float(i), float(i % 2), 0 if c.cluster == "bright"
                             else 1, c.family, c.applicable, c.thumbnail)
                  for i, c in enumerate(self.cards.values())]
        return AtlasView(points, [AtlasCluster(0, "bright", 2), AtlasCluster(1, "muted", 2)])

    def recommend(self, liked: list[str], k: int = 5) -> list[StyleSummary]:
        self.calls.append(("recommend", list(liked)))
        return [s for s in self.library_list() if s.slug not in liked and s.applicable][:k]

    def upload(self, paths: list[str], on_progress=None) -> list[UploadReport]:
        self.calls.append(("upload", list(paths)))
        reports = []
        for i, path in enumerate(paths):
            start = time.perf_counter()
            name = Path(path).name
            if self.inspect(path).ok:
                slug = Path(path).stem.lower()
                self.cards[slug] = replace(self.cards["pixel-art"], slug=slug, name=slug,
                                           source="upload")
                reports.append(UploadReport(name, True, slug=slug))
            else:
                problem, advice = "is a pickle: refused unread.", "Convert it to .safetensors."
                reports.append(UploadReport(name, False, error={
                    "code": "pickle", "file": name, "problem": problem, "advice": advice,
                    "message": f"{name}: {problem} {advice}"}))
            reports[-1].seconds = time.perf_counter() - start
            if on_progress:
                on_progress(i, "done", 1.0)
        return reports

    def edit_style(self, slug, name=None, tags=None, description=None) -> StyleCard:
        self.calls.append(("edit_style", (slug, name, tags, description)))
        card = self.style_card(slug)
        self.cards[slug] = replace(card, name=name or card.name, tags=tags or card.tags,
                                   description=description or card.description)
        return self.cards[slug]

    def remove_style(self, slug: str) -> None:
        self.calls.append(("remove_style", slug))
        self.style_card(slug)
        del self.cards[slug]

    def about(self) -> dict:
        return {"base_model": self.base_note, "library_size": len(self.cards),
                "versions": {"loratlas": "test"}}
