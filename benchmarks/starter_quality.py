"""Starter pack quality, judged by the starter judges on freshly generated images.

- Base model: shape and color as prompted, on held-out one-object prompts (seed 10_000+).
- Each style LoRA at weight 1.0: its style detected, and the content still right (shape; and
  color where the style keeps color).
- Speed: seconds per image of `loratlas generate "a red star"` (a subprocess, as a user runs it).

    .venv/bin/python benchmarks/starter_quality.py [--prompts 200] [--per-style 10]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import numpy as np
from common import RESULTS, ROOT, images_as_array, machine_line

from app.service import GenerateRequest, LoraRequest, LoratlasService, ServiceConfig
from styles.starter.judges import Judges
from styles.starter.looks import STYLES
from styles.starter.paths import JUDGES_DIR, starter_loras
from styles.starter.world import caption, content_labels, sample_scene

HELD_OUT_SEED = 10_000


def prompts(n: int, seed: int, background: bool = True) -> list[tuple[str, dict]]:
    """Held-out one-object captions with their content labels; `background=False` for style
    prompts (a style may replace the background, so the prompt does not name one)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        scene = sample_scene(rng, n_objects=1)
        out.append((caption(scene, rng, background), content_labels(scene)))
    return out


def generate(service: LoratlasService, prompt: str, seed: int, loras=(), steps: int = 20):
    request = GenerateRequest(prompt=prompt, seed=seed, steps=steps,
                              loras=[LoraRequest(slug, 1.0) for slug in loras])
    return service.generate(request).images[0]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prompts", type=int, default=200)
    parser.add_argument("--per-style", type=int, default=10)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    service = LoratlasService(ServiceConfig(device="cpu"))
    judges = Judges.load(JUDGES_DIR)
    from styles.starter.judges import COLOR_PRESERVING_STYLES

    # 1. base model on held-out prompts
    base_cases = prompts(args.prompts, HELD_OUT_SEED)
    started = time.time()
    images = [generate(service, p, HELD_OUT_SEED + i, steps=args.steps)
              for i, (p, _) in enumerate(base_cases)]
    base_seconds = (time.time() - started) / len(images)
    verdicts = judges.content(images_as_array(images))
    shape_ok = [v["shape"] == lab["shape"] for v, (_, lab) in zip(verdicts, base_cases,
                                                                   strict=True)]
    color_ok = [v["color"] == lab["color"] for v, (_, lab) in zip(verdicts, base_cases,
                                                                   strict=True)]
    both = float(np.mean([s and c for s, c in zip(shape_ok, color_ok, strict=True)]))

    # 2. each style LoRA at weight 1.0 (those the pack holds)
    rows = []
    shipped = starter_loras()
    for index, slug in enumerate(sorted(STYLES)):
        if slug not in shipped:
            continue
        cases = prompts(args.per_style, HELD_OUT_SEED + 1000 * (index + 1), background=False)
        styled = [generate(service, p, HELD_OUT_SEED + i, [slug], args.steps)
                  for i, (p, _) in enumerate(cases)]
        array = images_as_array(styled)
        detected = [slug in found for found in judges.styles(array)]
        content = judges.content(array)
        keeps_color = slug in COLOR_PRESERVING_STYLES
        right = [v["shape"] == lab["shape"] and (not keeps_color or v["color"] == lab["color"])
                 for v, (_, lab) in zip(content, cases, strict=True)]
        rows.append((slug, float(np.mean(detected)), float(np.mean(right)), keeps_color))

    # 3. the CLI, as a user runs it
    run = subprocess.run([sys.executable, "-m", "app.cli", "generate", "a red star", "--json",
                          "--out", str(ROOT / ".cache" / "bench-out")], capture_output=True,
                         text=True, cwd=ROOT)
    cli = json.loads(run.stdout)
    lines = [
        "# Starter pack quality", "", machine_line(),
        f"Command: `.venv/bin/python benchmarks/starter_quality.py --prompts {args.prompts} "
        f"--per-style {args.per_style} --steps {args.steps}`", "",
        "Judges: `styles/data/starter/judges/` (their own held-out accuracy is in "
        "`accuracy.json` there). Prompts: one-object captions from held-out seeds "
        f"(≥ {HELD_OUT_SEED}), {args.steps} DPM-Solver steps, guidance 7.5, 64×64.", "",
        "## Base model", "",
        f"- shape right: {np.mean(shape_ok):.3f}; color right: {np.mean(color_ok):.3f}; "
        f"**both: {both:.3f}** over {len(base_cases)} prompts (target ≥ 0.80)",
        f"- seconds per image in this loop: {base_seconds:.2f}", "",
        "## Style LoRAs at weight 1.0", "",
        f"{args.per_style} held-out prompts per style, none naming a background (the style may "
        "replace it). *content right* = shape right, and color "
        "right where the style keeps color (✓ in the color column). Targets: style ≥ 0.80, "
        "content ≥ 0.70.", "",
        "| style | style detected | content right | color judged |", "|---|---:|---:|:-:|",
    ]
    for slug, detected, right, keeps_color in rows:
        lines.append(f"| {slug} | {detected:.2f} | {right:.2f} | {'✓' if keeps_color else ''} |")
    if rows:
        met_style = sum(r[1] >= 0.8 for r in rows)
        met_content = sum(r[2] >= 0.7 for r in rows)
        lines += ["", f"Styles meeting the style target: {met_style}/{len(rows)}; content "
                  f"target: {met_content}/{len(rows)}. Mean style detection "
                  f"{np.mean([r[1] for r in rows]):.3f}, mean content "
                  f"{np.mean([r[2] for r in rows]):.3f}."]
    else:
        lines += ["", "Not measured: the pack holds no style LoRAs yet (`loratlas starter build "
                  "--stages loras`)."]
    lines += ["", "## CLI speed", "",
              f"`loratlas generate \"a red star\" --json`: seconds_per_image "
              f"**{cli['seconds_per_image']:.2f}** (target < 2 s; excludes process start-up "
              "and model loading)."]
    (RESULTS / "starter_quality.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
