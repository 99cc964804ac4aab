"""The style catalog: one row per style, in SQLite by default, any SQLAlchemy URL later.

Plain SQLAlchemy Core (no dialect-only SQL), so `Catalog.open("postgresql://…")` is a
configuration change. The schema is versioned: `schema_version` holds the version and
`MIGRATIONS` lists, in order, the functions that bring a database from one version to the next;
`Catalog.open` applies the missing ones in one transaction.

Concurrency: writes in one process are serialised by a lock and, on SQLite, start with
`BEGIN IMMEDIATE` (so two processes queue on SQLite's busy timeout instead of failing on a lock
upgrade); the database runs in WAL mode so reads never wait for writes.
"""

from __future__ import annotations

import contextlib
import re
import sqlite3
import threading
import time
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    Column,
    Connection,
    Engine,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    and_,
    create_engine,
    delete,
    event,
    exists,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.pool import StaticPool

SOURCES = ("starter", "upload", "import")
EDITABLE = frozenset({"name", "description", "tags", "trigger_words", "thumbnails", "frequency",
                      "embeddings", "extra"})
_SHA = re.compile(r"[0-9a-f]{64}")
_WRITE = "loratlas_write"  # execution option: this connection's transaction will write


# --------------------------------------------------------------------------- errors


class CatalogError(Exception):
    """A catalog operation that cannot be done, with what to do about it."""


class InvalidEntry(CatalogError, ValueError):
    """A StyleEntry field with a value the catalog cannot store."""

    def __init__(self, field_name: str, problem: str, advice: str) -> None:
        self.field = field_name
        super().__init__(f"style entry field {field_name!r}: {problem} {advice}")


class DuplicateStyle(CatalogError):
    """The catalog already holds a style with this id or this sha256."""

    field = ""

    def __init__(self, value: str, existing: StyleEntry, advice: str) -> None:
        self.value = value
        self.existing = existing
        super().__init__(f"a style with {self.field} {value!r} is already in the catalog "
                         f"(id {existing.id!r}, name {existing.name!r}). {advice}")


class DuplicateFile(DuplicateStyle):
    """Same sha256: the exact same file is already in the library."""

    field = "sha256"


class DuplicateId(DuplicateStyle):
    """Same id (slug) as another style."""

    field = "id"


class StyleNotFound(CatalogError, KeyError):
    """No style with this id."""

    def __init__(self, style_id: str) -> None:
        self.id = style_id
        super().__init__(f"no style with id {style_id!r} in the catalog; list the ids with "
                         "Catalog.ids() (or `loratlas library list`).")

    def __str__(self) -> str:  # KeyError would print the repr of the message
        return str(self.args[0])


class NotEditable(CatalogError, ValueError):
    """update() was asked to change a field that is fixed once a style is stored."""

    def __init__(self, names: Iterable[str]) -> None:
        self.fields = sorted(names)
        editable = ", ".join(sorted(EDITABLE))
        super().__init__(f"cannot edit {', '.join(self.fields)}: only {editable} can change; to "
                         "change the file or its identity, remove the style and add it again.")


class SchemaTooNew(CatalogError):
    """The database was written by a newer Loratlas."""

    def __init__(self, url: str, found: int, known: int) -> None:
        super().__init__(f"{url}: catalog schema version {found} is newer than this Loratlas "
                         f"understands ({known}); upgrade Loratlas, or open another library.")


# --------------------------------------------------------------------------- the entry


