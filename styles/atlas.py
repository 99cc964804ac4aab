"""The style atlas: a 2-D map of style vectors, clusters labelled by their tags, stable updates.

Pure numpy over the vectors it is handed (id → unit vector) and each style's tags:

- layout: PCA to `pca_dims`, then an exact t-SNE in 2-D started from the PCA plane (so it is
  deterministic: no random start). Past `max_exact` styles, t-SNE runs on a seeded sample of
  landmarks and the rest are placed from their nearest landmarks, as `place` does.
- clusters: seeded k-means in the PCA space, k chosen by the silhouette over `k_range`, found
  before the layout; the layout's t-SNE affinities within a cluster are raised by
  `cluster_pull`, so each cluster is one region of the picture a person sees. Clustering the
  2-D map itself (`cluster_space="map"`) is the older rule: t-SNE is chaotic, so noise of 1e-7
  in the vectors (another thread count, another CPU) redraws the map and with it the clusters
  (k from 2 to 9 over 20 draws on the starter library), while the PCA-space clusters stay;
  benchmarks/atlas_clusters.py compares both.
- labels: each cluster's tags that are most over-represented in it compared to the whole atlas.
- `place` adds a style without moving any other point: the weighted mean of its nearest
  neighbours' positions (by cosine) plus a small offset derived from its id, so duplicates do
  not hide each other; it joins the cluster with the nearest centroid.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

JSON_VERSION = 3  # 2: config.cluster_space; centroids in that space. 3: PCA-space clusters
# by default, and the layout pulled together within them (older caches are refitted on open)


class AtlasError(Exception):
    """An atlas operation that cannot be done, with what to do about it."""


class NotOnAtlas(AtlasError, KeyError):
    def __init__(self, style_id: str) -> None:
        self.id = style_id
        super().__init__(f"style {style_id!r} is not on the atlas; place it first "
                         "(AtlasLayout.place) or refit the atlas.")

    def __str__(self) -> str:
        return str(self.args[0])


class AlreadyOnAtlas(AtlasError):
    def __init__(self, style_id: str) -> None:
        self.id = style_id
        super().__init__(f"style {style_id!r} is already on the atlas; remove it first to "
                         "place it again (e.g. after re-embedding).")


class VectorMismatch(AtlasError, ValueError):
    def __init__(self, problem: str) -> None:
        super().__init__(f"{problem}; embed every style with the same embedder (one vector "
                         "view), or refit the atlas after changing embedder.")


@dataclass(frozen=True)
class AtlasConfig:
    """How the atlas is built; stored with it so a cached atlas updates the same way."""

    pca_dims: int = field(default=10, metadata={"help": "dimensions kept before the 2-D step"})
    perplexity: float = field(default=30.0, metadata={"help": "t-SNE neighbourhood size"})
    iterations: int = field(default=500, metadata={"help": "t-SNE gradient steps in all"})
    exaggeration_iterations: int = 125
    exaggeration: float = 12.0
    max_exact: int = field(default=1500, metadata={"help": "t-SNE on at most this many points"})
    k_range: tuple[int, int] = field(default=(2, 12), metadata={"help": "clusters tried"})
    cluster_space: str = field(default="pca", metadata={"help": "k-means on 'pca' or 'map'"})
    cluster_pull: float = field(default=1.0, metadata={
        "help": "layout: affinities within a PCA-space cluster × (1 + this)"})
    silhouette_sample: int = 1000
    neighbours: int = field(default=5, metadata={"help": "neighbours averaged by place()"})
    temperature: float = field(default=0.05, metadata={"help": "cosine softmax in place()"})
    jitter: float = field(default=0.25, metadata={"help": "place() offset, × typical spacing"})
    label_tags: int = 3
    seed: int = 0

    def __post_init__(self) -> None:
        if self.pca_dims < 2 or self.k_range[0] < 2 or self.k_range[1] < self.k_range[0]:
            raise ValueError("AtlasConfig: need pca_dims >= 2 and 2 <= k_range[0] <= k_range[1]")
        if self.cluster_pull < 0:
            raise ValueError(f"AtlasConfig: cluster_pull must be >= 0, not {self.cluster_pull}")
        if self.cluster_space not in ("map", "pca"):
            raise ValueError(f"AtlasConfig: cluster_space is 'map' or 'pca', not "
                             f"{self.cluster_space!r}")


@dataclass(frozen=True)
class AtlasPoint:
    id: str
    x: float
    y: float
    cluster: int


@dataclass(frozen=True)
class AtlasCluster:
    id: int
    label: str
    tags: list[str]  # the label's tags, most distinctive first
    members: list[str]
    x: float  # centre of its members on the map
    y: float


# --------------------------------------------------------------------------- small maths


def _unit_rows(matrix: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return (matrix / np.maximum(norms, 1e-12)).astype(np.float32)


def _sq_dists(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.maximum(d, 0.0)


def _pca(x: np.ndarray, dims: int) -> tuple[np.ndarray, np.ndarray]:
    """(mean, components (dims, d)) with a fixed sign per component, for reproducibility."""
    mean = x.mean(0)
    centred = (x - mean).astype(np.float64)
    cov = centred.T @ centred / max(len(x) - 1, 1)
    values, vectors = np.linalg.eigh(cov)
    comps = vectors[:, np.argsort(values)[::-1][:dims]].T
    signs = np.sign(comps[np.arange(len(comps)), np.abs(comps).argmax(1)])
    return mean.astype(np.float64), comps * signs[:, None]


def _tag_key(tag: str) -> str:
    return tag.strip().casefold()


def _id_angle(style_id: str) -> float:
    """A fixed angle per id (from its sha256): the direction of place()'s small offset."""
    fraction = int.from_bytes(hashlib.sha256(style_id.encode()).digest()[:8], "big") / 2**64
    return fraction * 2.0 * math.pi


