"""Deterministic procedural scenes of simple coloured shapes, their rendering and captions."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import cache

import numpy as np
from PIL import Image, ImageDraw

SHAPES: tuple[str, ...] = (
    "circle",
    "square",
    "triangle",
    "star",
    "heart",
    "ring",
    "cross",
    "diamond",
)

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (222, 38, 38),
    "orange": (247, 138, 24),
    "yellow": (250, 218, 36),
    "green": (40, 168, 64),
    "cyan": (32, 204, 214),
    "blue": (38, 82, 226),
    "purple": (138, 52, 196),
    "pink": (250, 122, 190),
    "white": (252, 252, 252),
}

BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "light gray": (190, 190, 190),
    "beige": (214, 200, 172),
    "dark gray": (64, 64, 66),
    "slate": (96, 102, 116),
}

SHAPE_SYNONYMS: dict[str, tuple[str, ...]] = {
    "circle": ("circle", "disc", "round disk", "filled circle"),
    "square": ("square", "box", "square shape", "four-sided square"),
    "triangle": ("triangle", "three-sided triangle", "triangular shape"),
    "star": ("star", "five-pointed star", "star shape"),
    "heart": ("heart", "love heart", "heart shape"),
    "ring": ("ring", "hoop", "donut", "hollow ring"),
    "cross": ("cross", "plus sign", "plus shape"),
    "diamond": ("diamond", "rhombus", "lozenge", "diamond shape"),
}

COLOR_SYNONYMS: dict[str, tuple[str, ...]] = {
    "red": ("red", "crimson", "scarlet"),
    "orange": ("orange", "tangerine", "amber"),
    "yellow": ("yellow", "lemon", "golden"),
    "green": ("green", "emerald", "grass-green"),
    "cyan": ("cyan", "turquoise", "aqua"),
    "blue": ("blue", "cobalt", "royal blue"),
    "purple": ("purple", "violet", "plum"),
    "pink": ("pink", "rose", "bubblegum pink"),
    "white": ("white", "snow-white", "ivory"),
}

BACKGROUND_SYNONYMS: dict[str, tuple[str, ...]] = {
    "light gray": ("light gray", "pale gray", "plain gray"),
    "beige": ("beige", "cream", "sand-colored"),
    "dark gray": ("dark gray", "charcoal", "dark"),
    "slate": ("slate", "bluish gray", "slate gray"),
}

_SS = 4  # supersampling factor used by render_scene


@dataclass(frozen=True)
class SceneObject:
    """One shape: kind, colour name, size (fraction of side) and centre (fractions)."""

    shape: str
    color: str
    size: float
    x: float
    y: float


@dataclass(frozen=True)
class Scene:
    """A plain background with one or two shapes, first object is the main one."""

    objects: tuple[SceneObject, ...]
    background: str


def _place(rng: np.random.Generator, size: float) -> tuple[float, float]:
    """Sample a centre that keeps the object inside the frame."""
    lo, hi = size / 2 + 0.03, 1 - size / 2 - 0.03
    return float(rng.uniform(lo, hi)), float(rng.uniform(lo, hi))


def sample_scene(rng: np.random.Generator, n_objects: int | None = None) -> Scene:
    """Sample a scene: one object (70%) or two (30%) on a neutral background."""
    if n_objects is None:
        n_objects = 1 if rng.random() < 0.7 else 2
    if n_objects not in (1, 2):
        raise ValueError("n_objects must be 1 or 2")
    background = list(BACKGROUNDS)[int(rng.integers(len(BACKGROUNDS)))]
    names = list(COLORS)
    if n_objects == 1:
        size = float(rng.uniform(0.45, 0.7))
        x, y = _place(rng, size)
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        obj = SceneObject(shape, names[int(rng.integers(len(names)))], size, x, y)
        return Scene((obj,), background)
    objs: list[SceneObject] = []
    s1, s2 = (float(v) for v in rng.uniform(0.34, 0.44, size=2))
    shape1 = SHAPES[int(rng.integers(len(SHAPES)))]
    color1 = names[int(rng.integers(len(names)))]
    shape2 = SHAPES[int(rng.integers(len(SHAPES)))]
    color2 = names[int(rng.integers(len(names)))]
    while shape2 == shape1 and color2 == color1:
        color2 = names[int(rng.integers(len(names)))]
    best: tuple[float, tuple[float, float], tuple[float, float]] | None = None
    for _ in range(30):
        p1, p2 = _place(rng, s1), _place(rng, s2)
        d = math.hypot(p1[0] - p2[0], p1[1] - p2[1]) - (s1 + s2) / 2
        if best is None or d > best[0]:
            best = (d, p1, p2)
        if d > 0.02:
            break
    assert best is not None
    _, p1, p2 = best
    objs.append(SceneObject(shape1, color1, s1, *p1))
    objs.append(SceneObject(shape2, color2, s2, *p2))
    return Scene(tuple(objs), background)


def swap_shape(scene: Scene, rng: np.random.Generator) -> Scene:
    """The same scene with one object (drawn at random) given another shape: what a caption
    that names the wrong shape describes."""
    k = int(rng.integers(len(scene.objects)))
    obj = scene.objects[k]
    other = str(rng.choice([shape for shape in SHAPES if shape != obj.shape]))
    objects = list(scene.objects)
    objects[k] = replace(obj, shape=other)
    return replace(scene, objects=tuple(objects))


@cache
def _unit_polygon(shape: str) -> tuple[tuple[float, float], ...]:
    """Polygon of a shape in unit coordinates, centred at 0, spanning about [-0.5, 0.5]."""
    if shape == "triangle":
        return ((0.0, -0.47), (0.5, 0.4), (-0.5, 0.4))
    if shape == "star":
        pts = []
        for i in range(10):
            r = 0.52 if i % 2 == 0 else 0.21
            a = -math.pi / 2 + i * math.pi / 5
            pts.append((r * math.cos(a), r * math.sin(a) + 0.04))
        return tuple(pts)
    if shape == "heart":
        pts = []
        for i in range(64):
            t = 2 * math.pi * i / 64
            hx = 16 * math.sin(t) ** 3
            hy = 13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)
            pts.append((hx / 32.5, -hy / 32.5 - 0.04))
        return tuple(pts)
    if shape == "cross":
        a, w = 0.48, 0.17
        return (
            (-w, -a), (w, -a), (w, -w), (a, -w), (a, w), (w, w),
            (w, a), (-w, a), (-w, w), (-a, w), (-a, -w), (-w, -w),
        )  # fmt: skip
    if shape == "diamond":
        return ((0.0, -0.52), (0.36, 0.0), (0.0, 0.52), (-0.36, 0.0))
    if shape == "square":
        h = 0.42
        return ((-h, -h), (h, -h), (h, h), (-h, h))
    raise KeyError(shape)


def draw_shape(
    draw: ImageDraw.ImageDraw,
    shape: str,
    cx: float,
    cy: float,
    side: float,
    fill: int | tuple[int, ...],
) -> None:
    """Draw one shape centred at (cx, cy) pixels spanning about `side` pixels."""
    if shape == "circle":
        r = 0.5 * side
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif shape == "ring":
        r = 0.5 * side
        width = max(1, round(0.17 * side))
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), outline=fill, width=width)
    else:
        pts = [(cx + px * side, cy + py * side) for px, py in _unit_polygon(shape)]
        draw.polygon(pts, fill=fill)


def render_scene(scene: Scene, size: int = 64) -> np.ndarray:
    """Render a scene as float32 HxWx3 in [0, 1], anti-aliased by 4x supersampling."""
    big = size * _SS
    img = Image.new("RGB", (big, big), BACKGROUNDS[scene.background])
    draw = ImageDraw.Draw(img)
    for obj in scene.objects:
        draw_shape(draw, obj.shape, obj.x * big, obj.y * big, obj.size * big, COLORS[obj.color])
    small = img.reduce(_SS)
    return np.asarray(small, dtype=np.float32) * np.float32(1 / 255)


def _article(word: str) -> str:
    """Indefinite article for a word."""
    return "an" if word[0].lower() in "aeiou" else "a"


def _pick(rng: np.random.Generator, options: tuple[str, ...] | list[str]) -> str:
    """Pick one option uniformly."""
    return options[int(rng.integers(len(options)))]


def _size_word(size: float, n_objects: int) -> str:
    """Size adjective for an object size relative to what is usual in its scene."""
    lo, hi = (0.52, 0.63) if n_objects == 1 else (0.36, 0.42)
    if size >= hi:
        return "large" if size < hi + 0.04 else "big"
    if size <= lo:
        return "small" if size > lo - 0.04 else "tiny"
    return ""


def _position_word(obj: SceneObject) -> str:
    """Rough position of an object, or an empty string near the centre."""
    dx, dy = obj.x - 0.5, obj.y - 0.5
    if max(abs(dx), abs(dy)) < 0.1:
        return "in the center"
    if abs(dx) >= abs(dy):
        return "on the left" if dx < 0 else "on the right"
    return "at the top" if dy < 0 else "at the bottom"


def describe_object(obj: SceneObject, n_objects: int, rng: np.random.Generator) -> str:
    """Noun phrase for one object with an article: 'a large crimson star'."""
    color = _pick(rng, COLOR_SYNONYMS[obj.color])
    shape = _pick(rng, SHAPE_SYNONYMS[obj.shape])
    words = [color, shape]
    if rng.random() < 0.35:
        sw = _size_word(obj.size, n_objects)
        if sw:
            words.insert(0, sw)
    phrase = " ".join(words)
    return f"{_article(phrase)} {phrase}"


def caption(scene: Scene, rng: np.random.Generator, background: bool = True) -> str:
    """A varied natural-language caption of a scene's content; `background=False` never names
    the background (for styled images, whose style may have replaced it)."""
    n = len(scene.objects)
    bg = _pick(rng, BACKGROUND_SYNONYMS[scene.background])
    if n == 1:
        obj = scene.objects[0]
        np_ = describe_object(obj, 1, rng)
        bare = np_.split(" ", 1)[1]
        templates = [
            np_,
            np_,
            f"one {bare}",
            f"{np_} on a plain {bg} background",
            f"a picture of {np_}",
            f"{np_} on {_article(bg)} {bg} background",
            f"a simple image of {np_}",
            f"{np_} {_position_word(obj)}",
        ]
        return _pick(rng, [t for t in templates if background or "background" not in t])
    a, b = scene.objects[0], scene.objects[1]
    da, db = describe_object(a, 2, rng), describe_object(b, 2, rng)
    templates = [
        f"{da} and {db}",
        f"{da} and {db}",
        f"{da} next to {db}",
        f"two shapes: {da} and {db}",
        f"{da} and {db} on a plain {bg} background",
    ]
    pa, pb = _position_word(a), _position_word(b)
    if pa != pb and "center" not in pa + pb:
        templates.append(f"{da} {pa} and {db} {pb}")
    return _pick(rng, [t for t in templates if background or "background" not in t])


def content_labels(scene: Scene) -> dict[str, str]:
    """Shape and colour of the main (first) object, for classifiers."""
    main = scene.objects[0]
    return {"shape": main.shape, "color": main.color, "background": scene.background}
