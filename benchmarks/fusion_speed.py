"""Seconds per image with 0, 1, 2, 3 and 5 LoRAs applied, unfused (PEFT adapter layers) and
fused (deltas merged into the weights), as ratios to the base model measured in one run.

Model: a Stable Diffusion 1.5-architecture pipeline (UNet, CLIP ViT-L text encoder) with random
weights, 512×512, a few steps; LoRAs are random rank-8 kohya files on every attention and
feed-forward projection of the UNet (a typical SD 1.5 style LoRA's coverage). Timed: prompt
encoding and the denoising loop (output_type="latent"); the VAE decode is the same in every
configuration and is left out so the ratios show what the LoRAs cost.

    .venv/bin/python benchmarks/fusion_speed.py [--steps 4] [--repeats 3] [--size 512]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from fusion.base import BaseModel
from fusion.engine import GenerationEngine, LoraUse
from styles.architectures import REFERENCE_CONFIGS, ModuleTable
from styles.lora import LoraModule
from styles.reader import ReadOptions, read_lora
from styles.tokenizer import clip_tokenizer, write_clip_tokenizer_files
from styles.writers import save_kohya


def sd15_pipeline(tokenizer_dir: Path):
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    config = REFERENCE_CONFIGS["sd1"]
    unet = UNet2DConditionModel(**config["unet"])
    text_encoder = CLIPTextModel(CLIPTextConfig(**config["text_encoder"], vocab_size=49408,
                                                bos_token_id=49406, eos_token_id=49407))
    vae = AutoencoderKL(block_out_channels=[128, 256, 512, 512], latent_channels=4,
                        down_block_types=["DownEncoderBlock2D"] * 4,
                        up_block_types=["UpDecoderBlock2D"] * 4, layers_per_block=2)
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPipeline(unet=unet, text_encoder=text_encoder, vae=vae,
                                   tokenizer=clip_tokenizer(str(tokenizer_dir)),
                                   scheduler=scheduler, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def random_loras(table: ModuleTable, count: int, folder: Path, rank: int = 8) -> list:
    targets = [t for t in table.order if t.startswith("unet.") and
               (".attn1." in t or ".attn2." in t or ".ff." in t)]
    files = []
    for index in range(count):
        g = torch.Generator().manual_seed(index)
        modules = []
        for target in targets:
            spec = table.specs[target]
            modules.append(LoraModule(target, "linear",
                                      torch.randn(rank, spec.in_features, generator=g) * 0.01,
                                      torch.randn(spec.out_features, rank, generator=g) * 0.01))
        path = save_kohya(modules, folder / f"style{index}.safetensors", alpha=rank)
        files.append(read_lora(path, ReadOptions(base_table=table)))
    return files


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" /
                                              "fusion_speed.md"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="loratlas-bench-"))
    pipe = sd15_pipeline(write_clip_tokenizer_files(work / "tok"))
    components = {"unet": pipe.unet, "text_encoder": pipe.text_encoder}
    base = BaseModel(pipe, "random SD1.5 architecture", "sd1",
                     ModuleTable.from_components("sd1", components), "cpu", torch.float32)
    engine = GenerationEngine(base)
    loras = random_loras(base.table, 5, work)
    configs = [("base", 0, "adapters")] + [(f"{k} LoRA", k, mode) for k in (1, 2, 3, 5)
                                           for mode in ("adapters", "fused")]
    times: dict[tuple, list[float]] = {c: [] for c in configs}

    def run(k: int, mode: str) -> float:
        uses = [LoraUse(lora, f"style{i}", 0.8) for i, lora in enumerate(loras[:k])]
        recipe = engine.recipe_for("a red star", uses, steps=args.steps, width=args.size,
                                   height=args.size, apply=mode)
        start = time.perf_counter()
        engine.generate(recipe, uses, output_type="latent")
        return time.perf_counter() - start

    run(5, "adapters")  # warm-up: inject all adapters, first-call allocations
    for _ in range(args.repeats):  # interleaved, so drift on a shared machine hits all alike
        for config in configs:
            times[config].append(run(config[1], config[2]))
    base_time = statistics.median(times[configs[0]])
    lines = [
        "# Fusion speed: seconds per image, relative to the base model",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores ({args.threads} torch threads), "
        f"torch {torch.__version__}, CPU, fp32. Model: SD 1.5-architecture UNet + CLIP ViT-L, "
        "random weights, "
        f"{args.size}×{args.size}, {args.steps} DDIM steps, CFG 7.5 (batch 2). LoRAs: rank 8 "
        "on every attention and feed-forward projection of the UNet (224 modules each). Timed: "
        "prompt encoding + denoising (VAE decode excluded, identical in all rows). Median of "
        f"{args.repeats} interleaved runs.",
        "",
        f"Command: `.venv/bin/python benchmarks/fusion_speed.py --steps {args.steps} "
        f"--repeats {args.repeats} --size {args.size} --threads {args.threads}`",
        "",
        "| configuration | apply | s / image | × base |",
        "|---|---|---:|---:|",
    ]
    for config in configs:
        median = statistics.median(times[config])
        lines.append(f"| {config[0]} | {config[2] if config[1] else '-'} | {median:.2f} | "
                     f"{median / base_time:.3f} |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
