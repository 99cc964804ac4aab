"""Tests for the procedural starter world and its 28 composable styles."""

from __future__ import annotations

import difflib
import itertools
import re
from dataclasses import replace

import numpy as np
import pytest

from styles.starter.looks import (
    CLASH_GROUPS,
    HIDDEN_BELOW,
    STYLES,
    apply_styles,
    canonical_order,
    clashing_pairs,
    hidden_pairs,
    styled_caption,
)
from styles.starter.world import (
    COLOR_SYNONYMS,
    COLORS,
    SHAPE_SYNONYMS,
    SHAPES,
    Scene,
    SceneObject,
    caption,
    content_labels,
    render_scene,
    sample_scene,
)

REQUIRED = {
    "low": {"sepia", "neon-night", "pastel", "blueprint", "sunset-sky", "noir", "vaporwave",
            "negative", "pop-art"},
    "high": {"pixel-art", "halftone", "pencil-sketch", "stripes", "checkerboard", "film-grain",
             "mosaic", "watercolor", "crosshatch", "line-art", "stained-glass", "embossed",
             "glitch", "polka-dots", "chalkboard"},
    "concept": {"crescent-moon", "lightning-bolt", "smiley-face", "arrow"},
}  # fmt: skip


def _scenes(n: int, seed: int = 0) -> list[Scene]:
    """A few sampled scenes."""
    rng = np.random.default_rng(seed)
    return [sample_scene(rng) for _ in range(n)]


def test_vocabulary() -> None:
    """Shapes, colours and synonym tables are complete."""
    assert {"circle", "square", "triangle", "star", "heart", "ring", "cross", "diamond"} <= set(
        SHAPES
    )
    assert len(COLORS) >= 8
    assert set(SHAPE_SYNONYMS) == set(SHAPES)
    assert set(COLOR_SYNONYMS) == set(COLORS)


def test_scene_sampling_is_deterministic_and_valid() -> None:
    """Same seed gives the same scenes; objects fit the frame and pairs differ."""
    a, b = _scenes(200, 3), _scenes(200, 3)
    assert a == b
    counts = {1: 0, 2: 0}
    for sc in a:
        counts[len(sc.objects)] += 1
        for o in sc.objects:
            assert o.shape in SHAPES and o.color in COLORS
            assert o.size / 2 <= o.x <= 1 - o.size / 2
            assert o.size / 2 <= o.y <= 1 - o.size / 2
        if len(sc.objects) == 1:
            assert 0.45 <= sc.objects[0].size <= 0.7
        else:
            o1, o2 = sc.objects
            assert (o1.shape, o1.color) != (o2.shape, o2.color)
            gap = np.hypot(o1.x - o2.x, o1.y - o2.y) - (o1.size + o2.size) / 2
            assert gap > -0.1
    assert counts[1] > counts[2] > 20


def test_render_scene_shape_dtype_range_and_determinism() -> None:
    """Rendering gives float32 HxWx3 in [0, 1], identical on repeat."""
    for sc in _scenes(10):
        img = render_scene(sc)
        assert img.shape == (64, 64, 3) and img.dtype == np.float32
        assert img.min() >= 0.0 and img.max() <= 1.0
        assert np.array_equal(img, render_scene(sc))
    assert render_scene(_scenes(1)[0], 32).shape == (32, 32, 3)


def test_two_object_scene_renders_both_colours() -> None:
    """Both objects of a two-object scene are visible with their own colour."""
    sc = Scene(
        (SceneObject("star", "red", 0.4, 0.27, 0.3), SceneObject("circle", "blue", 0.4, 0.72, 0.7)),
        "light gray",
    )
    img = render_scene(sc)
    for name in ("red", "blue"):
        col = np.array(COLORS[name], np.float32) / 255
        close = np.abs(img - col).max(axis=2) < 0.05
        assert close.sum() > 80, name


def test_captions_deterministic_and_mention_shape() -> None:
    """Captions repeat for a seed and name every object's shape with a synonym."""
    scenes = _scenes(60, 1)
    caps1 = [caption(sc, np.random.default_rng(i)) for i, sc in enumerate(scenes)]
    caps2 = [caption(sc, np.random.default_rng(i)) for i, sc in enumerate(scenes)]
    assert caps1 == caps2
    assert len(set(caps1)) > 40
    for sc, cap in zip(scenes, caps1, strict=True):
        for o in sc.objects:
            assert any(s in cap for s in SHAPE_SYNONYMS[o.shape]), (cap, o.shape)
            assert any(c in cap for c in COLOR_SYNONYMS[o.color]), (cap, o.color)


def test_content_labels() -> None:
    """Labels give the main object's shape and colour."""
    sc = _scenes(1, 9)[0]
    lab = content_labels(sc)
    assert lab["shape"] == sc.objects[0].shape and lab["color"] == sc.objects[0].color


