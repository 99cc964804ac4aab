"""Concept styles: motifs the base never saw (moon, lightning bolt, smiley face, arrow)."""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from PIL import ImageDraw

from styles.starter.looks_color import F32, Ctx, coords, dilate, draw_alpha, lum, stamp


def main_object(ctx: Ctx) -> tuple[float, float, float]:
    """Centre x, y and extent of the main object, in pixels."""
    if ctx.scene is not None and ctx.scene.objects:
        o = ctx.scene.objects[0]
        return o.x * ctx.size, o.y * ctx.size, o.size * ctx.size
    m = ctx.mask
    w = float(m.sum())
    if w < 4:
        return ctx.size / 2, ctx.size / 2, ctx.size / 2
    yy, xx = coords(ctx.size)
    return float((xx * m).sum() / w), float((yy * m).sum() / w), 1.15 * math.sqrt(w)


def _coverage(mask: np.ndarray, x0: float, y0: float, x1: float, y1: float) -> float:
    """Mean mask value inside a pixel box."""
    h = mask.shape[0]
    a, b = max(0, int(y0)), min(h, math.ceil(y1))
    c, d = max(0, int(x0)), min(h, math.ceil(x1))
    if b <= a or d <= c:
        return 1.0
    return float(mask[a:b, c:d].mean())


def _free_corner(ctx: Ctx, box: float, salt: int) -> tuple[float, float]:
    """Centre of the corner box (side `box` px) least covered by the foreground."""
    s, pad = ctx.size, 0.03 * ctx.size
    rng = ctx.rng(salt)
    best = None
    for cx, cy in (
        (pad, pad),
        (s - pad - box, pad),
        (pad, s - pad - box),
        (s - pad - box, s - pad - box),
    ):
        score = _coverage(ctx.mask, cx, cy, cx + box, cy + box) + 0.02 * float(rng.random())
        if cy > s / 2:
            score += 0.03  # prefer the sky
        if best is None or score < best[0]:
            best = (score, cx + box / 2, cy + box / 2)
    assert best is not None
    return best[1], best[2]


def _finish_motif(ctx: Ctx, alpha: np.ndarray) -> None:
    """Make a drawn motif part of the foreground mask."""
    ctx.mask = np.maximum(ctx.mask, alpha)


def crescent_moon(img: np.ndarray, ctx: Ctx) -> np.ndarray:
    """A pale crescent moon in the emptiest corner."""
    r = 0.15 * ctx.size
    cx, cy = _free_corner(ctx, 2.3 * r, 11)
    flip = -1.0 if ctx.rng(12).random() < 0.5 else 1.0

    def fn(d: ImageDraw.ImageDraw, k: int) -> None:
        x, y, rr = cx * k, cy * k, r * k
        d.ellipse((x - rr, y - rr, x + rr, y + rr), fill=255)
        ox, oy, r2 = x + flip * 0.5 * rr, y - 0.28 * rr, 0.86 * rr
        d.ellipse((ox - r2, oy - r2, ox + r2, oy + r2), fill=0)

    alpha = draw_alpha(ctx.size, fn)
    out = stamp(img, alpha, (1.0, 0.93, 0.52), rim=(0.2, 0.17, 0.1))
    _finish_motif(ctx, dilate(alpha, 1))
    return out


_BOLT = (
    (-0.02, -0.5),
    (0.27, -0.5),
    (0.08, -0.08),
    (0.3, -0.08),
    (-0.2, 0.5),
    (-0.04, 0.06),
    (-0.26, 0.06),
)


@lru_cache(maxsize=16)
def _bolt_tile(size: int, flip: bool) -> np.ndarray:
    """Anti-aliased alpha tile of the lightning bolt, about half the image tall."""
    h = 0.44 * size
    t = math.ceil(h) + 2
    c = t / 2
    sign = -1.0 if flip else 1.0

    def fn(d: ImageDraw.ImageDraw, k: int) -> None:
        d.polygon([((c + sign * px * h) * k, (c + py * h) * k) for px, py in _BOLT], fill=255)

    return draw_alpha(t, fn)


