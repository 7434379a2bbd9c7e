"""Outputs as files under ``settings.outputs_dir``; the API serves them behind its own signed URLs.

Layout: ``<outputs_dir>/<task id>/<attempt>.mp4`` for stored objects and ``<outputs_dir>/tmp/``
for scratch files. Scratch files sit on the same filesystem as the objects, so ``put`` is an
``os.replace`` (atomic on POSIX) after an ``fsync`` of the data, followed by an ``fsync`` of the
directory so the rename survives a power cut.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from reelgen.errors import ErrorCode, ReelgenError
from reelgen.storage.base import check_key, check_temp_name, sweep_dir

if TYPE_CHECKING:
    from reelgen.config import Settings

TEMP_DIR = "tmp"


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # some filesystems refuse fsync on directories
        _fsync_file(path)


class LocalStorage:
    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.tmp = self.root / TEMP_DIR

    @classmethod
    def from_settings(cls, settings: Settings) -> LocalStorage:
        return cls(settings.outputs_dir)

    def _path(self, key: str) -> Path:
        check_key(key)
        if key.split("/", 1)[0] == TEMP_DIR:
            raise ReelgenError(ErrorCode.NOT_FOUND, "No such stored object.")
        return self.root / key

    def temp_path(self, name: str) -> Path:
        self.tmp.mkdir(parents=True, exist_ok=True)
        return self.tmp / check_temp_name(name)

    def put(self, key: str, src_path: Path) -> None:
        dest = self._path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        self.tmp.mkdir(parents=True, exist_ok=True)
        if os.stat(src_path).st_dev == os.stat(self.tmp).st_dev:
            staged = Path(src_path)
        else:  # another filesystem: copy next to the destination first, so the final step is a rename
            staged = self.tmp / f"put-{uuid.uuid4().hex}"
            shutil.copyfile(src_path, staged)
        try:
            _fsync_file(staged)
            os.replace(staged, dest)
        except BaseException:
            if staged != Path(src_path):
                staged.unlink(missing_ok=True)
            raise
        if staged != Path(src_path):
            Path(src_path).unlink(missing_ok=True)
        _fsync_dir(dest.parent)

    def open(self, key: str) -> BinaryIO:
        """The object's file; ``NOT_FOUND`` unless it is a regular file. Opened without blocking
        (a FIFO in its place would otherwise wait for a writer forever), then checked by ``fstat``
        on the open descriptor, so nothing can be swapped in between the check and the read."""
        try:
            fd = os.open(self._path(key), os.O_RDONLY | os.O_NONBLOCK)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ReelgenError(ErrorCode.NOT_FOUND, "No such stored object.") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise ReelgenError(ErrorCode.NOT_FOUND, "No such stored object.")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")

    def size(self, key: str) -> int:
        path = self._path(key)
        if not path.is_file():
            raise ReelgenError(ErrorCode.NOT_FOUND, "No such stored object.")
        return path.stat().st_size

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> bool:
        path = self._path(key)
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        with contextlib.suppress(OSError):  # the task's directory, once empty
            path.parent.rmdir()
        return True

    def local_path(self, key: str) -> Path | None:
        return self._path(key)

    def presigned_url(self, key: str, expires_in: int) -> str | None:
        return None

    def sweep_temp(self, older_than_seconds: float) -> int:
        return sweep_dir(self.tmp, older_than_seconds)
