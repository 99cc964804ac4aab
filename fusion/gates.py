"""Gated fusion (ours): a weight g(layer, step) for each LoRA of a request.

Where each LoRA's gate comes from, in order of precedence:
1. the user's schedule: a LoRA given block weights or step keyframes runs exactly at
   weight × block weight × step keyframe (as in `merge`);
2. the learned gate network (`GateNetwork`, trained by fusion.gate_training) when one fits
   this base model: g = weight × net(layer, timestep, prompt, LoRA vector, the other LoRAs);
3. the frequency prior (`frequency_prior`): high-frequency LoRAs lean late, low-frequency
   ones early.

The gates are tabulated once per request (steps × layers × LoRAs, `GateTable`) and applied
either through PEFT scaling (`LayerScales`, exact, one low-rank product per LoRA per layer) or
by `FusedGates`: merged deltas W0 + Σ g·B·A written into the base weights and rewritten, layer
by layer, only when that layer's gates move by more than a tolerance. Either way the UNet runs
once per step, as in `merge`. The maths here is pure tensor code; the wiring is in engine.py.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fusion.adapters import original_weights
from fusion.frequency import high_frequency_score

# -- layers --------------------------------------------------------------------------------
LAYER_KINDS = ("attn1", "attn2", "ff", "proj", "resnet", "other")
PROJECTIONS = ("to_q", "to_k", "to_v", "to_out")
LAYER_FEATURES = 4 + 2 + len(LAYER_KINDS) + len(PROJECTIONS)
_BLOCK = re.compile(r"^(down_blocks|up_blocks)\.(\d+)\.")


def layer_features(path: str, position: float, levels: int) -> list[float]:
    """Structural description of one UNet module (path without "unet."), any SD-like UNet.

    section one-hot (down, mid, up, other), position in the UNet's module order (0..1),
    resolution level (0 = full resolution, 1 = the coarsest), module kind, projection."""
    match = _BLOCK.match(path)
    section = [0.0] * 4
    level = 1.0
    if match and match[1] == "down_blocks":
        section[0] = 1.0
        level = int(match[2]) / max(1, levels - 1)
    elif path.startswith("mid_block."):
        section[1] = 1.0
    elif match:
        section[2] = 1.0
        level = (levels - 1 - int(match[2])) / max(1, levels - 1)
    else:
        section[3] = 1.0
        level = 0.0
    if ".attn1." in path:
        kind = "attn1"
    elif ".attn2." in path:
        kind = "attn2"
    elif ".ff." in path:
        kind = "ff"
    elif path.endswith(("proj_in", "proj_out")):
        kind = "proj"
    elif ".resnets." in path:
        kind = "resnet"
    else:
        kind = "other"
    kinds = [1.0 if kind == k else 0.0 for k in LAYER_KINDS]
    projections = [1.0 if f".{p}" in path else 0.0 for p in PROJECTIONS]
    return [*section, float(position), float(level), *kinds, *projections]


def layer_feature_matrix(paths: Sequence[str], unet_order: Sequence[str], levels: int
                         ) -> torch.Tensor:
    """(layers, LAYER_FEATURES) for UNet module paths; `unet_order` is every adaptable UNet
    module path in the UNet's order (positions do not depend on which LoRAs are present)."""
    rank = {p: i for i, p in enumerate(unet_order)}
    n = max(1, len(unet_order) - 1)
    rows = [layer_features(p, rank.get(p, 0) / n, levels) for p in paths]
    return torch.tensor(rows, dtype=torch.float32).reshape(len(paths), LAYER_FEATURES)


def prompt_embedding(pipe, prompts: Sequence[str]) -> torch.Tensor:
    """(n, text_dim) pooled text embeddings of prompts (the gate network's prompt input)."""
    ids = pipe.tokenizer(list(prompts), padding="max_length", truncation=True,
                         max_length=pipe.tokenizer.model_max_length, return_tensors="pt")
    output = pipe.text_encoder(ids.input_ids.to(pipe.text_encoder.device))
    return output.pooler_output.float()


