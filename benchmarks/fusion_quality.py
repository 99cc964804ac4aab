"""Multi-style composition quality per fusion mode, judged by the starter judges.

- 2- and 3-style prompts from style sets held out from gate training (the split recorded in
  styles/data/starter/gates/gates.json; scenes from seeds >= 20_000, never used in training):
  the share of images in which every requested style is detected AND the content is right
  (shape right; colour right too when the judges read colour through every requested style);
  no set holds two styles of which one hides the other (`looks.clashing_pairs`).
- Single styles: fidelity (style detected and content right) of each mode with one LoRA,
  against the single LoRA alone (merge at weight 1).
- The same judgement of the ground truth `apply_styles` draws for each prompt's scene, as drawn
  and through the base model's VAE (the best any mode could render): the ceiling the judges
  allow, since they miss styles in compositions even on exact images.
- A contact sheet, docs/fusion_modes.png: the same prompt and styles in every mode, beside
  the ground truth that `apply_styles` draws for the same scene.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/fusion_quality.py [--per-k 40]
        [--per-style 4] [--steps 20]
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import numpy as np
import torch
from common import RESULTS, ROOT, ground_truth, images_as_array, machine_line

from fusion.base import load_base
from fusion.engine import GenerationEngine, LoraUse
from fusion.gate_training import split_sets
from fusion.recipe import CONTENT_GUIDED
from styles.reader import ReadOptions, read_lora
from styles.starter.judges import Judges, vae_renderer
from styles.starter.looks import clashing_pairs, styled_caption
from styles.starter.paths import JUDGES_DIR, PIPELINE_DIR, STARTER_DIR, starter_loras
from styles.starter.world import caption, content_labels, sample_scene

SEED = 20_000
MODES = ("base", "merge", "switch", "composite", "cmlora", "gated")  # also: gated-prior
GATES = STARTER_DIR / "gates" / "gates.json"
TRUTH_ROWS = {"ground truth": False, "ground truth through the VAE": True}


def held_out_sets(k: int, available: set[str]) -> list[tuple[str, ...]]:
    """Held-out style sets of size k, as recorded by gate training (or by the same rule),
    without sets in which one style hides another (a network trained before the clashes were
    measured recorded those too)."""
    if GATES.is_file():
        recorded = json.loads(GATES.read_text())["split"]["held_out"][str(k)]
        sets = [tuple(s) for s in recorded]
    else:
        sets = split_sets(k)[1]
    return [s for s in sets if set(s) <= available and not clashing_pairs(s)]


def cases(sets: list[tuple[str, ...]], n: int, seed: int) -> list[dict]:
    """n prompts: a held-out style set, a fresh scene, its styled caption and labels; also
    "content", the caption of the scene alone that the styled caption opens with."""
    rng = np.random.default_rng(seed)
    chosen = [sets[int(i)] for i in rng.permutation(len(sets))[:n]]
    out = []
    for i, style_set in enumerate(chosen):
        scene = sample_scene(rng, n_objects=1)
        content = caption(scene, copy.deepcopy(rng))  # styled_caption's own first draw
        prompt = styled_caption(scene, style_set, rng)
        assert content in prompt, (content, prompt)
        out.append({"styles": list(style_set), "prompt": prompt, "content": content,
                    "labels": content_labels(scene), "scene": scene, "seed": seed + i})
    return out


class Bench:
    """The starter engine, its LoRAs (with their stored frequency profiles) and the judges."""

    def __init__(self, steps: int, gated_apply: str, gates: Path = GATES.parent,
                 content_guidance: float = 0.0) -> None:
        base = load_base(PIPELINE_DIR, device="cpu")
        base.pipe.set_progress_bar_config(disable=True)
        self.engine = GenerationEngine(
            base, adapter_capacity=8,
            gate_network=gates if (gates / "gates.safetensors").is_file() else None)
        self.steps, self.gated_apply = steps, gated_apply
        self.content_guidance = content_guidance  # merge, switch and gated only
        self.files = starter_loras()
        record = gates / GATES.name
        profiles = json.loads(record.read_text()).get("profiles", {}) if record.is_file() else {}
        self.loras = {}
        for slug, path in self.files.items():
            lora = read_lora(path, ReadOptions(base_table=base.table))
            self.loras[slug] = (lora, profiles.get(slug))
        self.judges = Judges.load(JUDGES_DIR)
        self.seconds: dict[str, list[float]] = {}
        self._render = None  # the base's VAE round trip, loaded on first use

    def image(self, mode: str, case: dict) -> np.ndarray:
        """One image; "gated-prior" is gated with the learned network switched off; "base" is
        the base model alone on the same prompt (what the prompt's words do without LoRAs)."""
        uses = [LoraUse(self.loras[s][0], s, 1.0, frequency=self.loras[s][1])
                for s in case["styles"] if mode != "base"]
        engine = self.engine
        network = engine.gate_network, engine.gate_network_id
        if mode == "gated-prior":
            engine.gate_network, engine.gate_network_id = None, ""
        try:
            apply = self.gated_apply if mode.startswith("gated") else "adapters"
            kind = "merge" if mode == "base" else mode.split("-")[0]
            recipe = engine.recipe_for(case["prompt"], uses, seed=case["seed"],
                                       steps=self.steps, width=64, height=64, mode=kind,
                                       apply=apply, content_guidance=self.content_guidance
                                       if kind in CONTENT_GUIDED else 0.0)
            out = engine.generate(recipe, uses)
        finally:
            engine.gate_network, engine.gate_network_id = network
        self.seconds.setdefault(mode, []).append(out.seconds_per_image)
        return out.images[0]

    def truth(self, batch: list[dict], through_vae: bool) -> dict:
        """The judges on the ground truth of each case, as drawn or as the VAE renders it."""
        array = np.stack([ground_truth(c["scene"], c["styles"], c["seed"]) for c in batch])
        if through_vae:
            self._render = self._render or vae_renderer(PIPELINE_DIR)
            array = self._render(array)
        return self.judge_array(array, batch)

    def judge(self, images: list, batch: list[dict]) -> dict:
        return self.judge_array(images_as_array(images), batch)

    def judge_array(self, array: np.ndarray, batch: list[dict]) -> dict:
        rows = self.judge_rows(array, batch)
        return {key: float(np.mean([r[key] for r in rows]))
                for key in ("success", "all_styles", "style_rate", "content")}

    def judge_rows(self, images, batch: list[dict]) -> list[dict]:
        """One verdict per case: every style found, content right, both, share found."""
        array = images if isinstance(images, np.ndarray) else images_as_array(images)
        detected = self.judges.styles(array)
        content = self.judges.content(array)
        rows = []
        for case, found, verdict in zip(batch, detected, content, strict=True):
            keeps_color = all(s in self.judges.color_preserving_styles for s in case["styles"])
            right = verdict["shape"] == case["labels"]["shape"] and (
                not keeps_color or verdict["color"] == case["labels"]["color"])
            styles_hit = [s in found for s in case["styles"]]
            rows.append({"all_styles": all(styles_hit), "content": right,
                         "style_rate": float(np.mean(styles_hit)),
                         "success": all(styles_hit) and right})
        return rows


def contact_sheet(bench: Bench, sheet_cases: list[dict], modes, path) -> None:
    from PIL import Image, ImageDraw

    cell, label_w, pad, head = 128, 250, 6, 22
    columns = ["ground truth", *modes]
    width = label_w + len(columns) * (cell + pad)
    height = head + len(sheet_cases) * (cell + pad) + pad
    sheet = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for c, name in enumerate(columns):
        draw.text((label_w + c * (cell + pad) + 4, 5), name, fill=(0, 0, 0))
    for r, case in enumerate(sheet_cases):
        y = head + r * (cell + pad)
        words, line, lines = case["prompt"].split(), "", []
        for word in words:
            if len(line) + len(word) > 36:
                lines.append(line)
                line = ""
            line += word + " "
        lines.append(line)
        text = "\n".join([" + ".join(case["styles"]), "", *lines[:6]])
        draw.multiline_text((6, y + 4), text, fill=(0, 0, 0))
        tiles = [Image.fromarray(ground_truth(case["scene"], case["styles"], case["seed"]))]
        tiles += [bench.image(mode, case) for mode in modes]
        for c, tile in enumerate(tiles):
            sheet.paste(tile.convert("RGB").resize((cell, cell), Image.NEAREST),
                        (label_w + c * (cell + pad), y))
    sheet.save(path)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--per-k", type=int, default=40, help="prompts per set size (2, 3)")
    parser.add_argument("--per-style", type=int, default=4, help="single-style prompts")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--gated-apply", choices=["fused", "adapters"], default="fused")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--gates", default=str(GATES.parent),
                        help="folder of the learned gate network to measure")
    parser.add_argument("--sheet-only", action="store_true")
    parser.add_argument("--no-sheet", action="store_true")
    parser.add_argument("--single-modes", default="gated",
                        help="modes measured on single styles besides the LoRA alone (switch, "
                        "composite and cmlora equal it by construction)")
    parser.add_argument("--content-prompts", action="store_true",
                        help="multi-style prompts without their style descriptions (the "
                        "content caption they open with): what the style words do")
    parser.add_argument("--content-guidance", type=float, default=0.0,
                        help="add content guidance at this scale to merge, switch and gated")
    parser.add_argument("--out", default=str(RESULTS / "fusion_quality.md"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    modes = [m for m in args.modes.split(",") if m]
    bench = Bench(args.steps, args.gated_apply, Path(args.gates), args.content_guidance)
    if not bench.files:
        raise SystemExit("no starter LoRAs (styles/data/starter/loras): nothing to measure")
    available = set(bench.files)
    started = time.time()
    # 1. multi-style prompts from held-out sets
    multi = {k: cases(held_out_sets(k, available), args.per_k, SEED + 1000 * k)
             for k in (2, 3)}
    if args.content_prompts:
        multi = {k: [dict(case, prompt=case["content"]) for case in batch]
                 for k, batch in multi.items()}
    sheet_cases = [multi[2][0], multi[3][0], multi[3][1]]
    if not args.no_sheet:
        contact_sheet(bench, sheet_cases, modes, ROOT / "docs" / "fusion_modes.png")
    if args.sheet_only:
        return
    table: dict[str, dict] = {}
    for name, through_vae in TRUTH_ROWS.items():
        table[name] = {k: bench.truth(multi[k], through_vae) for k in (2, 3)}
        print(name, json.dumps(table[name]), flush=True)
    for mode in modes:
        for k in (2, 3):
            images = [bench.image(mode, case) for case in multi[k]]
            table.setdefault(mode, {})[k] = bench.judge(images, multi[k])
        print(mode, json.dumps(table[mode]), flush=True)
    # 2. single styles: every mode with one LoRA, against the LoRA alone
    rng = np.random.default_rng(SEED + 5000)
    singles = []
    for slug in sorted(available):
        for _ in range(args.per_style):
            scene = sample_scene(rng, n_objects=1)
            singles.append({"styles": [slug], "prompt": styled_caption(scene, [slug], rng),
                            "labels": content_labels(scene), "scene": scene,
                            "seed": SEED + 5000 + len(singles)})
    single_rows = {}
    for mode in ["merge", *[m for m in args.single_modes.split(",") if m and m != "merge"]]:
        if singles:
            single_rows[mode] = bench.judge([bench.image(mode, c) for c in singles], singles)
            print("single", mode, json.dumps(single_rows[mode]), flush=True)
    minutes = (time.time() - started) / 60
    write_results(args, modes, multi, table, singles, single_rows, bench, minutes)


def write_results(args, modes, multi, table, singles, single_rows, bench, minutes) -> None:
    record = Path(args.gates) / GATES.name
    gates = json.loads(record.read_text()) if record.is_file() else None
    command = (f"OMP_NUM_THREADS=1 .venv/bin/python benchmarks/fusion_quality.py --per-k "
               f"{args.per_k} --per-style {args.per_style} --steps {args.steps} --modes "
               f"{','.join(modes)} --single-modes {args.single_modes} --gated-apply "
               f"{args.gated_apply}" + (f" --gates {args.gates}"
                                        if Path(args.gates) != GATES.parent else "")
               + " --content-prompts" * args.content_prompts + " --no-sheet" * args.no_sheet
               + (f" --content-guidance {args.content_guidance:g}"
                  if args.content_guidance else "")
               + (f" --threads {args.threads}" if args.threads != 1 else "")
               + (f" --out {args.out}" if Path(args.out) != RESULTS / "fusion_quality.md"
                  else ""))
    lines = [
        "# Fusion quality: several starter styles in one image, per mode", "",
        machine_line(), f"Command: `{command}` ({minutes:.0f} min wall time on this shared "
        "machine: the s / image column is a rough guide; fusion_speed.md measures speed).", "",
        "Starter base model and style LoRAs (each at weight 1.0), "
        f"{args.steps} DPM-Solver steps, guidance {bench.engine.base.guidance_scale:g} (the "
        "pack's recommended scale), 64×64; judges from "
        "`styles/data/starter/judges/`. Prompts: `styled_caption` of a fresh one-object scene "
        f"(seeds ≥ {SEED}) for style sets held out from gate training "
        + ("(the split recorded in `styles/data/starter/gates/gates.json`)" if gates else
           "(no gate network trained yet: the same hash rule)") + ". "
        f"{len(multi[2])} two-style and {len(multi[3])} three-style prompts per mode, the same "
        "prompts and seeds for every mode."
        + (" **Here the multi-style prompts are only the content caption each styled caption "
           "opens with** (`--content-prompts`): the styles come from the LoRAs alone."
           if args.content_prompts else "")
        + (f" **Merge, switch and gated run with content guidance at scale "
           f"{args.content_guidance:g}** (the base model's own guidance over the first 40% of "
           "the steps, `fusion/content_guidance.py`)." if args.content_guidance else ""), "",
        f"Gated: apply `{args.gated_apply}` (merged deltas rewritten when a gate moves > 0.05); "
        + (f"learned gates (`{bench.engine.gate_network_id}`)." if bench.engine.gate_network
           else "no learned gate network: the frequency prior.") +
        " CMLoRA: residual cache, non-uniform refresh schedule.", "",
        "*success* = every requested style detected and the content right (shape; colour too "
        "when the judges read colour through every requested style, `color_preserving_styles` "
        "in judges.json). *all styles* = every requested style detected; *style rate* = share "
        "of requested styles detected; *content* = content right. No set holds two styles of "
        "which one hides the other in the truth (`styles.starter.looks.clashing_pairs`).", "",
        "The *ground truth* rows judge the exact images `apply_styles` draws for the same "
        "scenes and styles, as drawn and after the base model's VAE (encode, decode: the best "
        "any mode could render). They are the ceiling these judges allow: on compositions the "
        "style judge misses styles even in exact images. The *base* row is the base model with "
        "no LoRA on the same prompts: what the prompt's words alone do to the content.", "",
        "## Multi-style prompts", "",
        "| mode | 2 styles: success | all styles | style rate | content | "
        "3 styles: success | all styles | style rate | content | s / image |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for mode in [*TRUTH_ROWS, *modes]:
        row = [f"{table[mode][k][key]:.3f}" for k in (2, 3)
               for key in ("success", "all_styles", "style_rate", "content")]
        seconds = float(np.median(bench.seconds[mode])) if mode in bench.seconds else None
        lines.append(f"| {mode} | " + " | ".join(row) +
                     (f" | {seconds:.2f} |" if seconds is not None else " | – |"))
    lines += ["", "## Single styles", ""]
    if not singles:
        lines.append("Not measured (`--per-style 0`).")
    else:
        lines += [f"{len(singles)} prompts ({args.per_style} per style). The LoRA alone is "
                  "`merge` with one LoRA; switch, composite and cmlora reduce to it by "
                  "construction (tests/test_engine.py, tests/test_fusion_modes.py).", "",
                  "| mode | success | style detected | content | Δ success vs alone |",
                  "|---|---:|---:|---:|---:|"]
    alone = single_rows["merge"]["success"] if single_rows else 0.0
    for mode, row in single_rows.items():
        label = "LoRA alone (merge)" if mode == "merge" else mode
        lines.append(f"| {label} | {row['success']:.3f} | {row['all_styles']:.3f} | "
                     f"{row['content']:.3f} | {row['success'] - alone:+.3f} |")
    if gates:
        held = gates["eval_loss_heldout"]
        lines += ["", "## Gate training (for reference)", "",
                  f"Command: `{gates.get('command', '')}`. Held-out diffusion loss, merge → "
                  f"learned: 2 styles {held['merge']['k2']:.4f} → {held['learned']['k2']:.4f}, "
                  f"3 styles {held['merge']['k3']:.4f} → {held['learned']['k3']:.4f}."]
    if not args.no_sheet:
        lines += ["", "Contact sheet: `docs/fusion_modes.png` (ground truth, then each mode)."]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
