"""Embedders into open_clip's shared text-image space: the starter pack's model by default,
a named pretrained open_clip model in real mode."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch


class Embedder(Protocol):
    """Text and images into one L2-normalised space; `version` changes when the space does."""

    version: str
    dim: int

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray: ...

    def encode_images(self, images: np.ndarray) -> np.ndarray: ...


@dataclass
class OpenClipEmbedder:
    """Any open_clip model: `model`, its tokenizer and its image preprocessing."""

    model: torch.nn.Module
    tokenizer: object
    version: str
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def dim(self) -> int:
        return int(self.model.text_projection.shape[1]) if hasattr(
            self.model, "text_projection") and self.model.text_projection is not None \
            else int(self.encode_texts(["x"]).shape[1])

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        chunks = [self.model.encode_text(self.tokenizer(list(texts[i:i + batch_size])),
                                         normalize=True)
                  for i in range(0, len(texts), batch_size)]
        return torch.cat(chunks).float().numpy()

    @torch.no_grad()
    def encode_images(self, images: np.ndarray, batch_size: int = 128) -> np.ndarray:
        """(n, h, w, 3) floats in [0, 1], resized to the model's input size."""
        out = []
        mean = torch.tensor(self.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.std).view(1, 3, 1, 1)
        for i in range(0, len(images), batch_size):
            x = torch.from_numpy(np.ascontiguousarray(images[i:i + batch_size],
                                                      dtype=np.float32)).permute(0, 3, 1, 2)
            if x.shape[-1] != self.image_size:
                x = torch.nn.functional.interpolate(x, size=self.image_size, mode="bicubic",
                                                    antialias=True).clamp(0, 1)
            out.append(self.model.encode_image((x - mean) / std, normalize=True))
        return torch.cat(out).float().numpy()


def starter_embedder(folder: Path | None = None) -> OpenClipEmbedder:
    """The starter pack's own open_clip model (trained on the starter world)."""
    from styles.starter.clip_model import load_starter_clip
    from styles.starter.paths import CLIP_DIR
    from styles.starter.text_tower import starter_clip_digest

    folder = Path(folder or CLIP_DIR)
    model, _, tokenizer = load_starter_clip(folder)
    visual = model.visual
    size = visual.image_size[0] if isinstance(visual.image_size, tuple | list) \
        else int(visual.image_size)
    return OpenClipEmbedder(model, tokenizer, f"starter-clip-{starter_clip_digest(folder)[:12]}",
                            size, tuple(visual.image_mean or (0.5,) * 3),
                            tuple(visual.image_std or (0.5,) * 3))


def pretrained_embedder(name: str, pretrained: str | None) -> OpenClipEmbedder:
    """A named open_clip model (e.g. ViT-B-32 / laion2b_s34b_b79k); weights from the hub or a
    local file. `pretrained=None` builds random weights (tests)."""
    import open_clip

    model, _, _ = open_clip.create_model_and_transforms(name, pretrained=pretrained)
    model.eval()
    visual = model.visual
    size = visual.image_size[0] if isinstance(visual.image_size, tuple | list) \
        else int(visual.image_size)
    mean = getattr(visual, "image_mean", None) or open_clip.OPENAI_DATASET_MEAN
    std = getattr(visual, "image_std", None) or open_clip.OPENAI_DATASET_STD
    return OpenClipEmbedder(model, open_clip.get_tokenizer(name), f"{name}-{pretrained}", size,
                            tuple(mean), tuple(std))
