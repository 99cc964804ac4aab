"""StyleIndex on seeded tiny embeddings: search, remove/update, save/load, crashes, HNSW removal."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from retrieval import index as index_module
from retrieval.index import IndexVersionMismatch, StyleIndex

DIM = 16
REPO = Path(__file__).resolve().parents[1]


def embeddings(n: int, seed: int = 0, dim: int = DIM) -> tuple[list[str], np.ndarray]:
    """n seeded vectors in 8 clusters (not normalised: the index must do it)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((8, dim))
    x = centres[rng.integers(0, 8, n)] + 0.3 * rng.standard_normal((n, dim))
    return [f"s{i}" for i in range(n)], (x * rng.uniform(0.5, 3, (n, 1))).astype(np.float32)


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def built(kind: str = "auto", n: int = 60, **options) -> tuple[StyleIndex, list[str], np.ndarray]:
    ids, x = embeddings(n)
    index = StyleIndex(DIM, "emb-v1", kind, **options)
    index.add(ids, x)
    return index, ids, x


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_add_search_right_id_first_with_its_cosine(kind):
    index, ids, x = built(kind, n=200)
    assert len(index) == 200 and "s5" in index and "nope" not in index and index.ids() == ids
    hits = index.search(x[:20] * 7.0, k=5)
    assert [row[0][0] for row in hits] == ids[:20]
    assert all(abs(row[0][1] - 1.0) < 1e-5 for row in hits)
    exact = unit(x) @ unit(x[3])
    top = index.search(x[3], k=3)[0]
    assert [s for s, _ in top] == [ids[i] for i in np.argsort(-exact)[:3]]
    np.testing.assert_allclose([c for _, c in top], np.sort(exact)[::-1][:3], atol=1e-5)
    np.testing.assert_allclose(index.vector("s7"), unit(x[7]), atol=1e-6)


def test_k_larger_than_size_and_empty_index():
    index, ids, x = built("flat", n=5)
    hits = index.search(x[0], k=50)[0]
    assert len(hits) == 5 and sorted(s for s, _ in hits) == sorted(ids)
    assert [c for _, c in hits] == sorted((c for _, c in hits), reverse=True)
    assert StyleIndex(DIM, "emb-v1").search(x[:2], k=3) == [[], []]


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_remove_and_update(kind):
    index, _, x = built(kind, n=100)
    index.remove(["s1", "s2"])
    assert len(index) == 98 and "s1" not in index
    found = {s for row in index.search(x[:10], k=100) for s, _ in row}
    assert not found & {"s1", "s2"} and len(found) == 98
    new = -x[50]
    index.update(["s3"], new[None])
    assert len(index) == 98
    assert index.search(new, k=1)[0][0][0] == "s3"
    np.testing.assert_allclose(index.vector("s3"), unit(new), atol=1e-6)
    index.add(["s1"], x[1][None])  # a removed id may come back
    assert index.search(x[1], k=1)[0][0] == ("s1", pytest.approx(1.0, abs=1e-5))


def test_hnsw_removals_never_return_removed_ids():
    index, ids, x = built("hnsw", n=400, rebuild_fraction=0.5)
    rng = np.random.default_rng(1)
    removed: set[str] = set()
    for step in range(6):  # tombstones pile up, then pass the fraction and force a rebuild
        batch = [s for s in rng.choice(ids, 40, replace=False).tolist() if s not in removed]
        index.remove(batch)
        removed.update(batch)
        rows = index.search(x, k=10)
        assert all(s not in removed for row in rows for s, _ in row), step
        assert all(len(row) == 10 for row in rows)
        live = [i for i, s in enumerate(ids) if s not in removed]
        assert [rows[i][0][0] for i in live] == [ids[i] for i in live]
    assert len(index) == 400 - len(removed)
    everything = index.search(x[0], k=1000)[0]
    assert {s for s, _ in everything} == set(ids) - removed


