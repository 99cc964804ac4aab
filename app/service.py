"""The one facade the CLI and the web UI call: typed requests in, typed results out."""

from __future__ import annotations

import os
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from app.library_api import (
    AtlasCluster,
    AtlasPoint,
    AtlasView,
    StyleCard,
    StyleSummary,
    UploadReport,
)
from fusion.base import BaseModel, BaseModelError, load_base
from fusion.engine import GenerationEngine, LoraUse
from fusion.recipe import Recipe, RecipeLora, save_png
from styles.errors import LoraRefused
from styles.reader import ReadOptions, read_lora
from styles.safe_read import ReadLimits, sha256_file
from styles.starter.paths import (
    PIPELINE_DIR,
    starter_available,
    starter_loras,
    starter_recommendations,
)

if TYPE_CHECKING:
    from app.style_library import StyleLibrary


class ServiceError(Exception):
    """A request the service cannot fulfil; the message says what to change."""


@dataclass(frozen=True)
class ServiceConfig:
    """Settings, also read from the environment (LORATLAS_*), e.g. for a Space."""

    base_model: str | None = None
    base_config: str | None = None
    library: str | None = None
    device: str | None = None
    max_upload_mb: int = 2048

    @classmethod
    def from_env(cls, **overrides) -> ServiceConfig:
        env = {"base_model": os.environ.get("LORATLAS_BASE_MODEL"),
               "base_config": os.environ.get("LORATLAS_BASE_CONFIG"),
               "library": os.environ.get("LORATLAS_LIBRARY"),
               "device": os.environ.get("LORATLAS_DEVICE")}
        env.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**env)


@dataclass
class LoraRequest:
    """A LoRA named by library slug or path, with its weight and optional schedules."""

    ref: str
    weight: float = 1.0
    block_weights: dict | None = None
    step_weights: list[float] | None = None
    alpha: float | None = None

    @classmethod
    def parse(cls, text: str) -> LoraRequest:
        """`NAME_OR_PATH[:WEIGHT]`."""
        ref, sep, weight = text.rpartition(":")
        if sep and ref:
            try:
                return cls(ref=ref, weight=float(weight))
            except ValueError:
                pass
        return cls(ref=text)


@dataclass
class GenerateRequest:
    prompt: str
    loras: list[LoraRequest] = field(default_factory=list)
    steps: int = 20
    seed: int = 0
    num_images: int = 1
    width: int | None = None
    height: int | None = None
    # None: the style's recommended scale when one LoRA is used and it has one, else the base
    # model's (fusion.engine.recommended_settings)
    guidance_scale: float | None = None
    negative_prompt: str = ""
    apply: str = "adapters"
    mode: str = "merge"  # merge | switch | composite | cmlora | gated
    switch_period: int = 5
    cmlora_cache: str = "residual"
    gate_tolerance: float = 0.05
    # the base model's own guidance added early (0: off) and the share of the steps it runs on
    # (the first ones); None: what the style recommends when one LoRA is used, else off and 0.4
    # (fusion.engine.recommended_settings)
    content_guidance: float | None = None
    content_guidance_steps: float | None = None
    auto: int = 0  # add this many styles retrieved for the prompt (0: only `loras`)


@dataclass
class GenerateResult:
    files: list[str]
    recipe: dict
    seconds_per_image: float
    images: list = field(default_factory=list, repr=False)
    gates: dict | None = field(default=None, repr=False)  # GateMap JSON: layers × steps × LoRAs
    styles: list[dict] = field(default_factory=list)  # retrieved styles (auto), with reasons
    unet_passes: int | None = None

    def to_json(self) -> dict:
        data = {"files": self.files, "recipe": self.recipe,
                "seconds_per_image": round(self.seconds_per_image, 4),
                "unet_passes": self.unet_passes}
        if self.styles:
            data["styles"] = self.styles
        if self.gates is not None:
            data["gate_sources"] = dict(zip(self.gates["loras"], self.gates["sources"],
                                            strict=True))
        return data


@dataclass
class InspectResult:
    ok: bool
    format: str | None
    family: str | None
    rank: int | None
    alpha: float | None
    modules: int
    dtype: str | None
    metadata: dict
    warnings: list[str]
    errors: list[dict]
    sha256: str | None = None

    def to_json(self) -> dict:
        return asdict(self)