def test_style_registry() -> None:
    """All required slugs exist in the right band with rich, mostly slug-free phrases."""
    for band, slugs in REQUIRED.items():
        for slug in slugs:
            assert slug in STYLES, slug
            assert STYLES[slug].band == band, slug
    assert len(STYLES) >= 28
    for slug, spec in STYLES.items():
        assert spec.slug == slug and spec.name and spec.description and spec.tags
        assert len(spec.phrases) >= 6 and len(set(spec.phrases)) == len(spec.phrases)
        words = {w for w in re.split(r"[-\s]", f"{slug} {spec.name}".lower()) if len(w) > 2}
        pat = re.compile("|".join(rf"\b{re.escape(w)}" for w in words))
        clean = [p for p in spec.phrases if not pat.search(p.lower())]
        assert len(clean) >= 0.6 * len(spec.phrases), slug


def test_canonical_order_and_commutativity() -> None:
    """Styles run concepts, then low, then high, whatever order they are given in."""
    order = canonical_order(["stripes", "smiley-face", "noir"])
    assert order == ["smiley-face", "noir", "stripes"]
    sc = _scenes(1, 4)[0]
    img = render_scene(sc)
    for a, b, c in [("noir", "stripes", "arrow"), ("pixel-art", "sepia", "crescent-moon")]:
        ref = apply_styles(img, [a, b, c], seed=5, scene=sc)
        for perm in itertools.permutations([a, b, c]):
            assert np.array_equal(apply_styles(img, list(perm), seed=5, scene=sc), ref)
    with pytest.raises(KeyError):
        apply_styles(img, ["no-such-style"])


def test_apply_styles_deterministic_range_and_input_untouched() -> None:
    """Every style is deterministic, keeps shape/dtype/range and does not modify its input."""
    sc = _scenes(1, 2)[0]
    img = render_scene(sc)
    copy = img.copy()
    for slug in STYLES:
        out = apply_styles(img, [slug], seed=3, scene=sc)
        assert out.shape == img.shape and out.dtype == np.float32
        assert out.min() >= 0.0 and out.max() <= 1.0
        assert np.array_equal(out, apply_styles(img, [slug], seed=3, scene=sc))
    assert np.array_equal(img, copy)


def test_each_style_changes_image_and_styles_are_distinct() -> None:
    """Each style changes the image clearly and any two styles give different images."""
    for k, sc in enumerate(_scenes(4, 8)):
        img = render_scene(sc)
        outs = {s: apply_styles(img, [s], seed=k, scene=sc) for s in STYLES}
        for slug, out in outs.items():
            diff = np.abs(out - img)
            if STYLES[slug].band == "concept":
                assert (diff.max(axis=2) > 0.3).mean() > 0.015, slug
            else:
                assert diff.mean() > 0.01, slug
        for a, b in itertools.combinations(STYLES, 2):
            assert np.abs(outs[a] - outs[b]).mean() > 0.01, (a, b)


def test_combinations_keep_object_visible() -> None:
    """Two- and three-style mixes still show the object: it leaves a clear trace."""
    rng = np.random.default_rng(0)
    slugs = sorted(STYLES)
    for k, sc in enumerate(_scenes(40, 6)):
        combo = list(rng.choice(slugs, size=int(rng.integers(1, 4)), replace=False))
        empty = Scene((), sc.background)
        out = apply_styles(render_scene(sc), combo, seed=k, scene=sc)
        ref = apply_styles(render_scene(empty), combo, seed=k, scene=empty)
        fg = (render_scene(sc) != render_scene(empty)).any(axis=2)
        assert np.abs(out - ref)[fg].mean() > 0.08, combo


def test_noir_stripes_is_grey_with_stripes() -> None:
    """noir + stripes is greyscale and striped."""
    sc = _scenes(1, 5)[0]
    out = apply_styles(render_scene(sc), ["stripes", "noir"], seed=1, scene=sc)
    assert np.abs(out[..., 0] - out[..., 1]).max() < 1e-5
    assert np.abs(out[..., 0] - out[..., 2]).max() < 1e-5
    diag = np.array([out[i, (i + 4) % 64, 0] - out[i, i, 0] for i in range(64)])
    assert np.abs(diag).mean() > 0.1


def test_styled_caption() -> None:
    """Styled captions are deterministic, keep the shape and describe every style."""
    scenes = _scenes(40, 11)
    slugs = sorted(STYLES)
    rng = np.random.default_rng(0)
    for i, sc in enumerate(scenes):
        combo = list(rng.choice(slugs, size=1 + i % 3, replace=False))
        cap = styled_caption(sc, combo, np.random.default_rng(i))
        assert cap == styled_caption(sc, combo, np.random.default_rng(i))
        assert any(s in cap for s in SHAPE_SYNONYMS[sc.objects[0].shape])
        for slug in combo:
            spec = STYLES[slug]
            options = [*spec.phrases, spec.name.lower(), spec.trigger or spec.phrases[0]]
            assert any(o in cap for o in options), (slug, cap)


