"""The starter pack's retrieval artifacts: the weight encoder trained on its LoRAs, the
calibration, the view vectors and the probe thumbnails, shipped so that a fresh install
retrieves and shows thumbnails without rendering anything.

Calibration prompts are the styles' training-side descriptions and captions from their own
seed: disjoint from benchmarks/data/retrieval_prompts.jsonl."""

from __future__ import annotations

import numpy as np

from app.library import ViewCache, build_retriever, load_styles, word_view_for
from fusion.engine import GenerationEngine
from retrieval.embedders import Embedder
from retrieval.retriever import StyleRetriever, calibrate, fit_threshold, index_of
from retrieval.weight_encoder import WeightEncoder, train_weight_encoder
from styles.lora import LoraFile
from styles.starter.looks import STYLES
from styles.starter.paths import STARTER_DIR, starter_loras
from styles.starter.world import caption, sample_scene

CALIBRATION_SEED = 70_000
NEGATIVES_SEED = 71_000
WEIGHTS_DIR = STARTER_DIR / "weight_encoder"
CALIBRATION_FILE = STARTER_DIR / "retrieval_calibration.json"
VIEWS_DIR = STARTER_DIR / "views"
WORDS_DIR = STARTER_DIR / "word_view"
THUMBNAILS_DIR = STARTER_DIR / "thumbnails"


def style_texts(slug: str) -> list[str]:
    """Training-side descriptions of a style (never its held-out phrases)."""
    spec = STYLES[slug]
    return [spec.name, spec.description, *spec.phrases[:-2]]


def calibration_prompts() -> tuple[list[str], list[tuple[str, str]]]:
    rng = np.random.default_rng(CALIBRATION_SEED)
    nulls = [caption(sample_scene(rng, n_objects=1), rng) for _ in range(120)]
    positives = [(f"{caption(sample_scene(rng, n_objects=1), rng)}, {text}", slug)
                 for slug in sorted(STYLES) for text in style_texts(slug)[2:5]]
    return nulls, positives


ENCODER_MEMBERS = 5


def style_free_prompts(count: int = 256) -> list[str]:
    """Captions of scenes that ask for no style, from a seed of their own: the weights view's
    negatives."""
    rng = np.random.default_rng(NEGATIVES_SEED)
    return [caption(sample_scene(rng, n_objects=int(rng.integers(1, 3))), rng)
            for _ in range(count)]


def train_encoder(retriever: StyleRetriever, loras: dict[str, LoraFile], slugs: list[str],
                  seed: int = 0, members: int = ENCODER_MEMBERS) -> WeightEncoder:
    targets = [retriever.embedder.encode_texts(style_texts(s)) for s in slugs]
    negatives = retriever.embedder.encode_texts(style_free_prompts())
    return train_weight_encoder([loras[s] for s in slugs], targets, steps=400, seed=seed,
                                members=members, negatives=negatives)


def starter_views_file(embedder: Embedder, base_id: str):
    return VIEWS_DIR / f"{embedder.version}-{base_id}.npz"


def starter_word_view_file(embedder: Embedder, base_id: str):
    return WORDS_DIR / f"{embedder.version}-{base_id}.npz"


def build_starter_retrieval(engine: GenerationEngine, embedder: Embedder,
                            base_id: str, seed: int = 0,
                            members: int = ENCODER_MEMBERS) -> StyleRetriever:
    """Render the probes (thumbnails), embed the views, train the weight encoder (from `seed`),
    fit the words view on the pack's LoRAs, calibrate; write them all inside the starter
    pack."""
    styles = load_styles(starter_loras(), engine.base.table, "starter")
    views_file = starter_views_file(embedder, base_id)
    for stale in VIEWS_DIR.glob("*.npz"):
        if stale != views_file:
            stale.unlink()
    words_file = starter_word_view_file(embedder, base_id)
    for stale in [*WORDS_DIR.glob("*.npz"), words_file]:
        stale.unlink(missing_ok=True)  # refitted on the pack's LoRAs as they are now
    word_view = word_view_for(engine, embedder, words_file,
                              [style.lora for style in styles.values()])
    cache = ViewCache(views_file)
    cache.retain(style.lora.sha256 for style in styles.values())  # not the replaced LoRAs'
    retriever = build_retriever(styles, embedder, engine, cache, None, None, THUMBNAILS_DIR,
                                word_view)
    loras = {slug: style.lora for slug, style in styles.items()}
    encoder = train_encoder(retriever, loras, sorted(loras), seed, members)
    encoder.save(WEIGHTS_DIR)
    retriever.indexes["weights"] = index_of({s: encoder.embed([loras[s]])[0] for s in loras},
                                            embedder.version)
    nulls, positives = calibration_prompts()
    calibrate(retriever, nulls, positives)
    # view weights from every LoRA's words; indexed, as in the app, only where the encoder is
    # blind, and the threshold fitted on the indexes as served
    words = retriever.indexes["words"]  # a LoRA whose words stand out nowhere has none
    words.remove([s for s in loras if s in words and encoder.knows(loras[s])])
    fit_threshold(retriever, nulls, positives).save(CALIBRATION_FILE)
    return retriever


def rebuild_for(service, seed: int = 0, members: int = ENCODER_MEMBERS) -> StyleRetriever:
    """The starter artifacts for the service's (starter) base model."""
    from app.service import renders_key
    from retrieval.embedders import starter_embedder

    engine = service.engine
    return build_starter_retrieval(engine, starter_embedder(), renders_key(engine), seed,
                                   members)
