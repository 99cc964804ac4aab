"""The weights view (AutoLoRA-style): a LoRA's per-layer low-rank factors → the shared space.

Per module, the delta ΔW = scale·up·down (so the order and sign of rank components, and the
rank itself, do not matter) is sketched with fixed random matrices seeded by the module's
path: S = Aᵀ ΔW B (p×p), normalised, plus log‖ΔW‖ and the module's place in the network.
A small set encoder (shared token MLP, attention pooling over whatever modules the LoRA
covers) maps the tokens into the text space; it is trained contrastively against the text
embeddings of the styles' descriptions, with the text tower frozen. Several such encoders,
trained from different seeds, are averaged: one alone places the LoRAs differently for each
seed, enough to move retrieval's figures by several prompts (retrieval_seeds.md).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from styles.lora import LoraFile

SKETCH = 6
PLACES = ("down_blocks.0", "down_blocks.1", "down_blocks.2", "down_blocks.3", "mid_block",
          "up_blocks.0", "up_blocks.1", "up_blocks.2", "up_blocks.3", "text_encoder", "other")
ROLES = ("attn1", "attn2", "ff", "proj", "resnets", "samplers", "other")
TOKEN_DIM = SKETCH * SKETCH + 1 + len(PLACES) + len(ROLES)


def _projection(target: str, rows: int, size: int) -> torch.Tensor:
    seed = int(hashlib.sha256(f"{target}:{rows}".encode()).hexdigest()[:12], 16)
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, size, generator=g) / rows**0.5


def _one_hot(value: str, options: Sequence[str]) -> list[float]:
    return [1.0 if value == option else 0.0 for option in options]


def _place(target: str) -> str:
    if target.startswith("text_encoder"):
        return "text_encoder"
    match = re.match(r"unet\.((?:down|up)_blocks\.\d+|mid_block)", target)
    return match.group(1) if match and match.group(1) in PLACES else "other"


def _role(target: str) -> str:
    for role, needle in (("attn1", ".attn1."), ("attn2", ".attn2."), ("ff", ".ff."),
                         ("proj", ".proj_"), ("resnets", ".resnets."), ("samplers", "samplers")):
        if needle in target:
            return role
    return "other"


def lora_tokens(lora: LoraFile) -> torch.Tensor:
    """(modules, TOKEN_DIM) features of a LoRA, invariant to rank, order and sign."""
    tokens = []
    for target in sorted(lora.modules):
        module = lora.modules[target]
        up = module.up.float().reshape(module.out_features, module.rank) * module.scale
        down = module.down.float().reshape(module.rank, -1)
        left = _projection(target + ":out", up.shape[0], SKETCH)
        right = _projection(target + ":in", down.shape[1], SKETCH)
        sketch = (left.T @ up) @ (down @ right)  # Aᵀ ΔW B without forming ΔW
        norm = float(torch.linalg.matrix_norm(sketch)) + 1e-8
        tokens.append(torch.cat([
            (sketch / norm).flatten(), torch.tensor([np.log(norm)]),
            torch.tensor(_one_hot(_place(target), PLACES) + _one_hot(_role(target), ROLES))]))
    return torch.stack(tokens).float() if tokens else torch.zeros(0, TOKEN_DIM)


@dataclass
class EncoderConfig:
    embed_dim: int
    hidden: int = 256
    version: str = "w1"
    members: int = 1  # encoders from different seeds, averaged


class _Member(nn.Module):
    """Tokens of any number of modules → one unit vector (attention pooling)."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.token = nn.Sequential(nn.Linear(TOKEN_DIM, config.hidden), nn.GELU(),
                                   nn.Linear(config.hidden, config.hidden), nn.GELU())
        self.attend = nn.Linear(config.hidden, 1)
        self.head = nn.Sequential(nn.LayerNorm(config.hidden),
                                  nn.Linear(config.hidden, config.embed_dim))

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        hidden = self.token(tokens)
        logits = self.attend(hidden).squeeze(-1).masked_fill(~mask, float("-inf"))
        pooled = (torch.softmax(logits, dim=1).unsqueeze(-1) * hidden).sum(1)
        return nn.functional.normalize(self.head(pooled), dim=-1)


