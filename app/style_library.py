"""The style library: catalog rows, blobs, view indexes and the atlas, kept consistent.

Ingest is all or nothing. The catalog row is the commit point and is written last; the blob,
thumbnails, index entries and atlas point written before it are garbage until the row exists,
and `open` sweeps such garbage away (blobs no row names, index ids with no row) and re-derives
what a committed row lacks (index entries, atlas points). So a crash or `kill -9` at any point
leaves, after restart, either the whole entry or no trace of it.

Several processes may share one folder (a server and the CLI, or two server workers). Writers
queue on a lock file beside the catalog (the system drops it when its holder dies). A write
section first loads what another process changed since (the indexes and the map live in
memory), running the same recovery as `open`, then stamps the folder with a new generation
before it changes anything, so a writer that dies half-way still tells the others to look
again; readers reload when they see a new stamp and no writer is busy.
"""

from __future__ import annotations

import io
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
from filelock import FileLock

from app.library import PROBE_PROMPTS, ViewCache, probe_images, to_array, unit
from fusion.engine import GenerationEngine
from retrieval.embedders import Embedder
from retrieval.index import StyleIndex
from retrieval.retriever import Calibration, StyleRecord, StyleRetriever, words
from retrieval.weight_encoder import WeightEncoder, weight_fingerprint
from retrieval.word_view import WordView
from styles.architectures import reference_table
from styles.atlas import AtlasError, AtlasLayout
from styles.blobs import BlobStore
from styles.catalog import Catalog, StyleEntry
from styles.errors import LoraRefused, NoMatchingModules, ShapeMismatch, WrongFamily
from styles.lora import LoraFile
from styles.reader import ReadOptions, read_lora
from styles.safe_read import ReadLimits, sha256_file

CRASH_ENV = "LORATLAS_CRASH_AT"  # fault injection: the crash test kills ingest at each step
INGEST_STEPS = ("validated", "stored", "rendered", "embedded", "indexed", "committed")
IMAGE_FAMILIES = ("sd1", "sd2", "sdxl", "flux", "starter")
NEAR_DUPLICATE_COSINE = 0.999
FINGERPRINT = "fingerprint"
LOCK_FILE, GENERATION_FILE = "library.lock", "library.generation"


class IngestRefused(Exception):
    """A file the library will not take; `details` is the report's error dict."""

    def __init__(self, details: dict) -> None:
        super().__init__(details.get("message", "refused"))
        self.details = details


@dataclass
class IngestResult:
    entry: StyleEntry | None
    duplicate_of: str | None = None
    near_duplicate_of: str | None = None
    seconds: float = 0.0


@dataclass
class LibraryParts:
    """What the library needs from the rest of the app (all owned by the service)."""

    engine: GenerationEngine
    embedder: Embedder
    weight_encoder: WeightEncoder | None = None
    calibration: Calibration | None = None
    limits: ReadLimits = field(default_factory=ReadLimits)
    base_id: str = "base"  # fingerprint of the base model: probe renders depend on it
    word_view: WordView | None = None  # the training-free weights view (`words`)

    @cached_property
    def weight_views_id(self) -> str:
        """What the weights views are read with (encoder and words view, by content): a style
        whose vectors were read with other ones gets them again (`_refresh_weight_views`)."""
        return ":".join([self.weight_encoder.digest if self.weight_encoder is not None else "-",
                         self.word_view.digest if self.word_view is not None else "-"])


WEIGHT_VIEWS = ("weights", "words")  # a style has one of them: see `_weight_views`


def crash_point(step: str) -> None:
    """Kill this process here if the crash test asks for it (LORATLAS_CRASH_AT=step)."""
    if os.environ.get(CRASH_ENV) == step:
        os.kill(os.getpid(), signal.SIGKILL)