# --------------------------------------------------------------------------- t-SNE


def _affinities(z: np.ndarray, perplexity: float) -> np.ndarray:
    """Symmetric t-SNE input affinities P (sum 1), bandwidths by bisection, all rows at once."""
    n = len(z)
    d = _sq_dists(z, z)
    np.fill_diagonal(d, np.inf)
    d = d - d.min(1, keepdims=True)  # the entropy does not change; exp stays finite
    d_finite = np.where(np.isinf(d), 0.0, d)
    target = math.log(min(perplexity, (n - 1) / 3.0))
    lo, hi = np.full(n, -20.0), np.full(n, 20.0)  # bisection on log(beta)
    for _ in range(64):
        beta = np.exp((lo + hi) / 2.0)
        p = np.exp(-d * beta[:, None])
        s = p.sum(1)
        entropy = np.log(s) + beta * (d_finite * p).sum(1) / s
        too_flat = entropy > target
        lo, hi = np.where(too_flat, (lo + hi) / 2, lo), np.where(too_flat, hi, (lo + hi) / 2)
    p = p / s[:, None]
    p = (p + p.T) / (2.0 * n)
    return np.maximum(p, 1e-12)


def _tsne(z: np.ndarray, config: AtlasConfig, labels: np.ndarray | None = None
          ) -> np.ndarray:
    """Exact t-SNE (gradient descent with momentum and gains) started from the PCA plane;
    with `labels`, the affinities within a cluster are raised by `config.cluster_pull`."""
    n = len(z)
    p = _affinities(z, config.perplexity)
    if labels is not None and config.cluster_pull:
        p = p * (1.0 + config.cluster_pull * (labels[:, None] == labels[None, :]))
        p = p / p.sum()
    y = z[:, :2] / max(float(z[:, 0].std()), 1e-12) * 1e-4
    update, gains = np.zeros_like(y), np.ones_like(y)
    rate = max(n / config.exaggeration / 4.0, 50.0)
    for step in range(config.iterations):
        early = step < config.exaggeration_iterations
        num = 1.0 / (1.0 + _sq_dists(y, y))
        np.fill_diagonal(num, 0.0)
        q = np.maximum(num / num.sum(), 1e-12)
        w = ((config.exaggeration if early else 1.0) * p - q) * num
        grad = 4.0 * (w.sum(1)[:, None] * y - w @ y)
        same = np.sign(grad) == np.sign(update)
        gains = np.maximum(np.where(same, gains * 0.8, gains + 0.2), 0.01)
        update = (0.5 if early else 0.8) * update - rate * gains * grad
        y = y + update
    return y


