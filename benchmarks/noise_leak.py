"""Does the base model take an image's overall colour from the seed instead of from the prompt
and the LoRAs?

Under SD's noise schedule the last training step keeps sqrt(alpha_bar) = 0.068 of the image, so
on the starter's 16×16 latent the mean of each channel of x_T still tells the model the
background. The model learns to read it, and at sampling time, from pure noise, the background
follows the seed. Measured per base: the seeds' channel means are shifted by exactly what that
schedule leaks from a style's images (0.068 × the style's mean latent, a shift of the size the
model saw in training), nothing else changes (prompt, seed, no LoRA), and we count how much
the images change and how often the style judge now finds a style the base never learned.

    .venv/bin/python benchmarks/noise_leak.py [--pipelines DIR ...] [--prompts 16]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from common import RESULTS, ROOT, images_as_array, machine_line
from starter_quality import prompts

from styles.starter.base_model import NOISE
from styles.starter.data import to_tensor_layout, world_batch
from styles.starter.judges import Judges
from styles.starter.paths import JUDGES_DIR, PIPELINE_DIR

STYLES = ("neon-night", "chalkboard", "sepia", "blueprint", "noir")  # background-changing
SEED = 10_000


def leak_of(alpha_bar_last: float) -> float:
    return float(np.sqrt(alpha_bar_last) / np.sqrt(1 - alpha_bar_last))


def measure(folder: Path, judges: Judges, count: int) -> dict:
    from diffusers import DDPMScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(folder), dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    shift = leak_of(float(DDPMScheduler(**NOISE).alphas_cumprod[-1]))
    cases = prompts(count, SEED, background=False)
    shape = (1, pipe.unet.config.in_channels, pipe.unet.config.sample_size,
             pipe.unet.config.sample_size)

    def render(offset: torch.Tensor) -> np.ndarray:
        images = []
        for i, (prompt, _) in enumerate(cases):
            noise = torch.randn(shape, generator=torch.Generator().manual_seed(SEED + i))
            with torch.no_grad():
                images.append(pipe(prompt, latents=noise + offset, num_inference_steps=20,
                                   guidance_scale=7.5, height=64, width=64).images[0])
        return images_as_array(images)

    plain = render(torch.zeros(1))
    rows = {}
    for slug in STYLES:
        truth, _ = world_batch(np.random.default_rng(5), 64, [slug])
        with torch.no_grad():
            latents = pipe.vae.encode(torch.from_numpy(to_tensor_layout(truth))).latent_dist.mode()
        mean = (latents * pipe.vae.config.scaling_factor).mean(dim=(0, 2, 3), keepdim=True)
        shifted = render(shift * mean)
        rows[slug] = {
            "pixel_change": float(np.abs(shifted - plain).mean() * 255),
            "found_plain": float(np.mean([slug in f for f in judges.styles(plain)])),
            "found_shifted": float(np.mean([slug in f for f in judges.styles(shifted)])),
        }
    return {"schedule": {k: pipe.scheduler.config[k] for k in
                         ("prediction_type", "rescale_betas_zero_snr", "timestep_spacing")},
            "styles": rows}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pipelines", type=Path, nargs="+", default=[PIPELINE_DIR])
    parser.add_argument("--prompts", type=int, default=16)
    args = parser.parse_args()
    torch.set_num_threads(2)
    started = time.time()
    judges = Judges.load(JUDGES_DIR)
    results = {str(p): measure(p, judges, args.prompts) for p in args.pipelines}
    lines = ["# Does the seed choose the background? (the noise-schedule leak)", "",
             machine_line(),
             "Command: `.venv/bin/python benchmarks/noise_leak.py --pipelines "
             + " ".join(_short(p) for p in args.pipelines) + "`", "",
             __doc__.split("\n\n")[1].replace("\n", " "), "",
             f"{args.prompts} held-out one-object prompts (seeds ≥ {SEED}), no LoRA, 20 steps, "
             "guidance 7.5. *change*: mean absolute pixel difference between the plain and the "
             "shifted seeds (0–255). *found*: share of images in which the style judge finds "
             "the style, plain → shifted.", ""]
    for folder, result in results.items():
        lines += [f"## `{_short(Path(folder))}` ({json.dumps(result['schedule'])})", "",
                  "| style whose leak is added | change | found (plain → shifted) |",
                  "|---|---:|---:|"]
        for slug, row in result["styles"].items():
            lines.append(f"| {slug} | {row['pixel_change']:.1f} | "
                         f"{row['found_plain']:.2f} → {row['found_shifted']:.2f} |")
        rows = result["styles"].values()
        lines += ["", f"Mean change {np.mean([r['pixel_change'] for r in rows]):.1f}; style "
                  f"found {np.mean([r['found_plain'] for r in rows]):.2f} → "
                  f"{np.mean([r['found_shifted'] for r in rows]):.2f}.", ""]
    lines.append(f"Wall time {time.time() - started:.0f} s.")
    (RESULTS / "noise_leak.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def _short(path: Path) -> str:
    path = path.resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


if __name__ == "__main__":
    main()