class StyleLibrary:
    """One library folder: `catalog.sqlite`, `blobs/`, `index/<embedder>-<base>/<view>/`,
    `atlas-<embedder>-<base>.json`. Writers are serialised by `writing()`, across threads and
    processes."""

    def __init__(self, folder: Path, parts: LibraryParts) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.parts = parts
        self.catalog = Catalog.open(self.folder / "catalog.sqlite")
        self.blobs = BlobStore(self.folder / "blobs")
        key = f"{parts.embedder.version}-{parts.base_id}"
        self.index_dir = self.folder / "index" / key
        self.atlas_path = self.folder / f"atlas-{key}.json"
        self._lock = threading.RLock()
        self._folder_lock = FileLock(self.folder / LOCK_FILE)
        self._depth, self._seen, self._changed = 0, None, False
        self._loras: dict[str, LoraFile] = {}
        self.recovered: list[str] = []
        with self._held():
            self._catch_up()  # loads the folder, then makes it consistent with the catalog

    # -- sharing the folder ----------------------------------------------------------------
    @contextmanager
    def writing(self) -> Iterator[None]:
        """Hold the library for a change: other threads and processes wait. Entering loads
        what another process wrote since this one last looked, then stamps a new generation
        (before anything changes: a writer killed half-way is noticed too). Re-entrant."""
        with self._held() as outer:
            if outer:
                self._catch_up()
                self._stamp()
            yield

    @contextmanager
    def _held(self) -> Iterator[bool]:
        """This thread holds the folder (re-entrant); True at the outermost hold."""
        with self._lock:
            outer = self._depth == 0
            if outer:
                self._folder_lock.acquire()
            self._depth += 1
            try:
                yield outer
            finally:
                self._depth -= 1
                if outer:
                    self._folder_lock.release()

    def refresh(self) -> bool:
        """Load another process's changes if there are any and no writer is busy now (never
        waits: a busy folder is read as this process last saw it). True if it reloaded."""
        if self._generation() == self._seen or not self._lock.acquire(blocking=False):
            return False
        try:
            if self._depth:  # this thread is inside a write section
                return False
            try:
                self._folder_lock.acquire(timeout=0)
            except TimeoutError:
                return False
            try:
                with self._held():  # both locks are this thread's now: this only counts
                    return self._catch_up()
            finally:
                self._folder_lock.release()
        finally:
            self._lock.release()

    def _generation(self) -> str:
        try:
            return (self.folder / GENERATION_FILE).read_text()
        except FileNotFoundError:
            return ""

    def _catch_up(self) -> bool:
        """With the folder held: if it changed since this process looked, load the indexes
        and the map again and recover what a writer that died left behind."""
        seen = self._generation()
        if seen == self._seen:
            return False
        self.retriever = StyleRetriever(
            self.parts.embedder, {}, StyleRetriever.load_indexes(
                self.index_dir, self.parts.embedder.version),
            self.parts.calibration or Calibration({}, {}))
        self.fingerprints = self._load_fingerprints()
        self.atlas = self._load_atlas()
        self._seen, self._changed = seen, False
        self._recover()
        if self._changed:  # the recovery saved something: the others should look again
            self._stamp()
        return True

    def _stamp(self) -> None:
        stamp = uuid.uuid4().hex
        tmp = self.folder / f"{GENERATION_FILE}.tmp"
        tmp.write_text(stamp)
        tmp.replace(self.folder / GENERATION_FILE)
        self._seen = stamp

    # -- reading ---------------------------------------------------------------------------
    @property
    def base_family(self) -> str:
        return self.parts.engine.base.family

    def applicable(self, style: StyleEntry | LoraFile) -> bool:
        return style.family in (self.base_family, "unknown")

    def file(self, style_id: str) -> Path:
        return self.blobs.path(self.catalog.get(style_id).blob)

    def lora(self, style_id: str) -> LoraFile:
        """The parsed file of a style (cached; checked against the base when it fits)."""
        entry = self.catalog.get(style_id)
        if entry.sha256 not in self._loras:
            self._loras[entry.sha256] = self.read(self.blobs.path(entry.blob), entry.family)
        return self._loras[entry.sha256]

    def style_vector(self, style_id: str) -> np.ndarray | None:
        """One vector per style for the map: the mean of its views (all in the text space)."""
        views = [v for view in ("probes", "weights", "words", "metadata")
                 if (v := self.retriever.vector(view, style_id)) is not None]
        return unit(np.mean(views, axis=0)) if views else None

    def off_map_reason(self, style_id: str) -> str | None:
        """Why a style has no point on the map, with what to do; None if it has one."""
        if style_id in self.atlas or self.style_vector(style_id) is not None:
            return None
        entry = self.catalog.get(style_id)
        if self.applicable(entry):
            return ("not on the map: Loratlas found nothing to place it by (no probe images, "
                    "weights view or metadata); edit the style to give it tags or a description")
        return (f"not on the map: it is for {_family_words(entry.family)}, so Loratlas neither "
                "renders it nor reads its weights, and its file gives no name, tags or "
                "description to place it by; edit the style to give it tags or a description "
                "and it joins the map")

    # -- ingest ----------------------------------------------------------------------------
    def ingest(self, path: Path, source: str = "upload", display_name: str | None = None,
               on_progress: Callable[[str, float], None] | None = None,
               thumbnails: list[bytes] | None = None,
               views: dict[str, np.ndarray] | None = None,
               slug: str | None = None,
               frequency: list[float] | None = None) -> IngestResult:
        """Validate → store → render → embed → index → commit; refuses with `IngestRefused`.

        `thumbnails`, `views`, `slug` and `frequency` may be given (the starter pack)."""
        started = time.perf_counter()
        report = on_progress or (lambda step, fraction: None)
        path = Path(path)
        shown = display_name or path.name
        # 1. validate (bytes, format, family, shapes against the base it is for)
        lora = self._validate(path, shown)
        crash_point("validated")
        if known := self._duplicate(lora, started):  # checked again under the lock
            return known
        # the probe renders (thumbnails, probes view), the slow part, before the lock: other
        # writers wait only for the bookkeeping
        name = slug or lora.metadata.name or Path(shown).stem
        images = None
        if thumbnails is None and self.applicable(lora):
            report("rendered", 0.1)
            images = probe_images(self.parts.engine, lora, name)
            thumbnails = [_png(image) for image in images]
        with self.writing():
            if known := self._duplicate(lora, started):
                return known
            report("stored", 0.6)
            # 2. store the file (content-addressed; garbage until the row exists)
            blob = self.blobs.put_file(path)
            crash_point("stored")
            # 3. the thumbnails
            entry_id = self.catalog.unique_slug(name)
            thumbs = [self.blobs.put_bytes(data) for data in thumbnails or []]
            crash_point("rendered")
            # 4. embed the views
            report("embedded", 0.7)
            entry = self._entry(entry_id, lora, blob, thumbs, source, shown)
            entry.frequency = frequency
            if source == "import":
                entry.extra["source_path"] = str(path.resolve())
            print_ = weight_fingerprint(lora)
            vectors = self._views(entry, lora, images, print_) if views is None else \
                {**self._weight_views(entry, lora, print_), **views}  # given views win
            near = self._near_duplicate(print_, lora.family)
            if near:
                entry.extra["near_duplicate_of"] = near
            crash_point("embedded")
            # 5. index and place on the map (saved before the commit; swept if it never comes)
            report("indexed", 0.85)
            self._index(entry, lora, vectors, print_)
            crash_point("indexed")
            # 6. commit: from here on the style exists
            self.catalog.add(entry)
            crash_point("committed")
            self._place(entry)
            self._loras[lora.sha256] = lora
            return IngestResult(entry, near_duplicate_of=near,
                                seconds=time.perf_counter() - started)

    def _duplicate(self, lora: LoraFile, started: float) -> IngestResult | None:
        """The report of a file the catalog already holds (same sha256), else None."""
        existing = self.catalog.by_sha256(lora.sha256)
        return None if existing is None else IngestResult(
            None, duplicate_of=existing.id, seconds=time.perf_counter() - started)

    def _validate(self, path: Path, shown: str) -> LoraFile:
        """The file read against the loaded base; failing that, as a LoRA for another image
        model family (kept, marked, never applied); else refused with the base's reason."""
        try:
            try:
                return self.read(path, self.base_family)
            except (WrongFamily, ShapeMismatch, NoMatchingModules) as against_base:
                try:
                    other = read_lora(path, ReadOptions(limits=self.parts.limits))
                except LoraRefused:
                    raise against_base from None
                if other.family == self.base_family or other.family not in IMAGE_FAMILIES:
                    raise against_base from None
                return other
        except LoraRefused as refusal:
            details = refusal.to_dict()  # named as the user named the file (uploads are
            details["file"] = shown       # stored under temporary names)
            details["message"] = f"{shown}: {refusal.problem} {refusal.advice}".strip()
            raise IngestRefused(details) from refusal

    def read(self, path: Path, family: str | None = None) -> LoraFile:
        """Read against the loaded base if the file is for it, else its family's reference."""
        family = family or self.base_family
        table = self.parts.engine.base.table if family in (self.base_family, "unknown") \
            else reference_table(family)
        return read_lora(path, ReadOptions(base_table=table, base_family=family,
                                           limits=self.parts.limits))

    def _entry(self, entry_id: str, lora: LoraFile, blob: str, thumbs: list[str], source: str,
               shown: str) -> StyleEntry:
        meta = lora.metadata
        return StyleEntry(
            id=entry_id, sha256=lora.sha256, name=meta.name or Path(shown).stem,
            description=meta.description or "", tags=list(meta.tags[:30]),
            trigger_words=list(meta.trigger_words), family=lora.family, format=lora.format,
            rank=lora.rank or None, source=source, blob=blob, thumbnails=thumbs,
            extra={"file_name": shown, "named_by_file": bool(meta.name),
                   "metadata_text": metadata_text(meta.name, meta.description, meta.tags,
                                                  meta.trigger_words)})

    def _views(self, entry: StyleEntry, lora: LoraFile, images: list | None,
               fingerprint: np.ndarray | None = None) -> dict[str, np.ndarray]:
        embedder = self.parts.embedder
        vectors = {}
        if text := entry.extra.get("metadata_text"):
            vectors["metadata"] = embedder.encode_texts([text])[0]
        if images:
            vectors["probes"] = unit(embedder.encode_images(to_array(images)).mean(axis=0))
        return {**vectors, **self._weight_views(entry, lora, fingerprint)}

    def _weight_views(self, entry: StyleEntry, lora: LoraFile,
                      fingerprint: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """The view read from the weights alone (no rendering): the learned encoder's for a
        LoRA it was trained on; for any other, the words its cross-attention reacts to (the
        encoder places those at chance). The words are kept on the entry, for the reasons."""
        if lora.family != self.base_family:
            return {}
        found = self.parts.word_view.embed(lora) if self.parts.word_view is not None else None
        entry.extra["weight_words"] = found[1] if found else []
        entry.extra["weight_views_by"] = self.parts.weight_views_id
        encoder = self.parts.weight_encoder
        if encoder is not None and encoder.knows(lora, fingerprint):
            return {"weights": encoder.embed([lora])[0]}
        return {"words": found[0]} if found else {}

    def _near_duplicate(self, fingerprint: np.ndarray, family: str) -> str | None:
        if not len(self.fingerprints):
            return None
        for style_id, score in self.fingerprints.search(fingerprint, 5)[0]:
            if score >= NEAR_DUPLICATE_COSINE and style_id in self.catalog and \
                    self.catalog.get(style_id).family == family:
                return style_id
        return None

    def _index(self, entry: StyleEntry, lora: LoraFile, vectors: dict[str, np.ndarray],
               fingerprint: np.ndarray) -> None:
        record = self._record(entry)
        self.retriever.add_style(record, vectors)
        if entry.id in self.fingerprints:
            self.fingerprints.remove([entry.id])
        self.fingerprints.add([entry.id], fingerprint[None])
        entry.embeddings = {view: self.parts.embedder.version for view in vectors}
        self._save_indexes()

    # -- manage ----------------------------------------------------------------------------
    def edit(self, style_id: str, **changes) -> StyleEntry:
        """Edit name, tags, description or trigger words; the metadata view follows."""
        with self.writing():
            entry = self.catalog.get(style_id)
            merged = {"name": entry.name, "description": entry.description, "tags": entry.tags,
                      "trigger_words": entry.trigger_words, **changes}
            extra = dict(entry.extra, edited=True, metadata_text=metadata_text(
                merged["name"], merged["description"], merged["tags"], merged["trigger_words"]))
            entry = self.catalog.update(style_id, extra=extra, **changes)
            vectors = {view: v for view in self.retriever.indexes if view != "metadata"
                       and (v := self.retriever.vector(view, style_id)) is not None}
            if extra["metadata_text"]:
                vectors["metadata"] = self.parts.embedder.encode_texts(
                    [extra["metadata_text"]])[0]
            self.retriever.add_style(self._record(entry), vectors)
            self._save_indexes()
            if entry.id not in self.atlas.ids:  # no view to place it by until this edit
                self._place(entry)
            return entry

    def remove(self, style_id: str) -> None:
        """Delete the row first (the commit point), then its blobs, index entries, map point."""
        with self.writing():
            entry = self.catalog.remove(style_id)
            self.retriever.remove_style(style_id)
            if style_id in self.fingerprints:
                self.fingerprints.remove([style_id])
            self._save_indexes()
            self._sweep_blobs()
            if style_id in self.atlas.ids:
                self.atlas.remove(style_id)
                self._save_atlas()
            self._loras.pop(entry.sha256, None)

    # -- recovery and persistence ----------------------------------------------------------
    def _recover(self) -> None:
        """Make the folder consistent with the catalog (after a crash, or a new embedder)."""
        entries = {e.id: e for e in self.catalog.list()}
        swept = self._sweep_blobs()
        self.recovered += [f"removed orphan blob {sha[:12]}" for sha in swept]
        stray = {i for index in [*self.retriever.indexes.values(), self.fingerprints]
                 for i in index.ids() if i not in entries}
        for style_id in stray:
            self.retriever.remove_style(style_id)
            if style_id in self.fingerprints:
                self.fingerprints.remove([style_id])
        self.recovered += [f"removed index entry without a row: {i}" for i in sorted(stray)]
        for entry in entries.values():
            self.retriever.records[entry.id] = self._record(entry)
        missing = [e for e in entries.values() if e.id not in self.fingerprints]
        for entry in missing:  # committed rows the indexes lack: re-derive their vectors
            lora = self.lora(entry.id)
            images = _thumbnail_images(self.blobs, entry) if self.applicable(entry) else None
            self.retriever.add_style(self._record(entry), self._views(entry, lora, images))
            self.fingerprints.add([entry.id], weight_fingerprint(lora)[None])
        refreshed = self._refresh_weight_views(entries.values())
        if stray or missing or refreshed:
            self._save_indexes()
        self.recovered += [f"re-indexed {e.id}" for e in missing]
        self._sync_atlas(entries, redraw=bool(refreshed))  # drawn from the vectors replaced

    def _refresh_weight_views(self, entries) -> int:
        """Styles whose weights view was read with another encoder or words view than the
        library's now (an updated starter pack retrains both; styles indexed before the words
        view existed) get it again: the words for LoRAs the encoder never saw, the encoder's
        for the others. Weights only, no rendering; each entry once per encoder and view."""
        if self.parts.word_view is None and self.parts.weight_encoder is None:
            return 0
        done = 0
        for entry in entries:
            if entry.extra.get("weight_views_by") == self.parts.weight_views_id or \
                    entry.family != self.base_family:
                continue
            vectors = {view: v for view in self.retriever.indexes if view not in WEIGHT_VIEWS
                       and (v := self.retriever.vector(view, entry.id)) is not None}
            try:
                vectors.update(self._weight_views(entry, self.lora(entry.id)))
            except (LoraRefused, OSError) as exc:  # kept as it was; listed for the user
                self.recovered.append(f"no weights view for {entry.id}: {exc}")
                entry.extra.update(weight_words=[], weight_views_by=self.parts.weight_views_id)
            entry = self.catalog.update(entry.id, extra=entry.extra)
            self.retriever.add_style(self._record(entry), vectors)
            done += 1
        return done

    def _sweep_blobs(self) -> list[str]:
        keep = {sha for e in self.catalog.list() for sha in [e.blob, *e.thumbnails]}
        return self.blobs.sweep(keep)

    def _load_fingerprints(self) -> StyleIndex:
        folder = self.index_dir / FINGERPRINT
        try:
            return StyleIndex.load(folder)
        except FileNotFoundError:
            return StyleIndex(256, "fingerprint-v1")

    def _save_indexes(self) -> None:
        self._changed = True
        self.retriever.save(self.index_dir)
        self.fingerprints.save(self.index_dir / FINGERPRINT)

    def _record(self, entry: StyleEntry) -> StyleRecord:
        text = entry.extra.get("metadata_text", "")
        keywords = sorted(words(" ".join([text, *entry.tags]))) if text else []
        return StyleRecord(entry.id, entry.name, entry.family, text, keywords,
                           list(entry.extra.get("weight_words", [])))

    # -- atlas -----------------------------------------------------------------------------
    def _load_atlas(self) -> AtlasLayout:
        if self.atlas_path.is_file():
            try:
                return AtlasLayout.from_json(self.atlas_path.read_text())
            except (AtlasError, ValueError, KeyError, TypeError):
                pass  # an older version's, or a damaged cache: rebuilt from the catalog below
        return AtlasLayout()

    def _sync_atlas(self, entries: dict[str, StyleEntry], redraw: bool = False) -> None:
        """Fit the map if it is empty, was drawn from fewer than half the styles it now holds
        (its clusters came from too few) or from vectors since replaced (`redraw`), else
        place new styles and drop deleted ones."""
        placed = set(self.atlas.ids)
        gone = placed - set(entries)
        for style_id in gone:
            self.atlas.remove(style_id)
        new = [e for e in entries.values() if e.id not in placed]
        refit = len(entries) >= 3 and (redraw or not placed - gone or
                                       len(entries) >= 2 * self.atlas.fitted_on)
        if refit:
            self.refit_atlas(entries, save=False)
        else:
            for entry in new:
                self._place(entry, save=False)
        if refit or gone or new:
            self._save_atlas()

    def refit_atlas(self, entries: dict[str, StyleEntry] | None = None,
                    save: bool = True) -> None:
        """Lay out the whole map and find its clusters again, from every style. Placing a style
        moves nothing else, so after many placements (seeding a library one style at a time)
        the clusters are still those of the first few styles until this runs."""
        with self.writing():
            entries = entries if entries is not None else {e.id: e for e in self.catalog.list()}
            vectors = {i: v for i in entries if (v := self.style_vector(i)) is not None}
            self.atlas = AtlasLayout.fit(vectors, {i: entries[i].tags for i in vectors})
            if save:
                self._save_atlas()

    def _place(self, entry: StyleEntry, save: bool = True) -> None:
        vector = self.style_vector(entry.id)
        if vector is None:
            return
        if len(self.atlas.ids) < 3:  # too few points for a map: refit
            vectors = {i: v for i in [*self.atlas.ids, entry.id]
                       if (v := self.style_vector(i)) is not None}
            tags = {i: self.catalog.get(i).tags for i in vectors}
            self.atlas = AtlasLayout.fit(vectors, tags)
        else:
            self.atlas.place(entry.id, vector, entry.tags)
        if save:
            self._save_atlas()

    def _save_atlas(self) -> None:
        self._changed = True
        tmp = self.atlas_path.with_name(self.atlas_path.name + ".tmp")
        tmp.write_text(self.atlas.to_json())
        tmp.replace(self.atlas_path)


def metadata_text(name: str | None, description: str | None, tags, trigger_words) -> str:
    """What the metadata view embeds: only what the file (or the user) says."""
    parts = [name or "", description or "", ", ".join(list(tags)[:20]),
             ", ".join(trigger_words)]
    return ". ".join(p for p in parts if p)


def seed_from_starter(library: StyleLibrary, loras: dict[str, Path], views: ViewCache,
                      thumbnails_dir: Path, profiles: dict[str, list[float]] | None = None
                      ) -> int:
    """Add the starter styles (shipped thumbnails and view vectors; nothing is rendered), as
    one write: a second process opening the same new library waits, then finds them there."""
    added = 0
    with library.writing():
        for slug, path in sorted(loras.items()):
            sha = sha256_file(Path(path))
            if library.catalog.by_sha256(sha) is not None:
                continue
            if slug in library.catalog and library.catalog.get(slug).source == "starter":
                library.remove(slug)  # the pack was rebuilt: its styles follow it
            shipped = sorted(thumbnails_dir.glob(f"{slug}-*.png"))
            vectors = {view: v for view in ("metadata", "probes")
                       if (v := views.get(view, sha)) is not None}
            complete = shipped and "probes" in vectors
            library.ingest(path, "starter", path.name,
                           thumbnails=[p.read_bytes() for p in shipped] if complete else None,
                           views=vectors if complete else None,
                           slug=slug, frequency=(profiles or {}).get(slug))
            added += 1
        if added:  # each was placed beside the first three: draw the map once from all
            library.refit_atlas()
    return added


def _png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _thumbnail_images(blobs: BlobStore, entry: StyleEntry) -> list | None:
    from PIL import Image

    images = [Image.open(blobs.path(sha)).convert("RGB") for sha in entry.thumbnails]
    return images[:len(PROBE_PROMPTS)] or None


def _family_words(family: str) -> str:
    return {"not-an-image-model": "a text or other non-image model",
            "unknown": "a model Loratlas cannot identify"}.get(family, family)
