"""Frequency profile of a LoRA: how the energy of the change it makes spreads over spatial
frequencies. Computed once per file (at ingest), stored with the style, used by `cmlora` to
order and partition LoRAs and by `gated` as a prior and as the LoRA's input vector.

The profile is the share of spectral energy in `bins` radial bands of the 2-D FFT of
(image with the LoRA − image without it), summed over colour channels and over a few fixed
probe prompts and seeds; band i covers radii [i, i+1)/bins of the Nyquist radius (corner
frequencies beyond it fall in the last band). It sums to 1.

CMLoRA's own profiling (fft_analysis.ipynb, docs/research/fusion_algorithms.md §4a) differs:
it takes the log amplitude of the single-LoRA image itself (not of the change), normalises the
radial profile by its maximum and scores the mean above radius 72 of 362 at 512². We keep its
cut-off, expressed relative to the Nyquist radius (72/256 ≈ 0.28), but measure the change the
LoRA makes, so a LoRA that only recolours scores low even on a busy base image.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

PROFILE_BINS = 16
HIGH_FREQUENCY_CUTOFF = 72 / 256  # CMLoRA's r >= 72 at 512² (Nyquist radius 256), relative
PROBE_PROMPTS = ("a red star", "a blue circle on a plain background", "a green triangle",
                 "a yellow square in the middle")


def radial_energy(delta: torch.Tensor, bins: int = PROFILE_BINS) -> torch.Tensor:
    """Share of FFT energy of `delta` (..., H, W) in `bins` radial bands (sums to 1).

    Leading dimensions (images, channels) are summed over. An all-zero delta gives zeros."""
    if delta.ndim < 2:
        raise ValueError("delta must have at least two (spatial) dimensions")
    delta = delta.double()
    height, width = delta.shape[-2:]
    power = torch.fft.fft2(delta).abs().square().reshape(-1, height, width).sum(0)
    fy = torch.fft.fftfreq(height, dtype=torch.float64)[:, None]
    fx = torch.fft.fftfreq(width, dtype=torch.float64)[None, :]
    radius = torch.sqrt(fy.square() + fx.square()) / 0.5  # 1.0 = Nyquist
    index = torch.clamp((radius * bins).long(), max=bins - 1)
    energy = torch.zeros(bins, dtype=torch.float64).index_add_(0, index.flatten(),
                                                                power.flatten())
    total = energy.sum()
    return (energy / total).float() if total > 0 else energy.float()


def high_frequency_score(profile: Sequence[float],
                         cutoff: float = HIGH_FREQUENCY_CUTOFF) -> float:
    """Share of a profile's energy at or above `cutoff` × the Nyquist radius (0..1)."""
    values = np.asarray(profile, dtype=np.float64)
    if values.size == 0:
        raise ValueError("empty frequency profile")
    first = math.ceil(cutoff * values.size - 1e-9)
    total = values.sum()
    return float(values[first:].sum() / total) if total > 0 else 0.0


def frequency_profile_of_images(with_lora: np.ndarray | torch.Tensor,
                                without_lora: np.ndarray | torch.Tensor,
                                bins: int = PROFILE_BINS) -> list[float]:
    """Profile from paired images (n, H, W, C) or (H, W, C), with and without the LoRA."""
    a = torch.as_tensor(np.asarray(with_lora, dtype=np.float32))
    b = torch.as_tensor(np.asarray(without_lora, dtype=np.float32))
    if a.shape != b.shape:
        raise ValueError(f"image shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    delta = (a - b).movedim(-1, -3)  # channels before the spatial dimensions
    return [round(float(v), 6) for v in radial_energy(delta, bins)]


def frequency_profile(engine, use, prompts: Sequence[str] = PROBE_PROMPTS, seed: int = 0,
                      steps: int = 10, size: int | None = None, bins: int = PROFILE_BINS,
                      baselines: dict | None = None) -> list[float]:
    """The frequency profile of one LoRA (a fusion.engine.LoraUse) on this engine's base.

    The LoRA runs at weight 1.0 with no block or step weights (a property of the file, not of
    a request); the same prompts, seed and steps give the same profile. `baselines` caches
    the images without the LoRA across calls."""
    from fusion.engine import LoraUse

    size = size or engine.base.pipe.unet.config.sample_size * engine.base.pipe.vae_scale_factor
    baselines = {} if baselines is None else baselines

    def image(prompt: str, uses: list) -> np.ndarray:
        recipe = engine.recipe_for(prompt, uses, seed=seed, steps=steps, width=size,
                                   height=size, guidance_scale=7.5)
        return engine.generate(recipe, uses, output_type="np").images[0]

    with_lora, without_lora = [], []
    for prompt in prompts:
        key = (prompt, seed, steps, size)
        if key not in baselines:
            baselines[key] = image(prompt, [])
        without_lora.append(baselines[key])
        with_lora.append(image(prompt, [LoraUse(use.lora, use.ref, 1.0)]))
    return frequency_profile_of_images(np.stack(with_lora), np.stack(without_lora), bins)
