"""Each style's LoRA file and strength, chosen on validation prompts (BuildPlan.lora_tuning).

A style LoRA is judged at weight 1.0, so the strength its file carries decides what a user gets
by default: some of the pack's LoRAs overshoot (the style is there, the content is lost) and
some undershoot (a concept LoRA draws its object in a third of images). For each style and
each candidate file (LABEL=DIR: the files of one recipe, by the pack's file names), this walks
the strength from 1.0 towards the target it misses (up when the style is short, down when the
content is), 0.15-0.2 at a time, while the margin to both targets grows:
`min(style / 0.80, content / 0.70)`. The least change that meets both targets is chosen (the
earliest candidate, then the strength nearest 1); where nothing does, the best margin.

Judged as starter_quality.py judges (the starter judges; guidance 2, 20 DPM-Solver steps) but
on validation prompts and seeds (60_000 + ...), disjoint from starter_quality's held-out ones
(10_000 to 39_000), which then measure the chosen pack without the choice's luck. Images come
from the service as starter_quality's do (the file at a weight, prompts in batches of 16,
`LoratlasService.generate_many`). Figures are cached under `.cache/lora_strength/` by the
file's bytes, the judges' and the base's weights.

    .venv/bin/python benchmarks/lora_strength.py \
        --candidate 400=.cache/pack-15770f0/styles/data/starter/loras \
        --candidate 1200=.cache/lora_recipe/ema0.99-steps1200-68efcf2d [--prompts 32]

The candidates as measured: the pack's 400-step files before they were tuned (`mkdir -p
.cache/pack-15770f0 && git archive 15770f0 styles/data/starter/loras | tar -x -C
.cache/pack-15770f0`) and the 1200-step ones `lora_recipe.py --styles all --ema 0.99 --steps
1200` trains into `.cache/lora_recipe/`.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from common import RESULTS, ROOT, machine_line
from lora_recipe import fingerprint

from styles.starter.build import BuildPlan
from styles.starter.looks import STYLES
from styles.starter.paths import JUDGES_DIR
from styles.starter.style_loras import file_name

VALIDATION_SEED = 60_000
TARGETS = (0.80, 0.70)  # style detected, content right
UP, DOWN = (1.2, 1.4, 1.6), (0.85, 0.7, 0.55)
WORK = ROOT / ".cache" / "lora_strength"


def margin(style: float, content: float) -> float:
    return min(style / TARGETS[0], content / TARGETS[1])


def meets(style: float, content: float) -> bool:
    return style >= TARGETS[0] and content >= TARGETS[1]


class Judge:
    """One worker's service and judges: (style detected, content right) of a LoRA file at a
    strength on one style's validation prompts."""

    def __init__(self, prompts: int):
        import torch

        from app.service import LoratlasService, ServiceConfig
        from styles.starter.judges import Judges

        torch.set_num_threads(1)
        self.service = LoratlasService(ServiceConfig(device="cpu"))
        self.judges, self.prompts = Judges.load(JUDGES_DIR), prompts

    def __call__(self, slug: str, path: Path, strength: float) -> tuple[float, float]:
        from common import images_as_array
        from starter_quality import generate, scenes, verdicts

        record = WORK / f"{fingerprint(path, JUDGES_DIR)}-{strength:g}-{self.prompts}-service.json"
        if record.is_file():
            return tuple(json.loads(record.read_text()))
        cases = scenes(self.prompts, VALIDATION_SEED + 1000 * (sorted(STYLES).index(slug) + 1),
                       background=False)
        images = generate(self.service, [prompt for prompt, _, _ in cases],
                          [VALIDATION_SEED + i for i in range(len(cases))], [str(path)],
                          weight=strength)
        figures = verdicts(self.judges, slug, images_as_array(images), cases)
        WORK.mkdir(parents=True, exist_ok=True)
        partial = record.with_suffix(".tmp")
        partial.write_text(json.dumps(figures))
        partial.replace(record)
        return figures


_judge: Judge | None = None


def walk(slug: str, candidates: list[tuple[str, str]], prompts: int) -> dict:
    """Every candidate's walk from strength 1.0 for one style (in a worker process)."""
    global _judge
    _judge = _judge or Judge(prompts)
    walks = {}
    for label, folder in candidates:
        path = Path(folder) / file_name(slug)
        points = [(1.0, *_judge(slug, path, 1.0))]
        style, content = points[0][1:]
        if not meets(style, content):
            for strength in UP if style / TARGETS[0] < content / TARGETS[1] else DOWN:
                points.append((strength, *_judge(slug, path, strength)))
                if meets(*points[-1][1:]):
                    break
                if margin(*points[-1][1:]) <= margin(*points[-2][1:]):
                    break
        walks[label] = points
    label, strength, style, content = choose(walks)
    print(slug, label, strength, style, content, flush=True)
    return {"slug": slug, "walks": walks, "choice": {"candidate": label, "strength": strength,
                                                     "style": style, "content": content}}