class LoratlasService:
    """Owns the base model, the engine and the library; all state lives here."""

    def __init__(self, config: ServiceConfig | None = None) -> None:
        self.config = config or ServiceConfig.from_env()
        self._base: BaseModel | None = None
        self._engine: GenerationEngine | None = None
        self._load_lock = threading.Lock()
        self._library: StyleLibrary | None = None
        self._recommended: dict[str, dict] | None = None
        self._library_lock = threading.Lock()
        self._read_cache: dict[tuple, object] = {}  # (path, size, mtime, alpha) → LoraFile

    # -- base model ------------------------------------------------------------------------
    @property
    def engine(self) -> GenerationEngine:
        with self._load_lock:
            if self._engine is None:
                source = self.config.base_model or str(self.default_base())
                try:
                    self._base = load_base(source, self.config.device, self.config.base_config)
                except BaseModelError as exc:  # a request's error, with what to change
                    raise ServiceError(str(exc)) from exc
                self._engine = GenerationEngine(self._base)
            return self._engine

    def default_base(self) -> Path:
        """The embedded default: the starter pack, or a placeholder if it is not built."""
        if starter_available():
            return PIPELINE_DIR
        from fusion.placeholder import build_placeholder_pipeline, default_placeholder_dir

        return build_placeholder_pipeline(default_placeholder_dir())

    @property
    def uses_starter(self) -> bool:
        return not self.config.base_model and starter_available()

    @property
    def base_note(self) -> str:
        from fusion.placeholder import PLACEHOLDER_NOTE

        if self.config.base_model:
            return self.config.base_model
        return "the Loratlas starter pack (64×64)" if starter_available() else PLACEHOLDER_NOTE

    @property
    def limits(self) -> ReadLimits:
        return ReadLimits(max_file_bytes=self.config.max_upload_mb * 1024**2)

    # -- library ---------------------------------------------------------------------------
    @property
    def library(self) -> StyleLibrary:
        """The library folder (catalog, blobs, indexes, atlas), opened and recovered once;
        seeded with the starter styles when the starter base is in use. What another process
        sharing the folder changed since is loaded here (`StyleLibrary.refresh`)."""
        with self._library_lock:
            if self._library is None:
                self._library = self._open_library()
            library = self._library
        library.refresh()
        return library

    @staticmethod
    def cache_dir() -> Path:
        """What can be rebuilt from the models alone, shared by every library on this machine
        (keyed by content: base fingerprint, embedder version)."""
        if home := os.environ.get("LORATLAS_HOME"):
            return Path(home) / "cache"
        cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        return Path(cache) / "loratlas"

    def library_dir(self) -> Path:
        if self.config.library:
            return Path(self.config.library)
        if home := os.environ.get("LORATLAS_HOME"):
            return Path(home) / "library"
        data = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
        return Path(data) / "loratlas" / "library"

    def _open_library(self) -> StyleLibrary:
        from app.library import ViewCache, word_view_for
        from app.style_library import LibraryParts, StyleLibrary, seed_from_starter
        from retrieval.embedders import starter_embedder
        from retrieval.retriever import Calibration
        from retrieval.word_view import WordView
        from styles.starter.paths import CLIP_DIR, STARTER_DIR

        if not (CLIP_DIR / "open_clip_model.safetensors").is_file():
            raise ServiceError("no embedder: the starter pack's open_clip model is missing "
                               "(run `loratlas starter build --stages clip`).")
        engine = self.engine
        embedder = starter_embedder()
        encoder = calibration = None
        if self.uses_starter:
            if (STARTER_DIR / "weight_encoder" / "weight_encoder.json").is_file():
                from retrieval.weight_encoder import WeightEncoder

                encoder = WeightEncoder.load(STARTER_DIR / "weight_encoder")
            if (STARTER_DIR / "retrieval_calibration.json").is_file():
                calibration = Calibration.load(STARTER_DIR / "retrieval_calibration.json")
        base_id = renders_key(engine)
        word_view = None
        if self.uses_starter:  # shipped, fitted on the pack's LoRAs
            from app.starter_retrieval import starter_word_view_file

            word_view = WordView.load(starter_word_view_file(embedder, base_id), embedder.version)
        words_file = self.cache_dir() / "word_view" / f"{embedder.version}-{base_id}.npz"
        try:
            word_view = word_view or word_view_for(engine, embedder, words_file)  # built once
        except (AttributeError, KeyError, ValueError, RuntimeError, OSError) as exc:
            import warnings  # a base without a CLIP-like tokenizer and text encoder

            warnings.warn(f"no words view for this base model ({exc}); styles are found by "
                          "their other views", stacklevel=2)
        library = StyleLibrary(self.library_dir(), LibraryParts(
            engine, embedder, encoder, calibration, self.limits, base_id, word_view))
        if self.uses_starter and starter_loras():
            views = ViewCache(STARTER_DIR / "views" / f"{embedder.version}-{base_id}.npz")
            seed_from_starter(library, starter_loras(), views, STARTER_DIR / "thumbnails",
                              _starter_profiles(STARTER_DIR / "gates" / "gates.json"))
        self.import_folder(library.folder, library=library, only_new=True)
        return library

    def library_files(self) -> dict[str, Path]:
        """slug → file of every style in the library (files live in its blob store)."""
        library = self.library
        return {e.id: library.blobs.path(e.blob) for e in library.catalog.list()}

    def resolve_ref(self, ref: str) -> Path:
        path = Path(ref)
        if path.is_file():
            return path
        library = self.library
        if ref in library.catalog:
            return library.blobs.path(library.catalog.get(ref).blob)
        known = ", ".join(library.catalog.ids()[:10]) or "none"
        raise ServiceError(f"LoRA '{ref}' is neither a file nor a style in the library "
                           f"(known: {known}). See `loratlas library list`.")

    # -- actions ---------------------------------------------------------------------------
    def inspect(self, path: str | Path, alpha: float | None = None,
                base_family: str | None = None, against_base: bool = False) -> InspectResult:
        """Read and check one file; never raises for a bad file, reports it instead."""
        table = self.engine.base.table if against_base else None
        options = ReadOptions(base_table=table, base_family=base_family, alpha=alpha,
                              limits=self.limits)
        try:
            lora = read_lora(path, options)
        except LoraRefused as refusal:
            d = refusal.details
            return InspectResult(False, d.get("format"), d.get("family"), None, None, 0, None,
                                 d.get("metadata", {}), [], [refusal.to_dict()], d.get("sha256"))
        return InspectResult(True, lora.format, lora.family, lora.rank, lora.alpha,
                             len(lora.modules), lora.dtype, lora.metadata.to_dict(),
                             [w for w in lora.warnings if w], [], lora.sha256)

    def generate(self, request: GenerateRequest, out_dir: str | Path | None = None,
                 on_step=None) -> GenerateResult:
        """Generate images with the requested LoRAs; write PNGs with recipes if out_dir."""
        uses, styles = self._requested(request)
        result = self._run(self._recipe(request, uses), uses, out_dir, on_step)
        result.styles = styles
        return result

    def plan(self, request: GenerateRequest) -> Recipe:
        """The recipe `generate` would run for the request, its unset settings resolved (the
        only style's recommendations, else the base model's); nothing is generated."""
        uses, _ = self._requested(request)
        return self._recipe(request, uses)

    def _requested(self, request: GenerateRequest) -> tuple[list[LoraUse], list[dict]]:
        """The request's LoRAs, with those retrieval finds for its prompt (`auto`), and
        those hits."""
        engine = self.engine
        loras, styles = list(request.loras), []
        if request.auto > 0:  # the styles retrieval finds for the prompt
            styles = self.retrieve(request.prompt, k=request.auto).hits
            listed = {item.ref for item in loras}
            loras += [LoraRequest(hit["slug"]) for hit in styles if hit["slug"] not in listed]
        return [self._use(item, engine) for item in loras], styles

    def generate_many(self, requests: list[GenerateRequest]) -> list:
        """One image per request, for requests that differ only in prompt and seed (a
        benchmark's prompts): denoised together where the mode allows, each the image
        `generate` makes alone up to float rounding (GenerationEngine.generate_many)."""
        first = requests[0]
        if first.auto or any(replace(r, prompt=first.prompt, seed=first.seed) != first
                             for r in requests):
            raise ServiceError("generate_many takes requests that differ only in prompt and "
                               "seed, with their LoRAs named (no auto)")
        engine = self.engine
        uses = [self._use(item, engine) for item in first.loras]
        recipes = [self._recipe(request, uses) for request in requests]
        try:
            output = engine.generate_many(recipes, uses)
        except ValueError as exc:
            raise ServiceError(str(exc)) from exc
        self._keep_profiles(uses)
        return output.images

    def _recipe(self, request: GenerateRequest, uses: list[LoraUse]) -> Recipe:
        try:
            return self.engine.recipe_for(
                request.prompt, uses, seed=request.seed, steps=request.steps,
                num_images=request.num_images, width=request.width,
                height=request.height, guidance_scale=request.guidance_scale,
                negative_prompt=request.negative_prompt, apply=request.apply, mode=request.mode,
                switch_period=request.switch_period, cmlora_cache=request.cmlora_cache,
                gate_tolerance=request.gate_tolerance,
                content_guidance=request.content_guidance,
                content_guidance_steps=request.content_guidance_steps)
        except ValueError as exc:
            raise ServiceError(str(exc)) from exc

    def replay(self, recipe: Recipe, out_dir: str | Path | None = None) -> GenerateResult:
        """Regenerate from a recipe; every LoRA must have the recorded sha256."""
        engine = self.engine
        uses = []
        for item in recipe.loras:
            use = self._use(LoraRequest(item.ref, item.weight, item.block_weights,
                                        item.step_weights, item.alpha), engine)
            if use.lora.sha256 != item.sha256:
                raise ServiceError(f"LoRA '{item.ref}' has changed since the recipe was made "
                                   f"(sha256 {use.lora.sha256[:12]} ≠ {item.sha256[:12]}).")
            uses.append(use)
        return self._run(recipe, uses, out_dir, None)

    # -- retrieval -------------------------------------------------------------------------
    def retriever(self):
        """The retriever over the library (its FAISS view indexes live in the library)."""
        return self.library.retriever

    def retrieve(self, prompt: str, k: int = 3) -> RetrieveResult:
        """Styles that fit the prompt, best first, each with its reasons."""
        if not prompt.strip():
            raise ServiceError("the prompt is empty")
        retriever = self.retriever()
        hits = retriever.retrieve(prompt, k=k, family=self.engine.base.family)
        return RetrieveResult(prompt, [h.to_json() for h in hits])

    # -- library actions -------------------------------------------------------------------
    def upload(self, paths: list[str | Path], on_progress=None,
               names: list[str] | None = None, source: str = "upload") -> list[UploadReport]:
        """Check, store, render, embed, index and map each file; never raises for a bad
        file (its report says why). `on_progress(file_index, step, fraction)`."""
        return self._ingest_all(self.library, paths, on_progress, names, source)

    @staticmethod
    def _ingest_all(library: StyleLibrary, paths, on_progress, names, source
                    ) -> list[UploadReport]:
        from app.style_library import IngestRefused

        reports = []
        for i, path in enumerate(paths):
            shown = names[i] if names else Path(path).name
            started = time.perf_counter()
            try:
                result = library.ingest(
                    Path(path), source, shown,
                    (lambda step, fraction, i=i: on_progress(i, step, fraction))
                    if on_progress else None)
            except IngestRefused as refused:
                reports.append(UploadReport(shown, False, error=refused.details,
                                            seconds=time.perf_counter() - started))
            else:
                slug = result.entry.id if result.entry else None
                reports.append(UploadReport(
                    shown, True, slug, duplicate_of=result.duplicate_of,
                    near_duplicate_of=result.near_duplicate_of, seconds=result.seconds,
                    note=library.off_map_reason(slug) if slug else None))
            if on_progress:
                on_progress(i, "done", 1.0)
        return reports

    def import_folder(self, folder: str | Path, on_progress=None, library=None,
                      only_new: bool = False) -> list[UploadReport]:
        """Bulk import of every .safetensors file in a folder (not recursive).
        `only_new` skips files whose hash is already in the library without reading them
        twice (the library folder's own loose files are imported on open)."""
        library = library or self.library
        files = sorted(Path(folder).glob("*.safetensors"))
        if only_new:
            known = {(e.extra or {}).get("source_path") for e in library.catalog.list()}
            files = [f for f in files if str(f.resolve()) not in known]
        return self._ingest_all(library, files, on_progress, None, "import")

    def library_list(self, text: str = "", family: str | None = None,
                     tags: list[str] | None = None) -> list[StyleSummary]:
        library = self.library
        return [self._summary(e) for e in library.catalog.list(
            text=text or None, family=family or None, tags=tags or None)]

    def style_card(self, slug: str) -> StyleCard:
        library = self.library
        entry = self._entry(slug)
        summary = self._summary(entry)
        nearest = []
        if slug in library.atlas:
            nearest = [{"slug": other, "name": library.catalog.get(other).name,
                        "score": round(float(score), 3)}
                       for other, score in library.atlas.nearest(slug, 5)
                       if other in library.catalog]
        flags = []
        if near := entry.extra.get("near_duplicate_of"):
            flags.append(f"near-duplicate of {near}")
        if not summary.applicable:
            flags.append(f"for {entry.family}: the loaded base is {library.base_family}, so it "
                         "is listed but never applied")
        if off_map := library.off_map_reason(slug):
            flags.append(off_map)
        return StyleCard(**summary.to_json(), description=entry.description,
                         trigger_words=entry.trigger_words, format=entry.format,
                         rank=entry.rank, sha256=entry.sha256, created=entry.created,
                         thumbnails=[str(library.blobs.path(t)) for t in entry.thumbnails],
                         nearest=nearest, cluster=self._cluster_label(slug),
                         flags=flags, weight_words=list(entry.extra.get("weight_words", [])),
                         recommended=dict(self.style_recommendations().get(entry.sha256, {})))

    def atlas(self) -> AtlasView:
        library = self.library
        entries = {e.id: e for e in library.catalog.list()}
        points = []
        for point in library.atlas.points():
            if point.id in entries:
                summary = self._summary(entries[point.id])
                points.append(AtlasPoint(point.id, summary.name, point.x, point.y,
                                         point.cluster, summary.family, summary.applicable,
                                         summary.thumbnail))
        clusters = [AtlasCluster(c.id, c.label, len(c.members))
                    for c in library.atlas.clusters]
        return AtlasView(points, clusters)

    def recommend(self, liked: list[str], k: int = 5) -> list[StyleSummary]:
        from styles.recommend import recommend

        library = self.library
        liked = [s for s in liked if s in library.catalog]
        if not liked:
            return []
        vectors = {i: v for i in library.catalog.ids()
                   if (v := library.style_vector(i)) is not None}
        return [self._summary(library.catalog.get(r.id))
                for r in recommend(liked, vectors, None, k=k)]

    def edit_style(self, slug: str, name: str | None = None, tags: list[str] | None = None,
                   description: str | None = None,
                   trigger_words: list[str] | None = None) -> StyleCard:
        changes = {k: v for k, v in {"name": name, "tags": tags, "description": description,
                                     "trigger_words": trigger_words}.items() if v is not None}
        self._entry(slug)
        try:
            self.library.edit(slug, **changes)
        except ValueError as exc:
            raise ServiceError(str(exc)) from exc
        return self.style_card(slug)

    def remove_style(self, slug: str) -> None:
        self._entry(slug)
        self.library.remove(slug)

    def about(self) -> dict:
        import diffusers
        import torch

        engine = self.engine
        library = self.library
        entries = library.catalog.list()
        return {"base_model": self.base_note, "base_family": engine.base.family,
                "device": str(engine.base.pipe.device),
                "library": str(library.folder), "styles": len(entries),
                "by_source": {s: sum(e.source == s for e in entries)
                              for s in sorted({e.source for e in entries})},
                "applicable": sum(library.applicable(e) for e in entries),
                "embedder": library.parts.embedder.version,
                "versions": {"loratlas": _version(), "torch": torch.__version__,
                             "diffusers": diffusers.__version__}}

    def _cluster_label(self, slug: str) -> str | None:
        atlas = self.library.atlas
        if slug not in atlas:
            return None
        cluster = atlas.point(slug).cluster
        return next((c.label for c in atlas.clusters if c.id == cluster), None)

    def _entry(self, slug: str):
        library = self.library
        if slug not in library.catalog:
            raise ServiceError(f"no style '{slug}' in the library (see `loratlas library list`)")
        return library.catalog.get(slug)

    def _summary(self, entry) -> StyleSummary:
        library = self.library
        thumb = str(library.blobs.path(entry.thumbnails[0])) if entry.thumbnails else None
        return StyleSummary(entry.id, entry.name, entry.family, list(entry.tags), entry.source,
                            thumb, library.applicable(entry))

    def _use(self, item: LoraRequest, engine: GenerationEngine) -> LoraUse:
        path = self.resolve_ref(item.ref)
        stat = path.stat()
        key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, item.alpha)
        lora = self._read_cache.get(key)
        if lora is None:  # parse and hash each file once, not on every request
            try:
                lora = read_lora(path, ReadOptions(base_table=engine.base.table,
                                                   alpha=item.alpha, limits=self.limits))
            except LoraRefused as refusal:
                raise ServiceError(str(refusal)) from refusal
            if len(self._read_cache) > 64:
                self._read_cache.clear()
            self._read_cache[key] = lora
        stored = self._stored_entry(item.ref)
        return LoraUse(lora, item.ref, item.weight, item.block_weights, item.step_weights,
                       frequency=stored.frequency if stored else None,
                       recommended=self.style_recommendations().get(lora.sha256))

    def style_recommendations(self) -> dict[str, dict]:
        """sha256 of a LoRA file → the generation settings its style recommends: the starter
        pack's (its manifest), so they follow the file, named by slug or by path."""
        if self._recommended is None:  # computed once (a race computes the same twice)
            self._recommended = {sha256_file(path): settings for path, settings
                                 in starter_recommendations().values()} \
                if self.uses_starter else {}
        return self._recommended

    def _stored_entry(self, ref: str):
        """The catalog entry a library slug names (None for a file path)."""
        if Path(ref).is_file():
            return None
        library = self.library
        return library.catalog.get(ref) if ref in library.catalog else None

    def _keep_profiles(self, uses: list[LoraUse]) -> None:
        """Frequency profiles measured during a request are stored with their styles, so each
        style's profile is measured once per library, not once per process."""
        for use in uses:
            profile = self.engine.profiles.get(use.lora.sha256)
            if use.frequency is None and profile and (entry := self._stored_entry(use.ref)):
                self.library.catalog.update(entry.id, frequency=list(profile))

    def _run(self, recipe: Recipe, uses: list[LoraUse], out_dir, on_step) -> GenerateResult:
        try:
            output = self.engine.generate(recipe, uses, on_step=on_step)
        except ValueError as exc:  # e.g. a recipe made with other gates
            raise ServiceError(str(exc)) from exc
        self._keep_profiles(uses)
        files = []
        if out_dir is not None:
            folder = Path(out_dir)
            folder.mkdir(parents=True, exist_ok=True)
            for image, image_recipe in zip(output.images, output.recipes, strict=True):
                name = f"loratlas_{image_recipe.seed}_{recipe_digest(image_recipe)}.png"
                files.append(str(save_png(image, image_recipe, folder / name)))
        gates = output.gates.to_json() if output.gates is not None else None
        return GenerateResult(files, asdict(recipe), output.seconds_per_image, output.images,
                              gates, unet_passes=output.unet_passes)


