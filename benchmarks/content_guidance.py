"""Content guidance (fusion/content_guidance.py) on the starter style LoRAs, on validation
prompts: style detected and content right per style, without it and at each scale, and for
chosen styles at a higher LoRA weight too (content guidance pays for more LoRA strength).

The validation prompts and seeds of lora_strength.py (60_000 + ...), which chose the shipped
strengths, never starter_quality's held-out ones: a setting chosen from this table is then
measured there. Judged as starter_quality.py judges (guidance 2, 20 DPM-Solver steps).

    .venv/bin/python benchmarks/content_guidance.py [--scales 1,2] [--share 0.4] \\
        [--stronger arrow:1.143,smiley-face:1.167] [--prompts 32] [--workers 2]
    .venv/bin/python benchmarks/content_guidance.py --scales 0.5,1,2 --share 0.2,0.4,0.7 \\
        --styles arrow,... --choose --prompts 48 --out benchmarks/results/content_guidance_choice.md
        (each scale at each share; --choose picks each style's setting, which
        styles/starter/build.py GENERATION_DEFAULTS ships)
    .venv/bin/python benchmarks/content_guidance.py --scales 0.5,1 --share 0.4,0.7 \\
        --guidance 1.25,1.5 --styles arrow,... --choose --part 2 --prompts 48 --out ...
        (each guidance scale with each content-guidance setting)
    .venv/bin/python benchmarks/content_guidance.py --confirm arrow:0.5:0.4:1.25,... \\
        --against shipped --part 3 --prompts 64 --out ...
        (each pick against what the style ships now, on a validation set the grid did not use)
    .venv/bin/python benchmarks/content_guidance.py --files .cache/lora_recipe/DIR \\
        --styles arrow:1.4,pastel:1.2,pixel-art --guidance 1.5,2 --choose --part 4 ...
    .venv/bin/python benchmarks/content_guidance.py --files .cache/lora_recipe/DIR \\
        --confirm pastel:0:0.4:2:1.2,... --against shipped --part 5 ...
        (other LoRA files than the pack's, by its file names, each at the weight given after
        its slug: the grid judges them, --confirm judges them against the pack's files with
        what those recommend; lora_recipe.py --train-only trains such files)
    .venv/bin/python benchmarks/content_guidance.py --sheet smiley-face:1.167,chalkboard:1
        (only docs/content_guidance.png: 4 validation prompts per row, at each scale)
"""

from __future__ import annotations

import argparse
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from common import RESULTS, ROOT, images_as_array, machine_line
from lora_strength import TARGETS, VALIDATION_SEED, margin, meets, validation_images
from starter_quality import verdicts

from styles.starter.looks import STYLES

DEFAULT_OUT = str(RESULTS / "content_guidance.md")
_worker: tuple | None = None


def _start_worker() -> None:
    global _worker
    import torch

    from app.service import LoratlasService, ServiceConfig
    from styles.starter.judges import Judges
    from styles.starter.paths import JUDGES_DIR

    torch.set_num_threads(1)
    _worker = (LoratlasService(ServiceConfig(device="cpu")), Judges.load(JUDGES_DIR))


def _job(slug: str, weight: float, scale: float, share: float, n: int, part: int = 0,
         guidance: float | None = None, ref: str | None = None) -> tuple:
    """(slug, weight, guidance, scale, share, style detected, content right, seconds per
    image); `guidance`: the classifier-free guidance scale (None: the pack's, 2); `ref`: the
    LoRA file to judge (None: the pack's for `slug`)."""
    service, judges = _worker
    started = time.time()
    cases, images = validation_images(service, slug, ref or slug, n, weight, part,
                                      content_guidance=scale, content_guidance_steps=share,
                                      guidance_scale=guidance)
    seconds = (time.time() - started) / n
    return (slug, weight, guidance, scale, share,
            *verdicts(judges, slug, images_as_array(images), cases), seconds)


