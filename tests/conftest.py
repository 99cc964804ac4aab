"""Tiny random-weight components (as diffusers' get_dummy_components) and shared fixtures."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# libraries, caches and placeholders of tests never land in the user's home
os.environ.setdefault("LORATLAS_HOME", tempfile.mkdtemp(prefix="loratlas-tests-"))

import pytest
import torch

from fusion.placeholder import dummy_components
from styles.lora import LoraModule
from styles.tokenizer import clip_tokenizer, write_clip_tokenizer_files

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


def get_dummy_xl_components(tokenizer_dir: Path) -> dict:
    """A tiny StableDiffusionXLPipeline (two text encoders, text_time conditioning)."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(4, 8), layers_per_block=1, sample_size=8, in_channels=4,
        out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(2, 4),
        use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2), projection_class_embeddings_input_dim=80,
        cross_attention_dim=64, norm_num_groups=2)
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, steps_offset=1,
                                       beta_schedule="scaled_linear", timestep_spacing="leading")
    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=[4, 8], in_channels=3, out_channels=3,
                        down_block_types=["DownEncoderBlock2D"] * 2,
                        up_block_types=["UpDecoderBlock2D"] * 2, latent_channels=4,
                        norm_num_groups=2, sample_size=64)
    config = CLIPTextConfig(bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
                            hidden_size=32, intermediate_size=37, num_attention_heads=4,
                            num_hidden_layers=2, vocab_size=49408, projection_dim=32,
                            hidden_act="gelu", max_position_embeddings=77)
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(config)
    text_encoder_2 = CLIPTextModelWithProjection(config)
    tokenizer = clip_tokenizer(str(tokenizer_dir))
    return {"unet": unet, "scheduler": scheduler, "vae": vae, "text_encoder": text_encoder,
            "text_encoder_2": text_encoder_2, "tokenizer": tokenizer, "tokenizer_2": tokenizer,
            "image_encoder": None, "feature_extractor": None}


@pytest.fixture(scope="session")
def tiny_xl_pipeline_dir(tmp_path_factory, tokenizer_dir) -> Path:
    from diffusers import StableDiffusionXLPipeline

    folder = tmp_path_factory.mktemp("tiny-sdxl")
    StableDiffusionXLPipeline(**get_dummy_xl_components(tokenizer_dir)).save_pretrained(folder)
    return folder
