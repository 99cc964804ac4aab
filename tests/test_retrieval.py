"""The retriever: clause splitting, calibration, thresholds, de-duplication, reasons; then
the real starter embedder and library end to end when the starter pack is present."""

from __future__ import annotations

import numpy as np
import pytest

from retrieval.retriever import (
    Calibration,
    StyleRecord,
    StyleRetriever,
    calibrate,
    clauses,
)
from styles.starter.paths import CLIP_DIR, starter_available, starter_loras


class TableEmbedder:
    """Texts → fixed vectors: exercises the retriever's own logic, nothing else."""

    version = "table"
    dim = 4

    def __init__(self, table: dict[str, np.ndarray]) -> None:
        self.table = table

    def encode_texts(self, texts):
        out = []
        for text in texts:
            vector = sum((v for k, v in self.table.items() if k in text), np.zeros(4))
            out.append(vector / (np.linalg.norm(vector) or 1))
        return np.array(out)

    def encode_images(self, images):
        raise NotImplementedError


AXES = np.eye(4)


def _retriever() -> StyleRetriever:
    embedder = TableEmbedder({"brown": AXES[0], "blocks": AXES[1], "star": AXES[3],
                              "circle": AXES[3] * 0.9 + AXES[2] * 0.1})
    records = {"sepia": StyleRecord("sepia", "Sepia", "sd1", keywords=["brown", "vintage"]),
               "pixel": StyleRecord("pixel", "Pixel", "sd1", keywords=["blocks"]),
               "pixel-copy": StyleRecord("pixel-copy", "Pixel 2", "sd1"),
               "xl-only": StyleRecord("xl-only", "XL", "sdxl")}
    vectors = {"metadata": {"sepia": AXES[0], "pixel": AXES[1], "pixel-copy": AXES[1] * 0.999
                            + AXES[2] * 0.01, "xl-only": AXES[0]},
               "probes": {"pixel": AXES[1], "pixel-copy": AXES[1]}}
    vectors["metadata"]["pixel-copy"] /= np.linalg.norm(vectors["metadata"]["pixel-copy"])
    retriever = StyleRetriever.from_vectors(embedder, records, vectors, Calibration({}, {}))
    calibrate(retriever, ["a star", "a circle", "one star", "the circle"],
              [("a star, brown", "sepia"), ("a circle with blocks", "pixel")])
    return retriever


def test_clauses_split_a_prompt_into_its_requests():
    assert clauses("a red star, old photo with big blocks") == [
        "a red star, old photo with big blocks", "a red star", "old photo", "big blocks"]


def test_two_styles_each_win_their_clause_and_reasons_name_the_match():
    hits = _retriever().retrieve("a star, brown, with blocks", k=3, family="sd1")
    assert {h.slug for h in hits} == {"sepia", "pixel"}
    by_slug = {h.slug: h for h in hits}
    assert by_slug["sepia"].reasons["matched_words"] == ["brown"]
    assert by_slug["pixel"].reasons["clause"] == "blocks"
    assert set(by_slug["pixel"].reasons["views"]) == {"metadata", "probes"}


def test_no_style_prompt_returns_nothing_and_near_duplicates_are_dropped():
    retriever = _retriever()
    assert retriever.retrieve("a star") == []
    assert [h.slug for h in retriever.retrieve("blocks", k=3)] == ["pixel"]


def test_family_filter_keeps_other_families_out():
    retriever = _retriever()
    assert "xl-only" not in {h.slug for h in retriever.retrieve("brown", family="sd1")}
    assert "xl-only" in {h.slug for h in retriever.retrieve("brown", family="sdxl")}


starter_clip = pytest.mark.skipif(
    not (CLIP_DIR / "open_clip_model.safetensors").is_file(), reason="starter clip not built")


@starter_clip
def test_starter_embedder_puts_style_text_near_its_style():
    from retrieval.embedders import starter_embedder
    from styles.starter.looks import STYLES

    embedder = starter_embedder()
    names = sorted(STYLES)
    cards = embedder.encode_texts([STYLES[s].description for s in names])
    queries = embedder.encode_texts(["brown-toned monochrome like an old photograph",
                                     "chunky square pixels in a reduced palette"])
    best = [names[i] for i in (queries @ cards.T).argmax(axis=1)]
    assert best == ["sepia", "pixel-art"]
    assert embedder.version.startswith("starter-clip-")


