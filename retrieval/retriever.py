"""Prompt → ranked, explained style hits, fused over three views of each LoRA.

Views (each optional): *metadata* (name, description, tags, trigger words: text embedded),
*probes* (images rendered with the LoRA from neutral prompts: image embeddings), *weights* (the
AutoLoRA-style encoder of its low-rank factors), *words* (training-free: the words its
cross-attention deltas react to, `retrieval.word_view`). Each view's cosine scores are standardised
against that view's scores for prompts that ask for no style (its null distribution), then
averaged over the views a style has. A prompt is also split into its clauses ("a red star,
old photograph, with chunky pixels") so that each requested style can win its own clause.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from retrieval.embedders import Embedder
from retrieval.index import IndexVersionMismatch, StyleIndex

VIEWS = ("metadata", "probes", "weights", "words")
_SPLIT = re.compile(r",|;|\bwith\b|\bin the style of\b|\bas\b|\band\b|\blike\b", re.IGNORECASE)
_WORD = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)?")
STOP = {"a", "an", "the", "of", "in", "on", "with", "and", "style", "like", "as", "by", "to",
        "picture", "image", "one", "drawn", "made", "look", "looking", "very"}


@dataclass
class StyleRecord:
    """What retrieval knows of one style: its id, card text and family."""

    style_id: str
    name: str
    family: str
    metadata_text: str = ""
    keywords: list[str] = field(default_factory=list)
    weight_words: list[str] = field(default_factory=list)  # what its weights react to


@dataclass
class StyleHit:
    slug: str
    name: str
    score: float
    reasons: dict

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class Calibration:
    """Per view and style, the mean score of prompts that ask for no style; per view, the
    spread, its weight and its scale (how far above the null mean a requested style scores, in
    null standard deviations); the fused-score threshold for a hit.

    A style's fused score is its views' weighted evidence over what a typical hit would get
    from the same views, so a typical hit scores about 1 whatever views a style has: a nameless
    upload, with no metadata and no weights view, is not outranked by the mere scale of the
    starter styles' stronger views. A calibration saved without scales keeps scale 1: scores
    and threshold in null standard deviations, as before."""

    null_mean: dict[str, dict[str, float]]
    null_std: dict[str, float]
    threshold: float = 2.5
    duplicate_cosine: float = 0.985
    view_weights: dict[str, float] = field(default_factory=dict)  # missing view: weight 1
    view_scale: dict[str, float] = field(default_factory=dict)  # missing view: scale 1

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=1))

    @classmethod
    def load(cls, path: Path) -> Calibration:
        return cls(**json.loads(Path(path).read_text()))


def clauses(prompt: str) -> list[str]:
    """The prompt and its clauses (split on commas, 'with', 'and', 'in the style of', ...)."""
    parts = [p.strip() for p in _SPLIT.split(prompt) if p and len(p.strip()) > 2]
    return list(dict.fromkeys([prompt.strip(), *parts]))


def words(text: str) -> set[str]:
    return {w for w in _WORD.findall(text.lower()) if w not in STOP and len(w) > 2}


class StyleRetriever:
    """Scores styles in each view, fuses, thresholds, explains.

    Each view's vectors live in a `StyleIndex` (FAISS). Up to `exhaustive_limit` styles every
    style is scored; past it, each clause's top `candidates` per view are pooled from the
    indexes and only those are scored, so a query stays fast at a million styles."""

    def __init__(self, embedder: Embedder, records: dict[str, StyleRecord],
                 indexes: dict[str, StyleIndex], calibration: Calibration, *,
                 candidates: int = 64, exhaustive_limit: int = 4096) -> None:
        self.embedder = embedder
        self.records = records
        self.indexes = indexes  # view → StyleIndex of unit vectors by style id
        self.calibration = calibration
        self.candidates = candidates
        self.exhaustive_limit = exhaustive_limit
        self._dense: dict[str, tuple[list[str], np.ndarray]] = {}

    @classmethod
    def from_vectors(cls, embedder: Embedder, records: dict[str, StyleRecord],
                     vectors: dict[str, dict[str, np.ndarray]], calibration: Calibration,
                     **options) -> StyleRetriever:
        """A retriever over in-memory view vectors (exact indexes built here)."""
        indexes = {view: index_of(table, embedder.version) for view, table in vectors.items()
                   if table}
        return cls(embedder, records, indexes, calibration, **options)

    # -- library changes -------------------------------------------------------------------
    def add_style(self, record: StyleRecord, vectors: dict[str, np.ndarray]) -> None:
        """Add (or replace) one style and its view vectors."""
        if record.style_id in self.records:
            self.remove_style(record.style_id)
        for view, vector in vectors.items():
            index = self.indexes.get(view)
            if index is None:
                index = self.indexes[view] = StyleIndex(len(vector), self.embedder.version)
            index.add([record.style_id], np.asarray(vector, np.float32)[None])
        self.records[record.style_id] = record
        self._dense.clear()

    def remove_style(self, style_id: str) -> None:
        for index in self.indexes.values():
            if style_id in index:
                index.remove([style_id])
        self.records.pop(style_id, None)
        self._dense.clear()

    def vector(self, view: str, style_id: str) -> np.ndarray | None:
        index = self.indexes.get(view)
        return index.vector(style_id) if index is not None and style_id in index else None

    def save(self, folder: Path) -> None:
        """Each view's index in its own subfolder, saved atomically."""
        for view, index in self.indexes.items():
            index.save(Path(folder) / view)

    @staticmethod
    def load_indexes(folder: Path, embedder_version: str) -> dict[str, StyleIndex]:
        """The saved view indexes built by this embedder (others are skipped: rebuild them)."""
        out = {}
        for view in VIEWS:
            if (Path(folder) / view).is_dir():
                try:
                    out[view] = StyleIndex.load(Path(folder) / view, embedder_version)
                except (FileNotFoundError, IndexVersionMismatch):
                    continue
        return out

    # -- scoring ---------------------------------------------------------------------------
    def _table(self, view: str) -> tuple[list[str], np.ndarray]:
        """All of a view's vectors as one matrix (small libraries; cached until a change)."""
        if view not in self._dense:
            index = self.indexes[view]
            ids = index.ids()
            matrix = (np.stack([index.vector(i) for i in ids]) if ids
                      else np.zeros((0, index.dim), np.float32))
            self._dense[view] = (ids, matrix)
        return self._dense[view]

    def candidate_ids(self, queries: np.ndarray) -> list[str]:
        """Every style, or (large libraries) the union of each view's nearest per clause."""
        if len(self.records) <= self.exhaustive_limit:
            return sorted(self.records)
        found: set[str] = set()
        for index in self.indexes.values():
            for row in index.search(queries, self.candidates):
                found.update(style_id for style_id, _ in row)
        return sorted(found & set(self.records))

    def view_scores(self, queries: np.ndarray, ids: list[str] | None = None
                    ) -> dict[str, tuple[list[str], np.ndarray]]:
        """view → (style ids, cosine matrix queries × styles), over `ids` or every style."""
        out = {}
        for view, index in self.indexes.items():
            if not len(index):
                continue
            if ids is None or len(self.records) <= self.exhaustive_limit:
                view_ids, matrix = self._table(view)
            else:
                view_ids = [i for i in ids if i in index]
                if not view_ids:
                    continue
                matrix = np.stack([index.vector(i) for i in view_ids])
            out[view] = (view_ids, queries @ matrix.T)
        return out

    def fused(self, prompt: str) -> tuple[list[str], np.ndarray, dict]:
        """Calibrated scores per clause, fused over views: (style ids, clause × style, parts)."""
        parts = clauses(prompt)
        queries = self.embedder.encode_texts(parts)
        ids = self.candidate_ids(queries)
        total = np.zeros((len(parts), len(ids)))
        count = np.zeros(len(ids))
        raw: dict[str, dict[str, float]] = {}
        position = {sid: j for j, sid in enumerate(ids)}
        for view, (view_ids, sims) in self.view_scores(queries, ids).items():
            z = (sims - self._null_means(view, view_ids)) / self.calibration.null_std.get(view, 1.0)
            weight = self.calibration.view_weights.get(view, 1.0)
            typical_hit = weight * self.calibration.view_scale.get(view, 1.0)
            for column, sid in enumerate(view_ids):
                j = position.get(sid)
                if j is None:
                    continue
                total[:, j] += weight * z[:, column]
                count[j] += typical_hit
                raw.setdefault(sid, {})[view] = float(sims[:, column].max())
        return ids, total / np.maximum(count, 1), {"clauses": parts, "raw": raw}

    def _null_means(self, view: str, ids: list[str]) -> np.ndarray:
        """Per style, its mean score on style-free prompts; a new style gets the view's median."""
        means = self.calibration.null_mean.get(view, {})
        default = float(np.median(list(means.values()))) if means else 0.0
        return np.array([means.get(sid, default) for sid in ids])

    def retrieve(self, prompt: str, k: int = 3, family: str | None = None) -> list[StyleHit]:
        """Top-k styles for the prompt, above threshold, de-duplicated, each with its reasons."""
        ids, scores, info = self.fused(prompt)
        if not ids:
            return []
        best_clause = scores.argmax(axis=0)
        best = scores.max(axis=0)
        prompt_words = words(prompt)
        hits: list[StyleHit] = []
        for j in np.argsort(-best):
            record = self.records[ids[j]]
            if best[j] < self.calibration.threshold or len(hits) >= k:
                break
            if family and record.family not in (family, "unknown"):
                continue
            if self._duplicate(record.style_id, [h.slug for h in hits]):
                continue
            views = {v: round(s, 4) for v, s in info["raw"].get(record.style_id, {}).items()}
            reasons = {"clause": info["clauses"][int(best_clause[j])], "views": views,
                       "matched_words": sorted(prompt_words & set(record.keywords))}
            if "words" in views and record.weight_words:
                reasons["weights_react_to"] = record.weight_words
            hits.append(StyleHit(record.style_id, record.name, round(float(best[j]), 3),
                                 reasons))
        return hits

    def _duplicate(self, style_id: str, kept: Sequence[str]) -> bool:
        for view in ("weights", "probes"):
            mine = self.vector(view, style_id)
            if mine is None:
                continue
            for other in kept:
                theirs = self.vector(view, other)
                if theirs is not None and float(theirs @ mine) >= \
                        self.calibration.duplicate_cosine:
                    return True
        return False