def test_auto_switches_to_hnsw_past_the_threshold():
    index, ids, x = built("auto", n=60, threshold=50)
    assert index.structure == "hnsw" and len(index) == 60
    small = StyleIndex(DIM, "emb-v1", threshold=50)
    small.add(ids[:40], x[:40])
    assert small.structure == "flat"
    small.add(ids[40:], x[40:])
    assert small.structure == "hnsw"
    assert [r[0][0] for r in small.search(x, 1)] == ids
    assert StyleIndex.structure_for(10_000) == "flat" and StyleIndex.structure_for(10**6) == "hnsw"


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_save_load_round_trip(tmp_path, kind):
    index, _, x = built(kind, n=150)
    index.remove(["s4"])
    folder = index.save(tmp_path / "idx")
    assert sorted(p.name for p in folder.iterdir()) == ["ids.json", "index.faiss"]
    meta = json.loads((folder / "ids.json").read_text())
    assert (meta["dim"], meta["embedder_version"], meta["count"]) == (DIM, "emb-v1", 149)
    assert meta["format_version"] == index_module.FORMAT_VERSION and meta["kind"] == kind
    loaded = StyleIndex.load(folder, expected_embedder_version="emb-v1")
    assert loaded.ids() == index.ids() and loaded.structure == index.structure
    assert loaded.search(x, k=5) == index.search(x, k=5)
    np.testing.assert_array_equal(loaded.vector("s9"), index.vector("s9"))
    loaded.add(["extra"], x[4][None])  # keeps working after a load
    assert loaded.search(x[4], 1)[0][0][0] == "extra" and "s4" not in loaded
    assert list(tmp_path.iterdir()) == [folder]


def test_empty_ivf_round_trip(tmp_path):
    StyleIndex(DIM, "v", "ivf").save(tmp_path / "e")
    loaded = StyleIndex.load(tmp_path / "e")
    assert len(loaded) == 0 and loaded.search(np.ones(DIM), 3) == [[]]


def test_version_mismatch_raises_and_load_or_rebuild_rebuilds(tmp_path):
    index, ids, x = built("flat", n=30)
    index.save(tmp_path / "idx")
    with pytest.raises(IndexVersionMismatch, match="'emb-v1'.*'emb-v2'"):
        StyleIndex.load(tmp_path / "idx", expected_embedder_version="emb-v2")
    assert issubclass(IndexVersionMismatch, ValueError)
    calls = []

    def rebuild():
        calls.append(1)
        return ids[:10], x[:10] * 2

    same = StyleIndex.load_or_rebuild(tmp_path / "idx", "emb-v1", rebuild)
    assert len(same) == 30 and not calls
    fresh = StyleIndex.load_or_rebuild(tmp_path / "idx", "emb-v2", rebuild)
    assert len(fresh) == 10 and calls == [1] and fresh.embedder_version == "emb-v2"
    assert len(StyleIndex.load(tmp_path / "idx", expected_embedder_version="emb-v2")) == 10
    missing = StyleIndex.load_or_rebuild(tmp_path / "none", "emb-v2", rebuild, kind="hnsw")
    assert missing.structure == "hnsw" and len(calls) == 2
    with pytest.raises(FileNotFoundError):
        StyleIndex.load(tmp_path / "nothing-here")


def test_leftover_tmp_and_old_folders_are_ignored_and_cleaned(tmp_path):
    index, ids, _ = built("flat", n=20)
    folder = index.save(tmp_path / "idx")
    dead = 99_999_999  # above Linux's pid_max: no such process
    partial = tmp_path / f"idx.tmp-{dead}"
    partial.mkdir()
    (partial / "index.faiss").write_bytes(b"half a file")
    stale_old = tmp_path / f"idx.old-{dead}"
    StyleIndex(DIM, "emb-v1").save(stale_old)  # a complete but older copy beside a live folder
    loaded = StyleIndex.load(folder)
    assert loaded.ids() == ids
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx"]