@pytest.mark.skipif(not starter_available() or not starter_loras(),
                    reason="starter LoRAs not built")
def test_service_retrieves_starter_styles_with_reasons():
    from app.service import LoratlasService, ServiceConfig

    service = LoratlasService(ServiceConfig(device="cpu"))
    result = service.retrieve("a red star, chunky blocks like an old video game", k=3)
    assert result.hits and result.hits[0]["slug"] == "pixel-art"
    assert result.hits[0]["reasons"]["views"]
    assert service.retrieve("a red star").hits == []


def test_threshold_sits_in_the_middle_of_tied_best_candidates():
    from retrieval.retriever import plateau_middle

    candidates = np.linspace(0.5, 3.0, 6)  # 0.5 1.0 1.5 2.0 2.5 3.0
    assert plateau_middle(candidates, np.array([.5, .9, 1., 1., 1., .7])) == 2.0
    assert plateau_middle(candidates, np.array([.5, 1., .9, 1., .8, .7])) == 1.0  # first run
    assert plateau_middle(candidates, np.array([.5, .6, .7, .8, .9, 1.])) == 3.0


def test_a_style_with_fewer_weaker_views_is_not_outranked_by_the_scale_of_stronger_ones():
    """A nameless upload has only its probes; a starter style also has metadata and a weights
    view whose hits sit far above its nulls. On the upload's own prompt the starter style's
    views react more than their nulls, far less than to its own hits: it must not win."""
    embedder = TableEmbedder({"grainy": AXES[0], "neon": AXES[1]})
    records = {"nameless": StyleRecord("nameless", "lora_1234", "sd1"),
               "starter": StyleRecord("starter", "Neon", "sd1")}
    vectors = {"probes": {"nameless": 0.4 * AXES[0] + np.sqrt(0.84) * AXES[2]},
               "metadata": {"starter": 0.5 * AXES[0] + np.sqrt(0.75) * AXES[1]},
               "weights": {"starter": 0.6 * AXES[0] + 0.8 * AXES[1]}}
    nulls = {view: dict.fromkeys(table, 0.0) for view, table in vectors.items()}
    weights = {"probes": 2.0, "metadata": 2.0, "weights": 6.0}
    scales = {"probes": 4.0, "metadata": 4.0, "weights": 9.0}  # a typical hit, in null SDs
    std = dict.fromkeys(vectors, 0.1)
    scaled = StyleRetriever.from_vectors(embedder, records, vectors,
                                         Calibration(nulls, std, 0.9, view_weights=weights,
                                                     view_scale=scales))
    ids, scores, _ = scaled.fused("grainy")
    best = dict(zip(ids, scores.max(axis=0), strict=True))
    assert best["nameless"] > best["starter"]
    assert best["nameless"] == pytest.approx(4 / 4)  # z 4 in its probes: a typical hit
    assert best["starter"] == pytest.approx((2 * 5 + 6 * 6) / (2 * 4 + 6 * 9))
    assert [h.slug for h in scaled.retrieve("grainy")] == ["nameless"]
    # without scales (scores in null SDs, as calibrations saved before them), the starter
    # style's stronger views alone would put it first
    unscaled = StyleRetriever.from_vectors(embedder, records, vectors,
                                           Calibration(nulls, std, 0.5, view_weights=weights))
    ids, scores, _ = unscaled.fused("grainy")
    best = dict(zip(ids, scores.max(axis=0), strict=True))
    assert best["starter"] > best["nameless"]


def test_calibration_scales_each_view_by_its_typical_hit():
    retriever = _retriever()
    calibration = retriever.calibration
    assert set(calibration.view_scale) == set(calibration.view_weights) == {"metadata",
                                                                            "probes"}
    assert all(scale >= 0.5 for scale in calibration.view_scale.values())
    ids, scores, _ = retriever.fused("a star, brown")
    assert scores.max(axis=0)[ids.index("sepia")] > calibration.threshold
