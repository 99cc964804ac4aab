"""How much any weighting of the LoRAs could win on multi-style prompts: an upper bound for
gated fusion, measured on the prompts, seeds and judges of fusion_quality.py.

Gated fusion can only choose a weight per LoRA, layer and step. This benchmark renders the same
held-out 2- and 3-style prompts under a family of such choices, most the same for every LoRA:
- flat weights (0.7, 1.0 = merge, 1.3);
- step schedules (keyframes over the 20 steps: late starts, an early-strong ramp);
- module kinds (only the attention layers, all but the resnets, all but the feed-forward
  layers, only the resnets: a per-layer gate of 0 or 1);
- staggered step schedules, the one choice that differs between the LoRAs: ordered by the
  high-frequency share of their profiles (fusion.frequency), each LoRA leads its own share of
  the steps (*windows*), or joins at its share and stays (*joining*);
- per-LoRA UNet levels by the same order (*blocks by frequency*: the most low-frequency LoRA
  kept off the finest level, the most high-frequency one off the coarsest, or each kept to one);
- element-wise merges that resolve interference between the LoRAs' deltas before summing
  (TIES, DARE, magnitude pruning, from PEFT's `merge_utils`, as `add_weighted_adapter` uses
  them), each merged delta factored exactly (SVD) into one adapter;
and reports each choice, plus the *hindsight oracle*: a prompt counts as solved when any of
those choices solves it (a per-prompt choice no gate network could beat within this family,
since it is picked after seeing the judges' verdict). One row changes the prompt instead of
the weights: the LoRAs merged at 1.0 on the scene's plain caption, with no style words at all
(what is left when the base is spared the style descriptions it never learned to read).

With `--per-lora-weights`, it runs instead a grid in which each LoRA of a prompt gets its own
flat weight from the given values (every combination: 3^k rows for three values), and reports
that grid's oracle (`fusion_headroom_per_lora.md`).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/fusion_headroom.py [--per-k 40] \\
        [--choices "merge (flat 1.0);windows, low frequency first"] [--out FILE]
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/fusion_headroom.py --per-lora-weights 0.6,1,1.4 \\
        --out benchmarks/results/fusion_headroom_per_lora.md
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import itertools
import json
import time
from pathlib import Path

import numpy as np
import torch
from common import RESULTS, machine_line
from fusion_quality import SEED, Bench, cases, held_out_sets
from peft.utils import merge_utils

from fusion.engine import LoraUse
from fusion.frequency import high_frequency_score
from styles.lora import LoraFile, LoraModule

WEIGHTS = {"merge (flat 1.0)": 1.0, "flat 0.7": 0.7, "flat 1.3": 1.3}
SCHEDULES = {"late start 0→1→1": [0, 1, 1], "late start 0.3→1→1": [0.3, 1, 1],
             "late start 0→1.5→1.5": [0, 1.5, 1.5], "off for a third 0→0→1→1": [0, 0, 1, 1],
             "off for a third 0→0→1.5→1.5": [0, 0, 1.5, 1.5], "early 1.5→1→0.5": [1.5, 1, 0.5]}
MODULES = {"attention layers only": lambda t: ".attn1." in t or ".attn2." in t,
           "all but resnets": lambda t: ".resnets." not in t,
           "all but feed-forward": lambda t: ".ff." not in t,
           "resnets only": lambda t: ".resnets." in t}
STAGGERED = {"windows, low frequency first": ("window", False),
             "windows, high frequency first": ("window", True),
             "joining, low frequency first": ("join", False),
             "joining, high frequency first": ("join", True)}
# each LoRA kept to the UNet levels of its frequency band (16×16, 8×8, 4×4 latents): the most
# low-frequency LoRA of a set loses the finest level (soft) or keeps only the coarsest (hard),
# the most high-frequency one the reverse, any LoRA between keeps all (soft) or the middle (hard)
BANDS = {"blocks by frequency, soft": "soft", "blocks by frequency, hard": "hard"}
LEVELS = {0: ("down_blocks.0.", "up_blocks.2."), 1: ("down_blocks.1.", "up_blocks.1."),
          2: ("down_blocks.2.", "mid_block.", "up_blocks.0.")}
PLAIN_PROMPT = "merge on the plain caption (no style words)"
# element-wise merges of the deltas (method, density, weight of each LoRA): TIES trims each
# delta to its largest entries, elects a sign per entry and averages the entries that agree
# (so its scale is one LoRA's, not the sum's: hence the 1.5 rows); DARE drops entries at random
# and rescales the rest; magnitude pruning trims, then sums
MERGES = {"task arithmetic (the sum as one adapter: merge again)": ("task_arithmetic", 1.0, 1.0),
          "TIES, density 0.2": ("ties", 0.2, 1.0), "TIES, density 0.5": ("ties", 0.5, 1.0),
          "TIES, sign election only": ("ties", 1.0, 1.0),
          "TIES, density 0.5, weight 1.5": ("ties", 0.5, 1.5),
          "TIES, sign election only, weight 1.5": ("ties", 1.0, 1.5),
          "magnitude pruning, density 0.5": ("magnitude_prune", 0.5, 1.0),
          "DARE, density 0.5": ("dare_linear", 0.5, 1.0),
          "DARE-TIES, density 0.5": ("dare_ties", 0.5, 1.0)}


def band_levels(place: int, k: int, kind: str) -> set[int]:
    """UNet levels kept for the LoRA at `place` (0 = most low-frequency) of k."""
    if place == 0:
        return {2} if kind == "hard" else {1, 2}
    if place == k - 1:
        return {0} if kind == "hard" else {0, 1}
    return {1} if kind == "hard" else {0, 1, 2}


def staggered(n: int, place: int, kind: str) -> list[float]:
    """Keyframes (two per LoRA) for the LoRA at `place` of n: 1 over its own share of the
    steps (window) or from its share to the end (join), else 0."""
    frames = [0.0] * (2 * n)
    end = 2 * place + 2 if kind == "window" else 2 * n
    frames[2 * place:end] = [1.0] * (end - 2 * place)
    return frames


def frequency_places(bench: Bench, styles: list[str], high_first: bool) -> dict[str, int]:
    """Each style's place when ordered by the high-frequency share of its profile."""
    score = {s: high_frequency_score(bench.loras[s][1]) for s in styles}
    ordered = sorted(styles, key=lambda s: score[s], reverse=high_first)
    return {s: ordered.index(s) for s in styles}


