"""The starter library: one LoRA per world style, trained with PEFT on the starter base model
and written in the layouts real tools write (kohya with ss_*/modelspec.* metadata, diffusers),
a quarter of them with sparse metadata, as many community LoRAs are."""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.lora import LoraLayer

from styles.lora import LoraModule
from styles.starter.base_model import diffusion_loss, diffusion_target
from styles.starter.data import (
    to_tensor_layout,
    world_batch,
    world_batch_with_change,
    world_batch_with_swaps,
)
from styles.starter.looks import STYLES
from styles.writers import save_diffusers, save_kohya

TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj",
           "ff.net.2", "conv1", "conv2"]
TEXT_KV = ["attn2.to_k", "attn2.to_v"]  # where the UNet reads the prompt's words
# Which of its trained UNet blocks a style's file keeps (BuildPlan.lora_tuning "blocks"), by
# top-level block: a factor per block, 1 where not named, 0 drops the block's modules.
# "decoder" keeps only the up blocks, which render the image from the layout the down blocks
# read; "half-encoder" halves the down blocks' change: benchmarks/lora_strength.py chooses per
# style (results/lora_strength_blocks.md: glitch, halftone, pop-art and noir use one).
BLOCK_PROFILES: dict[str, dict[str, float]] = {
    "all": {},
    "decoder": {"down_blocks": 0.0, "mid_block": 0.0},
    "half-encoder": {"down_blocks": 0.5},
}
Progress = Callable[[int, int, float], None]


def layout_of(slug: str) -> str:
    """kohya (most), diffusers (some), or sparse (a hash-like name, no tags): fixed per slug."""
    index = sorted(STYLES).index(slug)
    if index % 4 == 3:
        return "sparse"
    return "diffusers" if index % 4 == 1 and index < 16 else "kohya"


def file_name(slug: str) -> str:
    if layout_of(slug) == "sparse":
        return "lora_" + hashlib.sha1(slug.encode()).hexdigest()[:10] + ".safetensors"
    return f"{slug}.safetensors"


