"""A change to the style LoRA recipe against the shipped LoRAs, side by side.

For each style, a LoRA is trained with `train_style_lora`: the pack's base recipe (BuildPlan:
400 steps of 8, lr 3e-3, rank 8, 800 scenes, the style's own seed, so the same scenes, batches,
noise and timesteps as the shipped LoRA) with the changes asked for: `shape_word_loss` (a hinge
that asks the caption naming the wrong shape to fit the image worse) at weight W, the moving
average of its weights with decay D (the shipped LoRAs use D = 0.99, so give `--ema 0.99` to
change only something else), the loss weighted by where the style changes the image
(`change_weights`, strength C), another number of steps, or the cross-attention's key and
value projections left as the base has them (`--frozen-text-kv`: the LoRA cannot change how
the UNet reads the prompt's words). It is judged beside the shipped LoRA
of the same style on the same held-out prompts and seeds as starter_quality.py (style
detected, content right), with the shape-word reliance of lora_diagnostics.py (the loss rise
when the caption names another shape).

The recipe is the untuned one: every style at `BuildPlan.lora_steps` and strength 1. Since
`BuildPlan.lora_tuning` (13 styles shipped with other steps or strengths: lora_strength.md),
compare with the pack as it was before (`--shipped DIR`, e.g. the pack at commit 15770f0, as
lora_strength.py's docstring extracts it) for a change of recipe alone.

Styles are picked before any figure is seen: every second style in sorted order by default
(14 of 28, every band). `--plain` also retrains the shipped recipe from scratch, to show how
much of a difference is training noise rather than the recipe. Trained files and each file's
figures (keyed by its bytes and the judges') are kept under `.cache/lora_recipe/`, so a re-run
over more styles measures only what is new.

    .venv/bin/python benchmarks/lora_recipe.py [--styles a,b|all] [--prompts 40]
        [--shape-weight W] [--ema D] [--change-weight C] [--steps N] [--frozen-text-kv]
        [--workers 2]
        [--plain] [--shipped DIR] [--out FILE]
    .venv/bin/python benchmarks/lora_recipe.py --styles a,b --ema 0.99 --steps 1200 --train-only
        (only train the candidate files, judge nothing: for lora_strength.py and
        content_guidance.py --files, which judge on validation prompts, never held-out ones)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from common import RESULTS, ROOT, machine_line

from styles.starter.build import BuildPlan
from styles.starter.looks import STYLES
from styles.starter.paths import LORA_DIR, PIPELINE_DIR
from styles.starter.style_loras import file_name

WORK = ROOT / ".cache" / "lora_recipe"


def train(pipe, slug: str, recipe: dict, name: str) -> Path:
    """The pack's recipe for `slug` with the changes in `recipe` (`train_style_lora` keyword
    arguments: shape_weight, ema, change_weight; and steps), saved under WORK in a folder `name`
    of this base's (kept, so a re-run on the same base does not retrain)."""
    from styles.starter.style_loras import save_style_lora, train_style_lora

    plan = BuildPlan()
    options = {"ema": 0.0, **recipe}  # the plain recipe unless the change names an EMA
    steps = options.pop("steps", None) or plan.lora_steps
    options["text_kv"] = not options.pop("frozen_text_kv", False)
    unet = PIPELINE_DIR / "unet" / "diffusion_pytorch_model.safetensors"
    folder = WORK / f"{name}-{hashlib.sha256(unet.read_bytes()).hexdigest()[:8]}"
    path = folder / file_name(slug)
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        modules = train_style_lora(pipe, slug, steps, plan.lora_batch, plan.lora_rank,
                                   lr=plan.lora_lr, pool=plan.lora_pool,
                                   seed=plan.seed + sorted(STYLES).index(slug), **options)
        save_style_lora(modules, folder, slug, steps, plan.lora_rank)
    return path


def train_alone(slug: str, recipe: dict) -> Path:
    """`train` in a worker process of one thread: the candidate file, nothing judged."""
    import torch
    from diffusers import StableDiffusionPipeline

    torch.set_num_threads(1)
    pipe = StableDiffusionPipeline.from_pretrained(str(PIPELINE_DIR), dtype=torch.float32)
    return train(pipe, slug, recipe, tag(recipe))


def fingerprint(lora: Path, judges: Path) -> str:
    """Names what a measurement depends on: the LoRA file's bytes, the base UNet's and the
    judges' weights."""
    digest = hashlib.sha256(lora.read_bytes())
    for path in [PIPELINE_DIR / "unet" / "diffusion_pytorch_model.safetensors",
                 *sorted(judges.glob("*.safetensors"))]:
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


NAMES = {"shape_weight": "shape", "ema": "ema", "change_weight": "change", "steps": "steps",
         "frozen_text_kv": "kv"}