def uses_for(bench: Bench, case: dict, choice: str) -> tuple[list[LoraUse], str]:
    """The LoRAs of a case under one choice, and the mode that applies it."""
    if choice in MERGES:
        merged = merged_lora([bench.loras[s][0] for s in case["styles"]], *MERGES[choice])
        return [LoraUse(merged, "+".join(case["styles"]), 1.0)], "merge"
    uses = []
    if choice in STAGGERED:
        kind, high_first = STAGGERED[choice]
        places = frequency_places(bench, case["styles"], high_first)
    if choice in BANDS:
        places = frequency_places(bench, case["styles"], high_first=False)
    per_lora = _per_lora(choice)
    for i, slug in enumerate(case["styles"]):
        lora, frequency = bench.loras[slug]
        if choice in MODULES or choice in BANDS:
            levels = band_levels(places[slug], len(case["styles"]), BANDS[choice]) \
                if choice in BANDS else None
            keep = MODULES.get(choice) or _in_levels(levels)
            lora = dataclasses.replace(  # another adapter, not the whole file's
                lora, modules={t: m for t, m in lora.modules.items() if keep(t)},
                sha256=f"{lora.sha256}-{choice}-{sorted(levels or ())}")
        weight = per_lora[i] if per_lora else WEIGHTS.get(choice, 1.0)
        schedule = staggered(len(case["styles"]), places[slug], kind) \
            if choice in STAGGERED else SCHEDULES.get(choice)
        uses.append(LoraUse(lora, slug, weight, step_weights=schedule, frequency=frequency))
    # step weights are a user schedule: gated runs them exactly, with no learned gates
    return uses, "gated" if choice in SCHEDULES or choice in STAGGERED else "merge"