@dataclass
class StyleEntry:
    """One style as the catalog stores it."""

    id: str = field(metadata={"help": "stable slug, unique; see Catalog.unique_slug"})
    sha256: str = field(metadata={"help": "sha256 of the LoRA file, unique"})
    name: str
    description: str = ""
    tags: list[str] = field(default_factory=list)
    trigger_words: list[str] = field(default_factory=list)
    family: str = field(default="", metadata={"help": "base model family, e.g. 'sd15'"})
    format: str = field(default="", metadata={"help": "file layout, e.g. 'kohya'"})
    rank: int | None = None
    source: str = field(default="upload", metadata={"help": "one of SOURCES"})
    created: float = field(default_factory=time.time)
    blob: str = field(default="", metadata={"help": "blob store sha of the file; sha256 if empty"})
    thumbnails: list[str] = field(default_factory=list, metadata={"help": "blob shas of PNGs"})
    frequency: list[float] | None = field(default=None, metadata={"help": "frequency profile"})
    embeddings: dict[str, str] = field(default_factory=dict,
                                       metadata={"help": "view name → embedder version"})
    extra: dict[str, Any] = field(default_factory=dict, metadata={"help": "free JSON"})

    def __post_init__(self) -> None:
        if not self.blob:
            self.blob = self.sha256
        self.validate()

    def validate(self) -> None:
        """Raise InvalidEntry on the first field the catalog could not store faithfully."""
        if not isinstance(self.id, str) or not self.id.strip():
            raise InvalidEntry("id", "is empty.", "Use Catalog.unique_slug(name) to make one.")
        for name in ("sha256", "blob"):
            if not _SHA.fullmatch(str(getattr(self, name))):
                raise InvalidEntry(name, f"{getattr(self, name)!r} is not a lowercase hex sha256.",
                                   "Pass the value BlobStore.put_file returned.")
        if self.source not in SOURCES:
            raise InvalidEntry("source", f"{self.source!r} is not one of {SOURCES}.",
                               "Pick the one that says where the file came from.")
        if self.rank is not None and (not isinstance(self.rank, int) or self.rank <= 0):
            raise InvalidEntry("rank", f"{self.rank!r} is not a positive integer.",
                               "Pass the LoRA rank, or None when it is unknown.")
        _check_fields({f.name: getattr(self, f.name) for f in fields(self) if f.name in EDITABLE})


def _check_fields(values: dict[str, Any]) -> None:
    """Types of the editable fields (shared by StyleEntry and Catalog.update)."""
    for name in ("name", "description"):
        if name in values and not isinstance(values[name], str):
            raise InvalidEntry(name, f"{values[name]!r} is not text.", "Pass a string.")
    for name in ("tags", "trigger_words", "thumbnails"):
        value = values.get(name, [])
        if isinstance(value, str) or not all(isinstance(v, str) for v in value):
            raise InvalidEntry(name, f"{value!r} is not a list of strings.",
                               "Pass a list such as ['ink', 'retro'].")
    for sha in values.get("thumbnails", []):
        if not _SHA.fullmatch(sha):
            raise InvalidEntry("thumbnails", f"{sha!r} is not a blob sha256.",
                               "Store the PNG with BlobStore.put_bytes and pass what it returns.")
    if values.get("frequency") is not None and isinstance(values["frequency"], str | bytes):
        raise InvalidEntry("frequency", "is text.", "Pass a list of floats or None.")
    for name in ("embeddings", "extra"):
        if name in values and not isinstance(values[name], dict):
            raise InvalidEntry(name, f"{values[name]!r} is not a dict.", "Pass a dict.")


