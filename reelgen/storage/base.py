"""The storage protocol: where finished outputs live, and how they get there atomically.

A key names one stored object (``"<task id>/<attempt>.mp4"``). Writers never produce a file in
place: they write to ``temp_path(...)`` (an attempt-specific scratch name, on the same filesystem
as the store where the backend can manage that) and then ``put`` it, which moves or uploads it
into place in one step, so a reader sees either nothing or the whole file. Scratch files left
behind by a crashed writer are removed by ``sweep_temp``.
"""

from __future__ import annotations

import errno
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Protocol

from reelgen.errors import ErrorCode, ReelgenError


class Storage(Protocol):
    def temp_path(self, name: str) -> Path:
        """A local scratch path for ``name`` (unique per task attempt) to write an output into before ``put``."""
        ...

    def put(self, key: str, src_path: Path) -> None:
        """Move (or copy, then remove) ``src_path`` to ``key`` atomically: readers never see a partial object."""
        ...

    def open(self, key: str) -> BinaryIO:
        """Open the object for reading; raises ``ReelgenError(NOT_FOUND)`` if it does not exist."""
        ...

    def size(self, key: str) -> int:
        """Size in bytes; raises ``ReelgenError(NOT_FOUND)`` if it does not exist."""
        ...

    def exists(self, key: str) -> bool: ...

    def delete(self, key: str) -> bool:
        """Remove the object; returns whether there was one."""
        ...

    def local_path(self, key: str) -> Path | None:
        """The object's path on this machine (the API serves it itself), or None for remote storage."""
        ...

    def presigned_url(self, key: str, expires_in: int) -> str | None:
        """A URL the client can fetch directly for ``expires_in`` seconds, or None when the API must sign its own."""
        ...

    def sweep_temp(self, older_than_seconds: float) -> int:
        """Remove scratch files not modified for ``older_than_seconds``; returns how many were removed."""
        ...


#: ``errno`` values of a disk that cannot take data now: full, over quota, mounted read-only.
NO_ROOM_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})
#: ``Retry-After`` (seconds) of a write refused for want of room.
NO_ROOM_RETRY_SECONDS = 30


@contextmanager
def room_to_write() -> Iterator[None]:
    """Turn a write refused by a full or read-only disk into ``SERVICE_UNAVAILABLE`` with
    ``Retry-After`` (a condition the operator fixes, not a bug); other ``OSError``s pass unchanged."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in NO_ROOM_ERRNOS:
            raise
        raise ReelgenError(
            ErrorCode.SERVICE_UNAVAILABLE,
            "Storage is full or read-only; retry later.",
            headers={"Retry-After": str(NO_ROOM_RETRY_SECONDS)},
        ) from exc


def check_key(key: str) -> str:
    """Refuse keys that could escape the store: absolute, ``..``, backslashes, empty parts, odd characters."""
    parts = key.split("/")
    ok = (
        bool(key)
        and len(key) <= 512
        and all(p and p not in (".", "..") for p in parts)
        and all(c.isalnum() or c in "-_./" for c in key)
    )
    if not ok:
        raise ReelgenError(ErrorCode.NOT_FOUND, "No such stored object.")
    return key


def check_temp_name(name: str) -> str:
    """A scratch name is one path component of safe characters."""
    if not name or name in (".", "..") or not all(c.isalnum() or c in "-_." for c in name):
        raise ValueError(f"invalid scratch file name {name!r}")
    return name


def sweep_dir(directory: Path, older_than_seconds: float) -> int:
    """Remove the files directly in ``directory`` not modified for ``older_than_seconds``; returns
    how many. The one scratch sweep behind every backend's ``sweep_temp``."""
    if not directory.is_dir():
        return 0
    cutoff = time.time() - older_than_seconds
    removed = 0
    for entry in directory.iterdir():
        try:
            if entry.is_file() and entry.stat().st_mtime < cutoff:
                entry.unlink()
                removed += 1
        except FileNotFoundError:  # removed concurrently (a put, or another sweeper)
            continue
    return removed
