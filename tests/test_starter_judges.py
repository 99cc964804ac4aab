"""Tests for the starter world's content and style judges."""

from __future__ import annotations

import json

import numpy as np
import pytest

from styles.starter.judges import (
    COLOR_PRESERVING_STYLES,
    JUDGES_DIR,
    SLUGS,
    Judges,
    sample_style_set,
    train_judges,
    tune_thresholds,
)
from styles.starter.looks import STYLES, apply_styles, clashing_pairs
from styles.starter.world import COLORS, SHAPES, content_labels, render_scene, sample_scene

FILES = ("content_judge.safetensors", "style_judge.safetensors", "judges.json", "accuracy.json")
committed = pytest.mark.skipif(
    not all((JUDGES_DIR / f).is_file() for f in FILES), reason="no committed judges"
)


def _images(seed: int, n: int, slugs: list[str] | None = None, n_objects: int | None = 1):
    """n ground-truth images (optionally styled) and their scenes."""
    rng = np.random.default_rng(seed)
    scenes = [sample_scene(rng, n_objects) for _ in range(n)]
    imgs = [render_scene(s) for s in scenes]
    if slugs:
        imgs = [apply_styles(im, slugs, seed * 1000 + i, s)
                for i, (im, s) in enumerate(zip(imgs, scenes, strict=True))]  # fmt: skip
    return np.stack(imgs), scenes


def test_style_sets_never_clash():
    rng = np.random.default_rng(0)
    for k in (0, 1, 2, 3):
        for _ in range(50):
            s = sample_style_set(rng, k)
            assert len(s) == k and len(set(s)) == k and not clashing_pairs(s)


def test_tune_thresholds_separates():
    scores = np.array([[0.9, 0.2], [0.8, 0.7], [0.1, 0.75], [0.3, 0.1]])
    targets = np.array([[1, 0], [1, 1], [0, 1], [0, 0]], np.float32)
    t = tune_thresholds(scores, targets)
    assert ((scores >= t) == (targets > 0)).all()


def test_tiny_training_run(tmp_path):
    rendered = []

    def renderer(images: np.ndarray) -> np.ndarray:  # a stand-in for the VAE: lower contrast
        rendered.append(len(images))
        return images // 2 + 64

    acc = train_judges(tmp_path, seed=3, progress=False, n_train=96, n_val=56,
                       steps=2, eval_sizes=(1, 8, 4), renderer=renderer)  # fmt: skip
    # part of the training and validation data and all of the evaluation data were rendered
    assert 0 < rendered[0] < 96 and 0 < rendered[1] < 56 and len(rendered) == 6
    assert set(acc["rendered"]["per_style"]) == set(STYLES)
    for f in FILES:
        assert (tmp_path / f).is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(FILES)  # no side folder left
    assert json.loads((tmp_path / "accuracy.json").read_text()) == acc
    assert set(acc["per_style"]) == set(STYLES)
    meta = json.loads((tmp_path / "judges.json").read_text())
    assert set(meta["thresholds"]) == set(STYLES)
    # colour is judged where the judge reads it as the model draws: through the renderer
    assert meta["color_preserving_styles"] == acc["rendered"]["color_preserving_measured"]
    judges = Judges.load(tmp_path)
    imgs, _ = _images(1, 5)
    content = judges.content(imgs)
    assert len(content) == 5
    for c in content:
        assert c["shape"] in SHAPES and c["color"] in COLORS
        assert 0 <= c["shape_prob"] <= 1 and 0 <= c["color_prob"] <= 1
    scores = judges.style_scores(imgs)
    assert scores.shape == (5, len(STYLES)) and ((scores >= 0) & (scores <= 1)).all()
    found = judges.styles(imgs)
    assert len(found) == 5 and all(s <= set(STYLES) for s in found)
    assert judges.style_scores(imgs[:0]).shape == (0, len(STYLES))


def test_color_preserving_styles_are_styles():
    assert set(SLUGS) >= COLOR_PRESERVING_STYLES
    assert "noir" not in COLOR_PRESERVING_STYLES and "negative" not in COLOR_PRESERVING_STYLES


@committed
def test_committed_judges_content():
    judges = Judges.load()
    imgs, scenes = _images(4242, 30)
    pred = judges.content(imgs)
    labels = [content_labels(s) for s in scenes]
    shape = np.mean([p["shape"] == lab["shape"] for p, lab in zip(pred, labels, strict=True)])
    color = np.mean([p["color"] == lab["color"] for p, lab in zip(pred, labels, strict=True)])
    assert shape >= 0.9 and color >= 0.9
    u8 = (imgs * 255 + 0.5).astype(np.uint8)  # uint8 input is accepted too
    assert [p["shape"] for p in judges.content(u8)] == [p["shape"] for p in pred]


@committed
@pytest.mark.parametrize("slug", ["pixel-art", "noir"])
def test_committed_judges_detect_styles(slug):
    judges = Judges.load()
    imgs, _ = _images(77 + len(slug), 12, [slug], n_objects=None)
    hits = np.mean([slug in found for found in judges.styles(imgs)])
    assert hits >= 0.75
    plain, _ = _images(99, 12, n_objects=None)
    assert np.mean([slug in found for found in judges.styles(plain)]) <= 0.2
