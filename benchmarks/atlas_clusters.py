"""Atlas clusters on the starter library: k-means in the PCA space against k-means on the map.

The atlas colours its styles by cluster. Three rules, all k-means with k by the silhouette
over `AtlasConfig.k_range`, on the same style vectors (`StyleLibrary.style_vector`, the mean of
each style's retrieval views):

- `pca, pulled`: clusters in the 10-D PCA space the map is drawn from, found first; the
  t-SNE affinities within a cluster are doubled, so each is one region (the atlas's rule);
- `pca`: the same clusters on the plain t-SNE map;
- `map`: clusters on the 2-D t-SNE map a person sees (the rule before).

Each partition is judged two ways:

1. *on the map*: the share of styles whose nearest neighbour on the map is in their own
   cluster (a cluster a person can point at is one region of the picture);
2. *against how the styles truly look*, which neither rule sees: each style's exact
   ground-truth images (`apply_styles` on `--scenes` world scenes) through the starter open_clip
   image encoder, averaged. The partition's silhouette under that cosine distance, and the
   share of styles whose truly nearest style is in their own cluster, each against
   `--shuffles` random partitions of the same cluster sizes (mean, and the share of shuffles
   scoring as high: a p-value).

And how steady each rule is, by the adjusted Rand index of its clusters against the full
fit's (1 = the same partition, 0 = chance), with the k each refit picks:

- *float noise*: the map refitted `--draws` times from the vectors plus Gaussian noise of 1e-7
  (the size of the difference another thread count makes to the weights view; another CPU
  makes such differences too). The same library should give the same groups everywhere;
- *left one out*: refitted once per style left out, the others compared. A user whose library
  gains or loses one style should not see the rest regroup.

    .venv/bin/python benchmarks/atlas_clusters.py [--scenes 48] [--shuffles 2000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from datetime import UTC, datetime

import numpy as np
from common import RESULTS, ground_truth, machine_line

from styles.atlas import AtlasConfig, AtlasLayout, _silhouette

RESULT = RESULTS / "atlas_clusters.md"
RULES = {"pca, pulled (the atlas's rule)": AtlasConfig(),
         "pca": AtlasConfig(cluster_pull=0.0),
         "map": AtlasConfig(cluster_space="map")}
NOISE = 1e-7


def starter_library(home: str):
    """The starter library as a first-time user gets it (seeded into an empty home)."""
    import os

    os.environ["LORATLAS_HOME"] = home
    from app.service import LoratlasService, ServiceConfig

    return LoratlasService(ServiceConfig(device="cpu")).library


def true_looks(slugs: list[str], scenes: int, embedder) -> np.ndarray:
    """(styles, d) unit vectors: the mean open_clip embedding of each style's exact images."""
    from styles.starter.world import sample_scene

    rng = np.random.default_rng(30000)  # seeds no training set uses
    drawn = [sample_scene(rng, 1) for _ in range(scenes)]
    looks = []
    for slug in slugs:
        images = np.stack([ground_truth(s, [slug], 30000 + i) for i, s in enumerate(drawn)])
        vectors = embedder.encode_images(images.astype(np.float32) / 255.0)
        looks.append(vectors.mean(0))
    looks = np.array(looks)
    return looks / np.linalg.norm(looks, axis=1, keepdims=True)


def nearest_agrees(d: np.ndarray, labels: np.ndarray) -> float:
    """Share of points whose nearest other point (by d) has their label."""
    d = d.copy()
    np.fill_diagonal(d, np.inf)
    return float(np.mean(labels[d.argmin(1)] == labels))


def against_shuffles(score, d: np.ndarray, labels: np.ndarray, shuffles: int,
                     rng: np.random.Generator) -> tuple[float, float, float]:
    """(observed, mean over shuffled labels, share of shuffles scoring at least as high)."""
    observed = score(d, labels)
    null = np.array([score(d, rng.permutation(labels)) for _ in range(shuffles)])
    return observed, float(null.mean()), float(np.mean(null >= observed - 1e-12))


def adjusted_rand(a: np.ndarray, b: np.ndarray) -> float:
    """Adjusted Rand index of two labelings of the same points (Hubert and Arabie, 1985)."""
    _, a = np.unique(a, return_inverse=True)
    _, b = np.unique(b, return_inverse=True)
    table = np.zeros((a.max() + 1, b.max() + 1))
    np.add.at(table, (a, b), 1)
    pairs = lambda x: float((x * (x - 1) / 2).sum())  # noqa: E731
    both, rows, cols, total = pairs(table), pairs(table.sum(1)), pairs(table.sum(0)), \
        len(a) * (len(a) - 1) / 2
    expected = rows * cols / total
    top = (rows + cols) / 2
    return 1.0 if top == expected else (both - expected) / (top - expected)


def refits(variants, tags: dict, config: AtlasConfig, labels: dict[str, int]
           ) -> tuple[list[float], list[int]]:
    """(ARI against the full fit's `labels`, k) of a fit of each variant of the vectors."""
    agreement, ks = [], []
    for vectors in variants:
        atlas = AtlasLayout.fit(vectors, tags, config)
        ids = sorted(vectors)
        agreement.append(adjusted_rand(np.array([labels[i] for i in ids]),
                                       np.array([atlas.point(i).cluster for i in ids])))
        ks.append(len(atlas.clusters))
    return agreement, ks


