"""Content guidance (fusion/content_guidance.py) on the starter style LoRAs, on validation
prompts: style detected and content right per style, without it and at each scale, and for
chosen styles at a higher LoRA weight too (content guidance pays for more LoRA strength).

The validation prompts and seeds of lora_strength.py (60_000 + ...), which chose the shipped
strengths, never starter_quality's held-out ones: a setting chosen from this table is then
measured there. Judged as starter_quality.py judges (guidance 2, 20 DPM-Solver steps).

    .venv/bin/python benchmarks/content_guidance.py [--scales 1,2] [--share 0.4] \\
        [--stronger arrow:1.143,smiley-face:1.167] [--prompts 32] [--workers 2]
    .venv/bin/python benchmarks/content_guidance.py --sheet smiley-face:1.167,chalkboard:1
        (only docs/content_guidance.png: 4 validation prompts per row, at each scale)
"""

from __future__ import annotations

import argparse
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np
from common import RESULTS, ROOT, images_as_array, machine_line
from lora_strength import TARGETS, VALIDATION_SEED, meets, validation_images
from starter_quality import verdicts

from styles.starter.looks import STYLES

_worker: tuple | None = None


def _start_worker() -> None:
    global _worker
    import torch

    from app.service import LoratlasService, ServiceConfig
    from styles.starter.judges import Judges
    from styles.starter.paths import JUDGES_DIR

    torch.set_num_threads(1)
    _worker = (LoratlasService(ServiceConfig(device="cpu")), Judges.load(JUDGES_DIR))


def _job(slug: str, weight: float, scale: float, share: float, n: int) -> tuple:
    """(slug, weight, scale, style detected, content right, seconds per image)."""
    service, judges = _worker
    started = time.time()
    cases, images = validation_images(service, slug, slug, n, weight, content_guidance=scale,
                                      content_guidance_steps=share)
    seconds = (time.time() - started) / n
    return (slug, weight, scale, *verdicts(judges, slug, images_as_array(images), cases),
            seconds)