def index_of(table: dict[str, np.ndarray], embedder_version: str) -> StyleIndex:
    """An index holding one view's vectors."""
    ids = list(table)
    index = StyleIndex(len(table[ids[0]]), embedder_version)
    index.add(ids, np.stack([table[i] for i in ids]).astype(np.float32))
    return index


def calibrate(retriever: StyleRetriever, null_prompts: Sequence[str],
              positives: Sequence[tuple[str, str]]) -> Calibration:
    """Fit the null statistics on style-free prompts, then the threshold that best separates
    positives (prompt, style) from nulls. Use prompts disjoint from any evaluation set."""
    queries = retriever.embedder.encode_texts(list(null_prompts))
    means: dict[str, dict[str, float]] = {}
    stds: dict[str, float] = {}
    for view, (ids, sims) in retriever.view_scores(queries).items():
        means[view] = {sid: float(sims[:, j].mean()) for j, sid in enumerate(ids)}
        stds[view] = float((sims - sims.mean(axis=0)).std()) + 1e-6
    retriever.calibration = Calibration(means, stds, threshold=0.0)
    retriever.calibration.view_weights, retriever.calibration.view_scale = view_statistics(
        retriever, null_prompts, positives)
    return fit_threshold(retriever, null_prompts, positives)


def fit_threshold(retriever: StyleRetriever, null_prompts: Sequence[str],
                  positives: Sequence[tuple[str, str]]) -> Calibration:
    """The fused-score threshold that best separates positives from nulls, on the indexes as
    they will be served (refit it after removing a view's entries)."""
    null_best = np.array([retriever.fused(p)[1].max() for p in null_prompts])
    positive_scores = []
    for prompt, style in positives:
        ids, scores, _ = retriever.fused(prompt)
        positive_scores.append(scores.max(axis=0)[ids.index(style)])
    candidates = np.linspace(0.02, 2.0, 100) if retriever.calibration.view_scale else \
        np.linspace(0.5, 8.0, 76)  # in typical hits, or in null standard deviations
    balanced = np.array([(np.mean(np.array(positive_scores) >= t) + np.mean(null_best < t)) / 2
                         for t in candidates])
    retriever.calibration.threshold = plateau_middle(candidates, balanced)
    return retriever.calibration


