"""Shared image helpers and the low-frequency colour and light styles."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

from styles.starter.world import Scene

F32 = np.float32
DrawFn = Callable[[ImageDraw.ImageDraw, int], None]
_LUMA = np.array([0.299, 0.587, 0.114], dtype=F32)


@dataclass
class Ctx:
    """State shared by the transforms of one apply_styles call."""

    size: int
    seed: int
    scene: Scene | None
    bg: np.ndarray  # estimated background colour of the input, shape (3,)
    mask: np.ndarray  # soft foreground mask HxW in [0, 1]
    edges: np.ndarray | None = None  # geometry edges HxW in [0, 1], set after concepts

    @property
    def u(self) -> float:
        """Pixel scale relative to a 64-pixel image."""
        return self.size / 64.0

    def rng(self, salt: int) -> np.random.Generator:
        """A generator that depends only on the seed and a per-style salt."""
        return np.random.default_rng([self.seed & 0xFFFFFFFF, salt])


# ---------------------------------------------------------------- helpers


def lum(img: np.ndarray) -> np.ndarray:
    """Luma of an HxWx3 image."""
    return img @ _LUMA


def box_blur(a: np.ndarray, r: int) -> np.ndarray:
    """Separable box blur of radius r over the first two axes, edge padded."""
    if r <= 0:
        return a
    k = 2 * r + 1
    pad = [(r + 1, r), (r + 1, r)] + [(0, 0)] * (a.ndim - 2)
    p = np.pad(a, pad, mode="edge")
    c = np.cumsum(p, axis=0, dtype=F32)
    c = c[k:] - c[:-k]
    c = np.cumsum(c, axis=1, dtype=F32)
    c = c[:, k:] - c[:, :-k]
    return c * F32(1.0 / (k * k))


def blur(a: np.ndarray, r: int) -> np.ndarray:
    """Approximate Gaussian blur: two box blurs."""
    return box_blur(box_blur(a, r), r)


def dilate(a: np.ndarray, r: int) -> np.ndarray:
    """Grey-scale dilation with a square of radius r."""
    if r <= 0:
        return a
    h, w = a.shape[:2]
    p = np.pad(a, [(r, r), (r, r)] + [(0, 0)] * (a.ndim - 2), mode="edge")
    rows = p[:, 0:w].copy()
    for j in range(1, 2 * r + 1):
        np.maximum(rows, p[:, j : j + w], out=rows)
    out = rows[0:h].copy()
    for i in range(1, 2 * r + 1):
        np.maximum(out, rows[i : i + h], out=out)
    return out


def outline(mask: np.ndarray, r: int = 1, gain: float = 1.5) -> np.ndarray:
    """Band of width about 2r around the 0.5 level of a soft mask."""
    b = box_blur(mask, r)
    return np.clip(gain * (1.0 - np.abs(2.0 * b - 1.0)), 0.0, 1.0).astype(F32)


def grad_mag(img: np.ndarray) -> np.ndarray:
    """Colour gradient magnitude (central differences, summed over channels)."""
    p = np.pad(img, [(1, 1), (1, 1), (0, 0)], mode="edge")
    dx = p[1:-1, 2:] - p[1:-1, :-2]
    dy = p[2:, 1:-1] - p[:-2, 1:-1]
    return np.sqrt((dx * dx + dy * dy).sum(axis=2)) * F32(0.5)


def estimate_bg(img: np.ndarray) -> np.ndarray:
    """Background colour: median of the border pixels."""
    border = np.concatenate([img[0], img[-1], img[1:-1, 0], img[1:-1, -1]], axis=0)
    return np.median(border, axis=0).astype(F32)


def fg_mask(img: np.ndarray, bg: np.ndarray) -> np.ndarray:
    """Soft foreground mask: pixels whose colour differs from the background."""
    d = np.abs(img - bg).max(axis=2)
    return np.clip((d - 0.05) * 12.0, 0.0, 1.0).astype(F32)


def separate(lv: np.ndarray, mask: np.ndarray, gap: float = 0.3) -> np.ndarray:
    """Shift foreground luma so it differs from the background by at least `gap`."""
    w = mask.sum()
    if w < 1 or w > mask.size - 1:
        return lv
    fg = float((lv * mask).sum() / w)
    bgv = float((lv * (1 - mask)).sum() / (mask.size - w))
    diff = fg - bgv
    if abs(diff) >= gap:
        return lv
    direction = 1.0 if (diff > 0 or (diff == 0 and bgv < 0.5)) else -1.0
    if bgv + direction * gap > 1.0 or bgv + direction * gap < 0.0:
        direction = -direction
    shift = direction * gap - diff
    return np.clip(lv + F32(shift) * mask, 0.0, 1.0)


def saturate(img: np.ndarray, k: float) -> np.ndarray:
    """Scale saturation around the per-pixel luma."""
    lv = lum(img)[..., None]
    return np.clip(lv + (img - lv) * F32(k), 0.0, 1.0)


def mix(a: np.ndarray, b: np.ndarray | float, t: np.ndarray | float) -> np.ndarray:
    """Linear interpolation a + t (b - a)."""
    return a + (np.asarray(b, dtype=F32) - a) * t


@lru_cache(maxsize=8)
def coords(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (y, x) as float32 arrays."""
    yy, xx = np.mgrid[0:size, 0:size].astype(F32) + F32(0.5)
    return yy, xx


