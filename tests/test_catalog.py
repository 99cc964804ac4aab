"""Catalog (SQLAlchemy over SQLite) and the content-addressed blob store."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import threading

import pytest
from sqlalchemy import create_engine, inspect, select, text

from styles import blobs as blobs_module
from styles.blobs import BadBlobId, BlobStore, SourceChanged
from styles.catalog import (
    SCHEMA_VERSION,
    Catalog,
    DuplicateFile,
    DuplicateId,
    InvalidEntry,
    NotEditable,
    SchemaTooNew,
    StyleEntry,
    StyleNotFound,
    metadata,
    migrate,
    schema_version,
    slugify,
)


def sha(text_: str) -> str:
    return hashlib.sha256(text_.encode()).hexdigest()


def make_entry(style_id: str, **fields) -> StyleEntry:
    values = {"sha256": sha(style_id), "name": style_id.replace("-", " ").title()} | fields
    return StyleEntry(style_id, **values)


@pytest.fixture
def catalog(tmp_path):
    with Catalog.open(tmp_path / "library" / "catalog.db") as cat:
        yield cat


# --------------------------------------------------------------------------- catalog


def test_add_then_get_returns_every_field(catalog):
    entry = make_entry(
        "neon-night", description="Glowing outlines at night", tags=["glow", "Night"],
        trigger_words=["zqneonnight"], family="starter", format="kohya", rank=8,
        source="starter", created=1234.5, thumbnails=[sha("thumb1"), sha("thumb2")],
        frequency=[0.1, 0.7, 0.2], embeddings={"metadata": "clip-v1", "probe": "clip-v1"},
        extra={"ss_tag_frequency": {"neon": 12}, "near_duplicate_of": None})
    catalog.add(entry)
    assert catalog.get("neon-night") == entry
    assert catalog.by_sha256(entry.sha256) == entry
    assert entry.blob == entry.sha256  # default: the file itself is the blob
    assert catalog.ids() == ["neon-night"] and "neon-night" in catalog and len(catalog) == 1


def test_exact_duplicate_file_names_the_existing_entry(catalog):
    catalog.add(make_entry("sepia"))
    with pytest.raises(DuplicateFile) as caught:
        catalog.add(make_entry("sepia-again", sha256=sha("sepia")))
    assert caught.value.existing.id == "sepia"
    assert "'sepia'" in str(caught.value) and "already in the library" in str(caught.value)
    assert catalog.ids() == ["sepia"]


def test_duplicate_id_is_refused_with_advice(catalog):
    catalog.add(make_entry("noir"))
    with pytest.raises(DuplicateId, match="unique_slug") as caught:
        catalog.add(make_entry("noir", sha256=sha("other file")))
    assert caught.value.existing.sha256 == sha("noir")


def test_invalid_fields_are_refused_before_storing(catalog):
    with pytest.raises(InvalidEntry, match="source"):
        make_entry("x", source="downloaded")
    with pytest.raises(InvalidEntry, match="sha256"):
        make_entry("x", sha256="not-a-hash")
    with pytest.raises(InvalidEntry, match="tags"):
        make_entry("x", tags="glow")  # a string is not a list of tags
    assert catalog.ids() == []


@pytest.fixture
def filled(catalog):
    catalog.add(make_entry("neon-night", description="glowing outlines", tags=["Glow", "night"],
                           trigger_words=["zqneonnight"], family="starter", source="starter"))
    catalog.add(make_entry("sepia", description="brown old photograph",
                           tags=["vintage", "warm"], family="starter", source="starter"))
    catalog.add(make_entry("ete-indien", name="Été Indien", description="100% warm light",
                           tags=["warm", "Autumn"], family="sd15", source="upload"))
    return catalog


@pytest.mark.parametrize(("query", "expected"), [
    ({}, ["ete-indien", "neon-night", "sepia"]),
    ({"text": "GLOWING"}, ["neon-night"]),  # description, any case
    ({"text": "Neon"}, ["neon-night"]),  # name
    ({"text": "vintag"}, ["sepia"]),  # part of a tag
    ({"text": "zqneon"}, ["neon-night"]),  # trigger word
    ({"text": "été"}, ["ete-indien"]),  # non-ASCII, case-folded
    ({"text": "ÉTÉ"}, ["ete-indien"]),
    ({"text": "100%"}, ["ete-indien"]),  # LIKE wildcards are literal
    ({"text": "%"}, ["ete-indien"]),
    ({"tags": ["warm"]}, ["ete-indien", "sepia"]),
    ({"tags": ["WARM", "autumn"]}, ["ete-indien"]),  # all tags, any case
    ({"tags": ["warm", "night"]}, []),
    ({"tags": ["war"]}, []),  # a tag filter is exact, not a substring
    ({"family": "sd15"}, ["ete-indien"]),
    ({"source": "starter"}, ["neon-night", "sepia"]),
    ({"text": "warm", "family": "starter"}, ["sepia"]),
])
def test_list_filters(filled, query, expected):
    found = filled.list(**query)
    assert [e.id for e in found] == expected
    assert all(e.tags for e in found)  # entries come back whole, tags included


def test_update_changes_editable_fields_and_search(filled):
    updated = filled.update("sepia", name="Old Photo", tags=["antique"], extra={"flag": 1})
    assert filled.get("sepia") == updated
    assert updated.name == "Old Photo" and updated.tags == ["antique"]
    assert [e.id for e in filled.list(tags=["antique"])] == ["sepia"]
    assert filled.list(tags=["vintage"]) == []
    assert [e.id for e in filled.list(text="old photo")] == ["sepia"]
    assert filled.get("sepia").trigger_words == []  # untouched fields stay


def test_update_refuses_fixed_fields_and_unknown_ids(filled):
    with pytest.raises(NotEditable, match="sha256"):
        filled.update("sepia", sha256=sha("x"))
    with pytest.raises(NotEditable, match="family"):
        filled.update("sepia", family="sdxl", name="ok")
    assert filled.get("sepia").name == "Sepia"  # nothing applied
    with pytest.raises(StyleNotFound, match="no style with id 'nope'"):
        filled.update("nope", name="x")
    with pytest.raises(InvalidEntry, match="thumbnails"):
        filled.update("sepia", thumbnails=["not a sha"])


def test_remove_returns_the_entry_and_leaves_nothing(filled):
    removed = filled.remove("neon-night")
    assert removed.tags == ["Glow", "night"]
    assert "neon-night" not in filled
    assert filled.by_sha256(sha("neon-night")) is None
    assert filled.list(text="zqneon") == [] and filled.list(tags=["glow"]) == []
    with filled.engine.connect() as conn:  # no orphan term rows
        assert conn.execute(text("SELECT count(*) FROM style_terms WHERE style_id = "
                                 "'neon-night'")).scalar() == 0
    with pytest.raises(StyleNotFound):
        filled.remove("neon-night")
    with pytest.raises(StyleNotFound):
        filled.get("neon-night")


def test_unique_slug(filled):
    assert slugify("  Neon Night (v2)! ") == "neon-night-v2"
    assert slugify("Été indien") == "ete-indien"
    assert slugify("???") == "style"
    assert filled.unique_slug("Neon Night") == "neon-night-2"
    filled.add(make_entry("neon-night-2"))
    filled.add(make_entry("neon-nightfall"))
    assert filled.unique_slug("neon night") == "neon-night-3"
    assert filled.unique_slug("Brand new") == "brand-new"


def test_transaction_commits_or_rolls_back_together(catalog):
    with pytest.raises(RuntimeError), catalog.transaction():
        catalog.add(make_entry("a"))
        catalog.add(make_entry("b"))
        assert catalog.ids() == ["a", "b"]  # visible inside the block
        raise RuntimeError("crash between steps")
    assert catalog.ids() == []
    with catalog.transaction():
        catalog.add(make_entry("a"))
        with catalog.transaction():  # nested: joins the outer block
            catalog.add(make_entry("b"))
    assert catalog.ids() == ["a", "b"]


def test_failed_add_inside_transaction_keeps_earlier_writes(catalog):
    with catalog.transaction():
        catalog.add(make_entry("a"))
        with pytest.raises(DuplicateFile):
            catalog.add(make_entry("b", sha256=sha("a")))
        catalog.add(make_entry("c"))
    assert catalog.ids() == ["a", "c"]


def test_uncommitted_writes_are_invisible_to_other_threads(catalog):
    inside, release, seen = threading.Event(), threading.Event(), []

    def writer():
        with catalog.transaction():
            catalog.add(make_entry("pending"))
            inside.set()
            release.wait(10)

    thread = threading.Thread(target=writer)
    thread.start()
    assert inside.wait(10)
    seen.append(catalog.ids())  # a reader does not wait for the writer (WAL)
    release.set()
    thread.join(10)
    assert seen == [[]] and catalog.ids() == ["pending"]


def test_reopen_keeps_everything_and_uses_wal(tmp_path):
    path = tmp_path / "catalog.db"
    with Catalog.open(path) as cat:
        cat.add(make_entry("kept", tags=["t"]))
    with Catalog.open(str(path)) as cat:
        assert cat.get("kept").tags == ["t"]
        with cat.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.execute(select(schema_version.c.version)).scalar() == SCHEMA_VERSION


def test_concurrent_uploads_from_threads_and_two_handles(tmp_path):
    path = tmp_path / "catalog.db"
    handles = [Catalog.open(path), Catalog.open(path)]  # two handles: as two processes would
    errors, duplicates = [], []

    def upload(worker: int) -> None:
        cat = handles[worker % 2]
        for i in range(8):
            try:
                with cat.transaction():
                    cat.add(make_entry(cat.unique_slug("Same Name"), sha256=sha(f"{worker}/{i}")))
                cat.add(make_entry(f"copy-{worker}-{i}", sha256=sha(f"shared {i}")))
            except DuplicateFile:
                duplicates.append(i)
            except Exception as exc:  # any other failure is the bug under test
                errors.append(repr(exc))

    threads = [threading.Thread(target=upload, args=(w,)) for w in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    ids = handles[0].ids()
    assert errors == []
    assert len([i for i in ids if i.startswith("same-name")]) == 48  # every slug unique
    assert len([i for i in ids if i.startswith("copy-")]) == 8  # each shared file once
    assert len(duplicates) == 6 * 8 - 8
    for cat in handles:
        cat.close()


def _open_at_the_barrier(path, barrier, failures) -> None:
    Catalog.open(f"{path}.{os.getpid()}").close()  # warm: the race is in the open, not imports
    barrier.wait()
    try:
        Catalog.open(path).close()
    except Exception as exc:  # any failure is the bug under test
        failures.put(repr(exc))


def test_processes_opening_one_new_catalog_at_once_all_open_it(tmp_path):
    """A server and CLI commands started together on a fresh install: SQLite refuses the
    switch to WAL with "database is locked" at once, busy timeout or not, while another
    process opens the same new file; every process must still open it. (The workers fork
    from a fork server, not from this process and whatever threads it runs.)"""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    failures = context.Queue()
    for round_ in range(40):
        barrier = context.Barrier(6)
        path = tmp_path / f"catalog{round_}.db"
        workers = [context.Process(target=_open_at_the_barrier, args=(path, barrier, failures))
                   for _ in range(6)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(60)
        assert [w.exitcode for w in workers] == [0] * 6
    assert failures.empty(), failures.get()


V1_ROWS = [
    {"id": "old-style", "sha256": sha("old"), "name": "Old Style", "description": "From v1",
     "tags": ["Retro", "ink"], "trigger_words": ["zqold"], "family": "sd15", "format": "kohya",
     "rank": 4, "source": "import", "created": 10.0, "blob": sha("old"), "thumbnails": []},
    {"id": "bare", "sha256": sha("bare"), "name": "Bare", "description": "", "tags": [],
     "trigger_words": [], "family": "", "format": "", "rank": None, "source": "upload",
     "created": 11.0, "blob": sha("bare"), "thumbnails": [sha("png")]},
]


def write_v1_database(path) -> None:
    """A catalog as the first release wrote it: schema v1, tags as JSON on the row."""
    engine = create_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        migrate(conn, target=1)
        for row in V1_ROWS:
            conn.execute(text(
                "INSERT INTO styles (id, sha256, name, description, tags, trigger_words, family,"
                " format, rank, source, created, blob, thumbnails) VALUES (:id, :sha256, :name,"
                " :description, :tags, :trigger_words, :family, :format, :rank, :source,"
                " :created, :blob, :thumbnails)"),
                {**row, "tags": _json(row["tags"]), "trigger_words": _json(row["trigger_words"]),
                 "thumbnails": _json(row["thumbnails"])})
    engine.dispose()


def _json(value) -> str:
    import json

    return json.dumps(value)


def test_opening_a_v1_database_migrates_it(tmp_path):
    path = tmp_path / "v1.db"
    write_v1_database(path)
    engine = create_engine(f"sqlite:///{path}")
    assert "tags" in {c["name"] for c in inspect(engine).get_columns("styles")}
    engine.dispose()

    with Catalog.open(path) as cat:
        old = cat.get("old-style")
        assert (old.tags, old.trigger_words, old.rank, old.source) == (
            ["Retro", "ink"], ["zqold"], 4, "import")
        assert (old.embeddings, old.extra, old.frequency) == ({}, {}, None)
        assert cat.get("bare").thumbnails == [sha("png")]
        assert [e.id for e in cat.list(tags=["retro"])] == ["old-style"]
        assert [e.id for e in cat.list(text="from V1")] == ["old-style"]
        cat.update("bare", frequency=[1.0, 0.5], embeddings={"weights": "enc-1"})
        assert cat.get("bare").frequency == [1.0, 0.5]
        columns = {t: {c["name"] for c in inspect(cat.engine).get_columns(t)}
                   for t in ("styles", "style_terms", "schema_version")}
        with cat.engine.connect() as conn:
            version = conn.execute(select(schema_version.c.version)).scalars().all()
    assert version == [SCHEMA_VERSION]
    assert columns == {t: {c.name for c in metadata.tables[t].columns} for t in columns}


def test_newer_schema_is_refused(tmp_path):
    path = tmp_path / "future.db"
    Catalog.open(path).close()
    engine = create_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        conn.execute(schema_version.update().values(version=SCHEMA_VERSION + 1))
    engine.dispose()
    with pytest.raises(SchemaTooNew, match="upgrade Loratlas"):
        Catalog.open(path)


# --------------------------------------------------------------------------- blobs


def test_blob_put_is_content_addressed_and_idempotent(tmp_path):
    store = BlobStore(tmp_path / "blobs")
    data = b"lora bytes" * 1000
    digest = store.put_bytes(data)
    assert digest == hashlib.sha256(data).hexdigest()
    assert store.path(digest) == tmp_path / "blobs" / digest[:2] / digest[2:]
    assert store.path(digest).read_bytes() == data
    source = tmp_path / "style.safetensors"
    source.write_bytes(data)
    assert store.put_file(source) == digest  # same content: the same blob, no second copy
    other = store.put_file(_write(tmp_path / "b.bin", b"other"))
    assert store.shas() == sorted([digest, other])
    assert store.has(digest) and store.delete(digest) and not store.has(digest)
    assert store.delete(digest) is False
    assert store.shas() == [other]


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


def test_blob_ids_are_checked(tmp_path):
    store = BlobStore(tmp_path)
    for bad in ("../../etc/passwd", "ABC", sha("x").upper()):
        with pytest.raises(BadBlobId, match="64-character"):
            store.path(bad)


def test_sweep_removes_unkept_blobs_and_temp_files(tmp_path):
    store = BlobStore(tmp_path)
    keep, drop = store.put_bytes(b"keep"), store.put_bytes(b"drop")
    leftover = store.path(keep).parent / ".tmp-crashed"
    leftover.write_bytes(b"half a fi")
    (tmp_path / "README").write_text("not in a shard folder: not the store's business")
    removed = store.sweep({keep})
    assert sorted(removed) == sorted([drop, f"{keep[:2]}/.tmp-crashed"])
    assert store.shas() == [keep] and not leftover.exists()
    assert not store.path(drop).parent.exists() or drop[:2] == keep[:2]
    assert (tmp_path / "README").exists()


def test_a_file_changing_while_stored_is_refused(tmp_path, monkeypatch):
    store = BlobStore(tmp_path / "blobs")
    source = _write(tmp_path / "growing.bin", b"v2 content")
    monkeypatch.setattr(blobs_module, "sha256_file", lambda path: sha("v1 content"))
    with pytest.raises(SourceChanged, match="changed while"):
        store.put_file(source)
    assert store.shas() == []
    assert list((tmp_path / "blobs").rglob("*.tmp*")) == [] and not any(
        p.is_file() for p in (tmp_path / "blobs").rglob("*"))


def test_concurrent_puts_of_the_same_bytes(tmp_path):
    store = BlobStore(tmp_path)
    results = []
    threads = [threading.Thread(target=lambda: results.append(store.put_bytes(b"x" * 100_000)))
               for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(results)) == 1 and store.shas() == results[:1]
    assert [p.name for p in tmp_path.rglob(".tmp-*")] == []