def merged_lora(loras: list[LoraFile], method: str, density: float,
                weight: float) -> LoraFile:
    """One adapter holding an element-wise merge of the LoRAs' deltas, module by module,
    factored exactly by SVD (rank up to the sum of theirs; a sum of deltas gives merge back)."""
    torch.manual_seed(0)  # DARE's random drops, the same for every run
    modules = {}
    for target in sorted(set().union(*(lora.modules for lora in loras))):
        present = [lora.modules[target] for lora in loras if target in lora.modules]
        weights = torch.full((len(present),), weight)
        density_arg = () if method == "task_arithmetic" else (density,)
        delta = getattr(merge_utils, method)([m.delta() for m in present], weights, *density_arg)
        first = present[0]
        u, s, vh = torch.linalg.svd(delta.reshape(first.out_features, -1), full_matrices=False)
        rank = max(1, int((s > s[0] * 1e-4).sum())) if s[0] > 0 else 1
        down, up = vh[:rank].contiguous(), (u[:, :rank] * s[:rank]).contiguous()
        if first.kind == "conv":
            down = down.reshape(rank, first.in_features, *first.kernel_size)
            up = up.reshape(first.out_features, rank, 1, 1)
        modules[target] = LoraModule(target, first.kind, down, up)
    name = f"{method}-{density}-{weight}-" + "-".join(lora.sha256 for lora in loras)
    return dataclasses.replace(loras[0], modules=modules,
                               sha256=hashlib.sha256(name.encode()).hexdigest())


def _in_levels(levels: set[int]):
    prefixes = tuple(p for level in levels for p in LEVELS[level])
    return lambda target: target.split(".", 1)[1].startswith(prefixes)


PER_LORA = "per-LoRA weights "


def _per_lora(choice: str) -> tuple[float, ...] | None:
    """The weights of a per-LoRA grid row ("per-LoRA weights 0.6/1/1.4", in the prompt's
    style order), or None."""
    if not choice.startswith(PER_LORA):
        return None
    return tuple(float(w) for w in choice.removeprefix(PER_LORA).split("/"))


def per_lora_grid(values: list[str], k: int) -> list[str]:
    return [PER_LORA + "/".join(combo) for combo in itertools.product(values, repeat=k)]


def verdicts(bench: Bench, batch: list[dict], choice: str, steps: int) -> list[dict]:
    """Per-prompt verdicts (success, all styles, content) of one choice."""
    engine, images = bench.engine, []
    for case in batch:
        uses, mode = uses_for(bench, case, choice)
        prompt = case["content"] if choice == PLAIN_PROMPT else case["prompt"]
        recipe = engine.recipe_for(prompt, uses, seed=case["seed"], steps=steps, width=64,
                                   height=64, mode=mode, apply="fused")
        images.append(engine.generate(recipe, uses).images[0])
    return bench.judge_rows(images, batch)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--per-k", type=int, default=40, help="prompts per set size (2, 3)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--choices", help="rows to run, separated by ; (default: all)")
    parser.add_argument("--per-lora-weights",
                        help="comma-separated weights: run every per-LoRA combination instead")
    parser.add_argument("--out", default=str(RESULTS / "fusion_headroom.md"))
    args = parser.parse_args()
    if args.per_lora_weights:
        return per_lora_main(args)
    torch.set_num_threads(args.threads)
    started = time.time()
    bench = Bench(args.steps, "fused")
    known = [*WEIGHTS, *SCHEDULES, *MODULES, *STAGGERED, *BANDS, *MERGES, PLAIN_PROMPT]
    choices = known
    if args.choices:
        choices = [c.strip() for c in args.choices.split(";")]
        if unknown := set(choices) - set(known):
            parser.error(f"unknown --choices {sorted(unknown)}; known: {known}")
    rows: dict[str, dict[int, list[dict]]] = {c: {} for c in choices}
    for k in (2, 3):
        batch = cases(held_out_sets(k, set(bench.files)), args.per_k, SEED + 1000 * k)
        for choice in choices:
            rows[choice][k] = verdicts(bench, batch, choice, args.steps)
            print(choice, k, json.dumps(summary(rows[choice][k])), flush=True)
    write(args, rows, (time.time() - started) / 60)


def summary(verdict_rows: list[dict]) -> dict:
    return {key: float(np.mean([r[key] for r in verdict_rows]))
            for key in ("success", "all_styles", "content")}


