"""Pure weight maths: per-block weights (diffusers' dict form) and per-step keyframes."""

from __future__ import annotations

import re

import numpy as np

BLOCK_PATTERN = re.compile(
    r"^(?P<updown>down|up)_blocks\.(?P<block>\d+)\.attentions\.(?P<attn>\d+)\."
)


def block_weight(module_path: str, block_weights: dict | None) -> float:
    """The factor a diffusers-style block dict gives one UNet module.

    `{"down": 0.5, "mid": 1.0, "up": {"block_0": 0.2, "block_1": [0.4, 0.6, 0.8]}}` weights the
    attention layers of each block, as `set_adapters` in diffusers does; modules outside the
    attention blocks (resnets, conv_in/out) keep 1.0.
    """
    if not block_weights:
        return 1.0
    if module_path.startswith("mid_block.attentions."):
        return _scalar(block_weights.get("mid", 1.0), 0)
    match = BLOCK_PATTERN.match(module_path)
    if not match:
        return 1.0
    value = block_weights.get(match["updown"], 1.0)
    if isinstance(value, dict):
        value = value.get(f"block_{match['block']}", 1.0)
    return _scalar(value, int(match["attn"]))


def _scalar(value: float | list, index: int) -> float:
    if isinstance(value, list | tuple):
        return float(value[min(index, len(value) - 1)])
    return float(value)


def step_weight(keyframes: list[float] | None, step: int, num_steps: int) -> float:
    """Linear interpolation of evenly spaced keyframes over the steps ([1, 0] fades out)."""
    if not keyframes:
        return 1.0
    if len(keyframes) == 1 or num_steps <= 1:
        return float(keyframes[0])
    position = step / (num_steps - 1) * (len(keyframes) - 1)
    low = min(int(position), len(keyframes) - 2)
    frac = position - low
    return float(keyframes[low] * (1 - frac) + keyframes[low + 1] * frac)


def validate_block_weights(block_weights: dict | None) -> None:
    """Reject block dicts with unknown keys, with the key named."""
    if block_weights is None:
        return
    for key, value in block_weights.items():
        if key not in ("down", "mid", "up"):
            raise ValueError(f"block weight key '{key}' is not one of down, mid, up")
        if isinstance(value, dict):
            for block in value:
                if not re.fullmatch(r"block_\d+", block):
                    raise ValueError(f"block weight key '{key}.{block}' must look like block_0")


class WeightSchedule:
    """weight(adapter, "component.path", step) for each LoRA of a request.

    merge: the LoRA's weight × its block weight × its step keyframe, every step.
    switch (LoRA Switch, Zhong et al. 2024): the same, but only one LoRA is on at a time,
    taking turns every `period` steps in the given order.
    """

    def __init__(self, uses: dict[str, object], steps: int, mode: str = "merge",
                 period: int = 5) -> None:
        self.uses = uses  # adapter name → LoraUse-like (weight, block_weights, step_weights)
        self.order = list(uses)
        self.steps = steps
        self.mode = mode
        self.period = period

    def leader(self, step: int) -> str:
        return self.order[(step // self.period) % len(self.order)]

    def __call__(self, adapter: str, target: str, step: int) -> float:
        if self.mode == "switch" and adapter != self.leader(step):
            return 0.0
        use = self.uses[adapter]
        component, path = target.split(".", 1)
        factor = block_weight(path, use.block_weights) if component == "unet" else 1.0
        return use.weight * factor * step_weight(use.step_weights, step, self.steps)

    def tabulate(self, adapters: list[str], targets: list[str]) -> np.ndarray:
        """(steps, targets, adapters) of weights, as __call__ gives them (0 where the adapter
        has no module at that target is the caller's business)."""
        table = np.empty((self.steps, len(targets), len(adapters)))
        for j, adapter in enumerate(adapters):
            use = self.uses[adapter]
            per_step = np.array([step_weight(use.step_weights, s, self.steps)
                                 for s in range(self.steps)])
            if self.mode == "switch":
                per_step *= np.array([self.leader(s) == adapter for s in range(self.steps)])
            per_layer = np.array([block_weight(t.split(".", 1)[1], use.block_weights)
                                  if t.startswith("unet.") else 1.0 for t in targets])
            table[:, :, j] = use.weight * per_step[:, None] * per_layer[None, :]
        return table
