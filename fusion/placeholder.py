"""A tiny random-weight Stable Diffusion pipeline: the test factory, and the stand-in base
model until the starter pack is built (it draws structured noise, and says so)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from styles.tokenizer import clip_tokenizer, write_clip_tokenizer_files

PLACEHOLDER_NOTE = ("placeholder base model with random weights (the starter pack is not built "
                    "yet): it exercises every feature but draws noise")


def dummy_components(tokenizer_dir: str | Path, sample_size: int = 8) -> dict:
    """Components of a StableDiffusionPipeline small enough to run in milliseconds."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(4, 8), layers_per_block=1, sample_size=sample_size, in_channels=4,
        out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32,
        norm_num_groups=2, attention_head_dim=2)
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=[4, 8], in_channels=3, out_channels=3,
                        down_block_types=["DownEncoderBlock2D"] * 2,
                        up_block_types=["UpDecoderBlock2D"] * 2, latent_channels=4,
                        norm_num_groups=2)
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        bos_token_id=49406, eos_token_id=49407, pad_token_id=49407, hidden_size=32,
        intermediate_size=37, num_attention_heads=4, num_hidden_layers=2, vocab_size=49408,
        max_position_embeddings=77, projection_dim=32))
    return {"unet": unet, "scheduler": scheduler, "vae": vae, "text_encoder": text_encoder,
            "tokenizer": clip_tokenizer(str(tokenizer_dir)), "safety_checker": None,
            "feature_extractor": None, "image_encoder": None}


def build_placeholder_pipeline(folder: str | Path, sample_size: int = 32) -> Path:
    """Save the tiny pipeline with save_pretrained (a standard diffusers folder)."""
    from diffusers import StableDiffusionPipeline

    folder = Path(folder)
    if (folder / "model_index.json").is_file():
        return folder
    tmp = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tokenizer_dir = write_clip_tokenizer_files(tmp / "_clip_tokenizer")
    pipe = StableDiffusionPipeline(**dummy_components(tokenizer_dir, sample_size),
                                   requires_safety_checker=False)
    pipe.save_pretrained(tmp)  # writes its own tokenizer/ folder
    shutil.rmtree(tokenizer_dir)
    shutil.rmtree(folder, ignore_errors=True)  # an incomplete earlier attempt, if any
    tmp.replace(folder)
    return folder


def default_placeholder_dir() -> Path:
    root = os.environ.get("LORATLAS_HOME") or Path.home() / ".cache" / "loratlas"
    return Path(root) / "placeholder-base"
