"""Starter pack quality, judged by the starter judges on freshly generated images.

- Base model: shape and color as prompted, on held-out one-object prompts (seed 10_000+).
- Each style LoRA at weight 1.0: its style detected, and the content still right (shape; and
  color where the style keeps color); beside it, the same judgement of the exact ground truth
  of the same scenes through the base model's VAE (the best the model could render: the
  judges' ceiling).
- Speed: seconds per image of `loratlas generate "a red star"` (a subprocess, as a user runs it).

Images come from the service, 16 prompts denoised together (`LoratlasService.generate_many`,
the images single requests give, tests/test_starter_e2e.py), styles spread over `--workers`
processes of one thread. Each style's shares get a 95% Wilson interval: with 40 images a share
of 0.70 is known to about ±0.14, so the table says where the images cannot tell.

    .venv/bin/python benchmarks/starter_quality.py [--prompts 200] [--per-style 10]
        [--workers 2] [--loras DIR --out FILE]   # --loras: other files, e.g. an older pack's
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from common import RESULTS, ROOT, ground_truth, images_as_array, machine_line

from app.service import GenerateRequest, LoraRequest, LoratlasService, ServiceConfig
from app.web_views import recommended_text
from fusion.base import recommended_guidance
from styles.safe_read import sha256_file
from styles.starter.judges import Judges, vae_renderer
from styles.starter.looks import STYLES
from styles.starter.paths import (
    IMAGE_SIZE,
    JUDGES_DIR,
    PIPELINE_DIR,
    starter_loras,
    starter_recommendations,
)
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


def generate(service: LoratlasService, cases: list[str], seeds: list[int], loras=(),
             steps: int = 20, guidance: float | None = None, chunk: int = 16,
             weight: float = 1.0, **settings) -> list:
    """One image per prompt and seed through the service, `chunk` prompts denoised together
    (`generate_many`: each image is the one a single request gives); every LoRA (a slug or
    a file) at `weight`; `settings`: other GenerateRequest fields."""
    requests = [GenerateRequest(prompt=prompt, seed=seed, steps=steps, guidance_scale=guidance,
                                loras=[LoraRequest(ref, weight) for ref in loras], **settings)
                for prompt, seed in zip(cases, seeds, strict=True)]
    return [image for i in range(0, len(requests), chunk)
            for image in service.generate_many(requests[i:i + chunk])]


def judge_base(service, judges, n: int, steps: int, guidance: float | None = None) -> dict:
    """The base model alone on n held-out prompts: content right, and the styles the judge
    wrongly finds in these unstyled images (its false alarms, per style)."""
    cases = prompts(n, HELD_OUT_SEED)
    started = time.time()
    images = generate(service, [p for p, _ in cases],
                      [HELD_OUT_SEED + i for i in range(len(cases))], steps=steps,
                      guidance=guidance)
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
                guidance: float | None = None, ref: str | None = None,
                **settings) -> tuple[float, float]:
    """One style LoRA (the pack's, or the file `ref`) at weight 1.0 on n held-out prompts
    naming no background; `settings`: other GenerateRequest fields (unset: as a user gets it,
    with the settings the style recommends)."""
    cases = style_cases(slug, n)
    lora = ref or slug
    array = images_as_array(generate(service, [p for p, _, _ in cases],
                                     [HELD_OUT_SEED + i for i in range(len(cases))], [lora],
                                     steps, guidance, **settings))
    return verdicts(judges, slug, array, cases)


def style_ceiling(judges, render, slug: str, n: int) -> tuple[float, float]:
    """The same judgement of the exact ground truth of judge_style's scenes, as `render` (the
    base's VAE) returns it: what a perfect LoRA could score."""
    cases = style_cases(slug, n)
    truth = np.stack([ground_truth(scene, [slug], HELD_OUT_SEED + i, IMAGE_SIZE)
                      for i, (_, _, scene) in enumerate(cases)])
    return verdicts(judges, slug, render(truth), cases)


def wilson(share: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """The 95% Wilson score interval of a share measured on n images."""
    centre = (share + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(share * (1 - share) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def call(share: float, n: int, target: float) -> str:
    """✓ when the interval is above the target, ✗ when below, ? when the images cannot tell."""
    low, high = wilson(share, n)
    return "✓" if low >= target else "✗" if high < target else "?"


_worker: tuple | None = None


def _start_worker() -> None:
    """One process's service, judges and VAE renderer, on one thread."""
    global _worker
    import torch

    torch.set_num_threads(1)
    _worker = (LoratlasService(ServiceConfig(device="cpu")), Judges.load(JUDGES_DIR),
               vae_renderer(PIPELINE_DIR))


def _base_job(n: int, steps: int) -> dict:
    service, judges, _ = _worker
    return judge_base(service, judges, n, steps)


def _style_job(slug: str, ref: str | None, n: int, steps: int) -> tuple:
    service, judges, render = _worker
    detected, right = judge_style(service, judges, slug, n, steps, ref=ref)
    return (slug, detected, right, slug in judges.color_preserving_styles,
            style_ceiling(judges, render, slug, n))


def _unguided_job(slug: str, n: int, steps: int) -> tuple[float, float]:
    """A style that recommends settings, without them: content guidance off, the pack's
    guidance scale."""
    service, judges, _ = _worker
    return judge_style(service, judges, slug, n, steps, recommended_guidance(PIPELINE_DIR),
                       content_guidance=0.0)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prompts", type=int, default=200)
    parser.add_argument("--per-style", type=int, default=10)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2, help="processes, one thread each")
    parser.add_argument("--loras", help="judge the LoRA files in this folder (the pack's file "
                        "names) instead of the pack's own")
    parser.add_argument("--out", default=str(RESULTS / "starter_quality.md"))
    args = parser.parse_args()
    started = time.time()
    shipped = starter_loras()
    if args.loras:
        shipped = {slug: Path(args.loras) / file_name(slug) for slug in STYLES
                   if (Path(args.loras) / file_name(slug)).is_file()}
    slugs = [slug for slug in sorted(STYLES) if slug in shipped]
    # the settings a style recommends follow its file (LoratlasService.style_recommendations)
    recommended = {slug: settings for slug, (path, settings) in starter_recommendations().items()
                   if slug in shipped and sha256_file(path) == sha256_file(shipped[slug])}
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(args.workers, mp_context=context,
                             initializer=_start_worker) as pool:
        base_job = pool.submit(_base_job, args.prompts, args.steps)
        # a style that recommends settings runs with them (as `generate --lora SLUG` does),
        # and without them too, to show what they buy
        unguided = {slug: pool.submit(_unguided_job, slug, args.per_style, args.steps)
                    for slug in slugs if slug in recommended}
        rows = list(pool.map(_style_job, slugs,  # each style LoRA at weight 1.0
                             [str(shipped[s]) if args.loras else None for s in slugs],
                             [args.per_style] * len(slugs), [args.steps] * len(slugs)))
        base = base_job.result()
        unguided = {slug: job.result() for slug, job in unguided.items()}
    minutes = (time.time() - started) / 60

    # the CLI, as a user runs it
    run = subprocess.run([sys.executable, "-m", "app.cli", "generate", "a red star", "--json",
                          "--out", str(ROOT / ".cache" / "bench-out")], capture_output=True,
                         text=True, cwd=ROOT)
    cli = json.loads(run.stdout)
    guidance = recommended_guidance(PIPELINE_DIR)
    lines = [
        "# Starter pack quality", "", machine_line(),
        f"Command: `.venv/bin/python benchmarks/starter_quality.py --prompts {args.prompts} "
        f"--per-style {args.per_style} --steps {args.steps} --workers {args.workers}"
        + (f" --loras {args.loras} --out {args.out}" if args.loras else "")
        + f"` ({minutes:.0f} min)", "",
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
        f"- seconds per image in this loop: {base['seconds']:.2f} (16 prompts denoised "
        "together, one thread: the CLI's figure below is one image on two)", "",
        "## Style LoRAs at weight 1.0", "",
        f"{args.per_style} held-out prompts per style, none naming a background (the style may "
        "replace it). *content right* = shape right, and color "
        "right where the style keeps color (✓ in the color column). *false alarms*: the share "
        "of the base model's own images (no LoRA, above) in which the judge finds the style: "
        "a detection rate near it says little. *ceiling*: the same two figures for the exact "
        "ground truth of the same scenes (what `apply_styles` draws) after the base model's "
        "VAE, the best any LoRA could render: where it is below a target, the judges, not the "
        "LoRA, put the target out of reach. Targets: style ≥ 0.80, content ≥ 0.70. *both "
        f"targets*: ✓ where the 95% interval of each share (Wilson, {args.per_style} images) "
        "is above its target, ✗ where either interval is below, ? where these images cannot "
        "tell. *recommended*: the settings the style recommends, which a request naming it "
        "alone gets (`styles/starter/build.py` GENERATION_DEFAULTS, chosen on validation "
        "prompts: content_guidance_choice.md and content_guidance_guidance1.5.md, then "
        "content_guidance_guidance1.25.md, kept where they held on a further validation set: "
        "content_guidance_confirm*.md); *without them*: "
        f"the same prompts and seeds with content guidance off at guidance {guidance:g}.", "",
        "| style | style detected | content right | both targets | recommended | "
        "without them | color judged | false alarms | ceiling: style | ceiling: content |",
        "|---|---:|---:|:-:|:-:|---:|:-:|---:|---:|---:|",
    ]
    calls = {}
    for slug, detected, right, keeps_color, (top_style, top_content) in rows:
        both = {call(detected, args.per_style, 0.8), call(right, args.per_style, 0.7)}
        calls[slug] = "✗" if "✗" in both else "?" if "?" in both else "✓"
        guided = recommended_text(recommended.get(slug, {}))
        without = "{:.2f} / {:.2f}".format(*unguided[slug]) if slug in unguided else ""
        lines.append(f"| {slug} | {detected:.2f} | {right:.2f} | {calls[slug]} | {guided} | "
                     f"{without} | {'✓' if keeps_color else ''} | "
                     f"{base['false_alarms'][slug]:.2f} | {top_style:.2f} | {top_content:.2f} |")
    if rows:
        met_style = sum(r[1] >= 0.8 for r in rows)
        met_content = sum(r[2] >= 0.7 for r in rows)
        lines += ["", f"Styles meeting the style target: {met_style}/{len(rows)}; content "
                  f"target: {met_content}/{len(rows)}. Mean style detection "
                  f"{np.mean([r[1] for r in rows]):.3f}, mean content "
                  f"{np.mean([r[2] for r in rows]):.3f}. Ceiling (ground truth through the "
                  f"VAE): mean style {np.mean([r[4][0] for r in rows]):.3f}, mean content "
                  f"{np.mean([r[4][1] for r in rows]):.3f}; styles whose ceiling itself misses "
                  f"the content target: {sum(r[4][1] < 0.7 for r in rows)}.",
                  "", f"Both targets, as measured: {sum(r[1] >= 0.8 and r[2] >= 0.7 for r in rows)}"
                  f"/{len(rows)} styles. Beyond doubt at 95% per style: met by "
                  f"{sum(c == '✓' for c in calls.values())}, missed by "
                  f"{sum(c == '✗' for c in calls.values())}; "
                  f"{sum(c == '?' for c in calls.values())} too close to the targets for "
                  f"{args.per_style} images to tell."]
        if unguided:
            plain = [unguided.get(r[0], r[1:3]) for r in rows]
            met = sum(a >= 0.8 and b >= 0.7 for a, b in plain)
            lines += ["", "Without the recommended settings (content guidance off, guidance "
                      f"{guidance:g} for all): both targets {met}"
                      f"/{len(rows)}; mean style {np.mean([a for a, _ in plain]):.3f}, mean "
                      f"content {np.mean([b for _, b in plain]):.3f}."]
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
