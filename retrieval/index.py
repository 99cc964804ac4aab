"""FAISS vector index of style embeddings: string ids, cosine search, atomic save and load.

The project's one FAISS wrapper (autofaiss convention: indexes from ``faiss.index_factory``, the
index file saved beside its id map). Vectors are L2-normalised on the way in, so the inner product
is the cosine. ``kind``: ``"flat"`` = ``IDMap2,Flat`` (IndexFlatIP under IndexIDMap2, exact);
``"hnsw"`` = ``IDMap2,HNSW32`` (IndexHNSWFlat, M=32, efConstruction=64); ``"ivf"`` =
``IDMap2,IVF<nlist>,Flat`` (nlist ~ 4*sqrt(n), trained at (re)build, retrained after fourfold
growth); ``"auto"`` (default) = exact up to ``threshold`` (50_000) vectors, HNSW beyond.

HNSW is the large-index choice: it needs no training, so later additions do not degrade it (IVF
centroids fit only the vectors present at training); at 1e6 vectors (dim 256) a query costs ~0.4
ms of CPU (p99 < 1 ms) at recall@10 0.97 (benchmarks/results/retrieval_scale.md); vectors stay
unquantised, so ``vector()`` is exact. Its price: ~1.3 kB a vector and a slow build. After each
(re)build efSearch (from 32 up) or nprobe is tuned to the smallest value whose leave-one-out
recall@10 on stored vectors reaches ``target_recall`` + 0.02 (a safety margin). A query whose k
reaches a quarter of the index is answered exhaustively (so k >= len returns every live id).

FAISS HNSW cannot remove: removed FAISS ids become tombstones, skipped inside the search by an
``IDSelectorNot(IDSelectorBatch)`` search parameter (k live results, no over-fetch) and filtered
again against the live id map; past ``rebuild_fraction`` tombstones the index is rebuilt from the
live vectors. IVF uses the same path. ``update`` = removal + addition under a fresh FAISS id.

``save`` swaps folders: it writes ``<folder>.tmp-<pid>``, renames the current folder to
``<folder>.old-<pid>``, renames the new one into place, deletes the old. A crash at any point
leaves a complete old or new index; ``load`` finishes an interrupted swap (the newest complete
copy wins) and deletes leftovers of dead processes. One writer at a time.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import faiss
import numpy as np

FORMAT_VERSION = 1
INDEX_FILE, IDS_FILE = "index.faiss", "ids.json"
KINDS = ("auto", "flat", "hnsw", "ivf")
EF_LADDER = (32, 48, 64, 96, 128, 192, 256, 384, 512)
NPROBE_LADDER = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256)
TUNE_MARGIN, TUNE_SAMPLE = 0.02, 256
OPTIONS = ("threshold", "hnsw_m", "ef_construction", "target_recall", "rebuild_fraction")
STATE = ("structure", "ef_search", "nprobe", "_next", "_tuned_at", "_trained_at")


class IndexVersionMismatch(ValueError):
    """The stored index was built by another embedder version (or file format): rebuild it."""


class StyleIndex:
    """Cosine nearest-neighbour search over L2-normalised vectors keyed by string ids."""

    def __init__(self, dim: int, embedder_version: str, kind: str = "auto", *,
                 threshold: int = 50_000, hnsw_m: int = 32, ef_construction: int = 64,
                 target_recall: float = 0.95, rebuild_fraction: float = 0.2) -> None:
        """An empty index; ``kind`` is one of auto, flat, hnsw, ivf."""
        if int(dim) <= 0:
            raise ValueError(f"dim must be a positive integer, got {dim!r}")
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        self.dim, self.embedder_version, self.kind = int(dim), str(embedder_version), kind
        self.threshold, self.hnsw_m, self.ef_construction = threshold, hnsw_m, ef_construction
        self.target_recall, self.rebuild_fraction = target_recall, rebuild_fraction
        self.structure = "flat" if kind in ("auto", "flat") else kind
        self.ef_search, self.nprobe = 64, 8
        self._ids: dict[str, int] = {}
        self._names: dict[int, str] = {}
        self._tombstones: set[int] = set()
        self._selector: tuple | None = None
        self._next, self._tuned_at, self._trained_at = 0, 0, 0
        self._index = None if self.structure == "ivf" else self._make(self.structure, None)

    def __len__(self) -> int:
        """Number of live ids."""
        return len(self._ids)

    def __contains__(self, style_id: object) -> bool:
        """Whether ``style_id`` is live in the index."""
        return style_id in self._ids

    def ids(self) -> list[str]:
        """The live ids, in insertion order."""
        return list(self._ids)

    def vector(self, style_id: str) -> np.ndarray:
        """The stored (normalised) vector of ``style_id``."""
        self._require_known([style_id])
        return self._index.reconstruct(self._ids[style_id])

    @property
    def faiss_index(self) -> faiss.Index | None:
        """The underlying FAISS index, for diagnostics and benchmarks (do not mutate it)."""
        return self._index

    @staticmethod
    def structure_for(n: int, kind: str = "auto", threshold: int = 50_000) -> str:
        """The structure ``kind`` uses for ``n`` vectors added at once to an empty index."""
        return ("hnsw" if n > threshold else "flat") if kind == "auto" else kind

    def search(self, query: np.ndarray, k: int) -> list[list[tuple[str, float]]]:
        """One list per query row (a 1-D query is one row): up to ``k`` (id, cosine), best first."""
        q = np.asarray(query, dtype=np.float32)
        q = q[None, :] if q.ndim == 1 else q
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise ValueError(f"query has shape {np.shape(query)}; this index has dim {self.dim}: "
                             f"expected ({self.dim},) or (n, {self.dim})")
        if int(k) <= 0:
            raise ValueError(f"k must be positive, got {k!r}")
        q = _normalised(q, [f"query row {i}" for i in range(len(q))])
        kk = min(int(k), len(self))
        if kk == 0 or self._index is None:
            return [[] for _ in range(len(q))]
        if self.structure != "flat" and kk * 4 >= len(self):  # graph search gains nothing here
            scores, labels = self._exhaustive(q, kk)
        else:
            scores, labels = self._index.search(q, kk, params=self._params(kk))
        names = self._names
        return [[(names[i], float(s)) for s, i in zip(srow.tolist(), lrow.tolist(), strict=True)
                 if i in names][:kk] for srow, lrow in zip(scores, labels, strict=True)]

    def add(self, ids: Sequence[str], vectors: np.ndarray) -> None:
        """Add new ids with their vectors; an id already present is an error."""
        ids = _checked_ids(ids)
        for style_id in ids:
            if style_id in self._ids:
                raise ValueError(f"duplicate id {style_id!r}: already in the index (use update)")
        self._insert(ids, self._prepared(ids, vectors))

    def remove(self, ids: Sequence[str]) -> None:
        """Remove ids; if one is unknown, nothing is removed."""
        ids = _checked_ids(ids)
        self._require_known(ids)
        self._drop([self._forget(style_id) for style_id in ids])

    def update(self, ids: Sequence[str], vectors: np.ndarray) -> None:
        """Replace the vectors of existing ids."""
        ids = _checked_ids(ids)
        self._require_known(ids)
        prepared = self._prepared(ids, vectors)
        self._drop([self._forget(style_id) for style_id in ids])
        self._insert(ids, prepared)

    def save(self, folder: Path) -> Path:
        """Write ``index.faiss`` and ``ids.json`` to ``folder`` atomically (folder swap)."""
        folder = Path(folder)
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp, old = (folder.parent / f"{folder.name}.{tag}-{os.getpid()}" for tag in ("tmp", "old"))
        for stale in (tmp, old):
            shutil.rmtree(stale, ignore_errors=True)
        tmp.mkdir()
        index = self._index if self._index is not None else self._make("flat", None)
        faiss.write_index(index, str(tmp / INDEX_FILE))
        _fsync(tmp / INDEX_FILE)
        meta = {"format_version": FORMAT_VERSION, "dim": self.dim, "kind": self.kind,
                "embedder_version": self.embedder_version, "count": len(self),
                "stored": int(index.ntotal), "index_bytes": (tmp / INDEX_FILE).stat().st_size,
                "saved_at": time.time_ns(), "options": {k: getattr(self, k) for k in OPTIONS},
                "state": {k: getattr(self, k) for k in STATE}, "ids": list(self._ids),
                "faiss_ids": list(self._ids.values()), "tombstones": sorted(self._tombstones)}
        with open(tmp / IDS_FILE, "w", encoding="utf-8") as fh:  # written last: marks complete
            json.dump(meta, fh)
            fh.flush()
            os.fsync(fh.fileno())
        _fsync(tmp)
        if folder.exists():
            os.replace(folder, old)
        os.replace(tmp, folder)
        _fsync(folder.parent)
        shutil.rmtree(old, ignore_errors=True)
        _clean_leftovers(folder)
        return folder

    @classmethod
    def load(cls, folder: Path, expected_embedder_version: str | None = None) -> StyleIndex:
        """Read a saved index (finishing an interrupted save first); check its embedder."""
        folder = Path(folder)
        _recover(folder)
        meta = _read_meta(folder)
        if meta is None:
            raise FileNotFoundError(f"no complete saved index at {folder}")
        if meta.get("format_version") != FORMAT_VERSION:
            version = meta.get("format_version")
            raise IndexVersionMismatch(f"index at {folder} has file format {version!r}, this "
                                       f"code reads {FORMAT_VERSION}: rebuild it")
        stored = meta["embedder_version"]
        if expected_embedder_version is not None and stored != expected_embedder_version:
            raise IndexVersionMismatch(f"index at {folder} was built with embedder {stored!r}, "
                                       f"expected {expected_embedder_version!r}: rebuild it")
        out = cls(meta["dim"], stored, meta["kind"], **meta["options"])
        index = faiss.read_index(str(folder / INDEX_FILE))
        if index.d != out.dim or index.ntotal != meta["stored"]:
            raise ValueError(f"index at {folder} is inconsistent with its {IDS_FILE}")
        for key in STATE:
            setattr(out, key, meta["state"][key])
        out._ids = dict(zip(meta["ids"], meta["faiss_ids"], strict=True))
        out._names = {i: s for s, i in out._ids.items()}
        out._tombstones = set(meta["tombstones"])
        out._index = None if out.structure == "ivf" and index.ntotal == 0 else index
        _clean_leftovers(folder)
        return out

    @classmethod
    def load_or_rebuild(cls, folder: Path, embedder_version: str,
                        rebuild: Callable[[], tuple[list[str], np.ndarray]],
                        **options) -> StyleIndex:
        """Load ``folder``; if missing or built by another embedder, rebuild, save and return."""
        try:
            return cls.load(folder, expected_embedder_version=embedder_version)
        except (FileNotFoundError, IndexVersionMismatch):
            pass
        ids, vectors = rebuild()
        vectors = np.asarray(vectors, dtype=np.float32)
        index = cls(options.pop("dim", None) or vectors.shape[-1], embedder_version, **options)
        if len(ids):
            index.add(ids, vectors)
        index.save(folder)
        return index

    def _require_known(self, ids: list[str]) -> None:
        for style_id in ids:
            if style_id not in self._ids:
                raise KeyError(f"unknown id {style_id!r}: not in the index")

    def _prepared(self, ids: list[str], vectors: np.ndarray) -> np.ndarray:
        v = np.asarray(vectors, dtype=np.float32)
        v = v[None, :] if v.ndim == 1 and len(ids) == 1 else v
        if v.ndim != 2 or v.shape[0] != len(ids):
            raise ValueError(f"expected {len(ids)} vectors (one per id) of dim {self.dim}, "
                             f"got an array of shape {v.shape}")
        if v.shape[1] != self.dim:
            raise ValueError(f"vectors have dim {v.shape[1]}, the index has dim {self.dim}")
        return _normalised(v, ids)

    def _forget(self, style_id: str) -> int:
        fid = self._ids.pop(style_id)
        del self._names[fid]
        return fid

    def _make(self, structure: str, train: np.ndarray | None):
        spec = {"flat": "IDMap2,Flat", "hnsw": f"IDMap2,HNSW{self.hnsw_m}"}.get(structure)
        if structure == "ivf":
            spec = f"IDMap2,IVF{max(1, min(int(4 * math.sqrt(len(train))), len(train) // 39))},Flat"
        index = faiss.index_factory(self.dim, spec, faiss.METRIC_INNER_PRODUCT)
        if structure == "hnsw":
            faiss.downcast_index(index.index).hnsw.efConstruction = self.ef_construction
        elif structure == "ivf":
            index.train(train)
            faiss.extract_index_ivf(index).make_direct_map()
        return index

    def _insert(self, ids: list[str], vectors: np.ndarray) -> None:
        fids = np.arange(self._next, self._next + len(ids), dtype=np.int64)
        self._next += len(ids)
        grows = len(self) + len(ids) > self.threshold
        target = "hnsw" if self.kind == "auto" and self.structure == "flat" and grows \
            else self.structure
        stored = 0 if self._index is None else self._index.ntotal
        retrain = target == "ivf" and stored + len(ids) > 4 * max(self._trained_at, 1)
        for style_id, fid in zip(ids, fids.tolist(), strict=True):
            self._ids[style_id], self._names[fid] = fid, style_id
        if self._index is None or target != self.structure or retrain:
            return self._rebuild(target, fids, vectors)
        self._index.add_with_ids(vectors, fids)
        if self.structure != "flat" and len(self) >= 2 * max(self._tuned_at, 1):
            self._tune(*self._live())

    def _drop(self, fids: list[int]) -> None:
        if self.structure == "flat":
            return self._index.remove_ids(np.asarray(fids, dtype=np.int64))
        self._tombstones.update(fids)
        self._selector = None
        if len(self._tombstones) > self.rebuild_fraction * max(self._index.ntotal, 1):
            self._rebuild(self.structure, np.empty(0, np.int64), np.empty((0, self.dim), "f4"))

    def _live(self) -> tuple[np.ndarray, np.ndarray]:
        if self._index is None or self._index.ntotal == 0:
            return np.empty(0, np.int64), np.empty((0, self.dim), np.float32)
        fids = faiss.vector_to_array(self._index.id_map).astype(np.int64)
        vectors = self._index.index.reconstruct_n(0, self._index.ntotal)
        keep = ~np.isin(fids, np.fromiter(self._tombstones, np.int64, len(self._tombstones)))
        return fids[keep], vectors[keep]

    def _rebuild(self, structure: str, fids: np.ndarray, vectors: np.ndarray) -> None:
        live_fids, live_vectors = self._live()
        if len(live_fids):
            fids, vectors = np.concatenate([live_fids, fids]), np.vstack([live_vectors, vectors])
        self.structure, self._tombstones, self._selector = structure, set(), None
        self._index, self._trained_at = None, len(fids)
        if structure != "ivf" or len(fids):
            self._index = self._make(structure, vectors)
            self._index.add_with_ids(vectors, fids)
            self._tune(fids, vectors)

    def _params(self, k: int) -> faiss.SearchParameters | None:
        extra = {}
        if self._tombstones:
            if self._selector is None:
                batch = faiss.IDSelectorBatch(np.fromiter(self._tombstones, np.int64))
                self._selector = (faiss.IDSelectorNot(batch), batch)
            extra["sel"] = self._selector[0]
        if self.structure == "hnsw":
            return faiss.SearchParametersHNSW(efSearch=max(self.ef_search, k), **extra)
        if self.structure == "ivf":
            return faiss.SearchParametersIVF(nprobe=self.nprobe, **extra)
        return faiss.SearchParameters(**extra) if extra else None

    def _exhaustive(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact scores and FAISS ids from an approximate structure (tombstones included)."""
        if self.structure == "ivf":
            params = self._params(k)
            params.nprobe = faiss.extract_index_ivf(self._index).nlist
            return self._index.search(q, k, params=params)
        storage = faiss.downcast_index(self._index.index).storage
        scores, rows = storage.search(q, min(k + len(self._tombstones), storage.ntotal))
        fids = faiss.vector_to_array(self._index.id_map)
        return scores, np.where(rows >= 0, fids[rows], -1)

    def _tune(self, fids: np.ndarray, vectors: np.ndarray) -> None:
        """Smallest efSearch/nprobe reaching the target leave-one-out recall@10."""
        self._tuned_at = len(fids)
        if self.structure == "flat" or len(fids) < 2:
            return
        sample = np.random.default_rng(0).choice(len(fids), min(TUNE_SAMPLE, len(fids)), False)
        k = min(10, len(fids) - 1)
        _, exact = faiss.knn(vectors[sample], vectors, k + 1, metric=faiss.METRIC_INNER_PRODUCT)
        truth = [set([f for f in fids[row[row >= 0]].tolist() if f != fids[s]][:k])
                 for s, row in zip(sample, exact, strict=True)]
        if self.structure == "hnsw":
            attr, ladder = "ef_search", EF_LADDER
        else:
            nlist = faiss.extract_index_ivf(self._index).nlist
            attr, ladder = "nprobe", [p for p in NPROBE_LADDER if p < nlist] + [nlist]
        for value in ladder:
            setattr(self, attr, value)
            _, found = self._index.search(vectors[sample], k + 1, params=self._params(k + 1))
            hits = sum(len(t & set(f.tolist())) for t, f in zip(truth, found, strict=True))
            if hits / (k * len(sample)) >= self.target_recall + TUNE_MARGIN:
                return