def test_crash_between_the_two_renames_recovers_the_new_index(tmp_path, monkeypatch):
    index, _, x = built("flat", n=20)
    index.save(tmp_path / "idx")
    index.add(["new"], x[0][None])
    real_replace, calls = os.replace, []

    def crash_on_second(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise KeyboardInterrupt("killed")
        real_replace(src, dst)

    monkeypatch.setattr(index_module.os, "replace", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        index.save(tmp_path / "idx")
    monkeypatch.undo()
    assert not (tmp_path / "idx").exists()  # only idx.old-<pid> (old) and idx.tmp-<pid> (new)
    assert "new" in StyleIndex.load(tmp_path / "idx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx"]


def test_crash_while_writing_keeps_the_old_index(tmp_path, monkeypatch):
    index, _, x = built("flat", n=20)
    index.save(tmp_path / "idx")
    index.add(["new"], x[0][None])
    monkeypatch.setattr(index_module.json, "dump", lambda *a, **k: (_ for _ in ()).throw(
        KeyboardInterrupt("killed")))
    with pytest.raises(KeyboardInterrupt):
        index.save(tmp_path / "idx")
    monkeypatch.undo()
    loaded = StyleIndex.load(tmp_path / "idx")
    assert "new" not in loaded and len(loaded) == 20
    # only an old copy survives (its tmp never completed): it is recovered
    os.rename(tmp_path / "idx", tmp_path / "idx.old-99999999")
    (tmp_path / "idx.tmp-99999998").mkdir()
    assert len(StyleIndex.load(tmp_path / "idx")) == 20


CHILD = """
import sys, numpy as np
from retrieval.index import StyleIndex
x = np.random.default_rng(0).standard_normal((3000, 32)).astype(np.float32)
for n in range(100, 3000, 7):
    index = StyleIndex(32, "v")
    index.add([f"s{i}" for i in range(n)], x[:n])
    index.save(sys.argv[1])
    if n == 100:
        print("saved once", flush=True)
"""


def test_kill_9_during_saves_leaves_a_complete_index(tmp_path):
    folder = tmp_path / "idx"
    for delay in (0.05, 0.2, 0.45):
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(folder)], cwd=REPO,
                                 stdout=subprocess.PIPE, text=True)
        assert child.stdout.readline().strip() == "saved once"
        time.sleep(delay)
        os.kill(child.pid, signal.SIGKILL)  # somewhere in a later save (or between two)
        child.wait()
        child.stdout.close()
        loaded = StyleIndex.load(folder)
        assert len(loaded) >= 100 and (len(loaded) - 100) % 7 == 0
        assert loaded.search(np.ones(32), 3)[0] and list(tmp_path.iterdir()) == [folder]


def test_validation_errors_name_the_problem():
    index, _, x = built("flat", n=10)
    with pytest.raises(ValueError, match="dim 8, the index has dim 16"):
        index.add(["z"], np.ones((1, 8)))
    with pytest.raises(ValueError, match="duplicate id 's3'.*already in the index"):
        index.add(["s3"], x[:1])
    with pytest.raises(ValueError, match="duplicate id 'z' in the batch"):
        index.add(["z", "z"], x[:2])
    with pytest.raises(KeyError, match="unknown id 'zz'"):
        index.remove(["s1", "zz"])
    assert "s1" in index  # nothing removed
    with pytest.raises(KeyError, match="unknown id 'zz'"):
        index.update(["zz"], x[:1])
    with pytest.raises(ValueError, match="expected 2 vectors"):
        index.add(["a", "b"], x[:3])
    with pytest.raises(ValueError, match="zero vector for 'a'"):
        index.add(["a"], np.zeros((1, DIM)))
    with pytest.raises(ValueError, match="NaN"):
        index.add(["a"], np.full((1, DIM), np.nan))
    with pytest.raises(ValueError, match="dim 16"):
        index.search(np.ones(5), 3)
    with pytest.raises(ValueError, match="k must be positive"):
        index.search(x[0], 0)
    with pytest.raises(TypeError, match="sequence of strings"):
        index.remove("s1")
    with pytest.raises(ValueError, match="kind must be one of"):
        StyleIndex(DIM, "v", kind="lsh")
    assert len(index) == 10
