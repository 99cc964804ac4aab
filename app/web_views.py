"""What the web page draws from the service's typed results: the atlas map, the gate heatmap,
the chosen-style rows and the upload report. Pure functions (no gradio, no service)."""

from __future__ import annotations

import base64
import html
import io
import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# Colour-blind-safe qualitative palette (Okabe–Ito, then Tableau) for atlas clusters.
CLUSTER_COLOURS = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442",
                   "#4E79A7", "#F28E2B", "#59A14F", "#B07AA1", "#76B7B2", "#EDC948", "#FF9DA7")
MAX_INLINE_THUMBNAILS = 400  # beyond this the map shows names only (the card has the images)
THUMBNAIL_PX = 96

ATLAS_CSS = """
.atlas-wrap { display: flex; flex-direction: column; gap: 8px; }
.atlas { position: relative; width: 100%; height: 520px; border-radius: 8px;
         background: var(--background-fill-secondary);
         border: 1px solid var(--border-color-primary); }
.atlas .pt { position: absolute; width: 16px; height: 16px; margin: -8px 0 0 -8px; padding: 0;
             border-radius: 50%; border: 2px solid white; cursor: pointer;
             box-shadow: 0 0 2px rgba(0,0,0,.6); }
.atlas .pt.other { background: transparent !important; border-width: 3px; }
.atlas .pt.dim { opacity: .18; }
.atlas .pt:hover, .atlas .pt:focus { z-index: 20; outline: 3px solid var(--color-accent); }
.atlas .pt .tip { display: none; position: absolute; left: 18px; top: -8px; min-width: 120px;
                  padding: 6px; border-radius: 6px; background: var(--background-fill-primary);
                  border: 1px solid var(--border-color-primary); color: var(--body-text-color);
                  font-size: 12px; text-align: left; white-space: nowrap; z-index: 30;
                  box-shadow: 0 2px 8px rgba(0,0,0,.25); }
.atlas .pt.left .tip { left: auto; right: 18px; }
.atlas .pt.up .tip { top: auto; bottom: -8px; }
.atlas .pt:hover .tip, .atlas .pt:focus .tip { display: block; }
.atlas .pt .tip img { display: block; width: 96px; height: 96px; image-rendering: pixelated;
                      margin-bottom: 4px; border-radius: 4px; }
.atlas .label { position: absolute; font-size: 11px; pointer-events: none; white-space: nowrap;
                transform: translate(10px, -6px); color: var(--body-text-color-subdued); }
.atlas-legend { display: flex; flex-wrap: wrap; gap: 10px; font-size: 12px; }
.atlas-legend span::before { content: ""; display: inline-block; width: 10px; height: 10px;
                             border-radius: 50%; margin-right: 4px; background: var(--c); }
"""

# Small renders (the starter pack draws 64×64) are scaled up with crisp pixels, not blur.
PAGE_CSS = """
#gallery img, #gate-map img, .style-thumbs img { image-rendering: pixelated; }
.style-row { align-items: center; }
"""

# Clicking a point asks the server for its card (event data: {"slug": ...}).
ATLAS_JS = """
element.addEventListener('click', (event) => {
  const point = event.target.closest('[data-slug]');
  if (point) { trigger('click', {slug: point.dataset.slug}); }
});
"""


def cluster_colour(cluster: int) -> str:
    return CLUSTER_COLOURS[cluster % len(CLUSTER_COLOURS)] if cluster >= 0 else "#888888"


