"""Prompt → ranked, explained style hits, fused over three views of each LoRA.

Views (each optional): *metadata* (name, description, tags, trigger words: text embedded),
*probes* (images rendered with the LoRA from neutral prompts: image embeddings), *weights* (the
AutoLoRA-style encoder of its low-rank factors). Each view's cosine scores are standardised
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

VIEWS = ("metadata", "probes", "weights")
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
    spread; the fused-score threshold for a hit (in null standard deviations)."""

    null_mean: dict[str, dict[str, float]]
    null_std: dict[str, float]
    threshold: float = 2.5
    duplicate_cosine: float = 0.985

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
    """Scores every style (or an index's candidates) in each view, fuses, thresholds, explains."""

    def __init__(self, embedder: Embedder, records: dict[str, StyleRecord],
                 vectors: dict[str, dict[str, np.ndarray]], calibration: Calibration) -> None:
        self.embedder = embedder
        self.records = records
        self.vectors = vectors  # view → style_id → unit vector
        self.calibration = calibration

    def view_scores(self, queries: np.ndarray) -> dict[str, tuple[list[str], np.ndarray]]:
        """view → (style ids, cosine matrix queries × styles)."""
        out = {}
        for view, table in self.vectors.items():
            if table:
                ids = list(table)
                out[view] = (ids, queries @ np.stack([table[i] for i in ids]).T)
        return out

    def fused(self, prompt: str) -> tuple[list[str], np.ndarray, dict]:
        """Calibrated scores per clause, fused over views: (style ids, clause × style, parts)."""
        parts = clauses(prompt)
        queries = self.embedder.encode_texts(parts)
        ids = sorted(self.records)
        total = np.zeros((len(parts), len(ids)))
        count = np.zeros(len(ids))
        raw: dict[str, dict[str, float]] = {}
        for view, (view_ids, sims) in self.view_scores(queries).items():
            means = self.calibration.null_mean.get(view, {})
            center = np.array([means.get(sid, 0.0) for sid in view_ids])
            z = (sims - center) / self.calibration.null_std.get(view, 1.0)
            column = {sid: j for j, sid in enumerate(view_ids)}
            for j, sid in enumerate(ids):
                if sid in column:
                    total[:, j] += z[:, column[sid]]
                    count[j] += 1
                    raw.setdefault(sid, {})[view] = float(sims[:, column[sid]].max())
        return ids, total / np.maximum(count, 1), {"clauses": parts, "raw": raw}

    def retrieve(self, prompt: str, k: int = 3, family: str | None = None) -> list[StyleHit]:
        """Top-k styles for the prompt, above threshold, de-duplicated, each with its reasons."""
        ids, scores, info = self.fused(prompt)
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
            hits.append(StyleHit(record.style_id, record.name, round(float(best[j]), 3), {
                "clause": info["clauses"][int(best_clause[j])],
                "views": views,
                "matched_words": sorted(prompt_words & set(record.keywords)),
            }))
        return hits

    def _duplicate(self, style_id: str, kept: Sequence[str]) -> bool:
        for view in ("weights", "probes"):
            table = self.vectors.get(view, {})
            if style_id in table and any(
                    o in table and float(table[o] @ table[style_id]) >=
                    self.calibration.duplicate_cosine for o in kept):
                return True
        return False


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
    null_best = np.array([retriever.fused(p)[1].max() for p in null_prompts])
    positive_scores = []
    for prompt, style in positives:
        ids, scores, _ = retriever.fused(prompt)
        positive_scores.append(scores.max(axis=0)[ids.index(style)])
    candidates = np.linspace(0.5, 8.0, 76)
    balanced = [(np.mean(np.array(positive_scores) >= t) + np.mean(null_best < t)) / 2
                for t in candidates]
    retriever.calibration.threshold = float(candidates[int(np.argmax(balanced))])
    return retriever.calibration
