"""Recommendations ("styles you may like"): content-based, a popularity baseline, and a
leave-one-out evaluation on simulated user histories.

The recommender scores each candidate style by its similarity to the styles a user liked or
used (mean of the closest liked style's cosine and the mean cosine to all liked styles, on
vectors centred on the library mean, so the direction every style shares does not count), plus
a popularity prior whose weight can be fitted on usage histories (`fit_prior`).

The simulated users (`simulate_histories`, see `UserModel`) do not see the recommender's
vectors: they choose from their own `features` (in the benchmark, the styles' tags), so the
evaluation asks whether the vectors recover what people like, not whether they agree with
themselves.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

Recommender = Callable[[Sequence[str], Mapping[str, int]], Sequence[str]]
PRIOR_CANDIDATES = (0.0, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 64.0)
# What fit_prior picks on histories of the default UserModel over the starter library (seeds
# kept apart from the benchmark's); with no usage yet the prior has nothing to weigh anyway.
DEFAULT_PRIOR = 4.0


@dataclass(frozen=True)
class Recommendation:
    id: str
    score: float
    because: str | None  # the liked style it is closest to (None: chosen for popularity)


class StyleRecommender:
    """Content-based recommendations over a fixed set of style vectors (reuse it per library)."""

    def __init__(self, vectors: Mapping[str, np.ndarray], prior: float = DEFAULT_PRIOR,
                 centre: bool = True) -> None:
        """`prior`: weight of log popularity (scaled to [0, 1]) added to the similarity;
        `fit_prior` picks it from usage histories."""
        self.ids = sorted(vectors)
        self._row = {s: i for i, s in enumerate(self.ids)}
        self.prior = prior
        matrix = np.stack([np.asarray(vectors[s], dtype=np.float64) for s in self.ids]) \
            if self.ids else np.zeros((0, 1))
        if centre and len(self.ids) > 1:
            matrix = matrix - matrix.mean(0)
        self._unit = matrix / np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)

    def recommend(self, liked: Sequence[str], popularity: Mapping[str, int] | None = None,
                  k: int = 5, exclude: Collection[str] | None = None,
                  prior: float | None = None) -> list[Recommendation]:
        """The k best styles for someone who liked `liked` (never those in `exclude`, which
        defaults to `liked`). Liked ids without a vector are ignored; with none left, the
        popularity baseline answers."""
        skip = set(liked if exclude is None else exclude)
        known = [self._row[s] for s in dict.fromkeys(liked) if s in self._row]
        if not known:
            return popularity_baseline(popularity or {}, k, skip, items=self.ids)
        sims = self._unit @ self._unit[known].T  # (styles, liked)
        weight = self.prior if prior is None else prior
        scores = 0.5 * sims.max(1) + 0.5 * sims.mean(1) + weight * _log_share(
            popularity or {}, self.ids)
        order = [i for i in np.lexsort((np.arange(len(self.ids)), -scores))
                 if self.ids[i] not in skip]
        return [Recommendation(self.ids[i], float(scores[i]), self.ids[known[sims[i].argmax()]])
                for i in order[:k]]

    def fit_prior(self, histories: Sequence[Sequence[str]], k: int = 5, seed: int = 0,
                  candidates: Sequence[float] = PRIOR_CANDIDATES) -> float:
        """Set `prior` to the candidate with the best leave-one-out hit rate@k on `histories`
        (usage logs: in an evaluation, only the part it does not test on); ties: the smaller."""
        given, hidden = split_leave_one_out(histories, seed)
        rates = [hit_rate(given, hidden, self.ranker(prior), k).hit_rate for prior in candidates]
        self.prior = float(candidates[int(np.argmax(rates))])
        return self.prior

    def ranker(self, prior: float | None = None) -> Recommender:
        """This recommender as the (given, popularity) → ids function the evaluation takes."""
        return lambda given, popularity: [
            r.id for r in self.recommend(given, popularity, k=len(self.ids), prior=prior)]


def _log_share(popularity: Mapping[str, int], ids: Sequence[str]) -> np.ndarray:
    """log(1 + count) / log(1 + max count) per style: the prior, in [0, 1]."""
    counts = np.array([max(popularity.get(s, 0), 0) for s in ids], dtype=np.float64)
    top = counts.max() if len(counts) else 0.0
    return np.log1p(counts) / math.log1p(top) if top > 0 else np.zeros(len(ids))


def recommend(liked: Sequence[str], vectors: Mapping[str, np.ndarray],
              popularity: Mapping[str, int] | None = None, k: int = 5,
              exclude: Collection[str] | None = None, prior: float = DEFAULT_PRIOR
              ) -> list[Recommendation]:
    """One-off StyleRecommender(vectors, prior).recommend(...); keep a StyleRecommender when
    recommending repeatedly over the same library."""
    return StyleRecommender(vectors, prior).recommend(liked, popularity, k, exclude)


def popularity_baseline(popularity: Mapping[str, int], k: int = 5,
                        exclude: Collection[str] = (), items: Sequence[str] | None = None
                        ) -> list[Recommendation]:
    """The k most used styles not in `exclude` (ties by id); `items` adds never-used styles."""
    skip = set(exclude)
    pool = set(popularity) | set(items or ())
    ranked = sorted((s for s in pool if s not in skip), key=lambda s: (-popularity.get(s, 0), s))
    return [Recommendation(s, float(popularity.get(s, 0)), None) for s in ranked[:k]]


# --------------------------------------------------------------------------- simulated users


@dataclass(frozen=True)
class UserModel:
    """How simulated users choose styles.

    Every style gets a popularity weight 1 / rank^zipf_exponent, ranks drawn at random
    (independent of content). A user has 1 or 2 interests (equally likely), each centred on a
    style drawn uniformly, with mixture weights drawn from Dirichlet(1, 1). Each pick first
    draws an interest by its weight, then a style not yet picked with probability
    ∝ popularity weight × exp(taste_strength × cosine(interest's features, style's features)).
    History length: min_history + Poisson(extra_history_mean), at most half the library."""

    zipf_exponent: float = field(default=1.0, metadata={"help": "1: classic Zipf"})
    taste_strength: float = field(default=5.0, metadata={"help": "0: taste ignored"})
    max_interests: int = 2
    min_history: int = 2
    extra_history_mean: float = 3.0


def simulate_histories(features: Mapping[str, np.ndarray], n_users: int, seed: int = 0,
                       model: UserModel | None = None) -> tuple[list[list[str]], dict[str, float]]:
    """(histories, popularity weight per style): `n_users` histories of distinct styles,
    in the order picked, drawn as UserModel describes."""
    model = model or UserModel()
    rng = np.random.default_rng(seed)
    ids = sorted(features)
    unit = np.stack([np.asarray(features[s], dtype=np.float64) for s in ids])
    unit /= np.maximum(np.linalg.norm(unit, axis=1, keepdims=True), 1e-12)
    ranks = rng.permutation(len(ids)) + 1
    weight = 1.0 / ranks.astype(np.float64) ** model.zipf_exponent
    longest = max(model.min_history, len(ids) // 2)
    histories = []
    for _ in range(n_users):
        centres = rng.choice(len(ids), int(rng.integers(1, model.max_interests + 1)),
                             replace=False)
        mix = rng.dirichlet(np.ones(len(centres)))
        appeal = weight[None, :] * np.exp(model.taste_strength * (unit[centres] @ unit.T))
        length = min(longest, model.min_history + int(rng.poisson(model.extra_history_mean)))
        histories.append(_picks(appeal, mix, length, rng, ids))
    return histories, {s: float(w) for s, w in zip(ids, weight, strict=True)}


def _picks(appeal: np.ndarray, mix: np.ndarray, length: int, rng: np.random.Generator,
           ids: Sequence[str]) -> list[str]:
    """`length` distinct styles: each pick an interest by `mix`, then a style by its appeal."""
    taken = np.zeros(appeal.shape[1], dtype=bool)
    out = []
    for _ in range(length):
        row = appeal[rng.choice(len(mix), p=mix)] * ~taken
        pick = int(rng.choice(len(row), p=row / row.sum()))
        taken[pick] = True
        out.append(ids[pick])
    return out


# --------------------------------------------------------------------------- evaluation


@dataclass(frozen=True)
class HitRate:
    hit_rate: float
    hits: int
    users: int  # users evaluated (histories of at least 2 styles)


def split_leave_one_out(histories: Sequence[Sequence[str]], seed: int = 0
                        ) -> tuple[list[list[str]], list[str]]:
    """(what each user keeps, the one style hidden from them), for histories of ≥ 2 styles."""
    rng = np.random.default_rng(seed)
    given, hidden = [], []
    for history in histories:
        if len(history) < 2:
            continue
        index = int(rng.integers(len(history)))
        hidden.append(history[index])
        given.append([s for i, s in enumerate(history) if i != index])
    return given, hidden


def hit_rate(given: Sequence[Sequence[str]], hidden: Sequence[str], recommender: Recommender,
             k: int = 5) -> HitRate:
    """Share of users whose hidden style is in the recommender's top k (styles it was given
    never count); popularity is counted over everyone's given styles only."""
    popularity = Counter(s for styles in given for s in styles)
    hits = sum(target in [s for s in recommender(styles, popularity) if s not in styles][:k]
               for styles, target in zip(given, hidden, strict=True))
    return HitRate(hits / len(given) if given else 0.0, hits, len(given))


def leave_one_out_hit_rate(histories: Sequence[Sequence[str]], recommender: Recommender,
                           k: int = 5, seed: int = 0) -> HitRate:
    """Hide one random style of each history; a hit when it is in the recommender's top k
    given the user's other styles and popularity over everyone's other styles."""
    return hit_rate(*split_leave_one_out(histories, seed), recommender, k)