def time_features(timesteps: torch.Tensor, train_steps: int = 1000) -> torch.Tensor:
    """(n, 6) smooth features of diffusion timesteps (0 = clean, train_steps = pure noise)."""
    s = timesteps.float().reshape(-1, 1) / train_steps
    return torch.cat([s, s.square(), torch.sin(math.pi * s), torch.cos(math.pi * s),
                      torch.sin(2 * math.pi * s), torch.cos(2 * math.pi * s)], 1)


TIME_FEATURES = 6


def lora_vector(profile: Sequence[float]) -> list[float]:
    """The gate network's default LoRA vector: its frequency profile (square-rooted shares,
    so small bands still register) and its high-frequency score."""
    values = np.sqrt(np.clip(np.asarray(profile, dtype=np.float64), 0, None))
    return [float(v) for v in values] + [high_frequency_score(profile)]


# -- the learned gate network ---------------------------------------------------------------
@dataclass
class GateNetworkConfig:
    """Sizes of a GateNetwork and what its inputs must be."""

    text_dim: int = field(metadata={"help": "width of the base text encoder's pooled output"})
    lora_dim: int = field(metadata={"help": "length of each LoRA's vector"})
    lora_features: str = field(default="frequency16",
                               metadata={"help": "what the LoRA vectors are"})
    width: int = field(default=16, metadata={"help": "projection width of each input"})
    hidden: int = field(default=64, metadata={"help": "hidden units of the MLP"})
    max_gate: float = field(default=2.0, metadata={"help": "gates lie in (0, max_gate)"})
    base_fingerprint: str = field(default="", metadata={"help": "the base model it fits"})

    def __post_init__(self) -> None:
        if self.text_dim < 1 or self.lora_dim < 1:
            raise ValueError("text_dim and lora_dim must be positive")
        if self.max_gate <= 1.0:
            raise ValueError("max_gate must exceed 1 (a zero logit gives gate 1 = merge)")


class GateNetwork(nn.Module):
    """g(layer, timestep, prompt, LoRA, the other LoRAs) in (0, max_gate); 1 at initialisation
    (the last layer starts at zero), so an untrained network is exactly `merge`."""

    def __init__(self, config: GateNetworkConfig) -> None:
        super().__init__()
        self.config = config
        w = config.width
        self.prompt_proj = nn.Linear(config.text_dim, w)
        self.lora_proj = nn.Linear(config.lora_dim, w)
        inputs = LAYER_FEATURES + TIME_FEATURES + 3 * w + 1
        self.mlp = nn.Sequential(nn.Linear(inputs, config.hidden), nn.SiLU(),
                                 nn.Linear(config.hidden, config.hidden), nn.SiLU(),
                                 nn.Linear(config.hidden, 1))
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, layers: torch.Tensor, timesteps: torch.Tensor, prompts: torch.Tensor,
                loras: torch.Tensor) -> torch.Tensor:
        """Gates (n, layers, k) for n (timestep, prompt) pairs, L layers and k LoRAs.

        layers (L, LAYER_FEATURES); timesteps (n,); prompts (n, text_dim); loras (k, lora_dim).
        """
        n, count, k = timesteps.shape[0], layers.shape[0], loras.shape[0]
        own = self.lora_proj(loras)  # (k, w)
        others = (own.sum(0, keepdim=True) - own) / max(1, k - 1)  # mean of the other LoRAs
        parts = [
            layers[None, :, None, :].expand(n, count, k, -1),
            time_features(timesteps)[:, None, None, :].expand(n, count, k, -1),
            self.prompt_proj(prompts)[:, None, None, :].expand(n, count, k, -1),
            own[None, None].expand(n, count, k, -1),
            others[None, None].expand(n, count, k, -1),
            torch.full((n, count, k, 1), k / 5.0),
        ]
        logits = self.mlp(torch.cat(parts, -1)).squeeze(-1)
        return self.config.max_gate * torch.sigmoid(logits - math.log(self.config.max_gate - 1))

    def save(self, folder: str | Path, report: dict | None = None) -> Path:
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().contiguous() for k, v in self.state_dict().items()},
                  str(folder / "gates.safetensors"))
        meta = {"config": self.config.__dict__, **(report or {})}
        (folder / "gates.json").write_text(json.dumps(meta, indent=2) + "\n")
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> GateNetwork:
        from safetensors.torch import load_file

        folder = Path(folder)
        meta = json.loads((folder / "gates.json").read_text())
        net = cls(GateNetworkConfig(**meta["config"]))
        net.load_state_dict(load_file(str(folder / "gates.safetensors")))
        return net.eval()


