"""One starter style LoRA at a time, under per-step weight schedules (keyframes interpolated
over the denoising steps): does applying it more strongly late, where texture is decided,
bring out its style without costing the content? CMLoRA's premise, on this pack. And does
leaving the first steps (the layout) to the base keep the content the LoRA alone loses?

Style detected and content right (judges from the starter pack), per style and schedule, on
the same held-out prompts and seeds; 20 DPM-Solver steps, the pack's recommended guidance.

    .venv/bin/python benchmarks/step_schedules.py [--prompts 12]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from common import RESULTS, images_as_array, machine_line
from starter_quality import HELD_OUT_SEED, prompts, verdicts

from app.service import GenerateRequest, LoraRequest, LoratlasService, ServiceConfig
from styles.starter.judges import Judges
from styles.starter.looks import STYLES
from styles.starter.paths import JUDGES_DIR, starter_loras

SCHEDULES = {"weight 1": None, "late start 0→1→1": [0.0, 1.0, 1.0],
             "late 1→1→2": [1.0, 1.0, 2.0], "late 0.5→1→3": [0.5, 1.0, 3.0],
             "early 3→1→0.5": [3.0, 1.0, 0.5]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prompts", type=int, default=12)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(2)
    started = time.time()
    service = LoratlasService(ServiceConfig(device="cpu"))
    judges = Judges.load(JUDGES_DIR)
    cases = prompts(args.prompts, HELD_OUT_SEED, background=False)
    shipped = starter_loras()
    table: dict[str, dict[str, tuple[float, float]]] = {}
    for slug in sorted(s for s in STYLES if s in shipped):
        table[slug] = {}
        for name, keyframes in SCHEDULES.items():
            images = [service.generate(GenerateRequest(
                prompt=prompt, seed=HELD_OUT_SEED + i, steps=args.steps,
                loras=[LoraRequest(slug, 1.0, step_weights=keyframes)])).images[0]
                for i, (prompt, _) in enumerate(cases)]
            table[slug][name] = verdicts(judges, slug, images_as_array(images), cases)
        print(slug, table[slug], flush=True)
    names = list(SCHEDULES)
    lines = ["# One style LoRA under per-step weight schedules", "", machine_line(),
             f"Command: `.venv/bin/python benchmarks/step_schedules.py --prompts {args.prompts}`",
             "", f"{args.prompts} held-out prompts per style (none naming a background), the "
             f"same seeds for every schedule; {args.steps} DPM-Solver steps, guidance "
             f"{service.engine.base.guidance_scale:g} (the pack's recommended scale). "
             "A schedule's keyframes are spread evenly over the steps and interpolated "
             "(`fusion/weights.py: step_weight`). Each cell: style detected / content right "
             f"(shape, and color where the style keeps it). With {args.prompts} prompts one "
             f"image is {100 / args.prompts:.0f} points.", "",
             "| style | band | " + " | ".join(names) + " |", "|---|---|" + "---:|" * len(names)]
    for slug, row in table.items():
        lines.append(f"| {slug} | {STYLES[slug].band} | " + " | ".join(
            f"{row[n][0]:.2f} / {row[n][1]:.2f}" for n in names) + " |")
    lines.append("")
    for band in ("low", "high", "concept"):
        members = [s for s in table if STYLES[s].band == band]
        if members:
            lines.append(f"- {band} band ({len(members)} styles), mean detected / content: " +
                         "; ".join(f"{n} {np.mean([table[s][n][0] for s in members]):.2f} / "
                                   f"{np.mean([table[s][n][1] for s in members]):.2f}"
                                   for n in names))
    lines.append("- all styles: " + "; ".join(
        f"{n} {np.mean([table[s][n][0] for s in table]):.2f} / "
        f"{np.mean([table[s][n][1] for s in table]):.2f} (style ≥ 0.80 and content ≥ 0.70: "
        f"{sum(table[s][n][0] >= 0.8 and table[s][n][1] >= 0.7 for s in table)}/{len(table)})"
        for n in names))
    lines += ["", f"Wall time {time.time() - started:.0f} s."]
    (RESULTS / "step_schedules.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
