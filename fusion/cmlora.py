"""CMLoRA (Yqcca/CMLoRA, ICLR 2025) as its public code implements it, offline variant
(`pipeline_offline.py`); see docs/research/fusion_algorithms.md §4 for the reading and its
"unverified" marks (the paper text itself was not available to us).

What we follow from the code:
- the backbone is LoRA Composite: one UNet pass per LoRA, mean over LoRAs, then CFG;
- LoRAs are ordered high-frequency group first, then the low-frequency group. The code
  hard-codes the groups by category (only "background" is low); we partition by each LoRA's
  measured high-frequency score relative to the set's highest (`HIGH_FREQUENCY_SPLIT`),
  ordered by score within a group;
- one dominant LoRA at a time gets a larger weight a_dom = (N − 0.5)·a_non with
  a_non = N / (2N − 1.5), so Σa = N (the code's initial "dom_lora_coeff"; its decay is dead
  code there, so the weights stay fixed, as here; the README's "decaying w_dom" is unverified);
- the dominant role rotates at refresh steps of the non-uniform schedule (every 2nd step in
  the first 37.5%, every 3rd up to 87.5%, every 2nd after): over the high-frequency group in
  phase 1 (the first 60% of steps, the code's step 120 of 200), then over positions 1..R
  (skipping the first, adding the first low-frequency LoRA) in phase 2.
We fix a code bug rather than copy it: phase-2 refreshes happen (the code assigns into a slice
copy). The relative split always leaves the top-scoring LoRA in the high group, so the code's
division by zero for an all-background set cannot occur.

Caching differs, because the code's DeepCache UNet (a shallow pass reusing each LoRA's cached
deep up-block feature) needs UNet internals we do not patch. We cache each LoRA's residual on
the noise prediction instead: r_j = ε_j − ε_base, measured with a full pass when LoRA j is
(re)freshed. Every step runs the dominant LoRA fully and estimates the others as
ε_j ≈ ε_dom − r_dom + r_j; at a refresh step only the new dominant LoRA's residual is refreshed
(one extra pass without LoRAs), as the code refreshes only the dominant LoRA's deep feature;
at step 0 every LoRA runs. Cost: about (T + refreshes + N) passes per image against N·T for
Composite. `cache="none"` runs every LoRA fully at every step: the code's actual behaviour with
the non-uniform schedule (c = 0 disables its feature reuse), where the schedule only paces the
dominance.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from PIL import Image

from fusion.adapters import LayerScales
from fusion.composite import begin_denoising, finish_denoising

HIGH_FREQUENCY_SPLIT = 0.75  # "high" group: score >= this share of the set's highest score
PHASE_SPLIT = 0.6  # the code's phase boundary, step 120 of 200
CACHES = ("residual", "none")


def order_by_frequency(scores: Sequence[float], split: float = HIGH_FREQUENCY_SPLIT
                       ) -> tuple[list[int], int]:
    """Indices in CMLoRA order (the high group by falling score, then the low group) and R,
    the size of the high group: LoRAs scoring at least `split` × the set's highest score.

    Relative to the set, because the scores' scale depends on the model and image size: on
    the starter LoRAs they span 0.007-0.021 (64×64 images)."""
    top = max(scores)
    high = sorted((i for i, s in enumerate(scores) if s >= split * top), key=lambda i: -scores[i])
    low = sorted((i for i in range(len(scores)) if i not in high), key=lambda i: -scores[i])
    return high + low, len(high)


def refresh_steps(steps: int) -> list[int]:
    """The code's non-uniform refresh schedule (cache_interval c = 0)."""
    first, second = int(0.375 * steps), int(0.875 * steps)
    return sorted(set(range(0, first, 2)) | set(range(first, second, 3))
                  | set(range(second, steps, 2)))


@dataclass(frozen=True)
class StepPlan:
    dominant: int  # position in the CMLoRA order
    refresh: bool  # the dominant LoRA's cache is refreshed at this step


