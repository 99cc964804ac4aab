"""Atlas clusters on the starter library: k-means in the PCA space against k-means on the map.

The atlas colours its styles by cluster. Two rules, both k-means with k by the silhouette
over `AtlasConfig.k_range`, on the same style vectors (`StyleLibrary.style_vector`, the mean of
each style's retrieval views) and the same 2-D map:

- `pca`: clusters in the 10-D PCA space the map is drawn from (the rule before this bench);
- `map`: clusters on the 2-D map a person sees.

Each partition is judged two ways:

1. *on the map*: the share of styles whose nearest neighbour on the map is in their own
   cluster (a cluster a person can point at is one region of the picture);
2. *against how the styles truly look*, which neither rule sees: each style's exact
   ground-truth images (`apply_styles` on `--scenes` world scenes) through the starter open_clip
   image encoder, averaged. The partition's silhouette under that cosine distance, and the
   share of styles whose truly nearest style is in their own cluster, each against
   `--shuffles` random partitions of the same cluster sizes (mean, and the share of shuffles
   scoring as high: a p-value).

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
SPACES = ("pca", "map")


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=48)
    parser.add_argument("--shuffles", type=int, default=2000)
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
    for space in SPACES:
        atlas = AtlasLayout.fit(vectors, tags, AtlasConfig(cluster_space=space))
        labels = np.array([atlas.point(i).cluster for i in ids])
        xy = np.array([[atlas.point(i).x, atlas.point(i).y] for i in ids])
        map_d = np.sqrt(((xy[:, None] - xy[None]) ** 2).sum(-1))
        rng = np.random.default_rng(0)
        sil = against_shuffles(_silhouette, look_d, labels, args.shuffles, rng)
        near = against_shuffles(nearest_agrees, look_d, labels, args.shuffles, rng)
        rows.append((space, len(atlas.clusters), nearest_agrees(map_d, labels), sil, near))
        sizes[space] = [(c.label, sorted(c.members)) for c in atlas.clusters]
    write(rows, sizes, args, len(ids), time.perf_counter() - started)


def write(rows, sizes, args, n: int, seconds: float) -> None:
    lines = [
        "# Atlas clusters on the starter library: PCA space or the map", "",
        machine_line(),
        f"Command: `.venv/bin/python benchmarks/atlas_clusters.py --scenes {args.scenes} "
        f"--shuffles {args.shuffles}` ({seconds:.0f} s, {datetime.now(UTC):%Y-%m-%d})", "",
        f"The {n} starter styles as a new user's library holds them; their atlas vectors (the "
        "mean of each style's retrieval views) and map, as the app draws them. Both rules are "
        "seeded k-means with k by the silhouette over 2–12. *Nearest on the map in its own "
        "cluster*: share of styles whose nearest neighbour on the map shares its cluster. "
        "*True look*: each style's exact ground-truth images of "
        f"{args.scenes} world scenes through the starter open_clip image encoder, averaged "
        "(neither rule sees it); the partition's silhouette under that cosine distance, and "
        "the share of styles whose truly nearest style is in their cluster. Each true-look "
        f"figure is shown beside its mean over {args.shuffles} random partitions of the same "
        "cluster sizes, and p = the share of those scoring as high.", "",
        "| clusters in | k | nearest on the map in its own cluster | true look: silhouette "
        "(shuffled; p) | true look: nearest in its own cluster (shuffled; p) |",
        "|---|---:|---:|---:|---:|",
    ]
    for space, k, coherent, sil, near in rows:
        lines.append(f"| {space} | {k} | {coherent:.2f} | {sil[0]:.3f} ({sil[1]:.3f}; "
                     f"p={sil[2]:.3f}) | {near[0]:.2f} ({near[1]:.2f}; p={near[2]:.3f}) |")
    for space in SPACES:
        lines += ["", f"## Clusters in the {space} space" if space == "pca"
                  else "## Clusters on the map (the atlas's rule)", ""]
        lines += [f"- **{label}** ({len(members)}): {', '.join(members)}"
                  for label, members in sizes[space]]
    RESULT.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