def train_style_lora(pipe, slug: str, steps: int = 200, batch: int = 16, rank: int = 8,
                     lr: float = 1e-3, seed: int = 0, pool: int = 800,
                     plain_captions: float = 0.75, shape_weight: float = 0.0,
                     ema: float = 0.0, change_weight: float = 0.0, text_kv: bool = True,
                     progress: Progress | None = None) -> list[LoraModule]:
    """Train a LoRA on the UNet (text encoder frozen) on ground-truth images of one style.

    Most captions leave the style words out (`plain_captions`), so the LoRA applies its style
    to any prompt at weight 1, as a community style LoRA does, instead of only waking up when
    the prompt already names the style. `pool` distinct scenes are drawn (800: 8 epochs in
    400 steps of 8); a pack trained on 4000 judged no better and its words view read worse
    (README, the starter pack). `shape_weight` > 0 adds `shape_word_loss` (one more UNet
    pass per step); `ema` > 0 returns an exponential moving average of the LoRA weights with
    that decay (warmed up over the first steps) instead of the last step's;
    `change_weight` > 0 weighs each latent pixel's loss by where the style changed the image
    (`change_weights`), so a small motif counts as much as a texture over the whole frame;
    `text_kv=False` leaves the cross-attention's key and value projections (where the UNet
    reads the prompt's words) as the base has them (benchmarks/lora_recipe.py measures each)."""
    from diffusers import DDPMScheduler

    if shape_weight and change_weight:
        raise ValueError("shape_weight and change_weight are separate experiments: set one")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    with torch.no_grad():
        if shape_weight:
            images, captions, swapped = world_batch_with_swaps(
                rng, np.random.default_rng(seed + 1), pool, [slug], plain_captions)
        elif change_weight:
            images, captions, changes = world_batch_with_change(rng, pool, [slug],
                                                                plain_captions)
            swapped = []
        else:
            images, captions = world_batch(rng, pool, [slug], plain_captions=plain_captions)
            swapped = []
        latents = pipe.vae.encode(torch.from_numpy(to_tensor_layout(images))).latent_dist.mode()
        latents = latents * pipe.vae.config.scaling_factor
        hidden, lies = encode_captions(pipe, captions), encode_captions(pipe, swapped)
        weights = change_weights(changes, latents.shape[-1], change_weight) \
            if change_weight else None
    unet = copy.deepcopy(pipe.unet).float().train()
    unet.requires_grad_(False)
    config = LoraConfig(r=rank, lora_alpha=rank, target_modules=TARGETS,
                        exclude_modules=None if text_kv else TEXT_KV,
                        init_lora_weights="gaussian")
    inject_adapter_in_model(config, unet, adapter_name="default")
    params = [p for n, p in unet.named_parameters() if "lora_" in n]
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    average = [p.detach().clone() for p in params] if ema else []
    noise = DDPMScheduler.from_config(pipe.scheduler.config)  # the base's own schedule
    generator = torch.Generator().manual_seed(seed)
    for step in range(steps):
        index = torch.randint(0, pool, (batch,), generator=generator)
        if shape_weight:
            fit, shape = shape_word_loss(unet, noise, latents[index], hidden[index],
                                         lies[index], generator)
            loss = fit + shape_weight * shape
        else:
            loss = diffusion_loss(unet, noise, latents[index], hidden[index], generator,
                                  None if weights is None else weights[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if ema:
            with torch.no_grad():
                for mean, p in zip(average, params, strict=True):
                    mean.lerp_(p, 1.0 - min(ema, (1 + step) / (10 + step)))
        if progress:
            progress(step + 1, steps, loss.item())
    if ema:
        with torch.no_grad():
            for mean, p in zip(average, params, strict=True):
                p.copy_(mean)
    return extract_modules(unet)


def change_weights(changes: np.ndarray, size: int, strength: float) -> torch.Tensor:
    """Per-latent-pixel loss weights (n, 1, size, size) from where the style changed each
    image ((n, H, W), `world_batch_with_change`): 1 + strength × the change (pooled to the
    latent grid and scaled to [0, 1] per image), normalised to a mean of 1 per image, so the
    total weight of an image, and with it the step size, is what it was."""
    change = F.adaptive_avg_pool2d(torch.from_numpy(changes)[:, None], size)
    peak = change.flatten(1).amax(1).clamp_min(1e-6).reshape(-1, 1, 1, 1)
    weights = 1.0 + strength * change / peak
    return weights / weights.mean(dim=(1, 2, 3), keepdim=True)


def encode_captions(pipe, captions: list[str]) -> torch.Tensor:
    """The frozen text encoder's states of `captions`, 256 at a time."""
    if not captions:
        return torch.empty(0)
    ids = pipe.tokenizer(captions, padding="max_length", max_length=77, truncation=True,
                         return_tensors="pt").input_ids
    return torch.cat([pipe.text_encoder(ids[i:i + 256]).last_hidden_state
                      for i in range(0, len(ids), 256)])


def shape_word_loss(unet, noise, x0: torch.Tensor, cond: torch.Tensor, lies: torch.Tensor,
                    generator: torch.Generator, margin: float = 0.5, from_t: int = 300
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """The denoising loss with each image's own caption, and a hinge that asks the caption
    naming the wrong shape (`lies`, same noise and timestep) to fit at least `margin` worse,
    relative to the own caption's error, at timesteps ≥ `from_t`, where the shape is still
    being decided (benchmarks/lora_diagnostics.py: the base's loss rises 108–139% there, the
    shipped LoRAs' 20–40%). Only the rise below the margin is penalised, so the model is not
    rewarded for fitting the wrong caption ever worse."""
    n = len(x0)
    eps = torch.randn(x0.shape, generator=generator)
    t = torch.randint(0, noise.config.num_train_timesteps, (n,), generator=generator)
    noisy, target = noise.add_noise(x0, eps, t), diffusion_target(noise, x0, eps, t)
    both = unet(torch.cat([noisy, noisy]), torch.cat([t, t]), torch.cat([cond, lies])).sample
    own = ((both[:n] - target) ** 2).mean(dim=(1, 2, 3))
    wrong = ((both[n:] - target) ** 2).mean(dim=(1, 2, 3))
    rise = (wrong - own) / own.detach()
    return own.mean(), (F.relu(margin - rise) * (t >= from_t)).mean()


def extract_modules(unet: torch.nn.Module, adapter: str = "default") -> list[LoraModule]:
    """The trained PEFT adapter as LoRA modules (UNet paths, exact factors)."""
    modules = []
    for path, layer in unet.named_modules():
        if isinstance(layer, LoraLayer) and adapter in layer.lora_A:
            down = layer.lora_A[adapter].weight.detach().clone()
            up = layer.lora_B[adapter].weight.detach().clone()
            kind = "conv" if down.ndim == 4 else "linear"
            modules.append(LoraModule(f"unet.{path}", kind, down, up,
                                      float(layer.scaling[adapter])))
    return modules


def style_metadata(slug: str, steps: int, rank: int, alpha: float | None = None) -> dict[str, str]:
    """What kohya sd-scripts / modelspec write, from the style's card; sparse ones get none.
    `alpha`: the network alpha the file's tensors carry (default: the rank, scale 1)."""
    spec = STYLES[slug]
    alpha = f"{rank if alpha is None else alpha:g}"
    if layout_of(slug) == "sparse":
        return {"ss_network_dim": str(rank), "ss_network_alpha": alpha}
    tags = {tag: 10 for tag in spec.tags}
    metadata = {
        "ss_output_name": slug, "ss_network_module": "networks.lora",
        "ss_network_dim": str(rank), "ss_network_alpha": alpha,
        "ss_base_model_version": "loratlas-starter", "ss_max_train_steps": str(steps),
        "ss_tag_frequency": json.dumps({f"10_{slug}": tags}),
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": "loratlas-starter/lora",
        "modelspec.implementation": "diffusers", "modelspec.title": spec.name,
        "modelspec.description": spec.description, "modelspec.tags": ", ".join(spec.tags),
    }
    if spec.trigger:
        metadata["modelspec.trigger_phrase"] = spec.trigger
    return metadata


def with_blocks(modules: list[LoraModule], blocks: str = "all") -> list[LoraModule]:
    """The modules a block profile (`BLOCK_PROFILES`) keeps, each scaled by its block's factor
    (UNet modules only: a text-encoder module keeps its scale)."""
    factors = BLOCK_PROFILES[blocks]
    out = []
    for module in modules:
        factor = factors.get(module.path.split(".", 1)[0], 1.0) \
            if module.component == "unet" else 1.0
        if factor:
            out.append(replace(module, scale=module.scale * factor) if factor != 1 else module)
    return out


def save_style_lora(modules: list[LoraModule], folder: Path, slug: str, steps: int,
                    rank: int, strength: float = 1.0, blocks: str = "all") -> Path:
    """The style's file in its layout. `strength` is carried by the file, so that weight 1.0
    gives it (BuildPlan.lora_tuning): as the alpha in kohya's layout (alpha / rank scales the
    delta), folded into the up factors in diffusers' (whose adapter metadata then says scale
    1, as diffusers writes it). `blocks` names the UNet blocks it keeps (`BLOCK_PROFILES`)."""
    modules = [replace(module, scale=module.scale * strength)
               for module in with_blocks(modules, blocks)]
    path = folder / file_name(slug)
    if layout_of(slug) == "diffusers":
        metadata = style_metadata(slug, steps, rank)
        adapter = {"unet.r": rank, "unet.lora_alpha": rank, "unet.target_modules": TARGETS}
        metadata["lora_adapter_metadata"] = json.dumps(adapter)
        return save_diffusers(modules, path, metadata, dtype=torch.float16)
    return save_kohya(modules, path, style_metadata(slug, steps, rank, rank * strength),
                      dtype=torch.float16)