def tag(recipe: dict) -> str:
    """A short name of a recipe change: `ema0.99-steps1200`."""
    return "-".join(f"{NAMES[key]}{value:g}" for key, value in recipe.items() if value)


def measure(slug: str, recipe: dict, prompts: int, plain: bool, shipped: str) -> dict:
    """Train, then judge and probe each LoRA of one style (in a worker process)."""
    import torch
    from diffusers import DDPMScheduler, StableDiffusionPipeline
    from lora_diagnostics import encode, reliance, rise, scenes_with_swapped_shape, with_lora
    from starter_quality import judge_style

    from app.service import LoratlasService, ServiceConfig
    from styles.reader import read_lora
    from styles.starter.judges import Judges
    from styles.starter.paths import JUDGES_DIR

    torch.set_num_threads(1)
    started = time.time()
    pipe = StableDiffusionPipeline.from_pretrained(str(PIPELINE_DIR), dtype=torch.float32)
    paths = {"shipped": Path(shipped) / file_name(slug),
             "candidate": train(pipe, slug, recipe, tag(recipe))}
    trained = time.time() - started  # near 0 when an earlier run left the file
    if plain:
        pack_recipe = {"ema": BuildPlan().lora_ema}  # the pack's own recipe, retrained
        paths["plain"] = train(pipe, slug, pack_recipe, f"plain-{tag(pack_recipe)}")
    service = LoratlasService(ServiceConfig(device="cpu"))
    judges = Judges.load(JUDGES_DIR)
    noise = DDPMScheduler.from_config(pipe.scheduler.config)
    probe = encode(pipe, *scenes_with_swapped_shape(800 + sorted(STYLES).index(slug), slug))
    out = {"slug": slug, "band": STYLES[slug].band, "train_seconds": trained}
    for name, path in paths.items():
        record = WORK / "measured" / f"{fingerprint(path, JUDGES_DIR)}-{prompts}.json"
        if record.is_file():  # this file was judged by these judges before: same figures
            out[name] = json.loads(record.read_text())
            continue
        style, content = judge_style(service, judges, slug, prompts, 20, ref=str(path))
        with with_lora(pipe.unet, read_lora(path)) as unet:
            bands = reliance(unet, noise, *probe)
        out[name] = {"style": style, "content": content,
                     "reliance": [rise(pair) for pair in bands[1:3]]}  # t 200–799
        record.parent.mkdir(parents=True, exist_ok=True)
        partial = record.with_suffix(".tmp")
        partial.write_text(json.dumps(out[name]))
        partial.replace(record)  # a crash never leaves half a record to be read back
    print(slug, {k: v for k, v in out.items() if isinstance(v, dict)}, flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--styles", default=",".join(sorted(STYLES)[::2]),
                        help="comma-separated slugs, or 'all'")
    parser.add_argument("--prompts", type=int, default=40)
    parser.add_argument("--shape-weight", type=float, default=0.0)
    parser.add_argument("--ema", type=float, default=0.0,
                        help="decay of the LoRA weights' moving average (0: the last step's)")
    parser.add_argument("--change-weight", type=float, default=0.0,
                        help="weigh the loss by where the style changes the image")
    parser.add_argument("--steps", type=int, default=0,
                        help="optimiser steps (0: the pack's, BuildPlan.lora_steps)")
    parser.add_argument("--frozen-text-kv", action="store_true",
                        help="leave the cross-attention's key and value projections untrained")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--plain", action="store_true")
    parser.add_argument("--shipped", default=str(LORA_DIR),
                        help="the files to compare with (default: the pack's)")
    parser.add_argument("--out", help="default: results/lora_recipe_<recipe>.md")
    parser.add_argument("--train-only", action="store_true",
                        help="train the candidate files and print where they are; judge nothing")
    args = parser.parse_args()
    change = {"shape_weight": args.shape_weight, "ema": args.ema,
              "change_weight": args.change_weight, "steps": args.steps,
              "frozen_text_kv": args.frozen_text_kv}
    if not any(change.values()):
        parser.error("name a recipe to compare with the shipped one: --shape-weight, --ema, "
                     "--change-weight, --steps or --frozen-text-kv")
    out = Path(args.out or RESULTS / f"lora_recipe_{tag(change)}.md")
    slugs = sorted(STYLES) if args.styles == "all" else \
        [s.strip() for s in args.styles.split(",") if s.strip()]
    unknown = [s for s in slugs if s not in STYLES]
    if unknown:
        parser.error(f"--styles: not starter styles: {', '.join(unknown)}")
    started = time.time()
    context = multiprocessing.get_context("spawn")
    if args.train_only:
        with ProcessPoolExecutor(args.workers, mp_context=context) as pool:
            for path in pool.map(train_alone, slugs, [change] * len(slugs)):
                print(path, flush=True)
        print(f"trained in {time.time() - started:.0f} s")
        return
    with ProcessPoolExecutor(args.workers, mp_context=context) as pool:
        n = len(slugs)
        rows = list(pool.map(measure, slugs, [change] * n, [args.prompts] * n,
                             [args.plain] * n, [args.shipped] * n))

    names = ["shipped", "candidate"] + (["plain"] if args.plain else [])
    recipe = " and ".join([f"shape term W = {args.shape_weight:g}"] * bool(args.shape_weight)
                          + [f"EMA {args.ema:g}"] * bool(args.ema)
                          + [f"change weight {args.change_weight:g}"] * bool(args.change_weight)
                          + [f"{args.steps} steps"] * bool(args.steps)
                          + ["the cross-attention's key and value frozen"]
                          * args.frozen_text_kv)
    titles = {"shipped": "shipped", "candidate": recipe, "plain": "shipped recipe, retrained"}
    listed = "all" if slugs == sorted(STYLES) else ",".join(slugs)
    flags = "".join(f" --{key.replace('_', '-')}" + ("" if value is True else f" {value:g}")
                    for key, value in change.items() if value)
    command = (f"`.venv/bin/python benchmarks/lora_recipe.py --styles {listed} "
               f"--prompts {args.prompts}{flags} --workers {args.workers}"
               + (" --plain" if args.plain else "")
               + (f" --shipped {args.shipped}" if args.shipped != str(LORA_DIR) else "") + "`")
    lines = [
        f"# Style LoRA recipe: {recipe} against the shipped LoRAs", "", machine_line(),
        f"Command: {command}", "",
        "Each style's LoRA trained by `train_style_lora` with the pack's recipe and its own "
        "seed (same scenes, batches, noise and timesteps), as shipped and with "
        f"{recipe}. *Shape term*: `shape_word_loss`, a hinge asking the caption that names "
        "the wrong shape to fit at least 50% worse at t ≥ 300, weighted W. *EMA*: the "
        "exponential moving average of the LoRA weights over the steps. *Change weight* C: "
        "each latent pixel's loss weighted 1 + C × where the style changed the image "
        "(`change_weights`, mean 1 per image). Judged as in "
        "starter_quality.py (guidance 2, 20 DPM-Solver steps, "
        f"{args.prompts} held-out prompts per style; style detected / "
        "content right; one prompt is "
        f"{100 / args.prompts:.1f} points). *reliance*: the loss rise when the caption names "
        "another shape, at t 200–499 and 500–799 (lora_diagnostics.py; the base on unstyled "
        "scenes: +108% and +139%). Styles chosen before measuring: every second one in "
        "sorted order unless `--styles` says otherwise.", "",
        "| style | band | " + " | ".join(f"{titles[n]}: style / content" for n in names)
        + " | " + " | ".join(f"{titles[n]}: reliance" for n in names) + " |",
        "|---|---|" + "---:|" * (2 * len(names)),
    ]
    for row in rows:
        lines.append(f"| {row['slug']} | {row['band']} | "
                     + " | ".join(f"{row[n]['style']:.2f} / {row[n]['content']:.2f}"
                                  for n in names) + " | "
                     + " | ".join(" / ".join(f"{r:+.0%}" for r in row[n]["reliance"])
                                  for n in names) + " |")
    lines.append("")
    for name in names:
        style = [row[name]["style"] for row in rows]
        content = [row[name]["content"] for row in rows]
        both = sum(s >= 0.8 and c >= 0.7 for s, c in zip(style, content, strict=True))
        lines.append(f"- {titles[name]}: mean style {np.mean(style):.3f}, mean content "
                     f"{np.mean(content):.3f}; styles at both targets (style ≥ 0.80, content "
                     f"≥ 0.70): {both}/{len(rows)}")
    gain = [row["candidate"]["content"] - row["shipped"]["content"] for row in rows]
    change = [row["candidate"]["style"] - row["shipped"]["style"] for row in rows]
    lines += [f"- {recipe} against shipped, per style: content {np.mean(gain):+.3f} (higher "
              f"in {sum(g > 0 for g in gain)}, lower in {sum(g < 0 for g in gain)}), style "
              f"{np.mean(change):+.3f} (higher in {sum(c > 0 for c in change)}, lower in "
              f"{sum(c < 0 for c in change)})",
              "", "Training one LoRA with this recipe: "
              f"{np.mean([r['train_seconds'] for r in rows]):.0f} s per style in a worker "
              f"({args.workers} workers, one thread each; 0 for files an earlier run left in "
              f"`.cache/lora_recipe/`). Wall time {time.time() - started:.0f} s."]
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