def choose(walks: dict[str, list[tuple[float, float, float]]]) -> tuple[str, float, float, float]:
    """The least change that meets both targets: the earliest candidate, then the strength
    nearest 1, among the points that do; where none does, the best margin."""
    points = [(i, label, k, s, c) for i, (label, walk) in enumerate(walks.items())
              for k, s, c in walk]
    meeting = [p for p in points if meets(p[3], p[4])]
    if meeting:
        best = min(meeting, key=lambda p: (p[0], abs(p[2] - 1.0), -margin(p[3], p[4])))
    else:
        best = max(points, key=lambda p: (margin(p[3], p[4]), -p[0], -abs(p[2] - 1.0)))
    return best[1:]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--candidate", action="append", required=True,
                        help="LABEL=DIR: a folder of style LoRA files under the pack's names; "
                        "LABEL is the steps they were trained for")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", default=str(RESULTS / "lora_strength.md"))
    args = parser.parse_args()
    candidates = [tuple(c.split("=", 1)) for c in args.candidate]
    for label, folder in candidates:
        missing = [s for s in STYLES if not (Path(folder) / file_name(s)).is_file()]
        if not label.isdigit() or missing:
            parser.error(f"--candidate {label}={folder}: LABEL must be the steps (a number) and "
                         f"DIR must hold every style's file (missing: {', '.join(missing)})")
    started = time.time()
    slugs = sorted(STYLES)
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(args.workers, mp_context=context) as pool:
        rows = list(pool.map(walk, slugs, [candidates] * len(slugs),
                             [args.prompts] * len(slugs)))

    labels = [label for label, _ in candidates]
    flags = " ".join(f"--candidate {label}={folder}" for label, folder in candidates)
    lines = [
        "# Style LoRA files and strengths, chosen on validation prompts", "", machine_line(),
        f"Command: `.venv/bin/python benchmarks/lora_strength.py {flags} --prompts "
        f"{args.prompts} --workers {args.workers}`", "",
        f"Candidates (steps = folder): {', '.join(f'{name} = `{f}`' for name, f in candidates)}. "
        f"{args.prompts} validation prompts per style (seeds from {VALIDATION_SEED}, disjoint "
        "from starter_quality's held-out ones); style detected / content right by the starter "
        "judges, guidance 2, 20 DPM-Solver steps. Each candidate's strength walked from 1.0 "
        "towards the target it misses while the margin min(style / 0.80, content / 0.70) grew; "
        "chosen: the least change meeting both targets (the earliest candidate, then the "
        "strength nearest 1), else the best margin. These figures chose: they are "
        "optimistic; starter_quality.md measures the chosen pack on other prompts. "
        "How to get the candidate folders: the module's docstring.", "",
        "| style | " + " | ".join(f"{name} steps: strength → style / content" for name in labels)
        + " | chosen | chosen: style / content |",
        "|---|" + "---|" * len(labels) + "---|---:|",
    ]
    for row in rows:
        cells = ["; ".join(f"{k:g} → {s:.2f} / {c:.2f}" for k, s, c in row["walks"][label])
                 for label in labels]
        choice = row["choice"]
        lines.append(f"| {row['slug']} | " + " | ".join(cells)
                     + f" | {choice['candidate']} steps at {choice['strength']:g} | "
                     f"{choice['style']:.2f} / {choice['content']:.2f} |")
    for label in labels:
        at_one = [row["walks"][label][0] for row in rows]
        lines.append("")
        lines.append(f"- {label} steps at strength 1: both targets met by "
                     f"{sum(meets(s, c) for _, s, c in at_one)}/"
                     f"{len(rows)} on these prompts")
    chosen = [row["choice"] for row in rows]
    lines.append(f"- chosen: both targets met by "
                 f"{sum(meets(c['style'], c['content']) for c in chosen)}"
                 f"/{len(rows)} on these prompts (the prompts that chose them)")
    steps = BuildPlan().lora_steps
    tuning = {row["slug"]: {key: value for key, value in
                            (("steps", int(row["choice"]["candidate"])),
                             ("strength", row["choice"]["strength"]))
                            if value != {"steps": steps, "strength": 1.0}[key]}
              for row in rows}
    lines += ["", f"Wall time {time.time() - started:.0f} s. As `BuildPlan.lora_tuning` "
              f"(`LORA_TUNING`; {steps} steps and strength 1 where not named):", "",
              "```json", json.dumps({k: v for k, v in tuning.items() if v}, indent=1), "```"]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
