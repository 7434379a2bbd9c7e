"""Local storage: atomic puts, safe keys, scratch sweeping."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from reelgen.config import Settings
from reelgen.errors import ErrorCode, ReelgenError
from reelgen.storage import pick
from reelgen.storage.local import LocalStorage


@pytest.fixture
def storage(tmp_path: Path) -> LocalStorage:
    store = pick(Settings(data_dir=tmp_path))
    assert isinstance(store, LocalStorage)
    return store


def test_put_moves_scratch_file_into_place(storage: LocalStorage, tmp_path: Path) -> None:
    scratch = storage.temp_path("task1.1.w.mp4")
    assert scratch.parent == (tmp_path / "outputs" / "tmp").resolve()
    scratch.write_bytes(b"video")
    storage.put("task1/1.mp4", scratch)
    assert not scratch.exists()
    assert storage.exists("task1/1.mp4")
    assert storage.size("task1/1.mp4") == 5
    with storage.open("task1/1.mp4") as f:
        assert f.read() == b"video"
    assert storage.local_path("task1/1.mp4") == (tmp_path / "outputs" / "task1" / "1.mp4").resolve()
    assert storage.presigned_url("task1/1.mp4", 60) is None


def test_put_replaces_and_copies_from_elsewhere(storage: LocalStorage, tmp_path: Path) -> None:
    src = tmp_path / "elsewhere.mp4"
    src.write_bytes(b"first")
    storage.put("t/1.mp4", src)
    src.write_bytes(b"second!")
    storage.put("t/1.mp4", src)
    assert storage.size("t/1.mp4") == 7
    assert not src.exists()
    assert list(storage.tmp.iterdir()) == []


def test_delete_removes_object_and_empty_directory(storage: LocalStorage) -> None:
    scratch = storage.temp_path("x.mp4")
    scratch.write_bytes(b"x")
    storage.put("t2/1.mp4", scratch)
    assert storage.delete("t2/1.mp4") is True
    assert storage.delete("t2/1.mp4") is False
    assert not (storage.root / "t2").exists()
    with pytest.raises(ReelgenError) as err:
        storage.open("t2/1.mp4")
    assert err.value.code == ErrorCode.NOT_FOUND
    with pytest.raises(ReelgenError):
        storage.size("t2/1.mp4")


@pytest.mark.parametrize("key", ["", "/etc/passwd", "../x", "a/../../x", "a//b", "a\\b", "tmp/x.mp4", "a/./b"])
def test_unsafe_keys_are_refused(storage: LocalStorage, key: str) -> None:
    with pytest.raises(ReelgenError) as err:
        storage.exists(key)
    assert err.value.code == ErrorCode.NOT_FOUND


@pytest.mark.parametrize("name", ["", "..", "a/b", "../x"])
def test_unsafe_scratch_names_are_refused(storage: LocalStorage, name: str) -> None:
    with pytest.raises(ValueError):
        storage.temp_path(name)


def test_sweep_temp_removes_only_old_scratch_files(storage: LocalStorage) -> None:
    assert storage.sweep_temp(3600) == 0  # no scratch directory yet
    old = storage.temp_path("old.mp4")
    old.write_bytes(b"o")
    hour_ago = time.time() - 3601
    os.utime(old, (hour_ago, hour_ago))
    fresh = storage.temp_path("fresh.mp4")
    fresh.write_bytes(b"f")
    scratch = storage.temp_path("kept.mp4")
    scratch.write_bytes(b"k")
    storage.put("t3/1.mp4", scratch)
    assert storage.sweep_temp(3600) == 1
    assert not old.exists()
    assert fresh.exists()
    assert storage.exists("t3/1.mp4")
