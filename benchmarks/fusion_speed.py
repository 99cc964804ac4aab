"""Seconds per image for every composition mode with k LoRAs, as ratios to the base model with
no LoRA, measured side by side (interleaved) in one run.

Models: `--model sd15`, a Stable Diffusion 1.5-architecture pipeline (UNet, CLIP ViT-L text
encoder) with random weights, 512×512, a few steps, random rank-8 kohya LoRAs on every
attention and feed-forward projection of the UNet (a typical SD 1.5 style LoRA's coverage);
`--model starter`, the starter pack's base model at 64×64 with its style LoRAs (random
rank-8 stand-ins on the same modules if the pack holds none yet). Timed: prompt encoding and
the denoising loop (output_type="latent"); the VAE decode is the same in every configuration
and is left out so the ratios show what the LoRAs cost. Frequency profiles (computed once per
LoRA at ingest) are given to the engine, not timed; for the random LoRAs they are synthetic.
Gated runs with the learned gate network where one fits the base (starter), else the
frequency prior.

    .venv/bin/python benchmarks/fusion_speed.py --model starter [--steps 20] [--repeats 5]
    .venv/bin/python benchmarks/fusion_speed.py --model sd15 [--steps 2] [--repeats 1]
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
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


def random_loras(table: ModuleTable, count: int, folder: Path, rank: int = 8,
                 targets: list[str] | None = None) -> list:
    targets = targets or [t for t in table.order if t.startswith("unet.") and
                          (".attn1." in t or ".attn2." in t or ".ff." in t)]
    files = []
    for index in range(count):
        g = torch.Generator().manual_seed(index)
        modules = []
        for target in targets:
            spec = table.specs[target]
            shape = tuple(spec.kernel_size) if spec.kind == "conv" else ()
            modules.append(LoraModule(
                target, spec.kind, torch.randn(rank, spec.in_features, *shape, generator=g) * 0.01,
                torch.randn(spec.out_features, rank, *(1,) * len(shape), generator=g) * 0.01))
        path = save_kohya(modules, folder / f"style{index}.safetensors", alpha=rank)
        files.append(read_lora(path, ReadOptions(base_table=table)))
    return files


MODES = [("merge", "adapters"), ("merge", "fused"), ("switch", "adapters"),
         ("composite", "adapters"), ("cmlora", "adapters"), ("gated", "adapters"),
         ("gated", "fused")]


def starter_setup(work: Path):
    from fusion.base import load_base
    from styles.starter.paths import PIPELINE_DIR, starter_loras
    from styles.starter.style_loras import TARGETS

    base = load_base(PIPELINE_DIR, device="cpu")
    files = starter_loras()
    if files:
        slugs = ["noir", "stripes", "crescent-moon", "film-grain", "pastel"]
        slugs = [s for s in slugs if s in files] + [s for s in sorted(files) if s not in slugs]
        loras = [read_lora(files[s], ReadOptions(base_table=base.table)) for s in slugs[:5]]
        note = f"starter style LoRAs {', '.join(slugs[:5])} (rank 8, attention, ff, resnets)"
        return base, loras, note, None
    targets = [t for t in base.table.order if t.startswith("unet.")
               and any(t.endswith("." + x) for x in TARGETS)]
    loras = random_loras(base.table, 5, work, targets=targets)
    return base, loras, "random rank-8 stand-ins on the starter LoRA modules", "synthetic"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", choices=["sd15", "starter"], default="sd15")
    parser.add_argument("--steps", type=int)
    parser.add_argument("--repeats", type=int)
    parser.add_argument("--size", type=int)
    parser.add_argument("--ks", default="1,3,5")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" /
                                              "fusion_speed.md"))
    args = parser.parse_args()
    sd15 = args.model == "sd15"
    steps = args.steps or (2 if sd15 else 20)
    repeats = args.repeats or (1 if sd15 else 5)
    size = args.size or (512 if sd15 else 64)
    ks = [int(k) for k in args.ks.split(",")]
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="loratlas-bench-"))
    profiles = "synthetic"
    if sd15:
        pipe = sd15_pipeline(write_clip_tokenizer_files(work / "tok"))
        components = {"unet": pipe.unet, "text_encoder": pipe.text_encoder}
        base = BaseModel(pipe, "random SD1.5 architecture", "sd1",
                         ModuleTable.from_components("sd1", components), "cpu", torch.float32)
        loras = random_loras(base.table, max(ks), work)
        lora_note = "random rank-8 kohya LoRAs on every attention and ff projection (224 modules)"
    else:
        base, loras, lora_note, profiles = starter_setup(work)
    base.pipe.set_progress_bar_config(disable=True)
    engine = GenerationEngine(base, adapter_capacity=8)
    rng = np.random.default_rng(0)
    if profiles == "synthetic":
        frequency = [list(rng.dirichlet(np.ones(16))) for _ in loras]
    else:  # measured once, as at ingest (not timed)
        frequency = [engine.profile(LoraUse(lora, f"style{i}")) for i, lora in enumerate(loras)]
    configs = [("base", 0, "merge", "adapters")] + [
        (f"{k} LoRA", k, mode, apply) for k in ks for mode, apply in MODES]
    times: dict[tuple, list[float]] = {c: [] for c in configs}
    walls: dict[tuple, list[float]] = {c: [] for c in configs}
    passes: dict[tuple, int | None] = {}
    rewrites: dict[tuple, int | None] = {}

    def run(config) -> tuple[float, float]:
        """(CPU seconds of this process, wall seconds) for one image."""
        _, k, mode, apply = config
        uses = [LoraUse(lora, f"style{i}", 0.8, frequency=frequency[i])
                for i, lora in enumerate(loras[:k])]
        recipe = engine.recipe_for("a red star on a blue background", uses, steps=steps,
                                   width=size, height=size, apply=apply, mode=mode)
        start, cpu = time.perf_counter(), time.process_time()
        out = engine.generate(recipe, uses, output_type="latent")
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
        passes[config] = out.unet_passes
        rewrites[config] = out.gates.rewrites if out.gates is not None else None
        return cpu, elapsed

    run(configs[-1])  # warm-up: inject the adapters, first-call allocations
    for _ in range(repeats):  # interleaved, so drift on a shared machine hits all alike
        for config in configs:
            cpu, wall = run(config)
            times[config].append(cpu)
            walls[config].append(wall)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    base_time = statistics.median(times[configs[0]])
    model = ("SD 1.5-architecture UNet + CLIP ViT-L, random weights" if sd15 else
             "the starter base model (UNet ~6M parameters, 8-channel 16×16 latents)")
    command = (f".venv/bin/python benchmarks/fusion_speed.py --model {args.model} --steps "
               f"{steps} --repeats {repeats} --size {size} --ks {args.ks} --threads "
               f"{args.threads}")
    lines = [
        f"## {'SD 1.5 architecture, 512×512' if sd15 else 'Starter model'}",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores shared with other jobs "
        f"({args.threads} torch thread), torch {torch.__version__}, CPU, fp32. Model: {model}, "
        f"{size}×{size}, {steps} steps, CFG 7.5 (batch 2). LoRAs: {lora_note}. Timed: prompt "
        "encoding + denoising (VAE decode excluded, identical in all rows). Median of "
        f"{repeats} interleaved run(s). *s / image* is the CPU time of this single-threaded "
        "process (time.process_time), which other jobs on the shared cores barely disturb; "
        "*wall* is elapsed time, shown for reference (it swings with the other jobs' load). "
        "UNet passes are calls per image (each batch 2). "
        f"Peak RSS of the whole run: {peak_mb:.0f} MB (per-configuration peaks are not "
        "separable in one process).",
        "",
        f"Command: `{command}`",
        "",
        "| LoRAs | mode | apply | s / image (CPU) | × base | wall s | UNet passes | "
        "fused rewrites |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for config in configs:
        median = statistics.median(times[config])
        _, k, mode, apply = config
        lines.append(f"| {k} | {mode if k else 'base (no LoRA)'} | {apply if k else '-'} | "
                     f"{median:.3f} | {median / base_time:.3f} | "
                     f"{statistics.median(walls[config]):.3f} | {passes[config] or '-'} | "
                     f"{rewrites[config] if rewrites[config] is not None else '-'} |")
    write_section(Path(args.out), args.model, lines)
    print("\n".join(lines))


def write_section(path: Path, model: str, lines: list[str]) -> None:
    """Replace this model's section of the results file, keeping the other model's."""
    begin, end = f"<!-- {model} -->", f"<!-- /{model} -->"
    text = path.read_text() if path.is_file() else ""
    if not text.startswith("# Fusion speed"):
        text = "# Fusion speed: seconds per image, relative to the base model\n"
    block = "\n".join([begin, *lines, end])
    if begin in text and end in text:
        text = text[:text.index(begin)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


if __name__ == "__main__":
    main()
