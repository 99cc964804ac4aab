"""Generate images with several LoRAs at once, seeded, deterministic, with a recipe."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import torch
from PIL import Image

from fusion.adapters import ActiveLora, AdapterSet, FusedWeights, LayerScales
from fusion.base import BaseModel
from fusion.composite import composite_image
from fusion.recipe import Recipe, RecipeLora
from fusion.weights import WeightSchedule, validate_block_weights
from styles.errors import WrongFamily
from styles.lora import LoraFile


@dataclass
class LoraUse:
    """A loaded LoRA file and how to apply it in one request."""

    lora: LoraFile
    ref: str
    weight: float = 1.0
    block_weights: dict | None = None
    step_weights: list[float] | None = None

    def __post_init__(self) -> None:
        validate_block_weights(self.block_weights)


@dataclass
class GenerationOutput:
    images: list[Image.Image]
    recipes: list[Recipe]
    seconds: float
    seconds_per_image: float = field(init=False)

    def __post_init__(self) -> None:
        self.seconds_per_image = self.seconds / max(1, len(self.images))


class GenerationEngine:
    """One base pipeline and its adapters; one generation at a time (request-scoped weights)."""

    def __init__(self, base: BaseModel, adapter_capacity: int = 16) -> None:
        self.base = base
        self.adapters = AdapterSet(base.components, capacity=adapter_capacity)
        self._lock = threading.Lock()

    def recipe_for(self, prompt: str, uses: list[LoraUse], **settings) -> Recipe:
        loras = [RecipeLora(u.ref, u.lora.sha256, u.weight, u.block_weights, u.step_weights,
                            u.lora.alpha) for u in uses]
        return Recipe(prompt=prompt, base_model=self.base.source, base_family=self.base.family,
                      scheduler=type(self.base.pipe.scheduler).__name__, loras=loras, **settings)

    def generate(self, recipe: Recipe, uses: list[LoraUse],
                 on_step: callable | None = None, output_type: str = "pil") -> GenerationOutput:
        """Run the recipe with `uses` (same order as recipe.loras); one image per seed.

        `output_type="latent"` stops before the VAE (benchmarks, training)."""
        # 1. check the LoRAs fit this base
        for use in uses:
            if use.lora.family not in (self.base.family, "unknown"):
                raise WrongFamily(use.lora.path, f"it is a {use.lora.family} LoRA and the base "
                                  f"model is {self.base.family}.", "Pick a matching LoRA.")
        if len({u.lora.sha256 for u in uses}) < len(uses):
            raise ValueError("the same LoRA file is listed twice; give it once with one weight")
        start = time.perf_counter()
        with self._lock:
            # 2. activate this request's adapters only (injected outside inference mode, so
            #    their tensors stay ordinary tensors that training code can use too)
            with torch.no_grad():
                active = [ActiveLora(self.adapters.ensure(u.lora), u.lora) for u in uses]
            return self._generate_locked(recipe, uses, active, on_step, start, output_type)

    def _generate_locked(self, recipe: Recipe, uses: list[LoraUse], active: list[ActiveLora],
                         on_step, start: float, output_type: str) -> GenerationOutput:
        by_name = {a.adapter: use for a, use in zip(active, uses, strict=True)}
        schedule = WeightSchedule(by_name, recipe.steps, recipe.mode, recipe.switch_period)
        if recipe.apply == "fused" and any(u.step_weights for u in uses):
            raise ValueError("step weights change during denoising: use apply='adapters'")
        with torch.inference_mode():
            if recipe.mode == "composite" and active:
                applied = [LayerScales(self.adapters, [a], schedule) for a in active]
                applied.append(LayerScales(self.adapters, active, schedule))  # text encoders
            elif active:
                kind = FusedWeights if recipe.apply == "fused" else LayerScales
                applied = [kind(self.adapters, active, schedule)]
            else:
                applied = []
            try:
                images = [self._one_image(recipe, i, applied, on_step, output_type)
                          for i in range(recipe.num_images)]
            finally:
                for item in applied:
                    item.release()
        seconds = time.perf_counter() - start
        return GenerationOutput(images, [recipe.for_image(i) for i in range(len(images))], seconds)

    def _one_image(self, recipe: Recipe, index: int, applied: list, on_step,
                   output_type: str) -> Image.Image:
        # 3. seed per image, so any one image replays alone
        generator = torch.Generator("cpu").manual_seed(recipe.seed + index)
        if len(applied) > 1:  # composite: one pass per LoRA per step
            return composite_image(
                self.base.pipe, recipe.prompt, recipe.negative_prompt, recipe.steps,
                recipe.guidance_scale, recipe.width, recipe.height, generator, applied[:-1],
                applied[-1], lambda step: on_step and on_step(index, step, recipe.steps),
                output_type)
        scales = applied[0] if applied and isinstance(applied[0], LayerScales) else None
        if scales:
            scales.apply(0)

        def step_end(pipe, step: int, timestep, callback_kwargs: dict) -> dict:
            # 4. weights for the next step
            if scales:
                scales.apply(step + 1)
            if on_step:
                on_step(index, step + 1, recipe.steps)
            return callback_kwargs

        # 5. the diffusers pipeline's own denoising loop
        result = self.base.pipe(
            prompt=recipe.prompt, negative_prompt=recipe.negative_prompt or None,
            num_inference_steps=recipe.steps, guidance_scale=recipe.guidance_scale,
            width=recipe.width, height=recipe.height, generator=generator,
            callback_on_step_end=step_end, output_type=output_type,
        )
        return result.images[0]