def weighted(text: str) -> list[tuple[str, float]]:
    """"slug:weight,..." as (slug, weight) pairs."""
    return [(slug, float(weight)) for slug, weight in
            (item.split(":") for item in text.split(",") if item)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scales", default="1,2", help="content guidance scales besides 0")
    parser.add_argument("--share", default="0.4",
                        help="share of the steps, or several (0.2,0.4,0.7): each with each scale")
    parser.add_argument("--choose", action="store_true",
                        help="also choose each style's setting: the best margin to both targets")
    parser.add_argument("--confirm", metavar="SLUG:SCALE:SHARE[:GUIDANCE],...",
                        help="only these settings and a baseline (--against), on another "
                        "validation set (--part): does each choice hold?")
    parser.add_argument("--against", choices=("plain", "shipped"), default="plain",
                        help="--confirm's baseline: content guidance off at guidance 2, or "
                        "what the style recommends now (GENERATION_DEFAULTS)")
    parser.add_argument("--part", type=int,
                        help="validation set (lora_strength.validation_images): 0 for the "
                        "grid, 1 for --confirm unless given")
    parser.add_argument("--stronger", default="",
                        help="slug:weight,...: these styles also at that LoRA weight")
    parser.add_argument("--styles", default="all",
                        help="slugs, each with the LoRA weight to judge it at (arrow:1.4; 1 "
                        "where not given), or all")
    parser.add_argument("--files", help="judge the LoRA files in this folder (by the pack's "
                        "file names) instead of the pack's")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--guidance",
                        help="classifier-free guidance scale, or several (1.25,1.5): each with "
                        "each content-guidance setting (default: the pack's, 2)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", default=DEFAULT_OUT)
    parser.add_argument("--sheet", help="slug:weight,...: draw docs/content_guidance.png only")
    args = parser.parse_args()
    scales = [0.0, *[float(s) for s in args.scales.split(",") if s]]
    shares = [float(s) for s in args.share.split(",")]
    if args.sheet:
        sheet(weighted(args.sheet), scales, shares[0], ROOT / "docs" / "content_guidance.png")
        return
    if args.confirm:
        confirm(args)
        return
    at = dict(weighted(",".join(item if ":" in item else f"{item}:1"
                                for item in (sorted(STYLES) if args.styles == "all"
                                             else args.styles.split(",")))))
    stronger = dict(weighted(args.stronger))
    settings = settings_grid(guidances(args.guidance), scales, shares)
    weights = list(at.items()) + list(stronger.items())
    jobs = [(slug, weight, scale, share, args.prompts, args.part or 0, guidance,
             candidate(args.files, slug))
            for slug, weight in weights for guidance, scale, share in settings]
    started = time.time()
    rows = run_jobs(jobs, args.workers)
    minutes = (time.time() - started) / 60
    write(args, settings, at, stronger, rows, minutes)


def candidate(folder: str | None, slug: str) -> str | None:
    """The file `--files` names for a style (None: the pack's own)."""
    if not folder:
        return None
    from styles.starter.style_loras import file_name

    path = Path(folder) / file_name(slug)
    if not path.is_file():
        raise SystemExit(f"--files: no {path.name} for {slug} in {folder}")
    return str(path)


def run_jobs(jobs: list[tuple], workers: int) -> list[tuple]:
    """`_job(*job)` for each job, in order, on `workers` processes of one thread each."""
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker) as pool:
        return list(pool.map(_job, *zip(*jobs, strict=True)))


def guidances(text: str | None) -> list[float | None]:
    """--guidance as a list (None: the pack's scale, 2)."""
    return [float(g) for g in text.split(",")] if text else [None]


def setting_name(guidance: float | None, scale: float, share: float) -> str:
    return ((f"{scale:g} on {share:.0%}" if scale else "off")
            + (f" at guidance {guidance:g}" if guidance else ""))