def _checked_ids(ids: Sequence[str]) -> list[str]:
    if isinstance(ids, str):
        raise TypeError(f"ids must be a sequence of strings, got the string {ids!r}")
    ids, seen = list(ids), set()
    for style_id in ids:
        if not isinstance(style_id, str) or not style_id:
            raise TypeError(f"ids must be non-empty strings, got {style_id!r}")
        if style_id in seen:
            raise ValueError(f"duplicate id {style_id!r} in the batch")
        seen.add(style_id)
    return ids


def _normalised(v: np.ndarray, names: Sequence[str]) -> np.ndarray:
    if not np.isfinite(v).all():
        raise ValueError("vectors contain NaN or infinity")
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    if (norms == 0).any():
        bad = names[int(np.flatnonzero(norms[:, 0] == 0)[0])]
        raise ValueError(f"zero vector for {bad!r}: cannot normalise it")
    return np.ascontiguousarray(v / norms, dtype=np.float32)


def _fsync(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _read_meta(folder: Path) -> dict | None:
    """The ids.json of a complete saved index in ``folder``, else None."""
    try:
        meta = json.loads((folder / IDS_FILE).read_text(encoding="utf-8"))
        complete = (folder / INDEX_FILE).stat().st_size == meta["index_bytes"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return meta if complete else None


def _leftovers(folder: Path) -> list[tuple[Path, int]]:
    parts = [(p, p.name[len(folder.name) + 1:].partition("-"))
             for p in folder.parent.glob(f"{folder.name}.*-*")]
    return [(p, int(pid)) for p, (tag, _, pid) in parts
            if tag in ("tmp", "old") and pid.isdigit() and p.is_dir()]


def _recover(folder: Path) -> None:
    """If a save died mid-swap (no folder), move the newest complete copy into place."""
    if folder.exists():
        return
    copies = [(meta.get("saved_at", 0), str(path)) for path, _ in _leftovers(folder)
              if (meta := _read_meta(path)) is not None]
    if copies:
        os.replace(max(copies)[1], folder)
        _fsync(folder.parent)


def _clean_leftovers(folder: Path) -> None:
    """Delete the tmp/old siblings of dead processes (``folder`` itself is complete)."""
    for path, pid in _leftovers(folder):
        if not _pid_exists(pid):
            shutil.rmtree(path, ignore_errors=True)


def _pid_exists(pid: int) -> bool:
    """Whether process ``pid`` exists (and is not this one)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return pid != os.getpid()