def thumbnail_data_uri(path: str | None, size: int = THUMBNAIL_PX) -> str | None:
    """A small inline PNG of a thumbnail file, so the map needs no file serving."""
    if not path or not Path(path).is_file():
        return None
    with Image.open(path) as image:
        image = image.convert("RGB")
        image.thumbnail((size, size), Image.NEAREST)
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def atlas_html(atlas: dict | None, highlight: Iterable[str] | None = None) -> str:
    """The map of an `AtlasView.to_json()`: one button per style, coloured by cluster, with a
    hover card (thumbnail, name, cluster); styles outside `highlight` are dimmed."""
    if atlas is None:
        return "<div class='atlas-wrap'><p class='atlas-loading'>Loading the atlas…</p></div>"
    if not atlas.get("points"):
        return ("<div class='atlas-wrap'><p class='atlas-empty'>The atlas is empty: add styles "
                "in the Library tab.</p></div>")
    points = atlas["points"]
    labels = {c["id"]: c["label"] for c in atlas.get("clusters", [])}
    keep = None if highlight is None else set(highlight)
    xs = np.array([p["x"] for p in points], dtype=float)
    ys = np.array([p["y"] for p in points], dtype=float)
    left, top = _unit(xs), 1.0 - _unit(ys)
    show_thumbs = len(points) <= MAX_INLINE_THUMBNAILS
    labelled = _unclashed_labels([p["name"] for p in points], left, top)
    parts = ["<div class='atlas-wrap'><div class='atlas' role='list'>"]
    for index, (point, x, y) in enumerate(zip(points, left, top, strict=True)):
        colour = cluster_colour(int(point["cluster"]))
        classes = ["pt"]
        if not point.get("applicable", True):
            classes.append("other")
        if keep is not None and point["slug"] not in keep:
            classes.append("dim")
        classes += ["left"] if x > 0.6 else []
        classes += ["up"] if y > 0.6 else []
        name = html.escape(point["name"])
        cluster = html.escape(labels.get(point["cluster"], f"cluster {point['cluster']}"))
        note = "" if point.get("applicable", True) else \
            f"<br><em>{html.escape(point['family'])}: not for this base model</em>"
        thumb = thumbnail_data_uri(point.get("thumbnail")) if show_thumbs else None
        image = f"<img src='{thumb}' alt=''>" if thumb else ""
        where = f"left:{x * 84 + 3:.2f}%;top:{y * 90 + 5:.2f}%"
        style = f"{where};background:{colour};" \
                f"border-color:{colour if 'other' in classes else 'white'}"
        parts.append(
            f"<button class='{' '.join(classes)}' style='{style}' role='listitem' "
            f"data-slug='{html.escape(point['slug'], quote=True)}' aria-label='{name}'>"
            f"<span class='tip'>{image}<b>{name}</b><br>{cluster}{note}</span></button>"
            + (f"<span class='label' style='{where}'>{name}</span>" if index in labelled
               else ""))
    parts.append("</div><div class='atlas-legend'>")
    for cluster in atlas.get("clusters", []):
        parts.append(f"<span style='--c:{cluster_colour(int(cluster['id']))}'>"
                     f"{html.escape(cluster['label'])} ({cluster['size']})</span>")
    parts.append("</div></div>")
    return "".join(parts)


# The map's drawing box in CSS pixels at a typical width, for placing point labels.
MAP_PX = (720.0, 520.0)
LABEL_PX = (6.0, 14.0)  # width per character and height of an 11px label
CELL_PX = 40.0  # grid cell for the label-overlap checks