def weighted(text: str) -> list[tuple[str, float]]:
    """"slug:weight,..." as (slug, weight) pairs."""
    return [(slug, float(weight)) for slug, weight in
            (item.split(":") for item in text.split(",") if item)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scales", default="1,2", help="content guidance scales besides 0")
    parser.add_argument("--share", type=float, default=0.4, help="share of the steps")
    parser.add_argument("--stronger", default="",
                        help="slug:weight,...: these styles also at that LoRA weight")
    parser.add_argument("--styles", default="all")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", default=str(RESULTS / "content_guidance.md"))
    parser.add_argument("--sheet", help="slug:weight,...: draw docs/content_guidance.png only")
    args = parser.parse_args()
    scales = [0.0, *[float(s) for s in args.scales.split(",") if s]]
    if args.sheet:
        sheet(weighted(args.sheet), scales, args.share, ROOT / "docs" / "content_guidance.png")
        return
    slugs = sorted(STYLES) if args.styles == "all" else args.styles.split(",")
    stronger = dict(weighted(args.stronger))
    jobs = [(slug, 1.0, scale) for slug in slugs for scale in scales]
    jobs += [(slug, weight, scale) for slug, weight in stronger.items() for scale in scales]
    started = time.time()
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(args.workers, mp_context=context,
                             initializer=_start_worker) as pool:
        rows = list(pool.map(_job, *zip(*jobs, strict=True), [args.share] * len(jobs),
                             [args.prompts] * len(jobs)))
    minutes = (time.time() - started) / 60
    write(args, scales, slugs, stronger, rows, minutes)


def sheet(rows: list[tuple[str, float]], scales: list[float], share: float, path,
          per_row: int = 4) -> None:
    """The same validation prompts per style (at its weight), once per scale."""
    from PIL import Image, ImageDraw

    _start_worker()
    service, _ = _worker
    cell, label_w, gap, head = 112, 170, 16, 20
    width = label_w + len(scales) * (per_row * cell + gap)
    out = Image.new("RGB", (width, head + len(rows) * (cell + 4)), "white")
    draw = ImageDraw.Draw(out)
    for j, scale in enumerate(scales):
        draw.text((label_w + j * (per_row * cell + gap) + 4, 5),
                  "content guidance off" if scale == 0 else f"content guidance {scale:g}",
                  fill="black")
    for r, (slug, weight) in enumerate(rows):
        y = head + r * (cell + 4)
        for j, scale in enumerate(scales):
            cases, images = validation_images(service, slug, slug, per_row, weight,
                                              content_guidance=scale,
                                              content_guidance_steps=share)
            for i, image in enumerate(images):
                out.paste(image.convert("RGB").resize((cell, cell), Image.NEAREST),
                          (label_w + j * (per_row * cell + gap) + i * cell, y))
        draw.multiline_text((4, y + 4), "\n".join([f"{slug} at weight {weight:g}",
                                                   *[p[:28] for p, _, _ in cases]]),
                            fill="black")
    out.save(path)
    print(path)


def write(args, scales, slugs, stronger, rows, minutes) -> None:
    got = {(slug, weight, scale): (style, content, seconds)
           for slug, weight, scale, style, content, seconds in rows}

    def cell(key) -> str:
        style, content, _ = got[key]
        return f"{style:.2f} / {content:.2f}" + (" ✓" if meets(style, content) else "")

    heads = ["off" if s == 0 else f"scale {s:g}" for s in scales]
    lines = [
        "# Content guidance on the starter style LoRAs", "", machine_line(),
        f"Command: `.venv/bin/python benchmarks/content_guidance.py --scales "
        f"{','.join(f'{s:g}' for s in scales[1:])} --share {args.share:g}"
        + (f" --stronger {args.stronger}" if args.stronger else "")
        + (f" --styles {args.styles}" if args.styles != "all" else "")
        + f" --prompts {args.prompts} --workers {args.workers}` ({minutes:.0f} min)", "",
        f"Content guidance adds the base model's own guidance (the request's LoRAs bypassed) "
        f"at the given scale over the first {args.share:.0%} of the steps "
        "(`fusion/content_guidance.py`). Each style's shipped file at weight 1 (the strength "
        f"it carries), {args.prompts} validation prompts per style (the seeds lora_strength.py "
        f"chose the strengths on, from {VALIDATION_SEED}: so the *off* column is optimistic, "
        "and starter_quality.md measures the same files on held-out prompts), guidance 2, "
        "20 DPM-Solver steps. Each cell: style detected / content right (shape, and color "
        f"where the style keeps it); ✓ where both targets are met (style ≥ {TARGETS[0]:.2f}, "
        f"content ≥ {TARGETS[1]:.2f}). One prompt is {100 / args.prompts:.1f} points.", "",
        "| style | " + " | ".join(heads) + " |", "|---|" + "---:|" * len(scales)]
    for slug in slugs:
        lines.append(f"| {slug} | " + " | ".join(cell((slug, 1.0, s)) for s in scales) + " |")
    lines.append("")
    for s, head in zip(scales, heads, strict=True):
        values = [got[(slug, 1.0, s)] for slug in slugs]
        lines.append(
            f"- {head}: both targets {sum(meets(a, b) for a, b, _ in values)}/{len(slugs)}; "
            f"mean style {np.mean([a for a, _, _ in values]):.3f}, mean content "
            f"{np.mean([b for _, b, _ in values]):.3f}; seconds per image "
            f"{np.mean([c for _, _, c in values]):.2f} (16 denoised together, one thread)")
    if stronger:
        lines += ["", "## At a higher LoRA weight", "",
                  "The same prompts with the LoRA at the weight given (× the strength its file "
                  "carries).", "",
                  "| style | weight | " + " | ".join(heads) + " |",
                  "|---|---:|" + "---:|" * len(scales)]
        for slug, weight in stronger.items():
            lines.append(f"| {slug} | {weight:g} | "
                         + " | ".join(cell((slug, weight, s)) for s in scales) + " |")
    with open(args.out, "w") as out:
        out.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