def base_fingerprint(pipe) -> str:
    """What a gate network depends on in a base model: UNet shape and text width."""
    unet = pipe.unet.config
    return (f"unet{list(unet.block_out_channels)}-cross{unet.cross_attention_dim}"
            f"-in{unet.in_channels}-text{pipe.text_encoder.config.hidden_size}")


# -- the frequency prior --------------------------------------------------------------------
PRIOR_STRENGTH = 0.25


def frequency_prior(scores: Sequence[float], steps: int,
                    strength: float = PRIOR_STRENGTH) -> np.ndarray:
    """(steps, k) gate factors from the LoRAs' high-frequency scores.

    The most high-frequency LoRA of the set rises from 1−s to 1+s over the run, the most
    low-frequency one falls from 1+s to 1−s (coarse structure is decided early, texture late);
    a single LoRA, or LoRAs with equal scores, stay at 1."""
    scores = np.asarray(scores, dtype=np.float64)
    k = len(scores)
    if k < 2:
        return np.ones((steps, k))
    ranks = scores.argsort().argsort().astype(np.float64)
    ties = np.isclose(scores.max(), scores.min())
    relative = np.full(k, 0.5) if ties else ranks / (k - 1)
    progress = np.linspace(0.0, 1.0, steps) if steps > 1 else np.zeros(1)
    return 1.0 + strength * (2 * progress[:, None] - 1) * (2 * relative[None, :] - 1)


# -- the gates of one request ----------------------------------------------------------------
SOURCES = ("user", "learned", "prior", "weight")  # "weight": flat at the LoRA's own weight


@dataclass
class GateMap:
    """Gate values for the UI: values[layer][step][lora], and where each LoRA's gates came
    from (user schedule, learned network or frequency prior)."""

    layers: list[str]
    loras: list[str]
    steps: int
    values: np.ndarray  # (layers, steps, loras)
    sources: list[str]
    rewrites: int | None = None  # fused layer rewrites, when gates were applied fused
    # (layers, loras): False where the LoRA has no module (its values are 0 there), so a map
    # can tell "gated off" from "not in this file" (a decoder-only LoRA has no down blocks)
    present: np.ndarray | None = None

    def to_json(self) -> dict:
        out = {"layers": self.layers, "loras": self.loras, "steps": self.steps,
               "sources": self.sources, "rewrites": self.rewrites,
               "values": np.round(self.values, 4).tolist()}
        if self.present is not None:
            out["present"] = self.present.astype(bool).tolist()
        return out


class GateTable:
    """weight(adapter, "component.path", step) from a precomputed (steps, layers, k) table;
    modules outside the table (text encoders) run at the LoRA's plain weight."""

    def __init__(self, adapters: Sequence[str], targets: Sequence[str], table: np.ndarray,
                 fallback: dict[str, float]) -> None:
        self.adapters = list(adapters)
        self.column = {name: i for i, name in enumerate(adapters)}
        self.row = {target: i for i, target in enumerate(targets)}
        self.targets = list(targets)
        self.table = table
        self.fallback = fallback

    def __call__(self, adapter: str, target: str, step: int) -> float:
        row = self.row.get(target)
        if row is None:
            return self.fallback[adapter]
        return float(self.table[min(step, len(self.table) - 1), row, self.column[adapter]])

    def tabulate(self, adapters: list[str], targets: list[str]) -> np.ndarray:
        """(steps, targets, adapters), as __call__ gives them."""
        out = np.empty((len(self.table), len(targets), len(adapters)))
        columns = [self.column[a] for a in adapters]
        for i, target in enumerate(targets):
            row = self.row.get(target)
            if row is None:
                out[:, i, :] = [self.fallback[a] for a in adapters]
            else:
                out[:, i, :] = self.table[:, row, columns]
        return out


