"""The starter pack's retrieval artifacts: the weight encoder trained on its LoRAs, the
calibration, and the view cache shipped so a fresh install retrieves without rendering.

Calibration prompts are the styles' training-side descriptions and captions from their own
seed: disjoint from benchmarks/data/retrieval_prompts.jsonl."""

from __future__ import annotations

import shutil

import numpy as np

from retrieval.retriever import StyleRetriever, calibrate
from retrieval.weight_encoder import WeightEncoder, train_weight_encoder
from styles.lora import LoraFile
from styles.starter.looks import STYLES
from styles.starter.paths import STARTER_DIR
from styles.starter.world import caption, sample_scene

CALIBRATION_SEED = 70_000
WEIGHTS_DIR = STARTER_DIR / "weight_encoder"
CALIBRATION_FILE = STARTER_DIR / "retrieval_calibration.json"


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


def train_encoder(retriever: StyleRetriever, loras: dict[str, LoraFile], slugs: list[str],
                  seed: int = 0) -> WeightEncoder:
    targets = [retriever.embedder.encode_texts(style_texts(s)) for s in slugs]
    return train_weight_encoder([loras[s] for s in slugs], targets, steps=400, seed=seed)


def build_starter_retrieval(service) -> StyleRetriever:
    """Train the encoder, add the weights view, calibrate, and ship encoder, calibration and
    view cache inside the starter pack."""
    from app.library import load_styles

    retriever = service.retriever()
    styles = load_styles(service.library_files(), service.engine.base.table, "starter")
    loras = {slug: style.lora for slug, style in styles.items()}
    encoder = train_encoder(retriever, loras, sorted(loras))
    encoder.save(WEIGHTS_DIR)
    retriever.vectors["weights"] = {s: encoder.embed([loras[s]])[0] for s in loras}
    nulls, positives = calibration_prompts()
    calibrate(retriever, nulls, positives).save(CALIBRATION_FILE)
    cache = service.view_cache_path()
    (STARTER_DIR / "views").mkdir(exist_ok=True)
    shutil.copyfile(cache, STARTER_DIR / "views" / cache.name)
    return retriever
