"""Tiny random-weight components (as diffusers' get_dummy_components) and shared fixtures."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest
import torch

from fusion.placeholder import dummy_components
from styles.lora import LoraModule
from styles.tokenizer import write_clip_tokenizer_files

REPO = Path(__file__).resolve().parents[1]


def fixtures_dir() -> Path | None:
    """../shared/fixtures/real_loras beside the checkout (or LORATLAS_REAL_LORAS)."""
    for candidate in (os.environ.get("LORATLAS_REAL_LORAS"),
                      REPO.parent / "shared" / "fixtures" / "real_loras",
                      Path("/work/shared/fixtures/real_loras")):
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    return None


def get_dummy_components(tokenizer_dir: Path) -> dict:
    """A complete StableDiffusionPipeline of random weights that runs in milliseconds."""
    return dummy_components(tokenizer_dir)


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory) -> Path:
    return write_clip_tokenizer_files(tmp_path_factory.mktemp("clip-tokenizer"))


@pytest.fixture(scope="session")
def tiny_pipeline_dir(tmp_path_factory, tokenizer_dir) -> Path:
    """The dummy pipeline saved with save_pretrained, as a user's local folder would be."""
    from diffusers import StableDiffusionPipeline

    folder = tmp_path_factory.mktemp("tiny-sd")
    pipe = StableDiffusionPipeline(**get_dummy_components(tokenizer_dir),
                                   requires_safety_checker=False)
    pipe.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_base(tiny_pipeline_dir):
    from fusion.base import load_base

    return load_base(tiny_pipeline_dir, device="cpu")


def random_lora(table, targets: list[str] | None = None, rank: int = 2, seed: int = 0,
                scale: float = 1.0, magnitude: float = 0.5) -> list[LoraModule]:
    """Random low-rank modules for the given (or all attention) targets of a module table."""
    generator = torch.Generator().manual_seed(seed)
    targets = targets or [t for t in table.order if ".attn" in t and t.startswith("unet.")]
    modules = []
    for target in targets:
        spec = table.specs[target]
        if spec.kind == "conv":
            down = torch.randn(rank, spec.in_features, *spec.kernel_size, generator=generator)
            up = torch.randn(spec.out_features, rank, 1, 1, generator=generator)
        else:
            down = torch.randn(rank, spec.in_features, generator=generator)
            up = torch.randn(spec.out_features, rank, generator=generator)
        modules.append(LoraModule(target, spec.kind, down * magnitude, up * magnitude, scale))
    return modules
