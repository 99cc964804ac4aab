"""The one facade the CLI and the web UI call: typed requests in, typed results out."""

from __future__ import annotations

import os
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path

from fusion.base import BaseModel, load_base
from fusion.engine import GenerationEngine, LoraUse
from fusion.recipe import Recipe, RecipeLora, save_png
from styles.errors import LoraRefused
from styles.reader import ReadOptions, read_lora
from styles.safe_read import ReadLimits
from styles.starter.paths import PIPELINE_DIR, starter_available, starter_loras


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
    guidance_scale: float = 7.5
    negative_prompt: str = ""
    apply: str = "adapters"
    mode: str = "merge"
    switch_period: int = 5


@dataclass
class GenerateResult:
    files: list[str]
    recipe: dict
    seconds_per_image: float
    images: list = field(default_factory=list, repr=False)

    def to_json(self) -> dict:
        return {"files": self.files, "recipe": self.recipe,
                "seconds_per_image": round(self.seconds_per_image, 4)}


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
        self._retriever = None
        self._retriever_lock = threading.Lock()
        self._read_cache: dict[tuple, object] = {}  # (path, size, mtime, alpha) → LoraFile

    # -- base model ------------------------------------------------------------------------
    @property
    def engine(self) -> GenerationEngine:
        with self._load_lock:
            if self._engine is None:
                source = self.config.base_model or str(self.default_base())
                self._base = load_base(source, self.config.device, self.config.base_config)
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
    def library_files(self) -> dict[str, Path]:
        """slug → file: the starter styles (with the starter base), then the library folder."""
        files = starter_loras() if self.uses_starter else {}
        folder = Path(self.config.library) if self.config.library else None
        if folder is not None and folder.is_dir():
            files.update({p.stem: p for p in sorted(folder.glob("*.safetensors"))})
        return files

    def resolve_ref(self, ref: str) -> Path:
        path = Path(ref)
        if path.is_file():
            return path
        library = self.library_files()
        if ref in library:
            return library[ref]
        known = ", ".join(sorted(library)[:10]) or "none (no --library given)"
        raise ServiceError(f"LoRA '{ref}' is neither a file nor a style in the library "
                           f"(known: {known}).")

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
        engine = self.engine
        uses = [self._use(item, engine) for item in request.loras]
        default = engine.base.pipe.unet.config.sample_size * engine.base.pipe.vae_scale_factor
        try:
            recipe = engine.recipe_for(
                request.prompt, uses, seed=request.seed, steps=request.steps,
                num_images=request.num_images, width=request.width or default,
                height=request.height or default, guidance_scale=request.guidance_scale,
                negative_prompt=request.negative_prompt, apply=request.apply, mode=request.mode,
                switch_period=request.switch_period)
        except ValueError as exc:
            raise ServiceError(str(exc)) from exc
        return self._run(recipe, uses, out_dir, on_step)

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
        """The retriever over the active library (views computed once, cached on disk)."""
        with self._retriever_lock:
            if self._retriever is None:
                self._retriever = self._build_retriever()
            return self._retriever

    def _build_retriever(self):
        from app.library import ViewCache, build_retriever, load_styles
        from retrieval.embedders import starter_embedder
        from retrieval.retriever import Calibration
        from styles.starter.paths import CLIP_DIR, STARTER_DIR

        if not (CLIP_DIR / "open_clip_model.safetensors").is_file():
            raise ServiceError("no embedder: the starter pack's open_clip model is missing "
                               "(run `loratlas starter build --stages clip`).")
        embedder = starter_embedder()
        engine = self.engine
        source = "starter" if self.uses_starter else "library"
        styles = load_styles(self.library_files(), engine.base.table, source)
        path = self.view_cache_path(embedder.version)
        shipped = STARTER_DIR / "views" / path.name if self.uses_starter else None
        cache = ViewCache(path, seed=shipped)
        calibration_file = STARTER_DIR / "retrieval_calibration.json"
        calibration = Calibration.load(calibration_file) if (
            self.uses_starter and calibration_file.is_file()) else None
        encoder_dir = STARTER_DIR / "weight_encoder"
        encoder = None
        if self.uses_starter and (encoder_dir / "weight_encoder.json").is_file():
            from retrieval.weight_encoder import WeightEncoder

            encoder = WeightEncoder.load(encoder_dir)
        return build_retriever(styles, embedder, engine, cache, calibration, encoder)

    def view_cache_path(self, embedder_version: str | None = None) -> Path:
        """Where this base's view vectors are cached (per embedder version and base)."""
        if embedder_version is None:
            embedder_version = self.retriever().embedder.version
        home = Path(os.environ.get("LORATLAS_HOME", Path.home() / ".cache" / "loratlas"))
        base_id = base_fingerprint(self.engine.base.source)
        return home / "views" / f"{embedder_version}-{base_id}.npz"

    def retrieve(self, prompt: str, k: int = 3) -> RetrieveResult:
        """Styles that fit the prompt, best first, each with its reasons."""
        if not prompt.strip():
            raise ServiceError("the prompt is empty")
        retriever = self.retriever()
        hits = retriever.retrieve(prompt, k=k, family=self.engine.base.family)
        return RetrieveResult(prompt, [h.to_json() for h in hits])

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
        return LoraUse(lora, item.ref, item.weight, item.block_weights, item.step_weights)

    def _run(self, recipe: Recipe, uses: list[LoraUse], out_dir, on_step) -> GenerateResult:
        output = self.engine.generate(recipe, uses, on_step=on_step)
        files = []
        if out_dir is not None:
            folder = Path(out_dir)
            folder.mkdir(parents=True, exist_ok=True)
            for image, image_recipe in zip(output.images, output.recipes, strict=True):
                name = f"loratlas_{image_recipe.seed}_{recipe_digest(image_recipe)}.png"
                files.append(str(save_png(image, image_recipe, folder / name)))
        return GenerateResult(files, asdict(recipe), output.seconds_per_image, output.images)


@dataclass
class RetrieveResult:
    prompt: str
    hits: list[dict]

    def to_json(self) -> dict:
        return {"prompt": self.prompt, "hits": self.hits}


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
