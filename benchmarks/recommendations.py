"""Recommendation hit rate@5 on the starter library: ours against the popularity baseline.

1. Style vectors: the shipped starter open_clip model's text embeddings of each starter
   style's description and tags (what the recommender sees).
2. Simulated users (styles/recommend.py, UserModel): 1–2 interests each, choices driven by
   taste and by Zipf popularity. Their taste lives in the styles' *tags* from the style
   definitions (plus the band: concept / low / high), not in the CLIP vectors, so the test
   asks whether the vectors recover what people like.
3. Leave-one-out: one style of each history hidden; popularity counted over what is not
   hidden; the recommender's popularity weight is fitted by an inner leave-one-out on the
   same non-hidden part (other hides). Hit rate@5 per seed; mean ± sd over seeds.
4. Sensitivity: the same for weaker and stronger taste and flatter and steeper popularity.

    .venv/bin/python benchmarks/recommendations.py [--users 500] [--seeds 0,1,2,3,4]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from styles.recommend import (  # noqa: E402
    StyleRecommender,
    UserModel,
    hit_rate,
    popularity_baseline,
    simulate_histories,
    split_leave_one_out,
)
from styles.starter.looks import STYLES  # noqa: E402

RESULT = ROOT / "benchmarks" / "results" / "recommendations.md"
K = 5
TASTES = (0.0, 2.0, 5.0, 10.0)
ZIPFS = (0.5, 1.0, 1.5)


def style_texts() -> dict[str, str]:
    return {s: f"{spec.description}. {', '.join(spec.tags)}" for s, spec in STYLES.items()}


def clip_vectors() -> dict[str, np.ndarray]:
    """Starter open_clip text embeddings of description + tags, per starter style."""
    import torch

    from styles.starter.clip_model import DEFAULT_DIR, encode_texts, load_starter_clip

    torch.set_num_threads(1)
    model, _, tokenizer = load_starter_clip(DEFAULT_DIR)
    texts = style_texts()
    matrix = encode_texts(model, tokenizer, list(texts.values()))
    return dict(zip(texts, matrix, strict=True))


def tag_features() -> dict[str, np.ndarray]:
    """What simulated users' taste is made of: one-hot tags (and band) per style."""
    tags = {s: {*spec.tags, spec.band} for s, spec in STYLES.items()}
    vocabulary = sorted(set().union(*tags.values()))
    return {s: np.array([t in tags[s] for t in vocabulary], dtype=np.float64) for s in tags}


def evaluate(vectors, features, model: UserModel, users: int, seed: int) -> dict[str, float]:
    """Hit rate@5 of every recommender on one simulated population."""
    ids = sorted(vectors)
    histories, _ = simulate_histories(features, users, seed, model)
    given, hidden = split_leave_one_out(histories, seed)
    content_only = StyleRecommender(vectors, prior=0.0)
    default = StyleRecommender(vectors)
    fitted = StyleRecommender(vectors)
    fitted.fit_prior(given, K, seed + 10_000)
    reference = StyleRecommender(features)
    reference.fit_prior(given, K, seed + 10_000)
    rankers: dict[str, Callable] = {
        "popularity": lambda g, p: [r.id for r in popularity_baseline(p, len(ids), g, ids)],
        "content": content_only.ranker(),
        "default": default.ranker(),
        "fitted": fitted.ranker(),
        "reference": reference.ranker(),
    }
    out = {name: hit_rate(given, hidden, rank, K).hit_rate for name, rank in rankers.items()}
    out["random"] = float(np.mean([min(K, len(ids) - len(g)) / (len(ids) - len(g))
                                   for g in given]))
    out["prior"] = fitted.prior
    out["mean_history"] = float(np.mean([len(h) for h in histories]))
    return out


def summary(values: list[float]) -> str:
    return f"{np.mean(values):.3f} ± {np.std(values, ddof=1) if len(values) > 1 else 0:.3f}"


