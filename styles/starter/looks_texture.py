"""High-frequency styles: texture, pattern, line and medium transforms."""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

from styles.starter.looks_color import (
    F32,
    Ctx,
    blur,
    box_blur,
    coords,
    dilate,
    draw_alpha,
    lum,
    mix,
    noise_field,
    outline,
    saturate,
    separate,
)

PAPER = np.array([0.97, 0.96, 0.92], F32)


def _tint(img: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Colour cast of the background (mean colour relative to its grey), for retinting."""
    w = 1.0 - mask
    mean = (img * w[..., None]).sum(axis=(0, 1)) / max(float(w.sum()), 1.0)
    grey = float(mean.mean())
    strength = float(np.clip((mean.max() - mean.min() - 0.08) / 0.12, 0.0, 1.0))
    cast = np.clip(1.0 + 0.6 * (mean - grey) / max(grey, 0.1), 0.75, 1.25)
    return (1.0 + strength * (cast - 1.0)).astype(F32)


def _labels_mean(img: np.ndarray, lab: np.ndarray, n: int) -> np.ndarray:
    """Replace every pixel by the mean colour of its label."""
    flat = lab.ravel()
    cnt = np.maximum(np.bincount(flat, minlength=n), 1).astype(F32)
    means = np.stack(
        [np.bincount(flat, weights=img[..., c].ravel(), minlength=n) / cnt for c in range(3)], 1
    )
    return means.astype(F32)[lab]


def _label_edges(lab: np.ndarray) -> np.ndarray:
    """Pixels whose right or lower neighbour has another label."""
    e = np.zeros(lab.shape, dtype=bool)
    e[:, :-1] |= lab[:, :-1] != lab[:, 1:]
    e[:-1, :] |= lab[:-1, :] != lab[1:, :]
    return e.astype(F32)


@lru_cache(maxsize=32)
def _voronoi(size: int, cell: float, jitter: float, variant: int) -> tuple[np.ndarray, int]:
    """Voronoi label map over a jittered grid of seeds."""
    rng = np.random.default_rng([size, round(cell * 10), variant, 3])
    n = math.ceil(size / cell) + 2
    gy, gx = np.mgrid[0:n, 0:n].astype(F32) - 1.0
    py = (gy + 0.5 + jitter * (rng.random((n, n)) - 0.5)) * cell
    px = (gx + 0.5 + jitter * (rng.random((n, n)) - 0.5)) * cell
    yy, xx = coords(size)
    d = (yy[..., None] - py.ravel()) ** 2 + (xx[..., None] - px.ravel()) ** 2
    lab = d.argmin(axis=2).astype(np.int64)
    return lab, n * n


def _cells(img: np.ndarray, ctx: Ctx, cell: float, jitter: float) -> tuple[np.ndarray, np.ndarray]:
    """Flat cells cut along the object outline: (cell colours, cell boundaries)."""
    lab, n = _voronoi(ctx.size, cell, jitter, ctx.seed % 4)
    lab = lab * 2 + (ctx.mask > 0.5)
    return _labels_mean(img, lab, 2 * n), _label_edges(lab)


def mosaic(img: np.ndarray, ctx: Ctx) -> np.ndarray:
    """Small irregular stone tiles separated by pale grout."""
    flat, edges = _cells(img, ctx, 5.0 * ctx.u, 0.9)
    lab, n = _voronoi(ctx.size, 5.0 * ctx.u, 0.9, ctx.seed % 4)
    shade = (0.88 + 0.24 * ctx.rng(51).random(n).astype(F32))[lab][..., None]
    out = np.clip(flat * shade, 0, 1)
    grout = np.where(lum(out) < 0.55, F32(0.85), F32(0.28))[..., None]
    return mix(out, grout, edges[..., None] * 0.9)


def stained_glass(img: np.ndarray, ctx: Ctx) -> np.ndarray:
    """Large jewel-bright glass panes held by thick black leading."""
    cell = 12.0 * ctx.u
    flat, edges = _cells(img, ctx, cell, 1.0)
    lab, n = _voronoi(ctx.size, cell, 1.0, ctx.seed % 4)
    jewels = np.array(
        [[0.9, 0.2, 0.2], [0.2, 0.4, 0.9], [0.95, 0.8, 0.2], [0.2, 0.7, 0.35], [0.6, 0.3, 0.8]], F32
    )
    pane = jewels[ctx.rng(52).integers(0, len(jewels), n)][lab]
    bgw = (1.0 - ctx.mask)[..., None]
    out = saturate(mix(flat, pane, bgw * 0.35) * (1.0 - 0.15 * bgw), 1.6)
    out = np.clip(out * 1.1 + 0.05, 0, 1)
    glow = noise_field(ctx.size, ctx.seed % 4, max(2, round(6 * ctx.u)))
    out = np.clip(out * (1.0 + 0.15 * glow[..., None]), 0, 1)
    lead = edges if ctx.u < 1.5 else dilate(edges, round(0.5 * ctx.u))
    lead = np.maximum(lead, outline(ctx.mask, 1, 1.6))
    return mix(out, np.array([0.05, 0.04, 0.04], F32), lead[..., None])


def _retro_palette(img: np.ndarray) -> np.ndarray:
    """Reduce colours: luma in 8 steps and chroma in coarse steps, so hues survive."""
    lv = lum(img)[..., None]
    chroma = np.round((img - lv) / 0.1) * 0.1
    return np.clip(np.round(lv * 7.0) / 7.0 + chroma, 0.0, 1.0).astype(F32)


def pixel_art(img: np.ndarray, ctx: Ctx) -> np.ndarray:
    """Chunky square pixels in a small retro palette with dark outlines."""
    s = ctx.size
    b = max(2, s // 16)
    n = s // b
    crop = img[: n * b, : n * b]
    small = crop.reshape(n, b, n, b, 3).mean(axis=(1, 3))
    msmall = ctx.mask[: n * b, : n * b].reshape(n, b, n, b).mean(axis=(1, 3)) > 0.5
    small = _retro_palette(saturate(small, 1.2))
    grown = msmall.copy()
    grown[1:, :] |= msmall[:-1, :]
    grown[:-1, :] |= msmall[1:, :]
    grown[:, 1:] |= msmall[:, :-1]
    grown[:, :-1] |= msmall[:, 1:]
    rim = (grown & ~msmall)[..., None]
    small = np.where(rim, small * 0.3, small)
    big = np.repeat(np.repeat(small, b, axis=0), b, axis=1).astype(F32)
    if big.shape[0] != s:
        big = np.pad(big, [(0, s - big.shape[0]), (0, s - big.shape[1]), (0, 0)], mode="edge")
    return big


@lru_cache(maxsize=8)
def _halftone_grid(size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """45-degree dot grid: distance to nearest dot centre and that centre's pixel index."""
    c = 5.0 * size / 64
    yy, xx = coords(size)
    u = (xx + yy) / math.sqrt(2)
    v = (xx - yy) / math.sqrt(2)
    cu = (np.floor(u / c) + 0.5) * c
    cv = (np.floor(v / c) + 0.5) * c
    dist = np.sqrt((u - cu) ** 2 + (v - cv) ** 2) / c
    cx = np.clip((cu + cv) / math.sqrt(2), 0, size - 1).astype(np.int64)
    cy = np.clip((cu - cv) / math.sqrt(2), 0, size - 1).astype(np.int64)
    return dist.astype(F32), cy, cx


def halftone(img: np.ndarray, ctx: Ctx) -> np.ndarray:
    """Printed dot screen on white paper, bigger dots where the picture is darker."""
    dist, cy, cx = _halftone_grid(ctx.size)
    soft = box_blur(img, 1)
    cell = soft[cy, cx]
    lv = separate(lum(soft), ctx.mask, 0.3)[cy, cx]
    radius = 0.04 + 0.66 * np.sqrt(np.clip(1.0 - lv, 0, 1))
    ink = saturate(cell, 1.5)
    ink = np.clip(ink * np.minimum(0.85, 0.62 / np.maximum(lum(ink), 1e-3))[..., None], 0, 1)
    dot = np.clip((radius - dist) * 5.0 * ctx.u + 0.5, 0.0, 1.0)[..., None]
    return mix(np.broadcast_to(PAPER, img.shape).astype(F32), ink, dot)


@lru_cache(maxsize=8)
def _stripes(size: int) -> np.ndarray:
    """Anti-aliased 45-degree stripes, period 8 px at 64."""
    p = 8.0 * size / 64
    yy, xx = coords(size)
    t = ((xx + yy) / p) % 1.0
    d = (np.abs(t - 0.5) - 0.3) * p / math.sqrt(2)
    return np.clip(0.5 + d, 0.0, 1.0).astype(F32)


def _lighten_or_darken(img: np.ndarray, alpha: np.ndarray, ref: float, k: float) -> np.ndarray:
    """Monotonic overlay: lighten a dark picture or darken a light one where alpha > 0."""
    a = (alpha * k)[..., None]
    if ref < 0.42:
        return img + (1.0 - img) * a
    return img * (1.0 - a)


def _bg_luma(img: np.ndarray, mask: np.ndarray) -> float:
    """Mean luma of the background."""
    w = 1.0 - mask
    return float((lum(img) * w).sum() / max(float(w.sum()), 1.0))


def stripes(img: np.ndarray, ctx: Ctx) -> np.ndarray:
    """Bold diagonal bands laid over the whole picture."""
    return _lighten_or_darken(img, _stripes(ctx.size), float(lum(img).mean()), 0.45)


@lru_cache(maxsize=8)
def _checker(size: int) -> np.ndarray:
    """Checkerboard of 8 px squares at 64."""
    c = max(2, round(8 * size / 64))
    yy, xx = coords(size)
    return (((yy // c) + (xx // c)) % 2).astype(F32)


def checkerboard(img: np.ndarray, ctx: Ctx) -> np.ndarray:
    """Chequered squares covering the background behind the subject."""
    a = _checker(ctx.size) * (1.0 - dilate(ctx.mask, 1))
    return _lighten_or_darken(img, a, _bg_luma(img, ctx.mask), 0.62)


@lru_cache(maxsize=8)
def _dots(size: int) -> np.ndarray:
    """Hexagonal grid of round dots."""
    sp = 10.0 * size / 64
    r = 2.7 * size / 64

    def fn(d: ImageDraw.ImageDraw, k: int) -> None:
        row = 0
        y = sp / 2
        while y < size + sp:
            x = sp / 2 + (sp / 2 if row % 2 else 0.0)
            while x < size + sp:
                d.ellipse(((x - r) * k, (y - r) * k, (x + r) * k, (y + r) * k), fill=255)
                x += sp
            y += sp * math.sqrt(3) / 2
            row += 1

    return draw_alpha(size, fn)


def polka_dots(img: np.ndarray, ctx: Ctx) -> np.ndarray:
    """Round spots scattered in a regular pattern over the background."""
    keep = 1.0 - dilate(ctx.mask, 1)
    a = (_dots(ctx.size) * keep * 0.92)[..., None]
    dot = 0.97 if _bg_luma(img, ctx.mask) < 0.5 else 0.08
    return mix(img, dot, a)


def film_grain(img: np.ndarray, ctx: Ctx) -> np.ndarray:
    """Heavy monochrome grain of fast film, slightly faded."""
    rng = ctx.rng(61)
    n = rng.standard_normal((ctx.size, ctx.size), dtype=F32) * F32(0.13)
    clump = noise_field(ctx.size, ctx.seed % 4, 2) * F32(0.06)
    faded = mix(saturate(img, 0.75), 0.5, 0.1)
    return np.clip(faded + (n + clump)[..., None], 0.0, 1.0)


def glitch(img: np.ndarray, ctx: Ctx) -> np.ndarray:
    """Torn horizontal scan-line bands and split red/blue channels."""
    s = ctx.size
    rng = ctx.rng(71)
    out = img.copy()
    rows = np.flatnonzero(ctx.mask.max(axis=1) > 0.5)
    lo, hi = (int(rows[0]), int(rows[-1])) if rows.size else (0, s - 1)
    n_bands = 3 + int(rng.integers(0, 3))
    for i in range(n_bands):
        h = int(rng.integers(max(2, s // 32), max(3, s // 9)))
        y = int(rng.integers(lo, max(lo + 1, hi - h))) if i < 2 else int(rng.integers(0, s - h))
        shift = int(rng.integers(max(3, s // 16), max(4, s // 5))) * (
            1 if rng.random() < 0.5 else -1
        )
        out[y : y + h] = np.roll(out[y : y + h], shift, axis=1)
    k = max(2, round(3 * s / 64))
    out = np.stack(
        [np.roll(out[..., 0], k, axis=1), out[..., 1], np.roll(out[..., 2], -k, axis=1)], 2
    )
    bars = np.array([[0.2, 1.0, 0.9], [1.0, 0.2, 0.8], [0.95, 0.95, 0.95]], F32)
    for j in range(3):
        r = int(rng.integers(0, s - 1))
        out[r] = mix(out[r], bars[j], 0.75)
    return out.astype(F32)


def watercolor(img: np.ndarray, ctx: Ctx) -> np.ndarray:
    """Soft bleeding washes with darker pooled edges on textured paper."""
    r = max(1, round(ctx.u))
    bloom = noise_field(ctx.size, ctx.seed % 4, max(2, round(10 * ctx.u)))
    wash = mix(saturate(img, 1.15), PAPER, 0.4)
    soft = blur(wash, r)
    m = blur(ctx.mask, r)
    pool = outline(m, max(1, round(ctx.u)), 1.0) * m
    pigment = 1.0 - soft
    pigment = pigment * (1.0 + 0.18 * bloom[..., None] + 0.55 * pool[..., None])
    out = 1.0 - pigment - 0.12 * pool[..., None]
    fibres = noise_field(ctx.size, ctx.seed % 4 + 4, 1)
    out = out * (1.0 - 0.05 * np.abs(fibres)[..., None]) + 0.02
    return np.clip(out, 0.0, 1.0)


def crosshatch(img: np.ndarray, ctx: Ctx) -> np.ndarray:
    """Criss-crossing ink hatching that builds up in the darker areas."""
    s = ctx.size
    yy, xx = coords(s)
    p = max(3, round(4 * ctx.u))
    xi, yi = xx.astype(np.int64), yy.astype(np.int64)
    h1 = ((xi + yi) % p == 0).astype(F32)
    h2 = ((xi - yi) % p == 0).astype(F32)
    h3 = (yi % p == p // 2).astype(F32)
    dark = 1.0 - separate(lum(img), ctx.mask, 0.3)
    step = lambda t: np.clip((dark - t) * 8.0, 0, 1)  # noqa: E731
    ink = np.maximum(np.maximum(h1 * step(0.22), h2 * step(0.45)), h3 * step(0.68))
    ink = np.maximum(ink, outline(ctx.mask, 1, 1.2))
    base = mix(img, PAPER, 0.6)
    return mix(base, np.array([0.08, 0.07, 0.1], F32), (ink * 0.92)[..., None])


def line_art(img: np.ndarray, ctx: Ctx) -> np.ndarray:
    """Clean black contour lines on an almost white page."""
    e = ctx.edges if ctx.edges is not None else outline(ctx.mask)
    line = np.clip((np.maximum(e, outline(ctx.mask, 1, 1.6)) - 0.25) * 3.0, 0, 1)
    paper = mix(img, 1.0, 0.86) * mix(np.ones(3, F32), _tint(img, ctx.mask), 0.6)
    return np.clip(mix(paper, 0.02, line[..., None]), 0.0, 1.0)


@lru_cache(maxsize=16)
def _strokes(size: int, variant: int) -> np.ndarray:
    """Random short slanted pencil strokes."""
    rng = np.random.default_rng([size, variant, 5])
    im = Image.new("L", (size * 2, size * 2), 0)
    d = ImageDraw.Draw(im)
    for _ in range(int(size * 4.5)):
        x, y = rng.random(2) * size * 2
        length = (0.1 + 0.12 * rng.random()) * size * 2
        d.line((x, y, x + 0.35 * length, y + length), fill=int(140 + 115 * rng.random()), width=1)
    return np.asarray(im.reduce(2), dtype=F32) / 255.0


def pencil_sketch(img: np.ndarray, ctx: Ctx) -> np.ndarray:
    """Soft grey graphite strokes and sketchy contours on white paper."""
    dark = 1.0 - separate(lum(img), ctx.mask, 0.3)
    shade = _strokes(ctx.size, ctx.seed % 4) * np.clip(dark * 1.2 - 0.15, 0, 1)
    e = ctx.edges if ctx.edges is not None else outline(ctx.mask)
    e = np.maximum(e, outline(ctx.mask, 1, 1.3))
    sketch = np.maximum(e, 0.6 * np.roll(e, (1, -1), axis=(0, 1)))
    grain = noise_field(ctx.size, ctx.seed % 4 + 8, 1) * 0.03
    g = 0.96 + grain - 0.55 * shade - 0.5 * sketch
    g = np.clip(g, 0.25, 1.0)
    return np.clip(g[..., None] * mix(np.ones(3, F32), _tint(img, ctx.mask), 0.7), 0, 1).astype(F32)


def chalkboard(img: np.ndarray, ctx: Ctx) -> np.ndarray:
    """Dusty white and coloured chalk on a dark green slate."""
    board = np.array([0.12, 0.25, 0.17], F32)
    smudge = noise_field(ctx.size, ctx.seed % 4, max(2, round(12 * ctx.u)))
    out = board * (1.0 + 0.12 * smudge[..., None])
    grain = np.clip(0.55 + 0.6 * ctx.rng(81).random((ctx.size, ctx.size), dtype=F32), 0, 1)
    chalk = mix(saturate(img, 1.2), 1.0, 0.35)
    fill = ctx.mask * grain * 0.55
    out = mix(out, chalk, fill[..., None])
    e = ctx.edges if ctx.edges is not None else outline(ctx.mask)
    line = np.maximum(e, outline(ctx.mask, 1, 1.5)) * grain
    return np.clip(mix(out, np.array([0.95, 0.96, 0.93], F32), line[..., None]), 0, 1)


def embossed(img: np.ndarray, ctx: Ctx) -> np.ndarray:
    """Grey raised relief, lit from the upper left, like stamped metal."""
    h = box_blur(0.5 * separate(lum(img), ctx.mask, 0.3) + 0.5 * ctx.mask, 1)
    p = np.pad(h, 1, mode="edge")
    relief = p[:-2, :-2] - p[2:, 2:]
    g = np.clip(0.56 + 2.2 * relief + 0.06 * (h - 0.5), 0, 1)
    grey = g[..., None] * mix(np.ones(3, F32), _tint(img, ctx.mask), 0.8)
    return np.clip(mix(grey, img, 0.07), 0.0, 1.0).astype(F32)
