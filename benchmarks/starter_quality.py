"""Starter pack quality, judged by the starter judges on freshly generated images.

- Base model: shape and color as prompted, on held-out one-object prompts (seed 10_000+).
- Each style LoRA at weight 1.0: its style detected, and the content still right (shape; and
  color where the style keeps color); beside it, the same judgement of the exact ground truth
  of the same scenes through the base model's VAE (the best the model could render: the
  judges' ceiling).
- Speed: seconds per image of `loratlas generate "a red star"` (a subprocess, as a user runs it).

    .venv/bin/python benchmarks/starter_quality.py [--prompts 200] [--per-style 10]
        [--loras DIR --out FILE]   # another set of starter LoRA files, e.g. an older pack's
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from common import RESULTS, ROOT, ground_truth, images_as_array, machine_line

from app.service import GenerateRequest, LoraRequest, LoratlasService, ServiceConfig
from styles.starter.judges import Judges, vae_renderer
from styles.starter.looks import STYLES
from styles.starter.paths import IMAGE_SIZE, JUDGES_DIR, PIPELINE_DIR, starter_loras
from styles.starter.style_loras import file_name
from styles.starter.world import caption, content_labels, sample_scene

HELD_OUT_SEED = 10_000


def scenes(n: int, seed: int, background: bool = True) -> list[tuple[str, dict, object]]:
    """Held-out one-object captions with their content labels and scenes; `background=False`
    for style prompts (a style may replace the background, so the prompt does not name one)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        scene = sample_scene(rng, n_objects=1)
        out.append((caption(scene, rng, background), content_labels(scene), scene))
    return out


def prompts(n: int, seed: int, background: bool = True) -> list[tuple[str, dict]]:
    return [(prompt, labels) for prompt, labels, _ in scenes(n, seed, background)]


def generate(service: LoratlasService, prompt: str, seed: int, loras=(), steps: int = 20,
             guidance: float | None = None):
    request = GenerateRequest(prompt=prompt, seed=seed, steps=steps, guidance_scale=guidance,
                              loras=[LoraRequest(slug, 1.0) for slug in loras])
    return service.generate(request).images[0]


def judge_base(service, judges, n: int, steps: int, guidance: float | None = None) -> dict:
    """The base model alone on n held-out prompts: content right, and the styles the judge
    wrongly finds in these unstyled images (its false alarms, per style)."""
    cases = prompts(n, HELD_OUT_SEED)
    started = time.time()
    images = [generate(service, p, HELD_OUT_SEED + i, steps=steps, guidance=guidance)
              for i, (p, _) in enumerate(cases)]
    seconds = (time.time() - started) / len(images)
    array = images_as_array(images)
    verdicts = judges.content(array)
    shape = [v["shape"] == lab["shape"] for v, (_, lab) in zip(verdicts, cases, strict=True)]
    color = [v["color"] == lab["color"] for v, (_, lab) in zip(verdicts, cases, strict=True)]
    found = judges.styles(array)
    return {"shape": float(np.mean(shape)), "color": float(np.mean(color)),
            "both": float(np.mean([s and c for s, c in zip(shape, color, strict=True)])),
            "any_style": float(np.mean([bool(f) for f in found])),
            "false_alarms": {slug: float(np.mean([slug in f for f in found])) for slug in STYLES},
            "seconds": seconds, "n": len(cases)}


def style_cases(slug: str, n: int) -> list[tuple[str, dict, object]]:
    return scenes(n, HELD_OUT_SEED + 1000 * (sorted(STYLES).index(slug) + 1), background=False)


def verdicts(judges, slug: str, array: np.ndarray, cases) -> tuple[float, float]:
    """The share of images in which the judge finds the style, and with the content right
    (shape; and color where the style keeps color)."""
    detected = [slug in found for found in judges.styles(array)]
    keeps_color = slug in judges.color_preserving_styles
    right = [v["shape"] == case[1]["shape"] and (not keeps_color or
                                                 v["color"] == case[1]["color"])
             for v, case in zip(judges.content(array), cases, strict=True)]
    return float(np.mean(detected)), float(np.mean(right))


def judge_style(service, judges, slug: str, n: int, steps: int,
                guidance: float | None = None, ref: str | None = None) -> tuple[float, float]:
    """One style LoRA (the pack's, or the file `ref`) at weight 1.0 on n held-out prompts
    naming no background."""
    cases = style_cases(slug, n)
    lora = ref or slug
    array = images_as_array([generate(service, p, HELD_OUT_SEED + i, [lora], steps, guidance)
                             for i, (p, _, _) in enumerate(cases)])
    return verdicts(judges, slug, array, cases)


