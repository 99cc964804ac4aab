"""Recommendations: content scoring, popularity baseline, simulated users, leave-one-out."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from styles.recommend import (
    StyleRecommender,
    UserModel,
    hit_rate,
    leave_one_out_hit_rate,
    popularity_baseline,
    recommend,
    simulate_histories,
    split_leave_one_out,
)


def grouped(groups: int = 6, per_group: int = 6, dim: int = 16, noise: float = 0.15, seed=0):
    """Unit vectors in `groups` tight groups; ids 'g{group}-{member}'."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((groups, dim))
    vectors = {}
    for g in range(groups):
        for j in range(per_group):
            v = centres[g] + noise * rng.standard_normal(dim)
            vectors[f"g{g}-{j}"] = v / np.linalg.norm(v)
    return vectors


def axes() -> dict[str, np.ndarray]:
    """Hand-made 3-D styles: two near x, one between x and y, two near y, one on z."""
    raw = {"x1": [1, 0.05, 0], "x2": [1, -0.05, 0], "xy": [1, 1, 0], "y1": [0.05, 1, 0],
           "y2": [-0.05, 1, 0], "z": [0, 0, 1]}
    return {k: np.array(v, dtype=np.float64) / np.linalg.norm(v) for k, v in raw.items()}


def test_recommends_the_closest_styles_and_says_why():
    found = recommend(["x1"], axes(), k=3, prior=0.0)
    assert [r.id for r in found][:2] == ["x2", "xy"]
    assert all(r.id != "x1" for r in found) and found[0].because == "x1"
    two = recommend(["x1", "y1"], axes(), k=3, prior=0.0)
    assert {r.id for r in two[:3]} == {"x2", "y2", "xy"}
    assert {r.because for r in two if r.id in ("x2", "y2")} == {"x1", "y1"}
    scores = [r.score for r in two]
    assert scores == sorted(scores, reverse=True)


def test_popularity_prior_breaks_near_ties():
    vectors = axes()
    plain = [r.id for r in recommend(["xy"], vectors, k=4, prior=0.0)]
    assert set(plain[:4]) == {"x1", "x2", "y1", "y2"}
    popular = [r.id for r in recommend(["xy"], vectors, {"y2": 50, "x1": 1}, k=4, prior=0.5)]
    assert popular[0] == "y2"
    assert "z" not in popular  # a small prior does not beat a real difference in content


def test_exclude_and_unknown_liked_styles():
    vectors = axes()
    found = recommend(["x1"], vectors, k=10, exclude={"x1", "x2"})
    assert {r.id for r in found} == {"xy", "y1", "y2", "z"}
    fallback = recommend(["not-in-library"], vectors, {"z": 3, "y1": 5}, k=3)
    assert [r.id for r in fallback] == ["y1", "z", "x1"]  # popularity, then by id
    assert all(r.because is None for r in fallback)


def test_popularity_baseline():
    popularity = {"a": 5, "b": 9, "c": 5, "d": 0}
    assert [r.id for r in popularity_baseline(popularity, 3)] == ["b", "a", "c"]
    assert [r.id for r in popularity_baseline(popularity, 3, exclude={"b"})] == ["a", "c", "d"]
    assert [r.id for r in popularity_baseline({}, 2, items=["y", "x"])] == ["x", "y"]


def test_simulated_histories_are_reproducible_and_plausible():
    vectors = grouped()
    histories, weight = simulate_histories(vectors, 300, seed=3)
    again, _ = simulate_histories(vectors, 300, seed=3)
    other, _ = simulate_histories(vectors, 300, seed=4)
    assert histories == again and histories != other
    model = UserModel()
    assert all(len(h) == len(set(h)) >= model.min_history for h in histories)
    assert max(len(h) for h in histories) <= len(vectors) // 2
    assert sorted(weight.values(), reverse=True)[:2] == [1.0, 0.5]  # Zipf over ranks


def test_taste_and_popularity_both_shape_histories():
    vectors = grouped()

    def same_group_share(strength: float) -> float:
        histories, _ = simulate_histories(vectors, 200, seed=0, model=UserModel(
            taste_strength=strength, max_interests=1, zipf_exponent=0.0))
        pairs = [(a, b) for h in histories for i, a in enumerate(h) for b in h[i + 1:]]
        return np.mean([a.split("-")[0] == b.split("-")[0] for a, b in pairs])

    assert same_group_share(0.0) < 0.25 < 0.6 < same_group_share(8.0)  # chance: 5/35
    histories, weight = simulate_histories(vectors, 300, seed=1, model=UserModel(
        taste_strength=0.0, zipf_exponent=1.5))
    counts = Counter(s for h in histories for s in h)
    top = max(weight, key=weight.get)
    bottom = min(weight, key=weight.get)
    assert counts[top] > 5 * max(counts[bottom], 1)


def test_leave_one_out_hides_one_item_and_counts_hits():
    histories = [["a", "b"], ["a", "c"], ["b", "c", "d"], ["e"]]
    given, hidden = split_leave_one_out(histories, seed=0)
    assert len(given) == 3  # a history of one style cannot be evaluated
    for g, h, full in zip(given, hidden, histories[:3], strict=True):
        assert sorted([*g, h]) == sorted(full) and h not in g

    def oracle(styles, popularity):  # knows the answer (by peeking): every hit
        return [h for g, h in zip(given, hidden, strict=True) if g == list(styles)]

    seen = []

    def spy(styles, popularity):
        seen.append(dict(popularity))
        return list(styles)  # only styles it was given: they never count

    assert hit_rate(given, hidden, oracle).hit_rate == 1.0
    assert hit_rate(given, hidden, spy).hits == 0
    counted = Counter(s for g in given for s in g)
    assert seen[0] == counted  # the hidden styles are not in the popularity counts
    assert leave_one_out_hit_rate(histories, oracle, seed=0).users == 3


def test_fit_prior_follows_what_drives_the_histories():
    vectors = grouped()
    by_taste, _ = simulate_histories(vectors, 300, seed=0, model=UserModel(
        taste_strength=12.0, zipf_exponent=0.0))
    by_popularity, _ = simulate_histories(vectors, 300, seed=0, model=UserModel(
        taste_strength=0.0, zipf_exponent=1.5))
    assert StyleRecommender(vectors).fit_prior(by_taste) <= 0.5
    assert StyleRecommender(vectors).fit_prior(by_popularity) >= 4.0


def test_content_beats_popularity_when_taste_matters():
    vectors = grouped()
    histories, _ = simulate_histories(vectors, 400, seed=5, model=UserModel(taste_strength=6.0))
    given, hidden = split_leave_one_out(histories, seed=5)
    ours = StyleRecommender(vectors)
    ours.fit_prior(given, seed=6)  # fitted on what the evaluation does not hide
    pop = hit_rate(given, hidden, lambda g, p: [r.id for r in popularity_baseline(p, 5, g)])
    content = hit_rate(given, hidden, ours.ranker())
    assert content.hit_rate > pop.hit_rate + 0.1
    assert content.users == pop.users == len(histories)


@pytest.mark.parametrize("k", [1, 5])
def test_ranker_returns_everything_not_given(k):
    ranker = StyleRecommender(axes()).ranker()
    assert sorted(ranker(["x1"], {})) == ["x2", "xy", "y1", "y2", "z"]
    assert len(recommend(["x1"], axes(), k=k)) == k