def left_one_out(vectors: dict):
    """The vectors without each style in turn."""
    for left in sorted(vectors):
        yield {i: v for i, v in vectors.items() if i != left}


def with_noise(vectors: dict, draws: int):
    """The vectors plus Gaussian noise of NOISE, one seeded draw at a time."""
    for draw in range(draws):
        rng = np.random.default_rng(draw)
        yield {i: vectors[i] + NOISE * rng.standard_normal(vectors[i].shape)
               for i in sorted(vectors)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=48)
    parser.add_argument("--shuffles", type=int, default=2000)
    parser.add_argument("--draws", type=int, default=20, help="refits under float noise")
    args = parser.parse_args()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as home:
        library = starter_library(home)
        entries = {e.id: e for e in library.catalog.list()}
        vectors = {i: v for i in sorted(entries) if (v := library.style_vector(i)) is not None}
        tags = {i: entries[i].tags for i in vectors}
        embedder = library.parts.embedder
    ids = sorted(vectors)
    looks = true_looks(ids, args.scenes, embedder)
    look_d = 1.0 - looks @ looks.T
    rows, sizes = [], {}
    for rule, config in RULES.items():
        atlas = AtlasLayout.fit(vectors, tags, config)
        labels = np.array([atlas.point(i).cluster for i in ids])
        xy = np.array([[atlas.point(i).x, atlas.point(i).y] for i in ids])
        map_d = np.sqrt(((xy[:, None] - xy[None]) ** 2).sum(-1))
        rng = np.random.default_rng(0)
        sil = against_shuffles(_silhouette, look_d, labels, args.shuffles, rng)
        near = against_shuffles(nearest_agrees, look_d, labels, args.shuffles, rng)
        by_id = dict(zip(ids, labels, strict=True))
        steady = (refits(with_noise(vectors, args.draws), tags, config, by_id),
                  refits(left_one_out(vectors), tags, config, by_id))
        rows.append((rule, len(atlas.clusters), nearest_agrees(map_d, labels), sil, near,
                     steady))
        sizes[rule] = [(c.label, sorted(c.members)) for c in atlas.clusters]
    write(rows, sizes, args, len(ids), time.perf_counter() - started)


def write(rows, sizes, args, n: int, seconds: float) -> None:
    lines = [
        "# Atlas clusters on the starter library: PCA space or the map", "",
        machine_line(),
        f"Command: `.venv/bin/python benchmarks/atlas_clusters.py --scenes {args.scenes} "
        f"--shuffles {args.shuffles} --draws {args.draws}` ({seconds:.0f} s, "
        f"{datetime.now(UTC):%Y-%m-%d})", "",
        f"The {n} starter styles as a new user's library holds them; their atlas vectors (the "
        "mean of each style's retrieval views) and map, as the app draws them. Every rule is "
        "seeded k-means with k by the silhouette over 2–12: in the PCA space, found before "
        "the layout (with the layout's affinities within a cluster doubled, *pulled*, or "
        "not), or on the 2-D map. *Nearest on the map in its own cluster*: share of styles "
        "whose nearest neighbour on the map shares its cluster. *True look*: each style's "
        f"exact ground-truth images of {args.scenes} world scenes through the starter "
        "open_clip image encoder, averaged (no rule sees it); the partition's silhouette under "
        "that cosine distance, and the share of styles whose truly nearest style is in their "
        f"cluster, each beside its mean over {args.shuffles} random partitions of the same "
        "cluster sizes, and p = the share of those scoring as high (fewer, larger clusters "
        f"score higher by chance). *Float noise*: {args.draws} refits from the vectors plus "
        f"Gaussian noise of {NOISE:g}; *left one out*: {n} refits, each without one style. "
        "Both give the adjusted Rand index of the clusters against the full fit's (mean, "
        "lowest) and the k the refits pick.",
        "",
        "| clusters | k | nearest on the map in its own cluster | true look: silhouette "
        "(shuffled; p) | true look: nearest in its own cluster (shuffled; p) | float noise: "
        "ARI mean (lowest); k picked | left one out: ARI mean (lowest); k picked |",
        "|---|---:|---:|---:|---:|---|---|",
    ]
    for rule, k, coherent, sil, near, steady in rows:
        cells = []
        for agreement, ks in steady:
            picked = ", ".join(f"{value} ×{ks.count(value)}" for value in sorted(set(ks)))
            cells.append(f"{np.mean(agreement):.2f} ({min(agreement):.2f}); {picked}")
        lines.append(f"| {rule} | {k} | {coherent:.2f} | {sil[0]:.3f} ({sil[1]:.3f}; "
                     f"p={sil[2]:.3f}) | {near[0]:.2f} ({near[1]:.2f}; p={near[2]:.3f}) | "
                     + " | ".join(cells) + " |")
    for rule in RULES:
        if rule == "pca":
            continue  # the same clusters as the pulled rule: only the layout differs
        lines += ["", f"## Clusters: {rule}", ""]
        lines += [f"- **{label}** ({len(members)}): {', '.join(members)}"
                  for label, members in sizes[rule]]
    RESULT.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