def main_table(runs: list[dict[str, float]]) -> list[str]:
    rows = [
        ("random (expected)", "random", "k / styles not yet used"),
        ("popularity baseline", "popularity", "most used styles the user has not used"),
        ("ours, content only", "content", "cosine to the liked styles, no popularity prior"),
        ("ours, default prior", "default", "prior weight 4.0 (DEFAULT_PRIOR), not fitted"),
        ("**ours, prior fitted**", "fitted", "prior weight by inner leave-one-out on the "
         "non-hidden histories"),
        ("reference: ours on the users' own tag space", "reference", "same recommender, "
         "vectors = the tag features users choose by (not available in practice)"),
    ]
    lines = ["| recommender | hit rate@5 (mean ± sd) | per seed | what it is |",
             "|---|---:|---|---|"]
    for label, key, what in rows:
        per_seed = ", ".join(f"{r[key]:.3f}" for r in runs)
        lines.append(f"| {label} | {summary([r[key] for r in runs])} | {per_seed} | {what} |")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=500)
    parser.add_argument("--seeds", default="0,1,2,3,4")
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    vectors, features = clip_vectors(), tag_features()
    load_start = os.getloadavg()[0]

    # 1. the default user model, several seeds
    default_model = UserModel()
    runs = [evaluate(vectors, features, default_model, args.users, s) for s in seeds]
    diffs = [r["fitted"] - r["popularity"] for r in runs]
    wins = sum(d > 0 for d in diffs)
    priors = ", ".join(f"{r['prior']:g}" for r in runs)

    # 2. sensitivity to how much taste and popularity drive choices
    grid = {}
    for zipf in ZIPFS:
        for taste in TASTES:
            model = replace(default_model, zipf_exponent=zipf, taste_strength=taste)
            grid[zipf, taste] = [evaluate(vectors, features, model, args.users, s)
                                 for s in seeds]

    # 3. the report
    command = "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/recommendations.py"
    if argv:
        command += " " + " ".join(argv)
    lines = [
        "# Recommendations: hit rate@5, ours against the popularity baseline",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, numpy {np.__version__}, "
        f"Python {platform.python_version()}, CPU. The machine was shared with model training "
        f"(load average {load_start:.1f} at the start, {os.getloadavg()[0]:.1f} at the end); "
        "timings are not reported, only hit rates, which do not depend on load.",
        f"Date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC.",
        "",
        f"Command: `{command}`",
        "",
        f"Library: the {len(vectors)} starter styles. Recommender vectors: the starter open_clip "
        "model's text embeddings of each style's description + tags. Users: "
        f"{args.users} simulated per seed, seeds {args.seeds}; mean history "
        f"{np.mean([r['mean_history'] for r in runs]):.1f} styles. Leave-one-out: one style "
        "per history hidden; a hit when it is in the top 5 of styles the user has not used.",
        "",
        "## Simulated users (styles/recommend.py, `UserModel` defaults)",
        "",
        "- Popularity: each style gets weight 1 / rank (Zipf, exponent 1.0); ranks are a random",
        "  permutation per seed, independent of content.",
        "- Taste: 1 or 2 interests per user (equally likely), each centred on a style drawn",
        "  uniformly, mixed with Dirichlet(1) weights. Each pick draws an interest, then a",
        "  not-yet-used style with probability ∝ popularity weight × exp(5 × cosine between the",
        "  interest's and the style's **tag** vectors (tags + band from `styles/starter/looks.py`,",
        "  one-hot)). The users never see the CLIP vectors the recommender uses.",
        "- History length: 2 + Poisson(3), at most half the library.",
        "- The user model's defaults (taste 5, Zipf 1.0) were set before any result was seen.",
        "  The recommender was then shaped on dev seeds 100–102, kept apart from the seeds",
        "  reported here: content alone lost to popularity there, which is why the popularity",
        "  prior is fitted (`fit_prior`); DEFAULT_PRIOR (4.0) is what it picked on 2 of those",
        "  3 seeds (8 on the third).",
        "",
        "## Default user model",
        "",
        *main_table(runs),
        "",
        f"- Ours (prior fitted) minus popularity, paired per seed: {summary(diffs)}; ours is "
        f"higher on {wins} of {len(runs)} seeds. Prior weights fitted: {priors}.",
        "",
        "## Sensitivity: popularity baseline / ours (prior fitted), hit rate@5, mean over seeds",
        "",
        "In brackets: the median prior weight `fit_prior` chose (larger = ranks more like "
        "popularity).",
        "",
        "| Zipf exponent \\ taste strength | " + " | ".join(f"{t:g}" for t in TASTES) + " |",
        "|---|" + "---|" * len(TASTES),
    ]
    for zipf in ZIPFS:
        cells = [f"{np.mean([r['popularity'] for r in grid[zipf, t]]):.3f} / "
                 f"{np.mean([r['fitted'] for r in grid[zipf, t]]):.3f} "
                 f"({np.median([r['prior'] for r in grid[zipf, t]]):g})" for t in TASTES]
        lines.append(f"| {zipf:g} | " + " | ".join(cells) + " |")
    lines += ["", *findings(runs, grid), ""]
    RESULT.write_text("\n".join(lines))
    print("\n".join(lines))


def findings(runs: list[dict[str, float]], grid: dict) -> list[str]:
    """What the numbers say, including where ours does not win."""
    pop = np.mean([r["popularity"] for r in runs])
    fitted = np.mean([r["fitted"] for r in runs])
    content = np.mean([r["content"] for r in runs])
    reference = np.mean([r["reference"] for r in runs])
    gaps = {cell: np.mean([r["fitted"] - r["popularity"] for r in rs])
            for cell, rs in grid.items()}
    losses = [cell for cell, gap in gaps.items() if gap < 0]
    return [
        "## Findings",
        "",
        f"- Default users: ours with a fitted prior {fitted:.3f} against popularity {pop:.3f}. "
        f"Content alone ({content:.3f}) is "
        f"{'below' if content < pop else 'above'} popularity: with 28 styles and Zipf "
        "usage, a handful of styles take most picks, and similarity alone ignores that.",
        f"- The gap to the reference ({reference:.3f}, the same method on the tag space the "
        "users choose by) is what the CLIP text vectors miss of those tags.",
        "- Where taste is weak (strength 0–2) the fitted prior grows until ours ranks like the "
        "popularity baseline (content only breaks ties), so it can at best match it there; "
        "the benefit grows with the taste strength.",
        ("- Ours is below popularity in " + ", ".join(f"Zipf {z:g} / taste {t:g}"
                                                     for z, t in losses)
         + f", by at most {-min(gaps.values()):.3f}: when taste hardly matters, content only "
           "reorders near-ties in popularity, and the prior fitted by the inner leave-one-out "
           "is itself noisy.") if losses else "- Ours is not below popularity in any cell.",
        f"- Ours gains most where taste is strong: up to {max(gaps.values()):+.3f} "
        "(a cell of the table above).",
    ]


if __name__ == "__main__":
    main(sys.argv[1:])
