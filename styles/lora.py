"""One in-memory form for every LoRA file, whatever tool wrote it."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch

FAMILIES = ("sd1", "sd2", "sdxl", "flux", "starter", "not-image", "unknown")
IMAGE_FAMILIES = ("sd1", "sd2", "sdxl", "flux", "starter")


@dataclass
class LoraModule:
    """The change to one module of the base model, always as exact low-rank factors.

    `delta = scale * up @ down`, reshaped to the module's weight shape. LyCORIS LoHa and LoKr
    are factored exactly (Khatri-Rao and Kronecker products), never approximated.
    """

    target: str  # component-prefixed diffusers module path, e.g. "unet.mid_block.attentions.0..."
    kind: str  # "linear" | "conv"
    down: torch.Tensor  # (r, in) or (r, in, kh, kw)
    up: torch.Tensor  # (out, r) or (out, r, 1, 1)
    scale: float = 1.0
    algo: str = "lora"  # lora | loha | lokr
    file_rank: int | None = None  # the rank the file declares (LyCORIS dims differ from len(down))

    @property
    def component(self) -> str:
        return self.target.split(".", 1)[0]

    @property
    def path(self) -> str:
        return self.target.split(".", 1)[1]

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    @property
    def in_features(self) -> int:
        return int(self.down.shape[1])

    @property
    def out_features(self) -> int:
        return int(self.up.shape[0])

    @property
    def kernel_size(self) -> tuple[int, int]:
        return tuple(self.down.shape[2:4]) if self.down.ndim == 4 else (1, 1)

    def delta(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The full weight change this module makes, in the base weight's shape."""
        up = self.up.to(dtype).reshape(self.out_features, self.rank)
        down = self.down.to(dtype).reshape(self.rank, -1)
        delta = (up @ down) * self.scale
        if self.kind == "conv":
            return delta.reshape(self.out_features, self.in_features, *self.kernel_size)
        return delta


@dataclass
class LoraMetadata:
    """What the file says about itself: hints, never proof."""

    name: str | None = None
    description: str | None = None
    trigger_words: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    family_hint: str | None = None
    raw: dict[str, str] = field(default_factory=dict)

    def to_dict(self, raw_limit: int = 200) -> dict:
        """JSON-friendly view; long raw values (tag frequency tables) are shortened."""
        raw = {k: (v if len(v) <= raw_limit else v[:raw_limit] + "…") for k, v in self.raw.items()}
        return {"name": self.name, "description": self.description,
                "trigger_words": self.trigger_words, "tags": self.tags,
                "family_hint": self.family_hint, "raw": raw}


@dataclass
class LoraFile:
    """A parsed, checked LoRA file."""

    path: Path
    sha256: str
    format: str
    family: str
    modules: dict[str, LoraModule]
    metadata: LoraMetadata
    dtype: str
    alpha: float | None
    warnings: list[str] = field(default_factory=list)

    @property
    def ranks(self) -> dict[int, int]:
        return dict(Counter(m.file_rank or m.rank for m in self.modules.values()))

    @property
    def rank(self) -> int | None:
        """The most common rank (what the file's author would call its dim)."""
        ranks = self.ranks
        return max(ranks, key=lambda r: (ranks[r], r)) if ranks else None

    @property
    def components(self) -> list[str]:
        return sorted({m.component for m in self.modules.values()})


FAMILY_HINTS = (
    ("flux", "flux"), ("sdxl", "sdxl"), ("xl", "sdxl"), ("sd_v2", "sd2"), ("v2", "sd2"),
    ("sd2", "sd2"), ("2.1", "sd2"), ("2.0", "sd2"), ("sd_v1", "sd1"), ("sd_1", "sd1"),
    ("1.5", "sd1"), ("v1", "sd1"), ("loratlas-starter", "starter"),
)


def family_from_text(text: str) -> str | None:
    """Map a free-form base-model string ("sd_1.5", "stable-diffusion-xl-v1-base") to a family."""
    lowered = text.lower()
    for needle, family in FAMILY_HINTS:
        if needle in lowered:
            return family
    return None


def _top_tags(tag_frequency: str, limit: int = 20) -> list[str]:
    try:
        table = json.loads(tag_frequency)
    except json.JSONDecodeError:
        return []
    counts: Counter[str] = Counter()
    for folder in table.values() if isinstance(table, dict) else []:
        if isinstance(folder, dict):
            for tag, count in folder.items():
                if isinstance(count, int | float):
                    counts[tag.strip()] += count
    return [tag for tag, _ in counts.most_common(limit) if tag]


def _split_words(value: str) -> list[str]:
    return [w.strip() for w in value.replace(";", ",").split(",") if w.strip()]


def parse_metadata(raw: dict[str, str]) -> LoraMetadata:
    """Collect name, description, triggers, tags and a family hint from kohya/modelspec keys."""
    meta = LoraMetadata(raw=dict(raw))
    meta.name = raw.get("modelspec.title") or raw.get("ss_output_name") or raw.get("name")
    meta.description = raw.get("modelspec.description") or raw.get("description")
    for key in ("modelspec.trigger_phrase", "ss_trigger_words", "trigger_words", "activation text"):
        if raw.get(key):
            meta.trigger_words = _split_words(raw[key])
            break
    tags = _split_words(raw.get("modelspec.tags", "")) + _split_words(raw.get("tags", ""))
    if raw.get("ss_tag_frequency"):
        tags += _top_tags(raw["ss_tag_frequency"])
    meta.tags = list(dict.fromkeys(tags))
    if raw.get("ss_v2", "").lower() == "true":
        meta.family_hint = "sd2"
    for key in ("modelspec.architecture", "ss_base_model_version", "ss_sd_model_name"):
        if raw.get(key) and (hint := family_from_text(raw[key])):
            meta.family_hint = meta.family_hint or hint
            break
    return meta