def test_clash_groups() -> None:
    """Clash groups name real styles and clashing_pairs finds pairs in one group."""
    assert all(g <= set(STYLES) for g in CLASH_GROUPS)
    assert clashing_pairs(["noir", "stripes", "arrow"]) == []
    assert clashing_pairs(["watercolor", "line-art", "sepia"]) == [("watercolor", "line-art")]


def test_measured_hiding_finds_what_the_groups_miss() -> None:
    """chalkboard redraws the picture in chalk on green: pop-art's colours are gone from the
    truth of a prompt asking for both, and no hand-written group says so."""
    hidden = hidden_pairs()
    assert frozenset(("chalkboard", "pop-art")) in hidden
    assert not any({"chalkboard", "pop-art"} <= g for g in CLASH_GROUPS)
    assert clashing_pairs(["pop-art", "chalkboard"]) == [("pop-art", "chalkboard")]
    for pair in (("noir", "stripes"), ("sepia", "film-grain"), ("arrow", "halftone")):
        assert frozenset(pair) not in hidden, pair
    # the rule itself: in a hidden pair one style's own change all but vanishes
    rng = np.random.default_rng(0)
    scene = sample_scene(rng, 1)
    plain = render_scene(scene, 64)
    both = apply_styles(plain, ["pop-art", "chalkboard"], 1, scene)
    chalk = apply_styles(plain, ["chalkboard"], 1, scene)
    pop = apply_styles(plain, ["pop-art"], 1, scene)
    assert np.abs(both - chalk).mean() < HIDDEN_BELOW * np.abs(pop - plain).mean()


def test_captions_can_leave_the_background_unnamed():
    scenes = [sample_scene(np.random.default_rng(i)) for i in range(200)]
    named = [caption(sc, np.random.default_rng(i)) for i, sc in enumerate(scenes)]
    unnamed = [caption(sc, np.random.default_rng(i), background=False)
               for i, sc in enumerate(scenes)]
    assert any("background" in c for c in named)
    assert not any("background" in c for c in unnamed)  # for style prompts: a style may replace it


def test_swapped_captions_change_one_shape_and_leave_the_batch_as_it_was():
    from styles.starter.data import world_batch, world_batch_with_swaps
    from styles.starter.world import swap_shape

    rng = np.random.default_rng(3)
    for _ in range(50):
        scene = sample_scene(rng)
        lie = swap_shape(scene, rng)
        changed = [(a, b) for a, b in zip(scene.objects, lie.objects, strict=True) if a != b]
        assert len(changed) == 1 and changed[0][0].shape != changed[0][1].shape
        assert replace(changed[0][1], shape=changed[0][0].shape) == changed[0][0]
    images, captions = world_batch(np.random.default_rng(5), 12, ["sepia"], plain_captions=0.5)
    same, again, swapped = world_batch_with_swaps(np.random.default_rng(5),
                                                  np.random.default_rng(6), 12, ["sepia"],
                                                  plain_captions=0.5)
    assert np.array_equal(images, same) and captions == again  # the swaps draw from their own rng
    for own, lie in zip(captions, swapped, strict=True):  # the same words but the shape's
        ops = difflib.SequenceMatcher(None, own.split(), lie.split()).get_opcodes()
        edits = [(i2 - i1, j2 - j1) for tag, i1, i2, j1, j2 in ops if tag != "equal"]
        assert len(edits) == 1 and max(edits[0]) <= 3, (own, lie)


def test_style_word_captions_describe_styles_the_image_does_not_have():
    from styles.starter.data import style_word_batch
    from styles.starter.world import caption, render_scene

    slugs = sorted(STYLES)
    images, captions = style_word_batch(np.random.default_rng(4), 40, slugs, share=0.5)
    again = style_word_batch(np.random.default_rng(4), 40, slugs, share=0.5)
    assert np.array_equal(images, again[0]) and captions == again[1]
    # the images are the plain scenes: replaying the draws renders them unstyled
    rng = np.random.default_rng(4)
    worded = 0
    for image, text in zip(images, captions, strict=True):
        scene = sample_scene(rng)
        assert np.array_equal(image, render_scene(scene, image.shape[0]))
        if rng.random() < 0.5:
            chosen = rng.choice(len(slugs), size=int(rng.integers(1, 4)), replace=False)
            assert text == styled_caption(scene, [slugs[int(j)] for j in chosen], rng)
            worded += 1
        else:
            assert text == caption(scene, rng)
    assert 10 < worded < 30
    plain = style_word_batch(np.random.default_rng(4), 20, slugs, share=0.0)[1]
    phrases = [p for spec in STYLES.values() for p in spec.phrases]
    assert not any(p in text for p in phrases for text in plain)
