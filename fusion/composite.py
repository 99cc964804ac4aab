"""LoRA Composite (Zhong et al. 2024): at every step, one UNet pass per LoRA with only that LoRA
active; the guided noise predictions are averaged,
ε = mean_i ε_u,i + g·(mean_i ε_c,i − mean_i ε_u,i). It costs k UNet passes per step.

A denoising loop of its own, built from the pipeline's parts (encode_prompt, prepare_latents,
the scheduler, the VAE), as diffusers suggests for loops its pipelines do not offer.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from PIL import Image

from fusion.adapters import LayerScales


def begin_denoising(pipe, mode: str, prompt: str, negative_prompt: str, steps: int,
                    width: int, height: int, generator: torch.Generator,
                    text_scales: LayerScales | None) -> tuple[torch.Tensor, torch.Tensor]:
    """What a hand-written denoising loop needs first: the prompt encoded once (every LoRA's
    text-encoder part at its weight) as [uncond, cond], the scheduler's timesteps set, and the
    initial latents drawn exactly as the pipeline draws them."""
    if getattr(pipe, "text_encoder_2", None) is not None:
        raise ValueError(f"{mode} mode supports SD 1.x/2.x-style pipelines, not SDXL yet")
    device = pipe._execution_device
    if text_scales is not None:
        text_scales.apply(0)
    cond, uncond = pipe.encode_prompt(prompt, device, 1, True, negative_prompt or None)
    embeds = torch.cat([uncond, cond])
    pipe.scheduler.set_timesteps(steps, device=device)
    latents = pipe.prepare_latents(1, pipe.unet.config.in_channels, height, width, embeds.dtype,
                                   device, generator)
    return embeds, latents


def composite_image(pipe, prompt: str, negative_prompt: str, steps: int, guidance: float,
                    width: int, height: int, generator: torch.Generator,
                    scales: list[LayerScales], text_scales: LayerScales | None,
                    on_step: Callable[[int], None] | None = None,
                    output_type: str = "pil") -> Image.Image | torch.Tensor:
    """One image; `scales[i]` activates LoRA i alone (its own weight per layer and step)."""
    # 1.-2. prompt, timesteps, initial latents
    embeds, latents = begin_denoising(pipe, "composite", prompt, negative_prompt, steps, width,
                                      height, generator, text_scales)
    # 3. denoising loop: a guided prediction per LoRA, averaged
    for index, t in enumerate(pipe.scheduler.timesteps):
        model_input = pipe.scheduler.scale_model_input(torch.cat([latents] * 2), t)
        total = torch.zeros_like(latents)
        for scale in scales:
            scale.activate()
            scale.apply(index)
            uncond_eps, cond_eps = pipe.unet(model_input, t, encoder_hidden_states=embeds,
                                             return_dict=False)[0].chunk(2)
            total += uncond_eps + guidance * (cond_eps - uncond_eps)
        latents = pipe.scheduler.step(total / len(scales), t, latents, return_dict=False)[0]
        if on_step:
            on_step(index + 1)
    # 4. decode
    return finish_denoising(pipe, latents, output_type)


def finish_denoising(pipe, latents: torch.Tensor, output_type: str
                     ) -> Image.Image | torch.Tensor:
    """The end of a hand-written denoising loop: the latents, or the image decoded by the VAE
    in the pipeline's output type ("pil", "np")."""
    if output_type == "latent":
        return latents
    image = pipe.vae.decode(latents / pipe.vae.config.scaling_factor, return_dict=False)[0]
    return pipe.image_processor.postprocess(image, output_type=output_type)[0]