@dataclass
class RetrieveResult:
    prompt: str
    hits: list[dict]

    def to_json(self) -> dict:
        return {"prompt": self.prompt, "hits": self.hits}


def _starter_profiles(gates_file: Path) -> dict[str, list[float]]:
    """The starter styles' frequency profiles, measured when the gates were trained."""
    import json

    if not gates_file.is_file():
        return {}
    return json.loads(gates_file.read_text()).get("profiles", {})


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("loratlas")
    except PackageNotFoundError:
        return "unknown"


def renders_key(engine: GenerationEngine) -> str:
    """What the engine's probe renders depend on (app.library.renders_id)."""
    from app.library import renders_id

    return renders_id(base_fingerprint(engine.base.source), engine.base.guidance_scale)


def base_fingerprint(source: str) -> str:
    """Content-based id of a base model (its UNet weights), so caches survive moving folders."""
    weights = sorted(Path(source).glob("unet/diffusion_pytorch_model*.safetensors")) \
        if Path(source).is_dir() else []
    if weights:
        import hashlib

        return hashlib.sha256(weights[0].read_bytes()).hexdigest()[:10]
    return recipe_digest_text(source)


def recipe_digest(recipe: Recipe) -> str:
    return recipe_digest_text(recipe.to_json())


def recipe_digest_text(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()[:10]


__all__ = ["GenerateRequest", "GenerateResult", "InspectResult", "LoraRequest",
           "LoratlasService", "Recipe", "RecipeLora", "ServiceConfig", "ServiceError"]