def _layout_2d(z: np.ndarray, vectors: np.ndarray, ids: Sequence[str], config: AtlasConfig,
               labels: np.ndarray | None = None) -> np.ndarray:
    """2-D positions: t-SNE on ≤ max_exact landmarks, the others placed from the landmarks."""
    n = len(z)
    if n < 5:  # too few for neighbourhoods: the PCA plane
        y = np.zeros((n, 2))
        y[:, : min(2, z.shape[1])] = z[:, :2]
        return _normalise(y)
    if n <= config.max_exact:
        return _normalise(_tsne(z, config, labels))
    rng = np.random.default_rng(config.seed)
    marks = np.sort(rng.choice(n, config.max_exact, replace=False))
    y = np.zeros((n, 2))
    y[marks] = _normalise(_tsne(z[marks], config, None if labels is None else labels[marks]))
    spacing = _spacing(y[marks])
    rest = np.setdiff1d(np.arange(n), marks)
    for start in range(0, len(rest), 1024):
        chunk = rest[start:start + 1024]
        sims = vectors[chunk] @ vectors[marks].T
        for row, i in enumerate(chunk):
            y[i] = _placed(sims[row], y[marks], ids[i], spacing, config)
    return y


def _normalise(y: np.ndarray) -> np.ndarray:
    """Centre on the origin and scale into the unit disc."""
    y = y - y.mean(0)
    radius = float(np.sqrt((y * y).sum(1)).max()) if len(y) else 0.0
    return y / radius if radius > 1e-12 else y


def _spacing(y: np.ndarray, sample: int = 1000) -> float:
    """Typical distance from a point to its nearest neighbour on the map (median, sampled)."""
    if len(y) < 2:
        return 0.05
    rows = y[:sample]
    d = _sq_dists(rows, y)
    d[np.arange(len(rows)), np.arange(len(rows))] = np.inf
    return float(np.median(np.sqrt(d.min(1)))) or 0.05


def _placed(sims: np.ndarray, xy: np.ndarray, style_id: str, spacing: float,
            config: AtlasConfig) -> np.ndarray:
    """Softmax-of-cosine mean of the nearest points' positions, plus the id's fixed offset."""
    k = min(config.neighbours, len(sims))
    top = np.argsort(-sims, kind="stable")[:k]
    weights = np.exp((sims[top] - sims[top].max()) / config.temperature)
    centre = (weights[:, None] * xy[top]).sum(0) / weights.sum()
    angle = _id_angle(style_id)
    return centre + config.jitter * spacing * np.array([math.cos(angle), math.sin(angle)])


# --------------------------------------------------------------------------- clusters


def _kmeans(z: np.ndarray, k: int, rng: np.random.Generator, runs: int = 4, steps: int = 100
            ) -> tuple[np.ndarray, np.ndarray]:
    """(labels, centres) of the lowest-inertia run of k-means++ then Lloyd iterations."""
    best: tuple[float, np.ndarray, np.ndarray] | None = None
    for _ in range(runs):
        centres = _kmeans_pp(z, k, rng)
        for _ in range(steps):
            labels = _sq_dists(z, centres).argmin(1)
            moved = np.array([z[labels == c].mean(0) if (labels == c).any() else centres[c]
                              for c in range(k)])
            if np.allclose(moved, centres):
                break
            centres = moved
        labels = _sq_dists(z, centres).argmin(1)
        inertia = float(_sq_dists(z, centres)[np.arange(len(z)), labels].sum())
        if best is None or inertia < best[0] - 1e-12:
            best = (inertia, labels, centres)
    assert best is not None
    return best[1], best[2]


