"""What the starter base's VAE keeps of each style: the best any image of the pipeline can be.

Every image the pipeline makes is decoded by its VAE, and every style LoRA is trained on VAE
latents of ground-truth styled images. So a style the VAE cannot encode and decode is a style
no LoRA on the UNet can draw. Per style, on 16 ground-truth images: the mean absolute error of
encode → decode (0–255 per channel) and the share the style judge still finds; the same error
on unstyled images for reference.

    .venv/bin/python benchmarks/vae_styles.py [--pipeline DIR] [--sheet docs/....jpg]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from common import RESULTS, ROOT, machine_line

from styles.starter.data import world_batch
from styles.starter.judges import Judges, vae_renderer
from styles.starter.looks import STYLES
from styles.starter.paths import JUDGES_DIR, PIPELINE_DIR

PER_STYLE = 16


def to_bytes(images: np.ndarray) -> np.ndarray:
    return (images * 255 + 0.5).astype(np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pipeline", type=Path, default=PIPELINE_DIR)
    parser.add_argument("--sheet", type=Path, default=None,
                        help="also save ground truth beside its VAE render for a few styles")
    args = parser.parse_args()
    torch.set_num_threads(2)
    started = time.time()
    render = vae_renderer(args.pipeline)
    judges = Judges.load(JUDGES_DIR)
    rows, sheet_rows = [], []
    for index, slug in enumerate(sorted(STYLES)):
        truth = to_bytes(world_batch(np.random.default_rng(500 + index), PER_STYLE, [slug])[0])
        rendered = render(truth)
        error = float(np.abs(rendered.astype(float) - truth).mean())
        found = float(np.mean([slug in styles for styles in judges.styles(rendered)]))
        rows.append((slug, error, found))
        if slug in ("sepia", "neon-night", "halftone", "mosaic", "pencil-sketch"):
            sheet_rows.append((slug, [*truth[:4], *rendered[:4]]))
    plain = to_bytes(world_batch(np.random.default_rng(9), 64)[0])
    plain_error = float(np.abs(render(plain).astype(float) - plain).mean())
    try:
        shown = args.pipeline.resolve().relative_to(ROOT)
    except ValueError:
        shown = args.pipeline
    lines = ["# What the starter VAE keeps of each style", "", machine_line(),
             "Command: `.venv/bin/python benchmarks/vae_styles.py`"
             + ("" if args.pipeline == PIPELINE_DIR else f" --pipeline {shown}"), "",
             f"VAE: `{shown}/vae`. {PER_STYLE} ground-truth images per style, encoded (latent "
             "mean) and decoded. *error*: mean absolute difference, 0–255 per channel. "
             "*judge finds*: share of the renders in which the style judge (trained on half "
             "VAE renders of this VAE, `styles/data/starter/judges`) still finds the style. "
             "The judge can still find a style whose look the VAE has changed (sepia's browns "
             "come back red and green; see docs/research/vae_styles_before_after.jpg), so "
             "read the error column and the sheet with it.", "",
             f"Unstyled images: error {plain_error:.1f}.", "",
             "| style | error | judge finds |", "|---|---:|---:|"]
    lines += [f"| {slug} | {error:.1f} | {found:.2f} |" for slug, error, found in rows]
    lines += ["", f"Mean over styles: error {np.mean([r[1] for r in rows]):.1f}, judge finds "
              f"{np.mean([r[2] for r in rows]):.2f}. Wall time {time.time() - started:.0f} s."]
    (RESULTS / "vae_styles.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    if args.sheet:
        from PIL import Image
        from starter_contact_sheet import sheet

        sheet([(slug, [Image.fromarray(x) for x in images]) for slug, images in sheet_rows]
              ).convert("RGB").save(args.sheet, quality=85)


if __name__ == "__main__":
    main()
