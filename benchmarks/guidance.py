"""Which guidance scale the starter pack should recommend: the base model's content and each
style LoRA's strength, judged as in starter_quality.py, at several classifier-free guidance
scales, side by side in one run on the same prompts and seeds.

    .venv/bin/python benchmarks/guidance.py [--scales 1.5,2,3,5,7.5] [--prompts 60]
        [--per-style 10]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from common import RESULTS, machine_line
from starter_quality import judge_base, judge_style

from app.service import LoratlasService, ServiceConfig
from styles.starter.judges import Judges
from styles.starter.paths import JUDGES_DIR, starter_loras


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scales", default="1.5,2,3,5,7.5")
    parser.add_argument("--prompts", type=int, default=60)
    parser.add_argument("--per-style", type=int, default=10)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    scales = [float(x) for x in args.scales.split(",")]
    service = LoratlasService(ServiceConfig(device="cpu"))
    judges = Judges.load(JUDGES_DIR)
    slugs = sorted(starter_loras())
    started = time.time()
    base, styles = {}, {}
    for scale in scales:
        base[scale] = judge_base(service, judges, args.prompts, args.steps, scale)
        styles[scale] = {slug: judge_style(service, judges, slug, args.per_style, args.steps,
                                           scale) for slug in slugs}
        print(scale, base[scale]["both"], np.mean([d for d, _ in styles[scale].values()]),
              flush=True)
    recommended = service.engine.base.guidance_scale
    head = "| | " + " | ".join(f"{s:g}" for s in scales) + " |"
    rule = "|---|" + "---:|" * len(scales)

    def row(name: str, values) -> str:
        return f"| {name} | " + " | ".join(values) + " |"

    def summary(scale: float, fn) -> str:
        return fn([styles[scale][slug] for slug in slugs])

    lines = [
        "# Guidance scale on the starter pack", "", machine_line(),
        f"Command: `.venv/bin/python benchmarks/guidance.py --scales {args.scales} "
        f"--prompts {args.prompts} --per-style {args.per_style}`", "",
        f"Same held-out prompts and seeds at every scale, {args.steps} DPM-Solver steps, 64×64; "
        "judged as in starter_quality.md (base: shape and color right on "
        f"{args.prompts} prompts; each of the {len(slugs)} style LoRAs at weight 1.0 on "
        f"{args.per_style} prompts). The pack recommends **{recommended:g}** "
        "(`styles/data/starter/pipeline/loratlas_starter.json`); requests that name no scale "
        "get it. Wall time " + f"{time.time() - started:.0f} s.", "",
        head.replace("| |", "| guidance |"), rule,
        row("base: content right", [f"{base[s]['both']:.3f}" for s in scales]),
        row("base: judge finds a style (false alarm)",
            [f"{base[s]['any_style']:.3f}" for s in scales]),
        row("LoRAs: mean style detected",
            [summary(s, lambda r: f"{np.mean([d for d, _ in r]):.3f}") for s in scales]),
        row("LoRAs: style ≥ 0.80",
            [summary(s, lambda r: f"{sum(d >= 0.8 for d, _ in r)}/{len(r)}") for s in scales]),
        row("LoRAs: mean content right",
            [summary(s, lambda r: f"{np.mean([c for _, c in r]):.3f}") for s in scales]),
        row("LoRAs: style ≥ 0.80 and content ≥ 0.70",
            [summary(s, lambda r: f"{sum(d >= 0.8 and c >= 0.7 for d, c in r)}/{len(r)}")
             for s in scales]),
        "", "## Style detected, per style", "", head.replace("| |", "| style |"), rule,
    ]
    lines += [row(slug, [f"{styles[s][slug][0]:.1f}" for s in scales]) for slug in slugs]
    (RESULTS / "guidance.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