def lightning_bolt(img: np.ndarray, ctx: Ctx) -> np.ndarray:
    """A yellow zig-zag lightning bolt beside the object."""
    s = ctx.size
    rng = ctx.rng(21)
    tile = _bolt_tile(s, bool(rng.random() < 0.5))
    t = tile.shape[0]
    grown = dilate(ctx.mask, max(1, round(2 * ctx.u)))
    best = None
    steps = np.linspace(0, s - t, 7).round().astype(int)
    for y in steps:
        for x in steps:
            score = float((grown[y : y + t, x : x + t] * tile).sum()) + 0.5 * float(rng.random())
            if best is None or score < best[0]:
                best = (score, int(y), int(x))
    assert best is not None
    _, y, x = best
    alpha = np.zeros((s, s), F32)
    alpha[y : y + t, x : x + t] = tile
    out = stamp(img, alpha, (1.0, 0.88, 0.05), rim=(0.08, 0.06, 0.12))
    _finish_motif(ctx, dilate(alpha, 1))
    return out


def smiley_face(img: np.ndarray, ctx: Ctx) -> np.ndarray:
    """Two eyes and a smile drawn on the main object."""
    cx, cy, side = main_object(ctx)
    f = max(side, 0.4 * ctx.size)
    er = 0.08 * f

    def fn(d: ImageDraw.ImageDraw, k: int) -> None:
        x, y, ff, rr = cx * k, cy * k, f * k, er * k
        for ex in (x - 0.17 * ff, x + 0.17 * ff):
            ey = y - 0.1 * ff
            d.ellipse((ex - rr, ey - 1.3 * rr, ex + rr, ey + 1.3 * rr), fill=255)
        box = (x - 0.24 * ff, y - 0.2 * ff, x + 0.24 * ff, y + 0.2 * ff)
        d.arc(box, 25, 155, fill=255, width=max(1, round(0.075 * ff)))

    alpha = draw_alpha(ctx.size, fn)
    c = round(cy), round(cx)
    y0, x0 = max(0, c[0] - 3), max(0, c[1] - 3)
    under = float(lum(img[y0 : c[0] + 4, x0 : c[1] + 4]).mean())
    color = (0.03, 0.03, 0.03) if under > 0.42 else (1.0, 1.0, 1.0)
    out = stamp(img, alpha, color)
    return out


def arrow(img: np.ndarray, ctx: Ctx) -> np.ndarray:
    """A bold arrow pointing at the main object from the emptiest direction."""
    s = ctx.size
    cx, cy, side = main_object(ctx)
    length, shaft, head_l, head_w = 0.34 * s, 0.065 * s, 0.16 * s, 0.2 * s
    rng = ctx.rng(41)
    off = float(rng.random()) * math.pi / 4
    best = None
    for i in range(16):
        a = off + i * math.pi / 8
        dx, dy = math.cos(a), math.sin(a)
        tip = (cx + dx * (0.5 * side + 0.03 * s), cy + dy * (0.5 * side + 0.03 * s))
        tail = (tip[0] + dx * length, tip[1] + dy * length)
        lo, hi = 0.05 * s, 0.95 * s
        out_of_frame = sum(max(0.0, lo - v) + max(0.0, v - hi) for v in (*tip, *tail))
        hit = 0.0
        for t in (0.25, 0.5, 0.75, 1.0):
            px, py = tip[0] + dx * length * t, tip[1] + dy * length * t
            iy, ix = int(min(s - 1, max(0, py))), int(min(s - 1, max(0, px)))
            hit += float(ctx.mask[iy, ix])
        score = out_of_frame / s * 10 + hit
        if best is None or score < best[0] - 1e-6:
            best = (score, tip, tail, dx, dy)
    assert best is not None
    _, tip, tail, dx, dy = best
    nx, ny = -dy, dx

    def fn(d: ImageDraw.ImageDraw, k: int) -> None:
        bx, by = tip[0] + dx * head_l, tip[1] + dy * head_l
        hw, sw = head_w / 2, shaft / 2
        head = [tip, (bx + nx * hw, by + ny * hw), (bx - nx * hw, by - ny * hw)]
        body = [
            (bx + nx * sw, by + ny * sw),
            (tail[0] + nx * sw, tail[1] + ny * sw),
            (tail[0] - nx * sw, tail[1] - ny * sw),
            (bx - nx * sw, by - ny * sw),
        ]
        d.polygon([(x * k, y * k) for x, y in head], fill=255)
        d.polygon([(x * k, y * k) for x, y in body], fill=255)

    alpha = draw_alpha(s, fn)
    dark_bg = float(lum(ctx.bg[None, None, :])[0, 0]) < 0.45
    color = (0.97, 0.97, 0.95) if dark_bg else (0.05, 0.05, 0.08)
    out = stamp(img, alpha, color)
    _finish_motif(ctx, alpha)
    return out