def shipped(slug: str) -> tuple[float | None, float, float]:
    """(guidance, scale, share) a request naming the style alone gets now."""
    from styles.starter.build import GENERATION_DEFAULTS

    chosen = GENERATION_DEFAULTS.get(slug, {})
    return (chosen.get("guidance_scale"), chosen.get("content_guidance", 0.0),
            chosen.get("content_guidance_steps", 0.4))


def confirm(args) -> None:
    """Each chosen setting against a baseline (`--against`: content guidance off at the
    pack's guidance scale, or what the style ships now) on another validation set than the
    grid's (`--part`, 1 unless given; lora_strength.validation_images): a choice holds where
    its margin to both targets beats the baseline's there too."""
    default = guidances(args.guidance)[0]
    chosen, at = {}, {}
    for item in (item for item in args.confirm.split(",") if item):
        slug, scale, share, *extra = item.split(":")
        chosen[slug] = (float(extra[0]) if extra else default, float(scale), float(share))
        at[slug] = float(extra[1]) if len(extra) > 1 else 1.0
    base_settings = {slug: shipped(slug) if args.against == "shipped" else (None, 0.0, 0.4)
                     for slug in chosen}
    part = 1 if args.part is None else args.part
    jobs = [(slug, 1.0, scale, share, args.prompts, part, guidance, None)
            for slug, (guidance, scale, share) in base_settings.items()]
    jobs += [(slug, at[slug], scale, share, args.prompts, part, guidance,
              candidate(args.files, slug))
             for slug, (guidance, scale, share) in chosen.items()]
    started = time.time()
    rows = run_jobs(jobs, args.workers)
    base = {row[0]: row[5:7] for row in rows[:len(chosen)]}
    picked = {row[0]: row[5:7] for row in rows[len(chosen):]}
    baseline = ("what the style recommends now (`GENERATION_DEFAULTS`; content guidance off at "
                "the pack's guidance scale 2 for a style with no recommendation)"
                if args.against == "shipped" else
                "what a request gets without one (content guidance off, the pack's guidance "
                "scale 2)")
    lines = [
        "# Content guidance: do the chosen settings hold on other validation prompts?", "",
        machine_line(),
        f"Command: `.venv/bin/python benchmarks/content_guidance.py --confirm {args.confirm} "
        + (f"--files {args.files} " if args.files else "")
        + (f"--guidance {args.guidance} " if args.guidance else "")
        + (f"--against {args.against} " if args.against != "plain" else "")
        + (f"--part {args.part} " if args.part is not None else "") +
        f"--prompts {args.prompts} --workers {args.workers} --out {args.out}` "
        f"({(time.time() - started) / 60:.0f} min)", "",
        f"Each style's setting as `--choose` picked it, against {baseline}, on "
        f"{args.prompts} validation prompts and seeds of another set than the grid's "
        f"(`validation_images(part={part})`: other scenes and seeds, none of "
        "starter_quality's held-out ones). "
        + (f"The settings judge the files in `{args.files}` (at the weight after the "
           "guidance scale, 1 where none), the baseline the pack's own. " if args.files else "")
        + "A choice holds where its margin to both targets "
        f"(min(style / {TARGETS[0]:.2f}, content / {TARGETS[1]:.2f})) beats the baseline's. "
        "Style detected / content right.", "",
        "| style | setting | baseline | baseline: figures | setting: figures "
        "| margin: baseline → setting | holds |",
        "|---|---|---|---:|---:|---:|:-:|"]
    for slug, setting in chosen.items():
        off, on = base[slug], picked[slug]
        lines.append(f"| {slug} | {setting_name(*setting)}"
                     + (f", weight {at[slug]:g}" if at[slug] != 1 else "") + " | "
                     f"{setting_name(*base_settings[slug])} | {off[0]:.2f} / {off[1]:.2f} | "
                     f"{on[0]:.2f} / {on[1]:.2f} | {margin(*off):.3f} → {margin(*on):.3f} | "
                     f"{'✓' if margin(*on) > margin(*off) else '✗'} |")
    with open(args.out, "w") as out:
        out.write("\n".join(lines) + "\n")
    print("\n".join(lines))