def write(args, rows: dict, minutes: float) -> None:
    weighting = [c for c in rows if c != PLAIN_PROMPT]
    oracle = {k: float(np.mean([any(rows[c][k][i]["success"] for c in weighting)
                                for i in range(len(rows[weighting[0]][k]))])) for k in (2, 3)}
    table = [(c, {k: summary(rows[c][k]) for k in (2, 3)}) for c in rows]
    table.insert(len(weighting), ("**hindsight oracle** (any row above, per prompt)",
                                  {k: {"success": oracle[k]} for k in (2, 3)}))
    command = (f"OMP_NUM_THREADS=1 .venv/bin/python benchmarks/fusion_headroom.py --per-k "
               f"{args.per_k} --steps {args.steps}"
               + (f" --threads {args.threads}" if args.threads != 1 else "")
               + (f' --choices "{args.choices}"' if args.choices else "")
               + (f" --out {args.out}" if args.out != str(RESULTS / "fusion_headroom.md")
                  else ""))
    lines = [
        "# Fusion headroom: what any weighting of the LoRAs could win", "", machine_line(),
        f"Command: `{command}` ({minutes:.0f} min, {args.threads} torch "
        f"thread{'s' * (args.threads > 1)}).", "",
        f"The prompts, seeds, judges and verdicts of `fusion_quality.md` ({args.per_k} two-style "
        f"and {args.per_k} three-style prompts from held-out style sets; starter LoRAs, "
        f"{args.steps} DPM-Solver steps, guidance 2, 64×64). Each row applies one choice to "
        "every LoRA of the prompt (the same to each, but for the staggered rows, whose order "
        "follows the LoRAs' frequency profiles, and the element-wise merges, "
        "which combine the LoRAs' deltas entry by entry into one adapter); *success* = every "
        "requested style detected and the content right. The oracle counts a prompt as solved "
        "when any weighting row solves it, chosen after seeing the verdicts: no gate network "
        "choosing among these could do better.", "",
        "| choice | 2 styles: success | all styles | content | 3 styles: success | all styles "
        "| content |", "|---|---:|---:|---:|---:|---:|---:|"]
    for name, figures in table:
        lines.append(f"| {name} | " + " | ".join(
            f"{figures[k][key]:.3f}" if key in figures[k] else "–" for k in (2, 3)
            for key in ("success", "all_styles", "content")) + " |")
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def per_lora_main(args) -> None:
    """Each LoRA its own flat weight, every combination of the values: the grid's oracle."""
    torch.set_num_threads(args.threads)
    started = time.time()
    bench = Bench(args.steps, "fused")
    values = [v.strip() for v in args.per_lora_weights.split(",")]
    found: dict[int, dict[str, list[dict]]] = {}
    for k in (2, 3):
        batch = cases(held_out_sets(k, set(bench.files)), args.per_k, SEED + 1000 * k)
        grid = per_lora_grid(values, k)
        found[k] = {}
        for choice in grid:
            found[k][choice] = verdicts(bench, batch, choice, args.steps)
            print(choice, k, json.dumps(summary(found[k][choice])), flush=True)
    lines = [
        "# Fusion headroom: each LoRA its own weight", "", machine_line(),
        f"Command: `OMP_NUM_THREADS=1 .venv/bin/python benchmarks/fusion_headroom.py "
        f"--per-lora-weights {args.per_lora_weights} --per-k {args.per_k} --steps {args.steps}"
        + (f" --threads {args.threads}" if args.threads != 1 else "")
        + f" --out {args.out}` ({(time.time() - started) / 60:.0f} min).", "",
        f"The prompts, seeds and judges of `fusion_quality.md` and `fusion_headroom.md` "
        f"({args.per_k} two-style and {args.per_k} three-style prompts from held-out style "
        f"sets; {args.steps} DPM-Solver steps, guidance 2, 64×64, fused deltas). Each LoRA of a "
        f"prompt gets its own flat weight from {{{', '.join(values)}}}, every combination "
        f"({len(values)}^k rows); all 1 is merge. *Oracle*: a prompt counts as solved when any "
        "combination solves it, chosen after seeing the verdicts: a bound for gates that weigh "
        "the LoRAs differently but flatly (per layer and step they could do more; "
        "`fusion_headroom.md` has those families, each the same for every LoRA).", "",
        "| k | combinations | merge: success | oracle: success | prompts solved by ≥ 2 "
        "combinations | oracle: all styles shown (content aside) | oracle: content right |",
        "|---:|---:|---:|---:|---:|---:|---:|"]
    for k, rows in found.items():
        n = len(next(iter(rows.values())))
        solved = [sum(rows[c][i]["success"] for c in rows) for i in range(n)]
        merge_k = next((c for c in rows if set(_per_lora(c)) == {1.0}), None)
        shown, right = ([any(rows[c][i][key] for c in rows) for i in range(n)]
                        for key in ("all_styles", "content"))
        lines.append(
            f"| {k} | {len(rows)} | "
            + (f"{summary(rows[merge_k])['success']:.3f} | " if merge_k else "– | ") +
            f"{np.mean([s > 0 for s in solved]):.3f} | {np.mean([s > 1 for s in solved]):.3f} | "
            f"{np.mean(shown):.3f} | {np.mean(right):.3f} |")
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