def style_ceiling(judges, render, slug: str, n: int) -> tuple[float, float]:
    """The same judgement of the exact ground truth of judge_style's scenes, as `render` (the
    base's VAE) returns it: what a perfect LoRA could score."""
    cases = style_cases(slug, n)
    truth = np.stack([ground_truth(scene, [slug], HELD_OUT_SEED + i, IMAGE_SIZE)
                      for i, (_, _, scene) in enumerate(cases)])
    return verdicts(judges, slug, render(truth), cases)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prompts", type=int, default=200)
    parser.add_argument("--per-style", type=int, default=10)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--loras", help="judge the LoRA files in this folder (the pack's file "
                        "names) instead of the pack's own")
    parser.add_argument("--out", default=str(RESULTS / "starter_quality.md"))
    args = parser.parse_args()
    service = LoratlasService(ServiceConfig(device="cpu"))
    judges = Judges.load(JUDGES_DIR)

    base = judge_base(service, judges, args.prompts, args.steps)
    rows = []  # each style LoRA at weight 1.0 (those the pack holds)
    shipped = starter_loras()
    if args.loras:
        shipped = {slug: Path(args.loras) / file_name(slug) for slug in STYLES
                   if (Path(args.loras) / file_name(slug)).is_file()}
    render = vae_renderer(PIPELINE_DIR)
    for slug in sorted(STYLES):
        if slug in shipped:
            detected, right = judge_style(service, judges, slug, args.per_style, args.steps,
                                          ref=str(shipped[slug]) if args.loras else None)
            ceiling = style_ceiling(judges, render, slug, args.per_style)
            rows.append((slug, detected, right, slug in judges.color_preserving_styles,
                         ceiling))

    # the CLI, as a user runs it
    run = subprocess.run([sys.executable, "-m", "app.cli", "generate", "a red star", "--json",
                          "--out", str(ROOT / ".cache" / "bench-out")], capture_output=True,
                         text=True, cwd=ROOT)
    cli = json.loads(run.stdout)
    guidance = service.engine.base.guidance_scale
    lines = [
        "# Starter pack quality", "", machine_line(),
        f"Command: `.venv/bin/python benchmarks/starter_quality.py --prompts {args.prompts} "
        f"--per-style {args.per_style} --steps {args.steps}"
        + (f" --loras {args.loras} --out {args.out}" if args.loras else "") + "`", "",
        *([f"LoRAs: the files in `{args.loras}`, not the pack's.", ""] if args.loras else []),
        "Judges: `styles/data/starter/judges/` (their own held-out accuracy is in "
        "`accuracy.json` there). Prompts: one-object captions from held-out seeds "
        f"(≥ {HELD_OUT_SEED}), {args.steps} DPM-Solver steps, guidance {guidance:g} (the "
        "scale the starter pack recommends; see guidance.md for others), 64×64.", "",
        "## Base model", "",
        f"- shape right: {base['shape']:.3f}; color right: {base['color']:.3f}; "
        f"**both: {base['both']:.3f}** over {base['n']} prompts (target ≥ 0.80)",
        f"- the style judge finds some style in {base['any_style']:.3f} of these unstyled "
        "images (its false alarms; per style in the last column below)",
        f"- seconds per image in this loop: {base['seconds']:.2f}", "",
        "## Style LoRAs at weight 1.0", "",
        f"{args.per_style} held-out prompts per style, none naming a background (the style may "
        "replace it). *content right* = shape right, and color "
        "right where the style keeps color (✓ in the color column). *false alarms*: the share "
        "of the base model's own images (no LoRA, above) in which the judge finds the style: "
        "a detection rate near it says little. *ceiling*: the same two figures for the exact "
        "ground truth of the same scenes (what `apply_styles` draws) after the base model's "
        "VAE, the best any LoRA could render: where it is below a target, the judges, not the "
        "LoRA, put the target out of reach. Targets: style ≥ 0.80, content ≥ 0.70.", "",
        "| style | style detected | content right | color judged | false alarms | "
        "ceiling: style | ceiling: content |",
        "|---|---:|---:|:-:|---:|---:|---:|",
    ]
    for slug, detected, right, keeps_color, (top_style, top_content) in rows:
        lines.append(f"| {slug} | {detected:.2f} | {right:.2f} | {'✓' if keeps_color else ''} "
                     f"| {base['false_alarms'][slug]:.2f} | {top_style:.2f} | "
                     f"{top_content:.2f} |")
    if rows:
        met_style = sum(r[1] >= 0.8 for r in rows)
        met_content = sum(r[2] >= 0.7 for r in rows)
        lines += ["", f"Styles meeting the style target: {met_style}/{len(rows)}; content "
                  f"target: {met_content}/{len(rows)}. Mean style detection "
                  f"{np.mean([r[1] for r in rows]):.3f}, mean content "
                  f"{np.mean([r[2] for r in rows]):.3f}. Ceiling (ground truth through the "
                  f"VAE): mean style {np.mean([r[4][0] for r in rows]):.3f}, mean content "
                  f"{np.mean([r[4][1] for r in rows]):.3f}; styles whose ceiling itself misses "
                  f"the content target: {sum(r[4][1] < 0.7 for r in rows)}."]
    else:
        lines += ["", "Not measured: the pack holds no style LoRAs yet (`loratlas starter build "
                  "--stages loras`)."]
    lines += ["", "## CLI speed", "",
              f"`loratlas generate \"a red star\" --json`: seconds_per_image "
              f"**{cli['seconds_per_image']:.2f}** (target < 2 s; excludes process start-up "
              "and model loading)."]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