def plateau_middle(candidates: np.ndarray, accuracy: np.ndarray) -> float:
    """The middle of the run of candidates around the first best accuracy: with a few hundred
    calibration prompts many thresholds tie, and the lowest of them sits right on the nulls'
    edge, where prompts unlike the calibration's spill over it."""
    first = int(np.argmax(accuracy))
    last = first
    while last + 1 < len(accuracy) and accuracy[last + 1] >= accuracy[first] - 1e-9:
        last += 1
    return float(candidates[(first + last) // 2])


def view_statistics(retriever: StyleRetriever, null_prompts: Sequence[str],
                    positives: Sequence[tuple[str, str]]
                    ) -> tuple[dict[str, float], dict[str, float]]:
    """Per view, how well it separates a requested style from style-free prompts (d′ of its
    standardised scores, floored at 0.05), so a weak view cannot drown a strong one; and its
    scale: how far above the null mean a requested style scores, in null standard deviations
    (floored at 0.5)."""
    calibration = retriever.calibration
    weights, scales = {}, {}
    for view in retriever.indexes:
        alone = StyleRetriever(retriever.embedder, retriever.records,
                               {view: retriever.indexes[view]}, calibration)
        nulls = np.concatenate([alone.fused(p)[1].ravel() for p in null_prompts])
        hits = []
        for prompt, style in positives:
            ids, scores, _ = alone.fused(prompt)
            if style in ids:
                hits.append(scores.max(axis=0)[ids.index(style)])
        if not hits:
            continue
        spread = np.sqrt((np.var(hits) + np.var(nulls)) / 2) + 1e-6
        weights[view] = round(max(0.05, float((np.mean(hits) - nulls.mean()) / spread)), 4)
        scales[view] = round(max(0.5, float(np.mean(hits) - nulls.mean())), 4)
    return weights, scales