def dominance_plan(steps: int, n: int, high: int, phase_split: float = PHASE_SPLIT
                   ) -> list[StepPlan]:
    """Which LoRA (position in CMLoRA order) dominates at each step, and refresh steps."""
    refresh = set(refresh_steps(steps))
    has_low = n > high
    indicator, dominant, plan = 0, 0, []
    for step in range(steps):
        if step in refresh:
            indicator += 1
            if has_low and step > phase_split * steps:
                dominant = ((indicator - 1) % high) + 1
            else:
                dominant = (indicator - 1) % high
        plan.append(StepPlan(dominant, step in refresh))
    return plan


def dominance_weights(n: int, dominant: int) -> list[float]:
    """a_j for n LoRAs with one dominant (they sum to n; divided by n when mixed)."""
    if n == 1:
        return [1.0]
    lead = n - 0.5
    other = n / (lead + n - 1)
    return [lead * other if j == dominant else other for j in range(n)]


def mix(predictions: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """(1/N) Σ a_j ε_j."""
    total = torch.zeros_like(predictions[0])
    for prediction, weight in zip(predictions, weights, strict=True):
        total += weight * prediction
    return total / len(predictions)


def cmlora_image(pipe, prompt: str, negative_prompt: str, steps: int, guidance: float,
                 width: int, height: int, generator: torch.Generator,
                 scales: list[LayerScales], text_scales: LayerScales | None,
                 high: int | None = None, cache: str = "residual",
                 on_step: Callable[[int], None] | None = None, output_type: str = "pil",
                 counter: dict | None = None) -> Image.Image | torch.Tensor:
    """One image; `scales` are the LoRAs in CMLoRA order (each activates one LoRA), the first
    `high` of them the high-frequency group (all, if not given)."""
    if cache not in CACHES:
        raise ValueError(f"cmlora cache '{cache}' must be one of {', '.join(CACHES)}")
    counter = counter if counter is not None else {}
    counter.setdefault("unet_passes", 0)
    # 1.-2. prompt, timesteps, initial latents, and which LoRA dominates when
    embeds, latents = begin_denoising(pipe, "cmlora", prompt, negative_prompt, steps, width,
                                      height, generator, text_scales)
    plan = dominance_plan(steps, len(scales), high or len(scales))

    def run(scale: LayerScales | None, model_input, t, index) -> torch.Tensor:
        counter["unet_passes"] += 1
        if scale is None:  # the base model alone
            scales[0].release()
        else:
            scale.activate()
            scale.apply(index)
        return pipe.unet(model_input, t, encoder_hidden_states=embeds, return_dict=False)[0]

    # 3. denoising loop: the dominant LoRA fresh, the others from their cached residuals
    residuals: list[torch.Tensor | None] = [None] * len(scales)
    for index, t in enumerate(pipe.scheduler.timesteps):
        model_input = pipe.scheduler.scale_model_input(torch.cat([latents] * 2), t)
        step = plan[index]
        if cache == "none" or len(scales) == 1:
            predictions = [run(s, model_input, t, index) for s in scales]
        else:
            fresh = {step.dominant: run(scales[step.dominant], model_input, t, index)}
            stale = [j for j, r in enumerate(residuals) if r is None]
            if stale or step.refresh:
                base = run(None, model_input, t, index)
                for j in stale:
                    if j not in fresh:
                        fresh[j] = run(scales[j], model_input, t, index)
                    residuals[j] = fresh[j] - base
                residuals[step.dominant] = fresh[step.dominant] - base
            lead = fresh[step.dominant] - residuals[step.dominant]
            predictions = [fresh.get(j, lead + residuals[j]) for j in range(len(scales))]
        weights = dominance_weights(len(scales), step.dominant)
        uncond_eps, cond_eps = mix(predictions, weights).chunk(2)
        latents = pipe.scheduler.step(uncond_eps + guidance * (cond_eps - uncond_eps), t,
                                      latents, return_dict=False)[0]
        if on_step:
            on_step(index + 1)
    # 4. decode
    return finish_denoising(pipe, latents, output_type)