def settings_grid(guidances: list[float | None], scales: list[float],
                  shares: list[float]) -> list[tuple[float | None, float, float]]:
    """(guidance, scale, share) triples: at each guidance scale, off once (its share does
    nothing), then each scale at each share."""
    return [setting for guidance in guidances for setting in
            [(guidance, 0.0, shares[0])]
            + [(guidance, scale, share) for share in shares for scale in scales if scale]]


def choose(got: dict, slug: str, settings: list,
           weight: float = 1.0) -> tuple[float | None, float, float]:
    """The (guidance, scale, share) with the best margin to both targets
    (lora_strength.margin) on the style's validation prompts at its weight; ties go to off,
    then the smaller scale and share, then the guidance nearer the pack's 2 (the setting
    changing the least)."""
    return max(settings, key=lambda s: (margin(*got[(slug, weight, *s)][:2]), -s[1], -s[2],
                                        -abs((s[0] or 2) - 2)))


def sheet(rows: list[tuple[str, float]], scales: list[float], share: float, path,
          per_row: int = 4) -> None:
    """The same validation prompts per style (at its weight), once per scale."""
    from PIL import Image, ImageDraw

    _start_worker()
    service, _ = _worker
    cell, label_w, gap, head = 112, 170, 16, 20
    width = label_w + len(scales) * (per_row * cell + gap)
    out = Image.new("RGB", (width, head + len(rows) * (cell + 4)), "white")
    draw = ImageDraw.Draw(out)
    for j, scale in enumerate(scales):
        draw.text((label_w + j * (per_row * cell + gap) + 4, 5),
                  "content guidance off" if scale == 0 else f"content guidance {scale:g}",
                  fill="black")
    for r, (slug, weight) in enumerate(rows):
        y = head + r * (cell + 4)
        for j, scale in enumerate(scales):
            cases, images = validation_images(service, slug, slug, per_row, weight,
                                              content_guidance=scale,
                                              content_guidance_steps=share)
            for i, image in enumerate(images):
                out.paste(image.convert("RGB").resize((cell, cell), Image.NEAREST),
                          (label_w + j * (per_row * cell + gap) + i * cell, y))
        draw.multiline_text((4, y + 4), "\n".join([f"{slug} at weight {weight:g}",
                                                   *[p[:28] for p, _, _ in cases]]),
                            fill="black")
    out.save(path)
    print(path)


