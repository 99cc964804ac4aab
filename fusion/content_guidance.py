"""Content guidance: the base model's own guidance added to a request's, early in denoising.

A style LoRA can make the model stop reading the prompt. How much the UNet's loss rises when the
caption names the wrong shape was +108% for the starter base and +23% to +34% with an earlier
arrow, crescent-moon or lightning-bolt LoRA (t 200-499, "reliance" in
benchmarks/results/lora_recipe_ema0.99-change4.md), and the shapes drift. Classifier-free
guidance with the LoRAs on extrapolates along a direction the LoRA has weakened. This adds the
direction of the base model alone, the product-of-experts reading of composable diffusion
(Liu et al. 2022): with the LoRAs' guidance scale g and content guidance s,

    ε = ε_L(∅) + g·(ε_L(c) − ε_L(∅)) + s·(ε_B(c) − ε_B(∅))

where L is the UNet with the request's LoRAs and B the UNet with them bypassed (the same prompt
embeddings). It runs over the first steps only (`content_guidance_steps`, a share of the
steps: the high-noise ones that lay out the scene), so the late steps that draw a style's
texture are the LoRAs' alone; each such step costs one more UNet pass on the batch. A request
with no LoRA runs without it: there is nothing to bypass, and the base alone is what it keeps.
benchmarks/results/content_guidance.md measures it on the starter styles.
"""

from __future__ import annotations

from contextlib import ExitStack

import torch


def content_steps(steps: int, share: float) -> int:
    """How many of the first steps get content guidance (at least one)."""
    return max(1, min(steps, round(share * steps)))


class ContentGuidance:
    """A forward hook on the UNet that mixes in the base model's guidance while `step` is
    below `until`; `applied` are the request's weight appliers (each has `bypassed()`)."""

    def __init__(self, unet: torch.nn.Module, applied: list, scale: float,
                 guidance_scale: float, until: int) -> None:
        self.applied, self.scale, self.guidance_scale = applied, scale, guidance_scale
        self.until, self.step, self.passes = until, 0, 0
        self._inside = False
        self._handle = unet.register_forward_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs, output):
        if self._inside or self.step >= self.until:
            return output
        self._inside = True
        try:
            with ExitStack() as stack:
                for item in self.applied:
                    stack.enter_context(item.bypassed())
                base = module(*args, **kwargs)
        finally:
            self._inside = False
        self.passes += 1
        lora = output[0] if isinstance(output, tuple) else output.sample
        alone = base[0] if isinstance(base, tuple) else base.sample
        # the pipeline batches [unconditional; conditional] and forms u + g·(c − u): adding
        # (s/g)·(c_B − u_B) to the conditional half adds s·(c_B − u_B) to the guided result
        uncond, cond = lora.chunk(2)
        base_uncond, base_cond = alone.chunk(2)
        mixed = torch.cat([uncond, cond + self.scale / self.guidance_scale
                           * (base_cond - base_uncond)])
        if isinstance(output, tuple):
            return (mixed, *output[1:])
        output.sample = mixed
        return output

    def release(self) -> None:
        self._handle.remove()
