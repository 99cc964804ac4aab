"""The starter library: one LoRA per world style, trained with PEFT on the starter base model
and written in the layouts real tools write (kohya with ss_*/modelspec.* metadata, diffusers),
a quarter of them with sparse metadata, as many community LoRAs are."""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.lora import LoraLayer

from styles.lora import LoraModule
from styles.starter.base_model import diffusion_loss
from styles.starter.data import to_tensor_layout, world_batch
from styles.starter.looks import STYLES
from styles.writers import save_diffusers, save_kohya

TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj",
           "ff.net.2", "conv1", "conv2"]
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
                     plain_captions: float = 0.75,
                     progress: Progress | None = None) -> list[LoraModule]:
    """Train a LoRA on the UNet (text encoder frozen) on ground-truth images of one style.

    Most captions leave the style words out (`plain_captions`), so the LoRA applies its style
    to any prompt at weight 1, as a community style LoRA does, instead of only waking up when
    the prompt already names the style. `pool` distinct scenes are drawn (800: 8 epochs in
    400 steps of 8); a pack trained on 4000 judged no better and its words view read worse
    (README, the starter pack)."""
    from diffusers import DDPMScheduler

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    with torch.no_grad():
        images, captions = world_batch(rng, pool, [slug], plain_captions=plain_captions)
        latents = pipe.vae.encode(torch.from_numpy(to_tensor_layout(images))).latent_dist.mode()
        latents = latents * pipe.vae.config.scaling_factor
        ids = pipe.tokenizer(captions, padding="max_length", max_length=77, truncation=True,
                             return_tensors="pt").input_ids
        hidden = torch.cat([pipe.text_encoder(ids[i:i + 256]).last_hidden_state
                            for i in range(0, len(ids), 256)])
    unet = copy.deepcopy(pipe.unet).float().train()
    unet.requires_grad_(False)
    config = LoraConfig(r=rank, lora_alpha=rank, target_modules=TARGETS,
                        init_lora_weights="gaussian")
    inject_adapter_in_model(config, unet, adapter_name="default")
    params = [p for n, p in unet.named_parameters() if "lora_" in n]
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    noise = DDPMScheduler.from_config(pipe.scheduler.config)  # the base's own schedule
    generator = torch.Generator().manual_seed(seed)
    for step in range(steps):
        index = torch.randint(0, pool, (batch,), generator=generator)
        loss = diffusion_loss(unet, noise, latents[index], hidden[index], generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if progress:
            progress(step + 1, steps, loss.item())
    return extract_modules(unet)


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


def style_metadata(slug: str, steps: int, rank: int) -> dict[str, str]:
    """What kohya sd-scripts / modelspec write, from the style's card; sparse ones get none."""
    spec = STYLES[slug]
    if layout_of(slug) == "sparse":
        return {"ss_network_dim": str(rank), "ss_network_alpha": str(rank)}
    tags = {tag: 10 for tag in spec.tags}
    metadata = {
        "ss_output_name": slug, "ss_network_module": "networks.lora",
        "ss_network_dim": str(rank), "ss_network_alpha": str(rank),
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


def save_style_lora(modules: list[LoraModule], folder: Path, slug: str, steps: int,
                    rank: int) -> Path:
    metadata = style_metadata(slug, steps, rank)
    path = folder / file_name(slug)
    if layout_of(slug) == "diffusers":
        adapter = {"unet.r": rank, "unet.lora_alpha": rank, "unet.target_modules": TARGETS}
        metadata["lora_adapter_metadata"] = json.dumps(adapter)
        return save_diffusers(modules, path, metadata, dtype=torch.float16)
    return save_kohya(modules, path, metadata, dtype=torch.float16)