def slugify(text: str, max_length: int = 64) -> str:
    """'Neon Night (v2)!' → 'neon-night-v2': ASCII letters, digits and single dashes."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")
    return slug[:max_length].rstrip("-") or "style"


def fold(text: str) -> str:
    """Case-folded text for case-insensitive search (Unicode-aware, unlike SQLite's lower)."""
    return unicodedata.normalize("NFKC", text).casefold()


# --------------------------------------------------------------------------- schema

metadata = MetaData()

schema_version = Table("schema_version", metadata, Column("version", Integer, nullable=False))

styles = Table(
    "styles", metadata,
    Column("id", String(200), primary_key=True),
    Column("sha256", String(64), nullable=False, unique=True),
    Column("name", Text, nullable=False),
    Column("description", Text, nullable=False),
    Column("family", String(64), nullable=False),
    Column("format", String(64), nullable=False),
    Column("rank", Integer),
    Column("source", String(16), nullable=False),
    Column("created", Float, nullable=False),
    Column("blob", String(64), nullable=False),
    Column("thumbnails", JSON, nullable=False),
    Column("frequency", JSON(none_as_null=True)),
    Column("embeddings", JSON, nullable=False),
    Column("extra", JSON, nullable=False),
    Column("search_text", Text, nullable=False),
)

# Tags and trigger words, one row each: searchable with plain SQL on any database.
style_terms = Table(
    "style_terms", metadata,
    Column("style_id", String(200), ForeignKey("styles.id", ondelete="CASCADE"), nullable=False),
    Column("kind", String(16), nullable=False),  # "tag" | "trigger"
    Column("position", Integer, nullable=False),
    Column("value", Text, nullable=False),
    Column("folded", Text, nullable=False),
    Index("ix_style_terms_style", "style_id"),
    Index("ix_style_terms_kind_folded", "kind", "folded"),
)
_TERM_FIELDS = {"tag": "tags", "trigger": "trigger_words"}


def _migrate_v1(conn: Connection) -> None:
    """v1, the first schema: tags and trigger words as JSON lists on the style row."""
    old = MetaData()
    Table(
        "styles", old,
        Column("id", String(200), primary_key=True),
        Column("sha256", String(64), nullable=False, unique=True),
        Column("name", Text, nullable=False),
        Column("description", Text, nullable=False),
        Column("tags", JSON, nullable=False),
        Column("trigger_words", JSON, nullable=False),
        Column("family", String(64), nullable=False),
        Column("format", String(64), nullable=False),
        Column("rank", Integer),
        Column("source", String(16), nullable=False),
        Column("created", Float, nullable=False),
        Column("blob", String(64), nullable=False),
        Column("thumbnails", JSON, nullable=False),
    )
    old.create_all(conn)


def _migrate_v2(conn: Connection) -> None:
    """v2: frequency profile, embedding versions, free `extra` JSON; terms in their own table
    (tag filters in portable SQL) and a case-folded `search_text` for Unicode-aware search."""
    for column in (Column("frequency", JSON(none_as_null=True)), Column("embeddings", JSON),
                   Column("extra", JSON), Column("search_text", Text)):
        _add_column(conn, "styles", column)
    style_terms.create(conn)
    v1 = Table("styles", MetaData(), Column("id", String), Column("name", Text),
               Column("description", Text), Column("tags", JSON), Column("trigger_words", JSON),
               Column("embeddings", JSON), Column("extra", JSON), Column("search_text", Text))
    for row in conn.execute(select(v1)).mappings().all():
        conn.execute(update(v1).where(v1.c.id == row["id"]).values(
            embeddings={}, extra={}, search_text=_search_text(row["name"], row["description"])))
        _write_terms(conn, row["id"], row["tags"] or [], row["trigger_words"] or [])
    for name in ("tags", "trigger_words"):
        conn.exec_driver_sql(f"ALTER TABLE styles DROP COLUMN {name}")


def _add_column(conn: Connection, table: str, column: Column) -> None:
    """ALTER TABLE … ADD COLUMN, with the column type rendered for the connected database."""
    kind = column.type.compile(dialect=conn.dialect)
    conn.exec_driver_sql(f"ALTER TABLE {table} ADD COLUMN {column.name} {kind}")


MIGRATIONS: tuple[Callable[[Connection], None], ...] = (_migrate_v1, _migrate_v2)
SCHEMA_VERSION = len(MIGRATIONS)


def migrate(conn: Connection, url: str = "", target: int = SCHEMA_VERSION) -> int:
    """Bring the database to `target` (default: the newest) and return the version it had."""
    schema_version.create(conn, checkfirst=True)
    found = conn.execute(select(schema_version.c.version)).scalar()
    current = int(found or 0)
    if current > SCHEMA_VERSION:
        raise SchemaTooNew(url, current, SCHEMA_VERSION)
    for version in range(current + 1, target + 1):
        MIGRATIONS[version - 1](conn)
        if found is None:
            conn.execute(insert(schema_version).values(version=version))
            found = version
        else:
            conn.execute(update(schema_version).values(version=version))
    return current


def _search_text(name: str, description: str) -> str:
    return fold(f"{name}\n{description}")


def _write_terms(conn: Connection, style_id: str, tags: Sequence[str],
                 trigger_words: Sequence[str]) -> None:
    rows = [{"style_id": style_id, "kind": kind, "position": i, "value": v, "folded": fold(v)}
            for kind, values in (("tag", tags), ("trigger", trigger_words))
            for i, v in enumerate(values)]
    if rows:
        conn.execute(insert(style_terms), rows)


# --------------------------------------------------------------------------- engine set-up


_BUSY_TIMEOUT_S = 30.0


def _on_sqlite_connect(dbapi_conn, _record) -> None:
    """A busy timeout, foreign keys, WAL; let SQLAlchemy (not pysqlite) emit BEGIN."""
    dbapi_conn.isolation_level = None
    cursor = dbapi_conn.cursor()
    for pragma in (f"busy_timeout={int(_BUSY_TIMEOUT_S * 1000)}", "foreign_keys=ON"):
        cursor.execute(f"PRAGMA {pragma}")
    _enter_wal(cursor)
    cursor.close()


def _enter_wal(cursor) -> None:
    """Switch a new database file to WAL. The switch needs the file to itself, and SQLite
    answers "database is locked" at once, without its busy handler, when another process
    is opening the same new file; so wait here, as the busy timeout would."""
    deadline = time.monotonic() + _BUSY_TIMEOUT_S
    while True:
        try:
            if cursor.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _on_sqlite_begin(conn: Connection) -> None:
    """Write transactions take SQLite's write lock at BEGIN, so they queue, never deadlock."""
    conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get(_WRITE)
                         else "BEGIN")


