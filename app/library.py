"""The style library the app serves: the starter styles and the user's LoRAs, with the
retrieval views of each, computed once per file (by sha256) and cached on disk."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fusion.engine import GenerationEngine, LoraUse
from fusion.recipe import Recipe
from retrieval.embedders import Embedder
from retrieval.retriever import Calibration, StyleRecord, StyleRetriever, words
from retrieval.word_view import WordView
from styles.lora import LoraFile
from styles.reader import ReadOptions, read_lora

PROBE_PROMPTS = ("a red circle", "a blue square", "a green star", "a yellow heart")
PROBE_STEPS = 8  # DPM-Solver: as good as 12 at 64x64 (docs/probe_steps.png)


def renders_id(base_id: str, guidance: float) -> str:
    """Id of what probe renders depend on: the base model, the guidance scale it renders at
    and the probe settings. Caches of probe vectors and indexes holding them are keyed by it,
    so changing any of them rebuilds them."""
    digest = hashlib.sha256(repr((PROBE_PROMPTS, PROBE_STEPS, float(guidance))).encode()
                            ).hexdigest()[:6]
    return f"{base_id}-p{digest}"


@dataclass
class LibraryStyle:
    """One style as the app lists it."""

    slug: str
    file: Path
    lora: LoraFile
    source: str  # starter | library | upload

    @property
    def name(self) -> str:
        return self.lora.metadata.name or self.slug

    def record(self) -> StyleRecord:
        """Only what the file itself says feeds the metadata view (sparse files say nothing)."""
        meta = self.lora.metadata
        parts = [meta.name or "", meta.description or "", ", ".join(meta.tags[:20]),
                 ", ".join(meta.trigger_words)]
        text = ". ".join(p for p in parts if p)
        return StyleRecord(self.slug, self.name, self.lora.family, text,
                           sorted(words(" ".join(parts))))


def metadata_vector(embedder: Embedder, style: LibraryStyle) -> np.ndarray | None:
    text = style.record().metadata_text
    return embedder.encode_texts([text])[0] if text else None


def probe_images(engine: GenerationEngine, lora: LoraFile, ref: str) -> list:
    """Renders of neutral prompts with the LoRA at weight 1 (also the style's thumbnails)."""
    use = LoraUse(lora, ref, 1.0)
    recipes: list[Recipe] = [engine.recipe_for(prompt, [use], seed=index, steps=PROBE_STEPS)
                             for index, prompt in enumerate(PROBE_PROMPTS)]
    return engine.generate_many(recipes, [use]).images  # one batched denoising loop


def to_array(images: list) -> np.ndarray:
    return np.stack([np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0 for im in images])


def unit(vector: np.ndarray) -> np.ndarray:
    return vector / (np.linalg.norm(vector) + 1e-12)


class ViewCache:
    """view vectors by (view, sha256), one .npz per embedder+base, written atomically."""

    def __init__(self, path: Path, seed: Path | None = None) -> None:
        """`seed`: a read-only cache shipped with the starter pack, read first."""
        self.path = path
        self._lock = threading.Lock()
        self.vectors: dict[str, np.ndarray] = {}
        for source in (seed, path):
            if source is not None and source.is_file():
                with np.load(source) as data:
                    self.vectors.update({k: data[k] for k in data.files})

    def get(self, view: str, sha: str) -> np.ndarray | None:
        return self.vectors.get(f"{view}:{sha}")

    def put(self, view: str, sha: str, vector: np.ndarray) -> None:
        with self._lock:
            self.vectors[f"{view}:{sha}"] = vector.astype(np.float32)

    def retain(self, shas) -> None:
        """Forget the vectors of every LoRA whose sha256 is not in `shas` (the next save
        writes only the rest), so a rebuilt cache does not carry replaced files' vectors."""
        keep = set(shas)
        with self._lock:
            self.vectors = {key: vector for key, vector in self.vectors.items()
                            if key.split(":", 1)[1] in keep}

    def save(self) -> None:
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(self.path.name + ".tmp.npz")
            np.savez(tmp, **self.vectors)
            tmp.replace(self.path)


def load_styles(files: dict[str, Path], table, source: str) -> dict[str, LibraryStyle]:
    """Read every file against the base; a file that cannot be used is left out, with why."""
    styles = {}
    for slug, path in files.items():
        lora = read_lora(path, ReadOptions(base_table=table))
        styles[slug] = LibraryStyle(slug, path, lora, source)
    return styles


def build_retriever(styles: dict[str, LibraryStyle], embedder: Embedder,
                    engine: GenerationEngine, cache: ViewCache, calibration: Calibration | None,
                    weight_encoder=None, thumbnails_dir: Path | None = None,
                    word_view: WordView | None = None) -> StyleRetriever:
    """Compute missing view vectors (writing the probe renders as thumbnails if asked), then
    a retriever over all styles."""
    vectors: dict[str, dict[str, np.ndarray]] = {
        "metadata": {}, "probes": {}, "weights": {}, "words": {}}
    records = {slug: style.record() for slug, style in styles.items()}
    for slug, style in styles.items():
        sha = style.lora.sha256
        meta = cache.get("metadata", sha)
        if meta is None and (meta := metadata_vector(embedder, style)) is not None:
            cache.put("metadata", sha, meta)
        if meta is not None:
            vectors["metadata"][slug] = meta
        probe = cache.get("probes", sha)
        if probe is None or (thumbnails_dir and not (thumbnails_dir / f"{slug}-0.png").is_file()):
            images = probe_images(engine, style.lora, slug)
            probe = unit(embedder.encode_images(to_array(images)).mean(axis=0))
            cache.put("probes", sha, probe)
            if thumbnails_dir is not None:
                thumbnails_dir.mkdir(parents=True, exist_ok=True)
                for i, image in enumerate(images):
                    image.save(thumbnails_dir / f"{slug}-{i}.png")
        vectors["probes"][slug] = probe
        if weight_encoder is not None:
            vectors["weights"][slug] = weight_encoder.embed([style.lora])[0]
        if word_view is not None and (found := word_view.embed(style.lora)):
            vectors["words"][slug], records[slug].weight_words = found
    cache.save()
    calibration = calibration or Calibration({v: 0.0 for v in vectors}, {v: 1.0 for v in vectors})
    return StyleRetriever.from_vectors(embedder, records, vectors, calibration)


def word_view_for(engine: GenerationEngine, embedder: Embedder, path: Path,
                  reference: Sequence[LoraFile] = ()) -> WordView:
    """The words view of this base model and embedder: loaded from `path`, or built from the
    base's tokenizer and text encoder (each word read after the probe prompts), fitted on the
    `reference` LoRAs, and saved there."""
    view = WordView.load(path, embedder.version)
    if view is None:
        pipe = engine.base.pipe
        view = WordView.build(pipe.tokenizer, pipe.text_encoder, embedder, PROBE_PROMPTS)
        view.fit([r for lora in reference if (r := view.reactions(lora)) is not None])
        path.parent.mkdir(parents=True, exist_ok=True)
        view.save(path)
    return view