def _kmeans_pp(z: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    centres = [z[rng.integers(len(z))]]
    for _ in range(1, k):
        d = _sq_dists(z, np.array(centres)).min(1)
        total = d.sum()
        pick = rng.choice(len(z), p=d / total) if total > 0 else rng.integers(len(z))
        centres.append(z[pick])
    return np.array(centres)


def _silhouette(d: np.ndarray, labels: np.ndarray) -> float:
    """Mean silhouette from a full distance matrix (singletons score 0)."""
    clusters = np.unique(labels)
    if len(clusters) < 2:
        return -1.0
    sums = np.stack([d[:, labels == c].sum(1) for c in clusters], 1)
    sizes = np.array([(labels == c).sum() for c in clusters], dtype=np.float64)
    own = np.searchsorted(clusters, labels)
    rows = np.arange(len(labels))
    a = sums[rows, own] / np.maximum(sizes[own] - 1, 1)
    means = sums / sizes[None, :]
    means[rows, own] = np.inf
    b = means.min(1)
    s = np.where(sizes[own] > 1, (b - a) / np.maximum(np.maximum(a, b), 1e-12), 0.0)
    return float(s.mean())


def _clusters(z: np.ndarray, config: AtlasConfig) -> tuple[np.ndarray, np.ndarray]:
    """(labels, centres): k-means with the k of best silhouette; one cluster if n < 3."""
    n = len(z)
    spread = float(np.abs(z - z.mean(0)).max()) if n else 0.0
    if n < 3 or spread < 1e-9:
        return np.zeros(n, dtype=np.int64), z.mean(0, keepdims=True) if n else z[:0]
    rng = np.random.default_rng(config.seed)
    sample = np.sort(rng.choice(n, min(n, config.silhouette_sample), replace=False))
    d = np.sqrt(_sq_dists(z[sample], z[sample]))
    best: tuple[float, np.ndarray, np.ndarray] | None = None
    for k in range(config.k_range[0], min(config.k_range[1], n - 1) + 1):
        labels, centres = _kmeans(z, k, np.random.default_rng([config.seed, k]))
        score = _silhouette(d, labels[sample])
        if best is None or score > best[0] + 1e-12:
            best = (score, labels, centres)
    assert best is not None
    return _renumber(best[1], best[2])


def _renumber(labels: np.ndarray, centres: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Drop empty clusters; number the rest by size (largest first), then first member."""
    used = [c for c in range(len(centres)) if (labels == c).any()]
    order = sorted(used, key=lambda c: (-int((labels == c).sum()), int(np.argmax(labels == c))))
    mapping = {old: new for new, old in enumerate(order)}
    return np.array([mapping[c] for c in labels], dtype=np.int64), centres[order]


def cluster_labels(members: Mapping[int, Sequence[str]], tags: Mapping[str, Sequence[str]],
                   top: int = 3, min_share: float = 0.5) -> dict[int, list[str]]:
    """Each cluster's most distinctive tags: share in the cluster × log(share in / share in all).

    Shares count only styles that have tags (an untagged file, as many community LoRAs are,
    says nothing either way). Only tags on at least `min_share` of those members (a label
    should describe most of them) and over-represented in the cluster count (a tag every
    style has scores 0); where none is, the cluster's most common tags held by two members or
    more (in a cluster of one or two, by `min_share` of it), so a mixed cluster reads as mixed
    ("color · line · texture") instead of taking the name of its largest minority, or of one
    member's tag. Clusters that would share a label each add the tag that sets them apart
    from the others of that label (held by two members or more, a larger share of its own than
    of theirs), where one does."""
    tagged = {c: [s for s in ms if _style_tags(tags, s)] for c, ms in members.items()}
    total = sum(len(m) for m in tagged.values())
    overall = Counter(t for ms in tagged.values() for s in ms for t in _style_tags(tags, s))
    out, inside, least = {}, {}, {}
    for cluster, ms in tagged.items():
        inside[cluster] = Counter(t for s in ms for t in _style_tags(tags, s))
        scored = sorted((-_distinctiveness(n / len(ms), overall[t] / total), -n, t)
                        for t, n in inside[cluster].items())
        picked = [t for score, n, t in scored if score < -1e-12 and -n >= min_share * len(ms)]
        least[cluster] = min(2, math.ceil(min_share * len(ms)))  # one member's of many: no
        common = [t for n, t in sorted((-n, t) for t, n in inside[cluster].items())
                  if -n >= least[cluster]]
        out[cluster] = (picked or common)[:top]
    for label, count in Counter(tuple(v) for v in out.values()).items():
        if count < 2 or not label:
            continue
        group = [c for c, v in out.items() if tuple(v) == label]
        for cluster in group:
            size = len(tagged[cluster])
            rival = {t: max(inside[o][t] / len(tagged[o]) for o in group if o != cluster)
                     for t in inside[cluster]}
            apart = sorted((rival[t] - n / size, -n, t) for t, n in inside[cluster].items()
                           if t not in label and n >= least[cluster] and n / size > rival[t])
            if apart:
                out[cluster] = [*label, apart[0][2]]
    return out


def _distinctiveness(share_in: float, share_all: float) -> float:
    """share_in × log(share_in / share_all): high for tags common here and rare elsewhere."""
    return share_in * math.log(share_in / share_all)


def _style_tags(tags: Mapping[str, Sequence[str]], style_id: str) -> set[str]:
    return {_tag_key(t) for t in tags.get(style_id, ()) if _tag_key(t)}


# --------------------------------------------------------------------------- the layout


class AtlasLayout:
    """Positions, clusters and labels of a set of styles; updated without reshuffling."""

    def __init__(self, config: AtlasConfig | None = None) -> None:
        """An empty atlas; build one with AtlasLayout.fit, or place styles one by one."""
        self.config = config or AtlasConfig()
        self._ids: list[str] = []
        self._row: dict[str, int] = {}
        self._vectors = np.zeros((0, 0), dtype=np.float32)
        self._xy = np.zeros((0, 2))
        self._cluster = np.zeros(0, dtype=np.int64)
        self._tags: dict[str, list[str]] = {}
        self._mean = np.zeros(0)
        self._components = np.zeros((0, 0))
        self._centroids = np.zeros((0, 0))
        self._spacing = 0.05
        self._labels: dict[int, list[str]] = {}
        self._fitted_on = 0  # styles the layout and clusters were fitted on (`place` adds none)

    @classmethod
    def fit(cls, vectors: Mapping[str, np.ndarray],
            tags: Mapping[str, Sequence[str]] | None = None,
            config: AtlasConfig | None = None) -> AtlasLayout:
        """Lay out every style from scratch (deterministic for the same vectors and config)."""
        atlas = cls(config)
        cfg = atlas.config
        # 1. fixed order (sorted ids) and unit vectors
        ids = sorted(vectors)
        if not ids:
            return atlas
        matrix = _unit_rows(np.stack([np.asarray(vectors[i], dtype=np.float32) for i in ids]))
        # 2. PCA to a few dimensions (denoises, and the t-SNE start)
        mean, comps = _pca(matrix, min(cfg.pca_dims, matrix.shape[1], max(len(ids) - 1, 1)))
        z = (matrix - mean) @ comps.T
        # 3. clusters, k by silhouette, in the PCA space: before the layout, which is chaotic
        #    and must not decide them
        labels = centroids = None
        if cfg.cluster_space == "pca":
            labels, centroids = _clusters(z, cfg)
        # 4. 2-D layout (each PCA-space cluster pulled into one region)
        xy = _layout_2d(z, matrix, ids, cfg, labels)
        if labels is None:  # the older rule: clusters on the map
            labels, centroids = _clusters(xy, cfg)
        # 5. keep everything; label clusters from tags
        atlas._ids, atlas._row = ids, {s: i for i, s in enumerate(ids)}
        atlas._vectors, atlas._xy, atlas._cluster = matrix, xy, labels
        atlas._mean, atlas._components, atlas._centroids = mean, comps, centroids
        atlas._tags = {s: list((tags or {}).get(s, ())) for s in ids}
        atlas._spacing = _spacing(xy)
        atlas._fitted_on = len(ids)
        atlas._relabel()
        return atlas

    # ---- updates that move nothing else

    def place(self, style_id: str, vector: np.ndarray, tags: Sequence[str] = ()) -> AtlasPoint:
        """Add one style near its nearest neighbours; no existing point moves."""
        if style_id in self._row:
            raise AlreadyOnAtlas(style_id)
        v = _unit_rows(np.asarray(vector, dtype=np.float32).reshape(1, -1))
        if not self._ids:
            fitted = AtlasLayout.fit({style_id: v[0]}, {style_id: list(tags)}, self.config)
            self.__dict__.update(fitted.__dict__)  # the first style defines the PCA frame
            return self.point(style_id)
        if v.shape[1] != self._vectors.shape[1]:
            raise VectorMismatch(f"vector for {style_id!r} has {v.shape[1]} dimensions, the "
                                 f"atlas {self._vectors.shape[1]}")
        xy = _placed(self._vectors @ v[0], self._xy, style_id, self._spacing, self.config)
        z = xy if self.config.cluster_space == "map" else (v[0] - self._mean) @ self._components.T
        cluster = int(_sq_dists(z[None, :], self._centroids)[0].argmin())
        self._row[style_id] = len(self._ids)
        self._ids.append(style_id)
        self._vectors = np.vstack([self._vectors, v])
        self._xy = np.vstack([self._xy, xy[None, :]])
        self._cluster = np.append(self._cluster, cluster)
        self._tags[style_id] = list(tags)
        self._relabel()
        return self.point(style_id)

    def remove(self, style_id: str) -> None:
        """Take a style off the map; the others stay where they are."""
        row = self._index(style_id)
        keep = np.arange(len(self._ids)) != row
        self._ids.pop(row)
        self._row = {s: i for i, s in enumerate(self._ids)}
        self._vectors, self._xy, self._cluster = (self._vectors[keep], self._xy[keep],
                                                  self._cluster[keep])
        del self._tags[style_id]
        self._relabel()

    def _relabel(self) -> None:
        members = {c.item(): [] for c in np.unique(self._cluster)}
        for style_id, c in zip(self._ids, self._cluster, strict=True):
            members[int(c)].append(style_id)
        self._labels = cluster_labels(members, self._tags, self.config.label_tags)

    # ---- reading

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, style_id: object) -> bool:
        return style_id in self._row

    @property
    def ids(self) -> list[str]:
        return list(self._ids)

    @property
    def fitted_on(self) -> int:
        """How many styles the layout and the clusters were fitted on; styles placed since
        joined the nearest cluster and moved nothing."""
        return self._fitted_on

    def _index(self, style_id: str) -> int:
        try:
            return self._row[style_id]
        except KeyError:
            raise NotOnAtlas(style_id) from None

    def point(self, style_id: str) -> AtlasPoint:
        i = self._index(style_id)
        return AtlasPoint(style_id, float(self._xy[i, 0]), float(self._xy[i, 1]),
                          int(self._cluster[i]))

    def points(self, ids: Iterable[str] | None = None) -> list[AtlasPoint]:
        """Every point, or those of `ids` (e.g. the result of a catalog search)."""
        return [self.point(s) for s in (self._ids if ids is None else ids)]

    @property
    def clusters(self) -> list[AtlasCluster]:
        """Non-empty clusters by id, each with its label, members and centre on the map."""
        out, named = [], Counter()
        for c in sorted(self._labels):
            rows = np.flatnonzero(self._cluster == c)
            tags = self._labels[c]
            x, y = self._xy[rows].mean(0)
            name = " · ".join(tags) or f"cluster {c + 1}"
            named[name] += 1  # two clusters no tag tells apart: numbered, never one name
            out.append(AtlasCluster(c, name if named[name] == 1 else f"{name} {named[name]}",
                                    list(tags), [self._ids[r] for r in rows], float(x),
                                    float(y)))
        return out

    def nearest(self, style_id: str, k: int = 5) -> list[tuple[str, float]]:
        """The k most similar other styles by cosine, most similar first."""
        i = self._index(style_id)
        return self.nearest_to(self._vectors[i], k, exclude={style_id})

    def nearest_to(self, vector: np.ndarray, k: int = 5, exclude: Iterable[str] = ()
                   ) -> list[tuple[str, float]]:
        """The k styles most similar (cosine) to any vector, e.g. a prompt's embedding."""
        if not self._ids:
            return []
        v = _unit_rows(np.asarray(vector, dtype=np.float32).reshape(1, -1))[0]
        sims = self._vectors @ v
        skip = set(exclude)
        order = [i for i in np.argsort(-sims, kind="stable") if self._ids[i] not in skip]
        return [(self._ids[i], float(sims[i])) for i in order[:k]]

    def search(self, text: str | None = None, tags: Sequence[str] | None = None,
               cluster: int | None = None) -> list[str]:
        """Ids whose id, a tag or cluster label contains `text` (any case), that have every tag
        in `tags`, in `cluster` if given. Family and description filters are the catalog's
        (Catalog.list); pass its ids to `points` to show them on the map."""
        needle = _tag_key(text or "")
        wanted = {_tag_key(t) for t in tags or ()}
        labels = {c.id: c.label.casefold() for c in self.clusters}
        out = []
        for i, style_id in enumerate(self._ids):
            own = _style_tags(self._tags, style_id)
            c = int(self._cluster[i])
            if (cluster is not None and c != cluster) or not wanted <= own:
                continue
            if needle and not (needle in style_id.casefold() or needle in labels[c]
                               or any(needle in t for t in own)):
                continue
            out.append(style_id)
        return out

    # ---- cache

    def to_json(self) -> str:
        """Everything needed to keep updating the atlas; vectors exact (base64 float32)."""
        config = asdict(self.config)
        return json.dumps({
            "version": JSON_VERSION, "config": config, "ids": self._ids,
            "xy": self._xy.tolist(), "cluster": self._cluster.tolist(), "tags": self._tags,
            "vectors": _encode(self._vectors), "mean": self._mean.tolist(),
            "components": self._components.tolist(), "centroids": self._centroids.tolist(),
            "spacing": self._spacing, "fitted_on": self._fitted_on,
        })

    @classmethod
    def from_json(cls, text: str) -> AtlasLayout:
        data = json.loads(text)
        if data.get("version") != JSON_VERSION:
            raise AtlasError(f"atlas cache version {data.get('version')!r} is not "
                             f"{JSON_VERSION}; delete the cache file and refit the atlas.")
        config = dict(data["config"])
        config["k_range"] = tuple(config["k_range"])
        atlas = cls(AtlasConfig(**config))
        atlas._ids = list(data["ids"])
        atlas._row = {s: i for i, s in enumerate(atlas._ids)}
        atlas._xy = np.array(data["xy"], dtype=np.float64).reshape(-1, 2)
        atlas._cluster = np.array(data["cluster"], dtype=np.int64)
        atlas._tags = {k: list(v) for k, v in data["tags"].items()}
        atlas._vectors = _decode(data["vectors"])
        atlas._mean = np.array(data["mean"], dtype=np.float64)
        atlas._components = np.array(data["components"], dtype=np.float64)
        atlas._centroids = np.array(data["centroids"], dtype=np.float64)
        atlas._spacing = float(data["spacing"])
        atlas._fitted_on = int(data.get("fitted_on", 0))  # older caches: refitted on open
        atlas._relabel()
        return atlas


def _encode(matrix: np.ndarray) -> dict:
    data = np.ascontiguousarray(matrix, dtype="<f4")
    return {"shape": list(data.shape), "f32": base64.b64encode(data.tobytes()).decode("ascii")}


def _decode(blob: dict) -> np.ndarray:
    raw = base64.b64decode(blob["f32"])
    return np.frombuffer(raw, dtype="<f4").reshape(blob["shape"]).astype(np.float32)