def write(args, settings, at: dict[str, float], stronger, rows, minutes) -> None:
    slugs = list(at)
    got = {(slug, weight, guidance, scale, share): (style, content, seconds)
           for slug, weight, guidance, scale, share, style, content, seconds in rows}
    several = len({share for _, _, share in settings}) > 1
    several_guidance = len({guidance for guidance, _, _ in settings}) > 1

    def cell(key) -> str:
        style, content, _ = got[key]
        return f"{style:.2f} / {content:.2f}" + (" ✓" if meets(style, content) else "")

    def head(guidance: float | None, scale: float, share: float) -> str:
        name = "off" if scale == 0 else f"scale {scale:g}" + (f" on {share:.0%}" if several
                                                               else "")
        return (f"g {guidance or 2:g}: " if several_guidance else "") + name

    heads = [head(*s) for s in settings]
    scales = sorted({scale for _, scale, _ in settings if scale})
    lines = [
        "# Content guidance on the starter style LoRAs", "", machine_line(),
        f"Command: `.venv/bin/python benchmarks/content_guidance.py --scales "
        f"{','.join(f'{s:g}' for s in scales)} --share {args.share}"
        + (f" --stronger {args.stronger}" if args.stronger else "")
        + (f" --files {args.files}" if args.files else "")
        + (f" --styles {args.styles}" if args.styles != "all" else "")
        + (" --choose" if args.choose else "")
        + (f" --guidance {args.guidance}" if args.guidance else "")
        + (f" --part {args.part}" if args.part is not None else "")
        + f" --prompts {args.prompts} --workers {args.workers}"
        + (f" --out {args.out}" if args.out != DEFAULT_OUT else "") + f"` ({minutes:.0f} min)",
        "",
        "Content guidance adds the base model's own guidance (the request's LoRAs bypassed) "
        "at the given scale over the first share of the steps "
        f"(`fusion/content_guidance.py`; {args.share} here). "
        + (f"Each style's file in `{args.files}` at the weight after its slug in the command "
           "(1 where none)" if args.files else
           "Each style's shipped file at weight 1 (the strength it carries)")
        + f", {args.prompts} validation prompts per style "
        + ("(the seeds lora_strength.py chose the strengths on, from "
           f"{VALIDATION_SEED}: so the *off* column is optimistic, "
           if not args.part else f"(validation set {args.part}: other scenes and seeds than "
           "the ones lora_strength.py chose the strengths on; ")
        + "starter_quality.md measures the same files on "
        f"held-out prompts), guidance {args.guidance or 2}, 20 DPM-Solver steps. Each cell: "
        "style detected / "
        "content right (shape, and color where the style keeps it); ✓ where both targets are "
        f"met (style ≥ {TARGETS[0]:.2f}, content ≥ {TARGETS[1]:.2f}). One prompt is "
        f"{100 / args.prompts:.1f} points.", "",
        "| style | " + " | ".join(heads) + " |", "|---|" + "---:|" * len(settings)]
    for slug in slugs:
        lines.append(f"| {slug} | " + " | ".join(cell((slug, at[slug], *s)) for s in settings)
                     + " |")
    lines.append("")
    for s, name in zip(settings, heads, strict=True):
        values = [got[(slug, at[slug], *s)] for slug in slugs]
        lines.append(
            f"- {name}: both targets {sum(meets(a, b) for a, b, _ in values)}/{len(slugs)}; "
            f"mean style {np.mean([a for a, _, _ in values]):.3f}, mean content "
            f"{np.mean([b for _, b, _ in values]):.3f}; seconds per image "
            f"{np.mean([c for _, _, c in values]):.2f} (16 denoised together, one thread)")
    if args.choose:
        lines += ["", "## Chosen per style", "",
                  "The setting with the best margin to both targets, min(style / "
                  f"{TARGETS[0]:.2f}, content / {TARGETS[1]:.2f}); ties go to off, then to the "
                  "smaller scale and share, then the guidance nearer 2. As "
                  "`styles/starter/build.py` GENERATION_DEFAULTS records it (`guidance_scale`, "
                  "`content_guidance`, `content_guidance_steps`):", "",
                  "| style | chosen | figures | off |", "|---|---|---:|---:|"]
        tuning = {}
        for slug in slugs:
            picked = guidance, scale, share = choose(got, slug, settings, at[slug])
            tuning[slug] = ({"guidance_scale": guidance} if guidance not in (None, 2) else {}) | (
                {"content_guidance": scale, "content_guidance_steps": share} if scale else {})
            lines.append(f"| {slug} | {setting_name(*picked)} | "
                         f"{cell((slug, at[slug], *picked))} | "
                         f"{cell((slug, at[slug], *settings[0]))} |")
        tuning = {slug: chosen for slug, chosen in tuning.items() if chosen}
        lines += ["", f"`{tuning}`"]
    if stronger:
        lines += ["", "## At a higher LoRA weight", "",
                  "The same prompts with the LoRA at the weight given (× the strength its file "
                  "carries).", "",
                  "| style | weight | " + " | ".join(heads) + " |",
                  "|---|---:|" + "---:|" * len(settings)]
        for slug, weight in stronger.items():
            lines.append(f"| {slug} | {weight:g} | "
                         + " | ".join(cell((slug, weight, *s)) for s in settings) + " |")
    with open(args.out, "w") as out:
        out.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
