"""Content-addressed blob store: each file kept once, under its sha256, written atomically.

A blob is `root/ab/cdef…` (the first two hex digits of the sha256 name a folder, the other 62
the file). Writes go to a temp file in that folder, are fsynced, then renamed into place, so a
crash leaves either the whole blob or a temp file that `sweep` removes; never a half blob under
a real name. Past one machine the same interface maps onto S3-compatible storage.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

CHUNK = 1 << 20
TEMP_PREFIX = ".tmp-"
_SHA = re.compile(r"[0-9a-f]{64}")
_SHARD = re.compile(r"[0-9a-f]{2}")


class BlobError(Exception):
    """A blob store operation that cannot be done, with what to do about it."""


class BadBlobId(BlobError, ValueError):
    """A blob id that is not a lowercase hex sha256."""

    def __init__(self, sha: str) -> None:
        self.sha = sha
        super().__init__(f"{sha!r} is not a blob id: pass the 64-character lowercase hex sha256 "
                         "returned by put_file/put_bytes.")


class SourceChanged(BlobError):
    """The file being stored changed while it was copied."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        super().__init__(f"{self.path}: the file changed while it was being stored; wait until "
                         "it is completely written, then store it again.")


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _copy(source: BinaryIO, handle: BinaryIO) -> str:
    """Copy in chunks; return the sha256 of the bytes copied."""
    digest = hashlib.sha256()
    while chunk := source.read(CHUNK):
        digest.update(chunk)
        handle.write(chunk)
    return digest.hexdigest()


def _check(sha: str) -> str:
    if not isinstance(sha, str) or not _SHA.fullmatch(sha):
        raise BadBlobId(str(sha))
    return sha


def _fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable (POSIX; a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):  # some file systems refuse fsync on a folder
            os.fsync(fd)
    finally:
        os.close(fd)


class BlobStore:
    """Files kept once each by sha256 under `root`; safe to use from several threads."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, sha: str) -> Path:
        """Where the blob `sha` lives (whether or not it exists)."""
        _check(sha)
        return self.root / sha[:2] / sha[2:]

    def has(self, sha: str) -> bool:
        return self.path(sha).is_file()

    def put_bytes(self, data: bytes) -> str:
        """Store `data` and return its sha256 (an existing blob is left as it is)."""
        sha = hashlib.sha256(data).hexdigest()
        if not self.has(sha):
            self._write(sha, lambda handle: _copy(io.BytesIO(data), handle), data_name="bytes")
        return sha

    def put_file(self, path: str | Path) -> str:
        """Store a copy of the file at `path` and return its sha256."""
        sha = sha256_file(path)
        if not self.has(sha):
            with open(path, "rb") as source:
                self._write(sha, lambda handle: _copy(source, handle), data_name=path)
        return sha

    def _write(self, sha: str, fill: Callable[[BinaryIO], str], data_name: str | Path) -> None:
        """Temp file in the blob's folder → fsync → atomic rename → fsync the folder.

        `fill` writes the content and returns the sha256 of what it wrote, which must be `sha`
        (a file rewritten between hashing and copying is refused, not stored under a wrong id)."""
        target = self.path(sha)
        target.parent.mkdir(parents=True, exist_ok=True)
        temp = target.parent / f"{TEMP_PREFIX}{uuid.uuid4().hex}"
        try:
            with open(temp, "wb") as handle:
                written = fill(handle)
                handle.flush()
                os.fsync(handle.fileno())
            if written != sha:
                raise SourceChanged(data_name)
            os.replace(temp, target)
        finally:
            temp.unlink(missing_ok=True)
        _fsync_dir(target.parent)

    def delete(self, sha: str) -> bool:
        """Remove a blob; True if it existed."""
        try:
            self.path(sha).unlink()
        except FileNotFoundError:
            return False
        return True  # the shard folder stays: a concurrent put may be about to write into it

    def shas(self) -> list[str]:
        """Every stored blob, sorted (temp files are not blobs)."""
        return sorted(sha for sha, _ in self._entries() if sha is not None)

    def sweep(self, keep: set[str]) -> list[str]:
        """Delete every blob not in `keep` and every leftover temp file; return what went.

        Returned items are blob shas, and temp files as `ab/.tmp-…` paths relative to root.
        For crash recovery on open: call it while no put is in flight (a put's temp file
        would be swept)."""
        removed = []
        for sha, path in self._entries():
            if sha is not None and sha in keep:
                continue
            path.unlink(missing_ok=True)
            removed.append(sha if sha is not None else path.relative_to(self.root).as_posix())
        for shard in self._shards():
            self._drop_if_empty(shard)
        return removed

    def _shards(self) -> list[Path]:
        return sorted(p for p in self.root.iterdir() if p.is_dir() and _SHARD.fullmatch(p.name))

    def _entries(self) -> list[tuple[str | None, Path]]:
        """(sha or None for a temp file, path) for every file in the shard folders."""
        out: list[tuple[str | None, Path]] = []
        for shard in self._shards():
            for path in sorted(shard.iterdir()):
                if path.name.startswith(TEMP_PREFIX):
                    out.append((None, path))
                elif path.is_file() and _SHA.fullmatch(shard.name + path.name):
                    out.append((shard.name + path.name, path))
        return out

    @staticmethod
    def _drop_if_empty(folder: Path) -> None:
        with contextlib.suppress(OSError):  # not empty: shard folders are tidied, never required
            folder.rmdir()