def gate_table(user: np.ndarray, user_given: Sequence[bool], weights: Sequence[float],
               learned: np.ndarray | None, scores: Sequence[float] | None
               ) -> tuple[np.ndarray, list[str]]:
    """Combine the three sources by precedence into one (steps, layers, k) table.

    user: the merge weights (steps, layers, k) from the user's schedules; learned: the
    network's gates (steps, layers, k) or None; scores: high-frequency scores for the prior
    (None: a single LoRA, whose prior is 1).

    Learned gates redistribute a LoRA's weight over layers and steps: each LoRA's gates are
    rescaled to mean 1, so the network decides where the LoRA acts and the user's weight how
    strongly in all. Used as trained (a LoRA's gates averaged 0.65 on held-out starter sets,
    0.55 to 1.17), they weakened the styles: on held-out three-style prompts the share of
    styles detected fell from merge's 0.46 to 0.36; rescaled, 0.46
    (benchmarks/results/fusion_quality.md)."""
    table = np.empty_like(user)
    sources = []
    steps = user.shape[0]
    prior = frequency_prior(scores, steps) if scores is not None else np.ones(
        (steps, len(user_given)))
    for j, given in enumerate(user_given):
        if given:
            table[..., j] = user[..., j]
            sources.append("user")
        elif learned is not None:
            table[..., j] = weights[j] * learned[..., j] / max(float(learned[..., j].mean()), 1e-6)
            sources.append("learned")
        else:  # alone, or with no frequency scores, the prior is flat: just the LoRA's weight
            table[..., j] = weights[j] * prior[:, j][:, None]
            sources.append("weight" if scores is None or len(user_given) == 1 else "prior")
    return table, sources


# -- applying gates through merged deltas, rewritten only when they move --------------------
class FusedGates:
    """Writes W0 + Σ_i g_i·B_i·A_i into each adapted base weight; a layer is rewritten only
    when one of its gates has moved by more than `tolerance` since it was last written.

    The low-rank factors of the request's LoRAs are stacked per layer once, so a rewrite is
    one (out × Σr) @ (Σr × in) product; all gates are tabulated once, so checking which layers
    moved is one tensor comparison per step. `release` puts the original tensors back."""

    def __init__(self, adapters, active, weight_fn, steps: int,
                 tolerance: float = 0.05) -> None:
        self.tolerance = tolerance
        self.rewrites = 0
        order = [item.adapter for item in active]
        self.layers = []
        targets = []
        for target, base, uses in adapters.fusion_targets(active):
            original = base.weight.data
            downs = [m.down.float().reshape(m.down.shape[0], -1) for _, m in uses]
            self.layers.append({
                "base": base, "original": original, "columns": [j for j, _ in uses],
                "up": torch.cat([m.up.float().reshape(m.up.shape[0], -1) * m.scale
                                 for _, m in uses], 1),
                "down": torch.cat(downs), "ranks": torch.tensor([d.shape[0] for d in downs])})
            targets.append(target)
        # (steps, layers, k) gates; a LoRA without a module at a layer counts as unchanged
        table = torch.from_numpy(weight_fn.tabulate(order, targets)).float() if targets \
            else torch.zeros(steps, 0, len(order))
        present = torch.zeros(len(targets), len(order), dtype=torch.bool)
        for i, layer in enumerate(self.layers):
            present[i, layer["columns"]] = True
        self.gates = torch.where(present[None], table, torch.zeros(()))
        self.written = torch.full((len(targets), len(order)), float("nan"))

    def apply(self, step: int) -> None:
        gates = self.gates[min(step, len(self.gates) - 1)]
        if not len(gates):
            return
        stale = torch.isnan(self.written).any(1) | (
            (gates - self.written).abs().amax(1) > self.tolerance)
        for i in torch.nonzero(stale).flatten().tolist():
            layer = self.layers[i]
            g = gates[i, layer["columns"]]
            scaled = layer["down"] * g.repeat_interleave(layer["ranks"])[:, None]
            original = layer["original"]
            merged = torch.addmm(original.float().reshape(original.shape[0], -1),
                                 layer["up"], scaled)
            layer["base"].weight.data = merged.reshape(original.shape).to(original.dtype)
            self.written[i] = gates[i]
            self.rewrites += 1

    def bypassed(self):
        """The base model alone for the duration (the original tensors swapped back in)."""
        return original_weights([(layer["base"], layer["original"]) for layer in self.layers])

    def release(self) -> None:
        for layer in self.layers:
            layer["base"].weight.data = layer["original"]
        self.written.fill_(float("nan"))