def _unclashed_labels(names: list[str], left: np.ndarray, top: np.ndarray) -> set[int]:
    """Indices of the points whose name is written on the map: greedily, named styles before
    hash-like file names and short names first, skipping any label that would overlap a
    label already written or another point (its name stays in the point's tooltip). Dots and
    written labels sit in a grid of cells, so each label is checked against its neighbours
    only (a map of 10 000 styles stays quick to draw)."""
    width, height = MAP_PX
    px = (left * 0.84 + 0.03) * width
    py = (top * 0.90 + 0.05) * height
    grid: dict[tuple[int, int], list[tuple[int, tuple[float, float, float, float]]]] = {}

    def cells(box: tuple[float, float, float, float]):
        return [(cx, cy) for cx in range(int(box[0] // CELL_PX), int(box[2] // CELL_PX) + 1)
                for cy in range(int(box[1] // CELL_PX), int(box[3] // CELL_PX) + 1)]

    def place(owner: int, box: tuple[float, float, float, float]) -> None:
        for cell in cells(box):
            grid.setdefault(cell, []).append((owner, box))

    for i, (x, y) in enumerate(zip(px, py, strict=True)):
        place(i, (x - 8, y - 8, x + 8, y + 8))  # the dot, which no label may cover
    order = sorted(range(len(names)), key=lambda i: (names[i].startswith("lora_"),
                                                     len(names[i]), i))
    kept: set[int] = set()
    for i in order:
        x0, y0 = px[i] + 10, py[i] - 6 - LABEL_PX[1] / 2
        box = (x0, y0, x0 + LABEL_PX[0] * len(names[i]), y0 + LABEL_PX[1])
        if any(owner != i and _overlap(box, other)
               for cell in cells(box) for owner, other in grid.get(cell, ())):
            continue
        kept.add(i)
        place(-1, box)  # a written label: no owner, clashes with every later label
    return kept


def _overlap(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _unit(values: np.ndarray) -> np.ndarray:
    span = values.max() - values.min()
    return (values - values.min()) / span if span > 0 else np.full_like(values, 0.5)


def reasons_text(reasons: dict | str | None) -> str:
    """One line from a retrieval hit's reasons (clause, strongest views, matched words, the
    words its weights react to)."""
    if not reasons:
        return ""
    if isinstance(reasons, str):
        return reasons
    parts = []
    if reasons.get("clause"):
        parts.append(f"matches “{reasons['clause']}”")
    views = reasons.get("views") or {}
    if views:
        best = sorted(views.items(), key=lambda kv: -float(kv[1] or 0))[:2]
        parts.append("by " + ", ".join(f"{name} {float(value):.2f}" for name, value in best))
    if reasons.get("matched_words"):
        parts.append("words: " + ", ".join(reasons["matched_words"]))
    if reasons.get("weights_react_to"):
        parts.append("its weights react to: " + ", ".join(reasons["weights_react_to"]))
    return "; ".join(parts)


def style_row_markdown(style: dict) -> str:
    origin = "suggested" if style.get("origin") == "auto" else "added"
    text = f"**{style.get('name') or style['slug']}** `{style['slug']}` · {origin}"
    if style.get("reasons"):
        text += f"  \n<small>{html.escape(style['reasons'])}</small>"
    return text


def report_rows(reports: list[dict]) -> list[list]:
    """Upload reports as table rows: file, result, style, why / what to do, seconds."""
    rows = []
    for report in reports:
        error = report.get("error") or {}
        if not report.get("ok"):
            result = "refused"
            # the file has its own column: problem and advice, else the whole message
            why = " ".join(x for x in (error.get("problem"), error.get("advice")) if x) \
                or error.get("message") or error.get("code") or ""
        elif report.get("duplicate_of"):
            result, why = "duplicate", f"same file as '{report['duplicate_of']}': not added"
        elif report.get("near_duplicate_of"):
            result, why = "accepted", f"flagged: near-duplicate of '{report['near_duplicate_of']}'"
        else:
            result, why = "accepted", ""
        if report.get("ok") and report.get("note"):
            why = "; ".join(x for x in (why, report["note"]) if x)
        rows.append([report.get("file", ""), result, report.get("slug") or "", why,
                     round(float(report.get("seconds") or 0.0), 2)])
    return rows


def recommended_text(own: dict) -> str:
    """A style's recommended settings in words ("" for none)."""
    parts = []
    if own.get("guidance_scale") is not None:
        parts.append(f"guidance scale {float(own['guidance_scale']):g}")
    if own.get("content_guidance"):
        parts.append(f"content guidance {float(own['content_guidance']):g} on the first "
                     f"{float(own.get('content_guidance_steps', 0.4)):.0%} of the steps")
    return " and ".join(parts)


def card_markdown(card: dict | None) -> str:
    if not card:
        return "Click a point on the map to open its card."
    lines = [f"### {html.escape(card['name'])}",
             f"`{card['slug']}` · family **{card['family']}** · {card.get('source', '')}"
             + (f" · format {card['format']}" if card.get("format") else "")
             + (f" · rank {card['rank']}" if card.get("rank") else "")]
    if not card.get("applicable", True):
        lines.append("**Not for the loaded base model**: shown and searchable, never applied.")
    if card.get("cluster"):
        lines.append(f"Cluster: {html.escape(str(card['cluster']))}")
    if card.get("description"):
        lines.append(html.escape(card["description"]))
    if card.get("tags"):
        lines.append("Tags: " + ", ".join(f"`{t}`" for t in card["tags"]))
    if card.get("trigger_words"):
        lines.append("Trigger words: " + ", ".join(f"`{t}`" for t in card["trigger_words"]))
    if card.get("weight_words"):
        lines.append("Its weights react to: " + ", ".join(html.escape(w)
                                                         for w in card["weight_words"]))
    if text := recommended_text(card.get("recommended") or {}):
        lines.append(f"Used alone, it recommends {text} (Create applies it unless you set "
                     "your own)")
    if card.get("flags"):
        lines.append("⚠ " + "; ".join(card["flags"]))
    if card.get("nearest"):
        lines.append("Nearest: " + ", ".join(
            f"{n.get('name', n['slug'])} ({float(n.get('score', 0)):.2f})"
            for n in card["nearest"]))
    return "\n\n".join(lines)


# -- gate map -----------------------------------------------------------------------------
def gate_array(gate_map: dict) -> tuple[np.ndarray, list[str], list[str]] | None:
    """(values layers × steps × LoRAs, layer names, LoRA names) from the service's gate map.

    Accepted shapes: {"values": L×S×K, "layers", "loras", "sources", "present"} (fusion's
    GateMap JSON; NaN where "present" says the LoRA has no module), or {lora: {layer:
    [per-step values]}}. Anything else returns None (shown as JSON)."""
    if not isinstance(gate_map, dict) or not gate_map:
        return None
    values = gate_map.get("values", gate_map.get("gates"))
    if values is not None:
        array = np.asarray(values, dtype=float)
        if array.ndim != 3:
            return None
        present = np.asarray(gate_map.get("present", []), dtype=bool)
        if present.shape == (array.shape[0], array.shape[2]):
            array = np.where(present[:, None, :], array, np.nan)
        layers = [str(x) for x in gate_map.get("layers", range(array.shape[0]))]
        loras = [str(x) for x in gate_map.get("loras", range(array.shape[2]))]
        sources = gate_map.get("sources") or []
        if len(sources) == len(loras):  # where each LoRA's gates came from (user, learned…)
            loras = [f"{name} ({source})" for name, source in zip(loras, sources, strict=True)]
        return array, layers, loras
    try:
        loras = list(gate_map)
        layers = list(gate_map[loras[0]])
        array = np.array([[gate_map[lora][layer] for layer in layers] for lora in loras],
                         dtype=float)  # K × L × S
    except (TypeError, KeyError, ValueError):
        return None
    return (array.transpose(1, 2, 0), [str(x) for x in layers], [str(x) for x in loras]) \
        if array.ndim == 3 else None


BLOCK = re.compile(r"(text_encoder(?:_2)?|down_blocks\.\d+|mid_block|up_blocks\.\d+|"
                   r"conv_in|conv_out|time_embedding)")
MAX_ROWS = 24
ABSENT = (215, 215, 215)  # a gate-map cell of a LoRA with no module there


def by_block(array: np.ndarray, layers: list[str]) -> tuple[np.ndarray, list[str]]:
    """Many layers → one row per network block (the mean gate of the block's layers a LoRA
    has; NaN where it has none), in order."""
    if len(layers) <= MAX_ROWS:
        return array, layers
    groups: dict[str, list[int]] = {}
    for index, layer in enumerate(layers):
        match = BLOCK.search(layer)
        groups.setdefault(match.group(1) if match else layer.split(".")[0], []).append(index)
    names = list(groups)
    rows = []
    for name in names:
        block = array[groups[name]]
        count = (~np.isnan(block)).sum(axis=0)
        rows.append(np.where(count > 0, np.nansum(block, axis=0) / np.maximum(count, 1), np.nan))
    return np.stack(rows), [f"{n} ({len(groups[n])})" for n in names]


def _ramp(values: np.ndarray) -> np.ndarray:
    """A perceptual dark-blue → teal → yellow ramp (viridis-like) for values in [0, 1]."""
    stops = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]],
                     dtype=float)
    position = np.clip(values, 0, 1) * (len(stops) - 1)
    low = np.floor(position).astype(int).clip(0, len(stops) - 2)
    frac = (position - low)[..., None]
    return (stops[low] * (1 - frac) + stops[low + 1] * frac).astype(np.uint8)


def gate_heatmap(gate_map: dict | None) -> Image.Image | None:
    """One panel per LoRA (rows: layers, columns: denoising steps), a shared colour scale."""
    parsed = gate_array(gate_map) if gate_map else None
    if parsed is None:
        return None
    array, layers, loras = parsed
    array, layers = by_block(array, layers)
    n_layers, n_steps, n_loras = array.shape
    absent = np.isnan(array)
    top = float(np.nanmax(array)) if (~absent).any() and np.nanmax(array) > 0 else 1.0
    cell_w = max(4, min(24, 320 // max(n_steps, 1)))
    cell_h = max(3, min(28, 360 // max(n_layers, 1)))
    label_w, title_h, pad = 170, 44, 16  # room at the top for the page's image label
    panel_w, panel_h = n_steps * cell_w, n_layers * cell_h
    width = max(label_w + n_loras * (panel_w + pad), 440)  # room for the legend
    height = title_h + panel_h + 42
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=13)
    every = max(1, (n_layers * 14) // max(panel_h, 1) + 1)
    for row, layer in enumerate(layers):
        if row % every == 0:
            draw.text((2, title_h + row * cell_h), layer[-26:], fill="black", font=font)
    for k, name in enumerate(loras):
        x0 = label_w + k * (panel_w + pad)
        colours = _ramp(np.nan_to_num(array[:, :, k]) / top)
        colours[absent[:, :, k]] = ABSENT
        panel = Image.fromarray(colours, "RGB").resize((panel_w, panel_h), Image.NEAREST)
        canvas.paste(panel, (x0, title_h))
        draw.text((x0, title_h - 18), name[:max(8, panel_w // 7)], fill="black", font=font)
        draw.text((x0, title_h + panel_h + 4), f"steps 1-{n_steps}", fill="black", font=font)
    legend = f"gate 0 (dark) to {top:.2f} (yellow)"
    if absent.any():
        legend += "; gray: the LoRA has no layers there"
    draw.text((2, height - 16), legend, fill="black", font=font)
    return canvas
