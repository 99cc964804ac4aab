"""Each style's LoRA file and strength, chosen on validation prompts (BuildPlan.lora_tuning).

A style LoRA is judged at weight 1.0, so the strength its file carries decides what a user gets
by default: some of the pack's LoRAs overshoot (the style is there, the content is lost) and
some undershoot (a concept LoRA draws its object in a third of images). For each style and
each candidate file (LABEL=DIR: the files of one recipe, by the pack's file names), this walks
the strength from 1.0 towards the target it misses (up when the style is short, down when the
content is), 0.15-0.2 at a time, while the margin to both targets grows:
`min(style / 0.80, content / 0.70)`. With `--blocks all,decoder,half-encoder` each candidate
is also walked with the UNet blocks a profile keeps (`BLOCK_PROFILES`: "decoder" = the up
blocks only, which render the image from the layout the down blocks read; "half-encoder" = the
down blocks' change halved). A profile's file is walked only if it keeps its style's words:
the words view (`retrieval/word_view.py`, how the app reads a LoRA's weights when nothing else
names it) must place the style at least as high among all styles as the candidate's
all-blocks file does (`OwnWords`; a decoder-only stained-glass lost "glass" and "stained",
which its down blocks held, and fell from first to last). The least change that meets both
targets is chosen (the earliest candidate, then the earliest profile, then the strength nearest
1); where nothing does, the best margin among the all-blocks walks (a profile is a change to
the file's structure, made only where it buys both targets). Walks after one that meets both
targets are not run (they could not be chosen; "–" in the table). `--assemble DIR` writes
each style's chosen file (its candidate's modules, the profile's blocks, the strength as the
file carries it) to DIR, as `loratlas starter build` would train it with the printed
`BuildPlan.lora_tuning`.

Judged as starter_quality.py judges (the starter judges; guidance 2, 20 DPM-Solver steps) but
on validation prompts and seeds (60_000 + ...), disjoint from starter_quality's held-out ones
(10_000 to 39_000), which then measure the chosen pack without the choice's luck. Images come
from the service as starter_quality's do (the file at a weight, prompts in batches of 16,
`LoratlasService.generate_many`). Figures are cached under `.cache/lora_strength/` by the
file's bytes, the judges' and the base's weights.

    .venv/bin/python benchmarks/lora_strength.py \
        --candidate 400=.cache/pack-15770f0/styles/data/starter/loras \
        --candidate 1200=.cache/lora_recipe/ema0.99-steps1200-68efcf2d [--prompts 32] \
        [--blocks all,decoder,half-encoder] [--assemble DIR]

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
from styles.starter.style_loras import BLOCK_PROFILES, file_name

VALIDATION_SEED = 60_000
TARGETS = (0.80, 0.70)  # style detected, content right
UP, DOWN = (1.2, 1.4, 1.6), (0.85, 0.7, 0.55)
WORK = ROOT / ".cache" / "lora_strength"


def validation_images(service, slug: str, ref: str, n: int, weight: float = 1.0,
                      part: int = 0, **settings) -> tuple[list, list]:
    """(cases, images): the LoRA `ref` (a file or a slug) at `weight` on `slug`'s n validation
    prompts and seeds, through the service as starter_quality renders; `part` 1, 2, ...: further
    validation sets (other scenes and seeds, n ≤ 500), to confirm what part 0 chose; `settings`:
    other GenerateRequest fields (content guidance off unless given: the strength is the
    file's alone, whatever the style recommends)."""
    from starter_quality import generate, scenes

    settings.setdefault("content_guidance", 0.0)
    # parts 0 and 1 sit in each style's 1000 seeds; later ones 40_000 apart beyond all styles'
    offset = 500 * part if part < 2 else 40_000 * (part - 1)
    cases = scenes(n, VALIDATION_SEED + 1000 * (sorted(STYLES).index(slug) + 1) + offset,
                   background=False)
    return cases, generate(service, [prompt for prompt, _, _ in cases],
                           [VALIDATION_SEED + offset + i for i in range(n)], [ref],
                           guidance=settings.pop("guidance_scale", None), weight=weight,
                           **settings)


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
        from starter_quality import verdicts

        record = WORK / f"{fingerprint(path, JUDGES_DIR)}-{strength:g}-{self.prompts}-service.json"
        if record.is_file():
            return tuple(json.loads(record.read_text()))
        cases, images = validation_images(self.service, slug, str(path), self.prompts, strength)
        figures = verdicts(self.judges, slug, images_as_array(images), cases)
        WORK.mkdir(parents=True, exist_ok=True)
        partial = record.with_suffix(".tmp")
        partial.write_text(json.dumps(figures))
        partial.replace(record)
        return figures


class OwnWords:
    """Where the words view puts a file's own style among all 28: the rank (1 = first) of the
    style's training-side descriptions (`style_texts`) by their mean cosine to the file's
    words-view vector, the file standardised against the other styles' files of `reference`
    (a candidate folder, so the check does not move with the pack being tuned). The starter
    pack's fitted word vocabulary is used as the app ships it."""

    def __init__(self, service, reference: str):
        from app.service import renders_key
        from app.starter_retrieval import starter_word_view_file, style_texts
        from retrieval.embedders import starter_embedder
        from retrieval.word_view import WordView
        from styles.reader import read_lora

        embedder = starter_embedder()
        words_file = starter_word_view_file(embedder, renders_key(service.engine))
        self.view = WordView.load(words_file, embedder.version)
        if self.view is None:
            raise SystemExit(f"{words_file}: no words view for this base and embedder; "
                             "rebuild the starter retrieval (benchmarks/retrieval_quality.py)")
        self.reference = {s: self.view.reactions(read_lora(Path(reference) / file_name(s)))
                          for s in sorted(STYLES)}
        self.texts = {s: embedder.encode_texts(style_texts(s)) for s in sorted(STYLES)}

    def rank(self, slug: str, path: Path) -> int:
        from styles.reader import read_lora

        self.view.fit([r for s, r in self.reference.items() if s != slug])
        found = self.view.embed(read_lora(path))
        if found is None:  # no word stands out: the style is found by none
            return len(STYLES)
        similarity = {s: float((texts @ found[0]).mean()) for s, texts in self.texts.items()}
        return sorted(similarity, key=similarity.__getitem__, reverse=True).index(slug) + 1


_judge: Judge | None = None
_words: OwnWords | None = None


def with_blocks_file(slug: str, label: str, folder: str, blocks: str,
                     strength: float = 1.0, out: Path | None = None) -> Path:
    """The candidate's file for `slug` with only the blocks of profile `blocks`, carrying
    `strength`, written as the build writes it (`save_style_lora`) into `out` (default: a work
    folder per candidate and profile); the candidate's own file for "all" at strength 1."""
    from styles.reader import read_lora
    from styles.starter.style_loras import save_style_lora

    source = Path(folder) / file_name(slug)
    if out is None:  # the walk's own copy, kept per candidate file and profile
        if blocks == "all" and strength == 1.0:
            return source
        out = WORK / "blocks" / f"{label}-{blocks}-{fingerprint(source, JUDGES_DIR)}"
        if (out / file_name(slug)).is_file():
            return out / file_name(slug)
    lora = read_lora(source)
    return save_style_lora(list(lora.modules.values()), out, slug, int(label),
                           BuildPlan().lora_rank, strength, blocks)


def walk(slug: str, candidates: list[tuple[str, str]], prompts: int,
         profiles: tuple[str, ...] = ("all",)) -> dict:
    """Every candidate's and block profile's walk from strength 1.0 for one style (in a worker
    process); walks are keyed "LABEL" for all blocks, "LABEL/PROFILE" otherwise."""
    global _judge, _words
    _judge = _judge or Judge(prompts)
    walks, refused = {}, {}
    for (label, folder), blocks in [(c, b) for c in candidates for b in profiles]:
        if any(meets(s, c) for points in walks.values() for _, s, c in points):
            break  # an earlier walk meets both targets: a later one cannot be chosen
        path = with_blocks_file(slug, label, folder, blocks)
        if blocks != "all":
            _words = _words or OwnWords(_judge.service, candidates[0][1])
            ranks = (_words.rank(slug, with_blocks_file(slug, label, folder, "all")),
                     _words.rank(slug, path))
            if ranks[1] > ranks[0]:
                refused[f"{label}/{blocks}"] = ranks
                continue
        points = [(1.0, *_judge(slug, path, 1.0))]
        style, content = points[0][1:]
        if not meets(style, content):
            for strength in UP if style / TARGETS[0] < content / TARGETS[1] else DOWN:
                points.append((strength, *_judge(slug, path, strength)))
                if meets(*points[-1][1:]):
                    break
                if margin(*points[-1][1:]) <= margin(*points[-2][1:]):
                    break
        walks[label if blocks == "all" else f"{label}/{blocks}"] = points
    key, strength, style, content = choose(walks)
    print(slug, key, strength, style, content, flush=True)
    label, _, blocks = key.partition("/")
    return {"slug": slug, "walks": walks, "refused": refused, "choice": {
        "candidate": label, "blocks": blocks or "all", "strength": strength, "style": style,
        "content": content}}


def walk_name(key: str) -> str:
    """"400 steps" for a walk keyed "400", "400 steps, decoder only" for "400/decoder"."""
    label, _, blocks = key.partition("/")
    return f"{label} steps" + (f", {blocks} only" if blocks else "")


def choose(walks: dict[str, list[tuple[float, float, float]]]) -> tuple[str, float, float, float]:
    """The least change that meets both targets: the earliest walk (candidate, then block
    profile), then the strength nearest 1, among the points that do; where none does, the
    best margin among the all-blocks walks (among all, if none was walked)."""
    points = [(i, label, k, s, c) for i, (label, walk) in enumerate(walks.items())
              for k, s, c in walk]
    meeting = [p for p in points if meets(p[3], p[4])]
    if meeting:
        best = min(meeting, key=lambda p: (p[0], abs(p[2] - 1.0), -margin(p[3], p[4])))
    else:
        points = [p for p in points if "/" not in p[1]] or points
        best = max(points, key=lambda p: (margin(p[3], p[4]), -p[0], -abs(p[2] - 1.0)))
    return best[1:]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--candidate", action="append", required=True,
                        help="LABEL=DIR: a folder of style LoRA files under the pack's names; "
                        "LABEL is the steps they were trained for")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--blocks", default="all",
                        help="block profiles walked for each candidate, in order of preference "
                        f"(of {', '.join(BLOCK_PROFILES)})")
    parser.add_argument("--assemble", help="write each style's chosen file to this folder")
    parser.add_argument("--out", default=str(RESULTS / "lora_strength.md"))
    args = parser.parse_args()
    candidates = [tuple(c.split("=", 1)) for c in args.candidate]
    profiles = tuple(args.blocks.split(","))
    if unknown := [b for b in profiles if b not in BLOCK_PROFILES]:
        parser.error(f"--blocks: unknown profile(s) {', '.join(unknown)}; "
                     f"known: {', '.join(BLOCK_PROFILES)}")
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
                             [args.prompts] * len(slugs), [profiles] * len(slugs)))
    if args.assemble:
        folders = dict(candidates)
        for row in rows:
            choice = row["choice"]
            with_blocks_file(row["slug"], choice["candidate"], folders[choice["candidate"]],
                             choice["blocks"], choice["strength"], Path(args.assemble))

    labels = [label if blocks == "all" else f"{label}/{blocks}"
              for label, _ in candidates for blocks in profiles]
    for row in rows:  # walks after one that met both targets were not needed: "–"
        row["walks"] = {label: row["walks"].get(label, []) for label in labels}
    flags = " ".join(f"--candidate {label}={folder}" for label, folder in candidates)
    if profiles != ("all",):
        flags += f" --blocks {args.blocks}"
    if args.assemble:
        flags += f" --assemble {args.assemble}"
    out = Path(args.out).resolve()
    if out != (RESULTS / "lora_strength.md").resolve():
        flags += f" --out {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}"
    lines = [
        "# Style LoRA files and strengths, chosen on validation prompts", "", machine_line(),
        f"Command: `.venv/bin/python benchmarks/lora_strength.py {flags} --prompts "
        f"{args.prompts} --workers {args.workers}`", "",
        f"Candidates (steps = folder): {', '.join(f'{name} = `{f}`' for name, f in candidates)}. "
        f"{args.prompts} validation prompts per style (seeds from {VALIDATION_SEED}, disjoint "
        "from starter_quality's held-out ones); style detected / content right by the starter "
        "judges, guidance 2, 20 DPM-Solver steps. Each candidate's strength walked from 1.0 "
        "towards the target it misses while the margin min(style / 0.80, content / 0.70) grew. "
        "A block profile's file is walked only if the words view ranks its style no lower "
        "than the all-blocks file does (\"words lost: style ranked all → profile\" where "
        "not). Chosen: the least change meeting both targets (the earliest candidate, then "
        "profile, then the strength nearest 1), else the best margin among the all-blocks "
        "walks. These figures chose: they are "
        "optimistic; starter_quality.md measures the chosen pack on other prompts. "
        "How to get the candidate folders: the module's docstring.", "",
        "| style | " + " | ".join(f"{walk_name(name)}: strength → style / content"
                                  for name in labels)
        + " | chosen | chosen: style / content |",
        "|---|" + "---|" * len(labels) + "---|---:|",
    ]
    for row in rows:
        cells = ["; ".join(f"{k:g} → {s:.2f} / {c:.2f}" for k, s, c in row["walks"][label])
                 or ("words lost: style ranked {} → {}".format(*row["refused"][label])
                     if label in row["refused"] else "–") for label in labels]
        choice = row["choice"]
        lines.append(f"| {row['slug']} | " + " | ".join(cells)
                     + f" | {choice['candidate']} steps"
                     + ("" if choice["blocks"] == "all" else f", {choice['blocks']} only")
                     + f" at {choice['strength']:g} | "
                     f"{choice['style']:.2f} / {choice['content']:.2f} |")
    lines.append("")
    for label in labels:
        at_one = [row["walks"][label][0] for row in rows if row["walks"][label]]
        lines.append(f"- {walk_name(label)} at strength 1: both targets met by "
                     f"{sum(meets(s, c) for _, s, c in at_one)}/"
                     f"{len(at_one)} walked on these prompts")
    chosen = [row["choice"] for row in rows]
    lines.append(f"- chosen: both targets met by "
                 f"{sum(meets(c['style'], c['content']) for c in chosen)}"
                 f"/{len(rows)} on these prompts (the prompts that chose them)")
    steps = BuildPlan().lora_steps
    tuning = {row["slug"]: {key: value for key, value in
                            (("steps", int(row["choice"]["candidate"])),
                             ("strength", row["choice"]["strength"]),
                             ("blocks", row["choice"]["blocks"]))
                            if value != {"steps": steps, "strength": 1.0, "blocks": "all"}[key]}
              for row in rows}
    lines += ["", f"Wall time {time.time() - started:.0f} s. As `BuildPlan.lora_tuning` "
              f"(`LORA_TUNING`; {steps} steps, strength 1 and all blocks where not named):",
              "",
              "```json", json.dumps({k: v for k, v in tuning.items() if v}, indent=1), "```"]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