class WeightEncoder(nn.Module):
    """Tokens of any number of modules → one unit vector: the normalised mean of its members'.

    It places the LoRAs it was trained on well and any other LoRA at about chance
    (retrieval_quality.md), so it keeps the fingerprints of its training LoRAs: `knows`."""

    def __init__(self, config: EncoderConfig, members: Sequence[_Member] | None = None) -> None:
        super().__init__()
        self.config = config
        self.trained_on: np.ndarray | None = None  # weight_fingerprint of each training LoRA
        self.members = nn.ModuleList(members if members is not None else
                                     (_Member(config) for _ in range(config.members)))

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """tokens (b, n, d), mask (b, n) true where a module is present → (b, embed_dim)."""
        mean = torch.stack([member(tokens, mask) for member in self.members]).mean(0)
        return nn.functional.normalize(mean, dim=-1)

    def knows(self, lora: LoraFile, fingerprint: np.ndarray | None = None) -> bool:
        """Was this LoRA (these weights, whatever the file) among the training LoRAs? Pass its
        `weight_fingerprint` if it is at hand. An encoder saved without the list is trusted
        with every LoRA, as before."""
        if self.trained_on is None:
            return True
        if fingerprint is None:
            fingerprint = weight_fingerprint(lora)
        return bool(len(self.trained_on)) and \
            float((self.trained_on @ fingerprint).max()) >= SEEN_COSINE

    @property
    def digest(self) -> str:
        """Names these weights: a library re-derives the vectors it stored from another."""
        h = hashlib.sha256()
        for key, value in sorted(self.state_dict().items()):
            h.update(key.encode())
            h.update(value.detach().float().contiguous().numpy().tobytes())
        return h.hexdigest()[:16]

    def embed(self, loras: Sequence[LoraFile]) -> np.ndarray:
        with torch.no_grad():
            tokens, mask = pad([lora_tokens(lora) for lora in loras])
            return self(tokens, mask).numpy()

    def save(self, folder: Path) -> None:
        from safetensors.torch import save_file

        folder.mkdir(parents=True, exist_ok=True)
        save_file({k: (v.half() if v.is_floating_point() else v).contiguous()
                   for k, v in self.state_dict().items()},  # fp16: half the pack's bytes
                  str(folder / "weight_encoder.safetensors"))
        (folder / "weight_encoder.json").write_text(json.dumps(asdict(self.config)))
        if self.trained_on is not None:
            np.save(folder / "trained_on.npy", self.trained_on)

    @classmethod
    def load(cls, folder: Path) -> WeightEncoder:
        from safetensors.torch import load_file

        model = cls(EncoderConfig(**json.loads((folder / "weight_encoder.json").read_text())))
        state = load_file(str(folder / "weight_encoder.safetensors"))
        if not any(key.startswith("members.") for key in state):  # saved before ensembles
            state = {f"members.0.{key}": value for key, value in state.items()}
        model.load_state_dict(state)
        if (folder / "trained_on.npy").is_file():
            model.trained_on = np.load(folder / "trained_on.npy")
        return model.eval()


def pad(items: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    longest = max(1, max(len(t) for t in items))
    tokens = torch.zeros(len(items), longest, TOKEN_DIM)
    mask = torch.zeros(len(items), longest, dtype=torch.bool)
    for i, t in enumerate(items):
        tokens[i, :len(t)] = t
        mask[i, :len(t)] = True
    return tokens, mask


def augment(tokens: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Cover only some layers, change the overall strength: what other LoRAs of a style do."""
    keep = torch.rand(len(tokens), generator=g) < (0.4 + 0.6 * torch.rand(1, generator=g))
    if not keep.any():
        keep[torch.randint(len(tokens), (1,), generator=g)] = True
    out = tokens[keep].clone()
    out[:, SKETCH * SKETCH] += float(torch.randn(1, generator=g)) * 0.3  # log-norm shift
    return out


def train_weight_encoder(loras: Sequence[LoraFile], text_targets: Sequence[np.ndarray],
                         steps: int = 600, seed: int = 0, lr: float = 2e-3,
                         members: int = 1, negatives: np.ndarray | None = None
                         ) -> WeightEncoder:
    """Contrastive: LoRA i's embedding near the text embeddings of its style (frozen tower).

    `text_targets[i]` holds several unit text embeddings describing LoRA i's style;
    `negatives`, unit text embeddings of prompts that ask for no style, which every LoRA is
    pushed away from as from the other LoRAs' texts. Each of the `members` encoders trains
    alone, from seed `seed · members + i` (so the members of two seeds never share one)."""
    config = EncoderConfig(embed_dim=int(text_targets[0].shape[1]), members=members)
    base_tokens = [lora_tokens(lora) for lora in loras]
    targets = [torch.from_numpy(t).float() for t in text_targets]
    bank = torch.zeros(0, config.embed_dim) if negatives is None else \
        nn.functional.normalize(torch.from_numpy(negatives).float(), dim=-1)
    model = WeightEncoder(config, [
        _train_member(config, base_tokens, targets, bank, steps, seed * members + i, lr)
        for i in range(members)])
    with torch.no_grad():  # to what `save` keeps (fp16), so the encoder measured is the one saved
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(tensor.half())
    model.trained_on = np.stack([weight_fingerprint(lora) for lora in loras])
    return model.eval()


def _train_member(config: EncoderConfig, base_tokens: list[torch.Tensor],
                  targets: list[torch.Tensor], negatives: torch.Tensor, steps: int, seed: int,
                  lr: float) -> _Member:
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    model = _Member(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-2)
    logit_scale = torch.tensor(np.log(1 / 0.07))
    for _ in range(steps):
        tokens, mask = pad([augment(t, g) for t in base_tokens])
        text = torch.stack([t[torch.randint(len(t), (1,), generator=g)].squeeze(0)
                            for t in targets])
        text = nn.functional.normalize(text, dim=-1)
        logits = logit_scale.exp() * model(tokens, mask) @ torch.cat([text, negatives]).T
        labels = torch.arange(len(base_tokens))
        loss = (nn.functional.cross_entropy(logits, labels)
                + nn.functional.cross_entropy(logits[:, :len(labels)].T, labels)) / 2
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return model


SEEN_COSINE = 0.999  # as for near-duplicate uploads


def weight_fingerprint(lora: LoraFile, dim: int = 256) -> np.ndarray:
    """A unit vector that is (almost) equal for two files with (almost) the same deltas: each
    module's sketch Aᵀ ΔW B and norm, spread into `dim` dims by a projection seeded by the
    module's path. Used to flag near-duplicate uploads (cosine ≥ 0.999), never to rank."""
    total = torch.zeros(dim)
    for target, token in zip(sorted(lora.modules), lora_tokens(lora), strict=True):
        sketch = token[:SKETCH * SKETCH] * torch.exp(token[SKETCH * SKETCH])
        total += _projection(target + ":fingerprint", dim, SKETCH * SKETCH) @ sketch
    return (total / (total.norm() + 1e-12)).numpy().astype(np.float32)