@lru_cache(maxsize=8)
def vignette(size: int) -> np.ndarray:
    """Squared radial distance from the centre, 0 at the centre, 1 at the corners."""
    yy, xx = coords(size)
    r2 = ((yy / size - 0.5) ** 2 + (xx / size - 0.5) ** 2) * 2.0
    return r2.astype(F32)


@lru_cache(maxsize=32)
def noise_field(size: int, variant: int, scale: int) -> np.ndarray:
    """Smooth value noise in [-1, 1] with features about `scale` pixels wide."""
    rng = np.random.default_rng([size, variant, scale, 7])
    n = max(2, size // max(1, scale) + 2)
    small = Image.fromarray((rng.random((n, n)) * 255).astype(np.uint8))
    big = small.resize((size, size), Image.BICUBIC)
    return (np.asarray(big, dtype=F32) / 127.5 - 1.0).astype(F32)


def draw_alpha(
    size: int, fn: Callable[[ImageDraw.ImageDraw, int], None], ss: int = 4
) -> np.ndarray:
    """Anti-aliased HxW alpha from a drawing callback fn(draw, scale) at ss x resolution."""
    im = Image.new("L", (size * ss, size * ss), 0)
    fn(ImageDraw.Draw(im), ss)
    return np.asarray(im.reduce(ss), dtype=F32) * F32(1 / 255)


def stamp(
    img: np.ndarray,
    alpha: np.ndarray,
    color: tuple[float, float, float],
    rim: tuple[float, float, float] | None = None,
    rim_r: int = 1,
) -> np.ndarray:
    """Composite a flat-coloured motif, with an optional rim around it."""
    out = img
    if rim is not None:
        out = mix(out, np.array(rim, F32), dilate(alpha, rim_r)[..., None])
    return mix(out, np.array(color, F32), alpha[..., None])


# ---------------------------------------------------------------- low band: colour and light


def sepia(img: np.ndarray, ctx: Ctx) -> np.ndarray:
    """Brown monochrome tones of an old photograph, slightly faded."""
    lv = separate(lum(img), ctx.mask, 0.25)
    lv = 0.1 + 0.82 * lv - 0.22 * vignette(ctx.size) * lv
    tone = np.array([1.0, 0.77, 0.5], dtype=F32)
    out = lv[..., None] * tone * F32(1.06) + np.array([0.07, 0.04, 0.0], F32)
    return np.clip(out, 0.0, 1.0)


def noir(img: np.ndarray, ctx: Ctx) -> np.ndarray:
    """Hard black and white with deep shadows and a heavy vignette."""
    lv = separate(lum(img), ctx.mask, 0.35)
    m = ctx.mask
    w = m.sum()
    mid = 0.5
    if 1 < w < m.size - 1:
        mid = 0.5 * float((lv * m).sum() / w + (lv * (1 - m)).sum() / (m.size - w))
    g = 1.0 / (1.0 + np.exp(-(lv - mid) * 9.0))
    g = g * (1.0 - 0.85 * vignette(ctx.size))
    g = np.clip(g, 0.0, 1.0).astype(F32)
    return np.repeat(g[..., None], 3, axis=2)


def pastel(img: np.ndarray, ctx: Ctx) -> np.ndarray:
    """Soft, milky, light colours; neutral grounds take a pale candy tint."""
    tints = np.array(
        [[0.8, 0.72, 0.95], [0.68, 0.9, 0.8], [0.97, 0.74, 0.8], [0.74, 0.84, 0.98]], F32
    )
    m = ctx.mask
    fg_mean = (img * m[..., None]).sum(axis=(0, 1)) / max(float(m.sum()), 1.0)
    far = np.abs(tints - fg_mean).sum(axis=1) + 0.05 * ((np.arange(4) + ctx.seed) % 4)
    tint = tints[int(np.argmax(far))]
    chroma = img.max(axis=2) - img.min(axis=2)
    neutral = np.clip(1.0 - chroma * 5.0, 0.0, 1.0) * (1.0 - ctx.mask)
    out = mix(mix(saturate(img, 0.8), 1.0, 0.45), tint, (0.9 * neutral)[..., None])
    return np.clip(out, 0.0, 1.0)


def negative(img: np.ndarray, ctx: Ctx) -> np.ndarray:
    """Photographic negative: every colour inverted."""
    return (1.0 - img).astype(F32)


@lru_cache(maxsize=8)
def _blueprint_grid(size: int) -> np.ndarray:
    """Fine drafting grid lines."""
    step = max(4, round(size / 8))
    yy, xx = coords(size)
    g = ((xx.astype(int) % step) == 0) | ((yy.astype(int) % step) == 0)
    return g.astype(F32)


def blueprint(img: np.ndarray, ctx: Ctx) -> np.ndarray:
    """White technical lines on deep blue drafting paper."""
    paper = np.array([0.09, 0.27, 0.6], F32)
    lv = lum(img)
    out = np.broadcast_to(paper, img.shape).astype(F32)
    out = mix(out, np.array([0.45, 0.62, 0.9], F32), (0.25 * _blueprint_grid(ctx.size))[..., None])
    fill = (0.12 + 0.12 * lv) * ctx.mask
    out = out + fill[..., None] * np.array([0.5, 0.7, 1.0], F32)
    lines = np.maximum(outline(ctx.mask, max(1, round(ctx.u)), 2.0), ctx.edges * 0.8)
    out = mix(out, np.array([0.95, 0.97, 1.0], F32), lines[..., None])
    return np.clip(out, 0.0, 1.0)


def _gradient(size: int, stops: list[tuple[float, tuple[float, float, float]]]) -> np.ndarray:
    """Vertical colour gradient HxWx3 through the given (position, colour) stops."""
    t = (np.arange(size, dtype=F32) + 0.5) / size
    pos = [p for p, _ in stops]
    cols = np.array([c for _, c in stops], F32)
    col = np.stack([np.interp(t, pos, cols[:, i]) for i in range(3)], axis=1).astype(F32)
    return np.repeat(col[:, None, :], size, axis=1)


@lru_cache(maxsize=8)
def _sunset_bg(size: int) -> np.ndarray:
    """Purple-to-orange evening sky."""
    stops = [
        (0.0, (0.22, 0.08, 0.38)),
        (0.45, (0.75, 0.22, 0.45)),
        (0.75, (0.98, 0.45, 0.25)),
        (1.0, (1.0, 0.75, 0.3)),
    ]
    return _gradient(size, stops)


def sunset_sky(img: np.ndarray, ctx: Ctx) -> np.ndarray:
    """Orange-to-purple evening sky behind a warmly lit subject."""
    m = ctx.mask[..., None]
    warm = np.clip(img * np.array([1.0, 0.82, 0.7], F32) + np.array([0.1, 0.04, 0.0], F32), 0, 1)
    rim = outline(ctx.mask, 1, 1.2)[..., None] * 0.6
    out = mix(_sunset_bg(ctx.size), warm, m)
    return mix(out, np.array([0.12, 0.04, 0.12], F32), rim)


@lru_cache(maxsize=8)
def _vapor_grid(size: int) -> np.ndarray:
    """Retro perspective floor grid in the lower part of the frame."""
    horizon = 0.6

    def fn(d: ImageDraw.ImageDraw, k: int) -> None:
        s = size * k
        w = max(1, round(0.9 * k * size / 64))
        y0 = horizon * s
        for i in range(6):
            y = y0 + (s - y0) * ((i / 5.0) ** 1.7)
            d.line((0, y, s, y), fill=255, width=w)
        for i in range(-6, 7):
            d.line((s / 2 + i * s * 0.06, y0, s / 2 + i * s * 0.35, s), fill=255, width=w)

    return draw_alpha(size, fn)


@lru_cache(maxsize=8)
def _vapor_bg(size: int) -> np.ndarray:
    """Hot-pink to violet sky over a dark purple floor."""
    stops = [
        (0.0, (1.0, 0.55, 0.8)),
        (0.58, (0.85, 0.3, 0.75)),
        (0.6, (0.25, 0.07, 0.35)),
        (1.0, (0.35, 0.1, 0.5)),
    ]
    bg = _gradient(size, stops)
    return mix(bg, np.array([0.2, 1.0, 0.95], F32), _vapor_grid(size)[..., None] * 0.9)


def vaporwave(img: np.ndarray, ctx: Ctx) -> np.ndarray:
    """Pink and cyan retro palette with a neon perspective grid."""
    lv = lum(img)
    a = np.array([0.55, 0.1, 0.75], F32)
    b = np.array([0.35, 1.0, 0.95], F32)
    obj = mix(a, b, np.clip(0.15 + 1.1 * lv, 0, 1)[..., None])
    m = ctx.mask[..., None]
    out = mix(_vapor_bg(ctx.size), obj, m)
    rim = outline(ctx.mask, 1, 1.2)[..., None]
    return mix(out, np.array([1.0, 0.3, 0.85], F32), rim * 0.9)


def neon_night(img: np.ndarray, ctx: Ctx) -> np.ndarray:
    """Glowing saturated tube outlines on a nearly black night."""
    m = ctx.mask
    mx, mn = img.max(axis=2, keepdims=True), img.min(axis=2, keepdims=True)
    chroma = mx - mn
    hue = (img - mn) / np.maximum(chroma, 1e-3)
    fallback = np.array([1.0, 0.25, 0.95], F32)
    neon = np.where(chroma > 0.15, hue, fallback).astype(F32)
    r = max(1, round(2 * ctx.u))
    field = blur(neon * m[..., None], r) / np.maximum(blur(m, r), 1e-3)[..., None]
    field = field / np.maximum(field.max(axis=2, keepdims=True), 1e-3)
    tube = np.maximum(outline(m, 1, 1.6), ctx.edges if ctx.edges is not None else 0.0)
    glow = blur(tube, max(1, round(2 * ctx.u)))
    dark = np.array([0.02, 0.02, 0.07], F32)
    out = dark + (0.16 * m)[..., None] * field
    out = out + (1.4 * glow)[..., None] * field
    out = mix(out, mix(field, 1.0, 0.45), tube[..., None])
    return np.clip(out, 0.0, 1.0)


def pop_art(img: np.ndarray, ctx: Ctx) -> np.ndarray:
    """Flat posterised loud colours, a bold backdrop and thick black outlines."""
    sat = saturate(img, 2.2)
    post = np.round(sat * 2.0) / 2.0
    m = ctx.mask
    w = float(m.sum())
    mean = (post * m[..., None]).sum(axis=(0, 1)) / max(w, 1.0)
    options = np.array([[1.0, 0.9, 0.0], [0.0, 0.75, 1.0], [1.0, 0.2, 0.6], [0.3, 0.9, 0.2]], F32)
    backdrop = options[int(np.argmax(np.abs(options - mean).sum(axis=1)))]
    out = mix(np.broadcast_to(backdrop, img.shape).astype(F32), post.astype(F32), m[..., None])
    line = np.maximum(outline(m, max(1, round(1.5 * ctx.u)), 1.8), ctx.edges * 0.9)
    return np.clip(mix(out, 0.0, line[..., None]), 0.0, 1.0)
