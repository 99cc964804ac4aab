"""Why the style LoRAs lose content, and why blending them in weight space cannot help.

Two measurements on the shipped starter LoRAs, no sampling, no judges:

1. **Shape-word reliance**: how much the UNet uses the prompt's shape when it denoises. On
   128 held-out one-object scenes, the diffusion loss with each image's own caption against
   the loss with the same caption naming another shape (same colour, same words otherwise),
   per band of timesteps. The rise is what the shape word is worth there. Every style keeps
   the shape (the judges read it in the ground truth of every style), so a LoRA that had
   learned its style on top of the base's reading of the prompt would keep most of the base's
   figure. For the base on unstyled scenes and for each LoRA (merged into the UNet) on its own
   style's ground truth.
2. **Overlap of the LoRAs' weight changes**: cosine similarity of every pair of LoRAs' full
   weight deltas (all modules, concatenated), and the largest per-module cosine. Near zero
   means the deltas barely share directions, so weight-space merging rules that remove
   interference between them (TIES, orthogonalising, per-column merging) have little to act on.

    .venv/bin/python benchmarks/lora_diagnostics.py
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import re
import time
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from common import RESULTS, machine_line

from styles.reader import read_lora
from styles.starter.base_model import diffusion_target
from styles.starter.data import to_tensor_layout
from styles.starter.looks import STYLES, apply_styles
from styles.starter.paths import LORA_DIR, PIPELINE_DIR
from styles.starter.style_loras import encode_captions, file_name
from styles.starter.world import SHAPES, caption, render_scene, sample_scene

BANDS = [(0, 200), (200, 500), (500, 800), (800, 1000)]
SCENES = 128


def scenes_with_swapped_shape(seed: int, slug: str | None
                              ) -> tuple[np.ndarray, list[str], list[str]]:
    """Ground-truth images (styled with `slug`, if any), their captions, and the same captions
    naming another shape: same wording (same synonym draws), same colour."""
    rng = np.random.default_rng(seed)
    images, own, swapped = [], [], []
    for _ in range(SCENES):
        scene = sample_scene(rng, 1)
        image = render_scene(scene)
        if slug:
            image = apply_styles(image, [slug], seed=int(rng.integers(1 << 30)), scene=scene)
        obj = scene.objects[0]
        other = str(rng.choice([shape for shape in SHAPES if shape != obj.shape]))
        wording = int(rng.integers(1 << 30))
        lie = dataclasses.replace(scene, objects=(dataclasses.replace(obj, shape=other),))
        images.append(image)
        own.append(caption(scene, np.random.default_rng(wording)))
        swapped.append(caption(lie, np.random.default_rng(wording)))
    return np.stack(images), own, swapped


def encode(pipe, images: np.ndarray, own: list[str], swapped: list[str]
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        latents = pipe.vae.encode(torch.from_numpy(to_tensor_layout(images))).latent_dist.mode()
        return (latents * pipe.vae.config.scaling_factor, encode_captions(pipe, own),
                encode_captions(pipe, swapped))


@contextlib.contextmanager
def with_lora(unet: torch.nn.Module, lora) -> Iterator[torch.nn.Module]:
    """The UNet with the LoRA merged in (W + scale · up @ down); the original weights are put
    back on exit."""
    modules = dict(unet.named_modules())
    saved = []
    for module in lora.modules.values():
        assert module.component == "unet", module.target
        weight = modules[module.path].weight
        saved.append((weight, weight.data))
        weight.data = weight.data + module.delta().to(weight.dtype)
    try:
        yield unet
    finally:
        for weight, original in saved:
            weight.data = original


def reliance(unet, noise, latents: torch.Tensor, hidden: torch.Tensor,
             swapped: torch.Tensor) -> list[tuple[float, float]]:
    """(loss with own captions, loss with the shape swapped) per timestep band."""
    generator = torch.Generator().manual_seed(1)
    out = []
    for low, high in BANDS:
        eps = torch.randn(latents.shape, generator=generator)
        t = torch.randint(low, high, (len(latents),), generator=generator)
        noisy, target = noise.add_noise(latents, eps, t), diffusion_target(noise, latents, eps, t)
        with torch.no_grad():
            own = F.mse_loss(unet(noisy, t, hidden).sample, target).item()
            other = F.mse_loss(unet(noisy, t, swapped).sample, target).item()
        out.append((own, other))
    return out


def rise(pair: tuple[float, float]) -> float:
    return (pair[1] - pair[0]) / pair[0]


def content_by_style() -> dict[str, float]:
    """The 'content right' column of starter_quality.md, if it has been run."""
    path = RESULTS / "starter_quality.md"
    rows = re.findall(r"^\| ([a-z-]+) \| [\d.]+ \| ([\d.]+) \|", path.read_text(), re.M) \
        if path.exists() else []
    return {slug: float(value) for slug, value in rows}


def spearman(a: list[float], b: list[float]) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def main() -> None:
    from diffusers import DDPMScheduler, StableDiffusionPipeline

    torch.set_num_threads(2)
    started = time.time()
    pipe = StableDiffusionPipeline.from_pretrained(str(PIPELINE_DIR), dtype=torch.float32)
    noise = DDPMScheduler.from_config(pipe.scheduler.config)
    slugs = sorted(STYLES)
    loras = {slug: read_lora(LORA_DIR / file_name(slug)) for slug in slugs}

    base = reliance(pipe.unet, noise, *encode(pipe, *scenes_with_swapped_shape(777, None)))
    rows = {}
    for index, slug in enumerate(slugs):
        batch = encode(pipe, *scenes_with_swapped_shape(800 + index, slug))
        with with_lora(pipe.unet, loras[slug]) as unet:
            rows[slug] = reliance(unet, noise, *batch)
        print(slug, [f"{rise(p):+.0%}" for p in rows[slug]], flush=True)

    deltas = {slug: {m.target: m.delta().flatten() for m in loras[slug].modules.values()}
              for slug in slugs}
    squares = {s: {t: float(d @ d) for t, d in deltas[s].items()} for s in slugs}
    pairs = []  # (cosine of the whole deltas, largest per-module cosine, a, b)
    for a, b in itertools.combinations(slugs, 2):
        shared = [t for t in deltas[a] if t in deltas[b]]
        dots = {t: float(deltas[a][t] @ deltas[b][t]) for t in shared}
        whole = sum(dots.values()) / (sum(squares[a].values()) * sum(squares[b].values())) ** 0.5
        per_module = max(dots[t] / max(squares[a][t] * squares[b][t], 1e-30) ** 0.5
                         for t in shared)
        pairs.append((whole, per_module, a, b))

    band_names = [f"t {low}–{high - 1}" for low, high in BANDS]
    lines = ["# Style LoRA diagnostics: shape-word reliance and weight overlap", "",
             machine_line(), "Command: `.venv/bin/python benchmarks/lora_diagnostics.py`", "",
             "## Shape-word reliance", "",
             f"{SCENES} held-out one-object scenes per row, captioned without style words. "
             "Each cell: how much the diffusion loss rises when the caption names another "
             "shape (same colour, same wording otherwise), i.e. what the shape word is "
             "worth to the model at those timesteps (of 1000; high t is noisy, where the "
             "shape is set). *base*: the starter base on unstyled scenes. Each style: its "
             "LoRA merged into the base, on that style's ground truth. *content*: the "
             "'content right' column of starter_quality.md, for reading the two together.", "",
             "| model | " + " | ".join(band_names) + " | content |",
             "|---|" + "---:|" * (len(BANDS) + 1),
             "| base, unstyled | " + " | ".join(f"{rise(p):+.0%}" for p in base) + " | |"]
    content = content_by_style()
    lines += [f"| {slug} | " + " | ".join(f"{rise(p):+.0%}" for p in rows[slug])
              + (f" | {content[slug]:.2f} |" if slug in content else " | |") for slug in slugs]
    noisy = {slug: float(np.mean([rise(p) for p in rows[slug][2:]])) for slug in slugs}
    base_noisy = float(np.mean([rise(p) for p in base[2:]]))
    lines += ["", f"At t ≥ 500 the shape word is worth {base_noisy:+.0%} to the base on unstyled "
              f"scenes and {np.median(list(noisy.values())):+.0%} (median) to a LoRA on its "
              f"own style (range {min(noisy.values()):+.0%} to {max(noisy.values()):+.0%})."]
    if len(content) == len(slugs):
        rho = spearman([noisy[s] for s in slugs], [content[s] for s in slugs])
        lines += [f"Rank correlation of that figure with 'content right' over the 28 styles: "
                  f"{rho:+.2f}."]
    cosines = [p[0] for p in pairs]
    top = sorted(pairs, reverse=True)[:3]
    lines += ["", "## Overlap of the LoRAs' weight changes", "",
              f"All {len(pairs)} pairs of the {len(slugs)} LoRAs: cosine of the full weight "
              f"deltas mean {np.mean(cosines):+.4f}, largest {max(cosines):+.4f} "
              f"({', '.join(f'{a} + {b} {c:+.3f}' for c, _, a, b in top)}). Largest cosine "
              f"of any single module's deltas, over all pairs: "
              f"{max(p[1] for p in pairs):+.3f} (median of the per-pair maxima "
              f"{np.median([p[1] for p in pairs]):+.3f}).", "",
              f"Wall time {time.time() - started:.0f} s."]
    (RESULTS / "lora_diagnostics.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