def _engine_for(url_or_path: str | Path) -> tuple[Engine, str]:
    """An Engine for a URL ('sqlite:///…', 'postgresql://…') or a path to a SQLite file."""
    url = str(url_or_path)
    if "://" not in url:
        path = Path(url).expanduser().resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        url = f"sqlite:///{path}"
    if not url.startswith("sqlite"):
        return create_engine(url, pool_pre_ping=True), url
    memory = url in ("sqlite://", "sqlite:///:memory:")
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30},
                           poolclass=StaticPool if memory else None)
    event.listen(engine, "connect", _on_sqlite_connect)
    event.listen(engine, "begin", _on_sqlite_begin)
    return engine, url


# --------------------------------------------------------------------------- the catalog


class Catalog:
    """Style metadata: add, find, list, edit, remove; thread-safe, transactional."""

    def __init__(self, engine: Engine, url: str) -> None:
        """Use Catalog.open; this takes an engine whose schema is already current."""
        self.engine = engine
        self.url = url
        self._lock = threading.RLock()
        self._local = threading.local()

    @classmethod
    def open(cls, url_or_path: str | Path) -> Catalog:
        """Open (creating and migrating as needed) the catalog at a path or SQLAlchemy URL."""
        engine, url = _engine_for(url_or_path)
        catalog = cls(engine, url)
        with catalog._writing() as conn:
            migrate(conn, url)
        return catalog

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Catalog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- transactions

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """Every catalog write inside the block commits together, or none does.

        Nested blocks join the outer one. Other threads' writes wait until the block ends, so
        e.g. `unique_slug` then `add` inside one block cannot race another upload."""
        if getattr(self._local, "conn", None) is not None:
            yield
            return
        with self._lock, self.engine.connect() as conn:
            conn.execution_options(**{_WRITE: True})
            with conn.begin():
                self._local.conn = conn
                try:
                    yield
                finally:
                    self._local.conn = None

    @contextlib.contextmanager
    def _writing(self) -> Iterator[Connection]:
        with self.transaction():
            yield self._local.conn

    @contextlib.contextmanager
    def _reading(self) -> Iterator[Connection]:
        """This thread's open transaction (to see its own writes), else a fresh connection."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            yield conn
            return
        with self.engine.connect() as fresh:
            yield fresh

    # ---- writes

    def add(self, entry: StyleEntry) -> StyleEntry:
        """Store a new style; DuplicateId / DuplicateFile name the entry already there."""
        entry.validate()
        with self._writing() as conn:
            self._refuse_duplicates(conn, entry)
            try:
                with conn.begin_nested():
                    conn.execute(insert(styles).values(**_row(entry)))
                    _write_terms(conn, entry.id, entry.tags, entry.trigger_words)
            except IntegrityError:  # another process won a race the check above could not see
                self._refuse_duplicates(conn, entry)
                raise
        return entry

    def _refuse_duplicates(self, conn: Connection, entry: StyleEntry) -> None:
        same_id = self._get(conn, entry.id)
        if same_id is not None:
            raise DuplicateId(entry.id, same_id, "Pick another id, e.g. with "
                              "Catalog.unique_slug(name).")
        same_sha = self._by_sha256(conn, entry.sha256)
        if same_sha is not None:
            raise DuplicateFile(entry.sha256, same_sha, "This exact file is already in the "
                                "library; use that style instead of adding it again.")

    def update(self, style_id: str, **changes: Any) -> StyleEntry:
        """Change editable fields (see EDITABLE) of a style and return the updated entry."""
        fixed = set(changes) - EDITABLE
        if fixed:
            raise NotEditable(fixed)
        _check_fields(changes)
        with self._writing() as conn:
            entry = self._get(conn, style_id)
            if entry is None:
                raise StyleNotFound(style_id)
            for name, value in changes.items():
                setattr(entry, name, value)
            entry.validate()
            values = {k: v for k, v in _row(entry).items()
                      if k in changes or k == "search_text"}
            conn.execute(update(styles).where(styles.c.id == style_id).values(**values))
            if {"tags", "trigger_words"} & set(changes):
                conn.execute(delete(style_terms).where(style_terms.c.style_id == style_id))
                _write_terms(conn, style_id, entry.tags, entry.trigger_words)
        return entry

    def remove(self, style_id: str) -> StyleEntry:
        """Delete a style's row and return it (its blob and thumbnails are the caller's)."""
        with self._writing() as conn:
            entry = self._get(conn, style_id)
            if entry is None:
                raise StyleNotFound(style_id)
            conn.execute(delete(style_terms).where(style_terms.c.style_id == style_id))
            conn.execute(delete(styles).where(styles.c.id == style_id))
        return entry

    def unique_slug(self, base: str) -> str:
        """slugify(base), with -2, -3, … appended while the id is taken."""
        slug = slugify(base)
        with self._reading() as conn:
            taken = set(conn.execute(select(styles.c.id).where(or_(
                styles.c.id == slug, styles.c.id.startswith(f"{slug}-", autoescape=True)))
            ).scalars())
        candidate, n = slug, 1
        while candidate in taken:
            n += 1
            candidate = f"{slug}-{n}"
        return candidate

    # ---- reads

    def get(self, style_id: str) -> StyleEntry:
        """The style with this id; StyleNotFound if there is none."""
        with self._reading() as conn:
            entry = self._get(conn, style_id)
        if entry is None:
            raise StyleNotFound(style_id)
        return entry

    def by_sha256(self, sha256: str) -> StyleEntry | None:
        """The style whose file has this sha256, or None."""
        with self._reading() as conn:
            return self._by_sha256(conn, sha256)

    def ids(self) -> list[str]:
        with self._reading() as conn:
            return list(conn.execute(select(styles.c.id).order_by(styles.c.id)).scalars())

    def __contains__(self, style_id: object) -> bool:
        with self._reading() as conn:
            return conn.execute(select(styles.c.id).where(styles.c.id == style_id)).first() \
                is not None

    def __len__(self) -> int:
        return len(self.ids())

    def list(self, text: str | None = None, family: str | None = None,
             tags: Sequence[str] | None = None, source: str | None = None) -> list[StyleEntry]:
        """Styles matching every filter given, ordered by id.

        text: case-insensitive substring of the name, description, a tag or a trigger word;
        tags: the style has all of them (case-insensitive); family, source: exact."""
        where = []
        if text:
            needle = fold(text)
            where.append(or_(
                styles.c.search_text.contains(needle, autoescape=True),
                _has_term(style_terms.c.folded.contains(needle, autoescape=True))))
        for tag in tags or ():
            where.append(_has_term(style_terms.c.kind == "tag",
                                   style_terms.c.folded == fold(tag)))
        if family is not None:
            where.append(styles.c.family == family)
        if source is not None:
            where.append(styles.c.source == source)
        with self._reading() as conn:
            return self._select(conn, and_(*where) if where else None)

    # ---- row ↔ entry

    def _get(self, conn: Connection, style_id: str) -> StyleEntry | None:
        found = self._select(conn, styles.c.id == style_id)
        return found[0] if found else None

    def _by_sha256(self, conn: Connection, sha256: str) -> StyleEntry | None:
        found = self._select(conn, styles.c.sha256 == sha256)
        return found[0] if found else None

    @staticmethod
    def _select(conn: Connection, where) -> list[StyleEntry]:
        """Entries for the rows matching `where` (all if None): two queries, whatever the count."""
        query = select(styles).order_by(styles.c.id)
        if where is not None:
            query = query.where(where)
        rows = conn.execute(query).mappings().all()
        if not rows:
            return []
        terms_query = select(style_terms).order_by(style_terms.c.style_id, style_terms.c.kind,
                                                   style_terms.c.position)
        if where is not None:
            terms_query = terms_query.where(
                style_terms.c.style_id.in_(select(styles.c.id).where(where)))
        terms: dict[str, dict[str, list[str]]] = {}
        for term in conn.execute(terms_query).mappings():
            by_kind = terms.setdefault(term["style_id"], {"tags": [], "trigger_words": []})
            by_kind[_TERM_FIELDS[term["kind"]]].append(term["value"])
        return [_entry(row, terms.get(row["id"], {})) for row in rows]


def _has_term(*conditions) -> Any:
    """EXISTS a style_terms row of the outer `styles` row meeting the conditions."""
    return exists().where(style_terms.c.style_id == styles.c.id, *conditions).correlate(styles)


def _row(entry: StyleEntry) -> dict[str, Any]:
    """The `styles` row of an entry (tags and trigger words go to `style_terms`)."""
    return {
        "id": entry.id, "sha256": entry.sha256, "name": entry.name,
        "description": entry.description, "family": entry.family, "format": entry.format,
        "rank": entry.rank, "source": entry.source, "created": float(entry.created),
        "blob": entry.blob, "thumbnails": list(entry.thumbnails),
        "frequency": None if entry.frequency is None else [float(v) for v in entry.frequency],
        "embeddings": dict(entry.embeddings), "extra": dict(entry.extra),
        "search_text": _search_text(entry.name, entry.description),
    }


def _entry(row: Any, terms: dict[str, list[str]]) -> StyleEntry:
    return StyleEntry(
        id=row["id"], sha256=row["sha256"], name=row["name"], description=row["description"],
        tags=terms.get("tags", []), trigger_words=terms.get("trigger_words", []),
        family=row["family"], format=row["format"], rank=row["rank"], source=row["source"],
        created=row["created"], blob=row["blob"], thumbnails=list(row["thumbnails"] or []),
        frequency=row["frequency"], embeddings=dict(row["embeddings"] or {}),
        extra=dict(row["extra"] or {}))
