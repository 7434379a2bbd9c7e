"""S3 storage against real S3-compatible server processes on loopback.

The servers are STAND-INS FOR A CLOUD BUCKET (see ``tests/s3_fixtures.py``): moto's standalone
server and s3rver, each a separate process speaking the S3 HTTP API. No part of reelgen is faked.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from reelgen.config import Settings
from reelgen.errors import ErrorCode, ReelgenError
from reelgen.storage import pick
from reelgen.storage.s3 import S3Storage
from tests.s3_fixtures import S3Server, s3_server

PAYLOAD = bytes(range(256)) * 4096 + b"tail"  # 1 MiB + 4 bytes: more than one read chunk


def bucket_settings(tmp_path: Path, s3: S3Server, bucket: str, **extra: Any) -> Settings:
    s3.client().create_bucket(Bucket=bucket)  # type: ignore[attr-defined]
    return Settings(
        data_dir=tmp_path / "data",
        storage=f"s3://{bucket}/outputs/v1",
        s3_endpoint_url=s3.endpoint_url,
        s3_region=s3.region,
        s3_access_key_id=s3.access_key_id,
        s3_secret_access_key=s3.secret_access_key,
        **extra,
    )


@pytest.fixture
def storage(tmp_path: Path, s3: S3Server) -> Iterator[S3Storage]:
    chosen = pick(bucket_settings(tmp_path, s3, "reelgen-test"))
    assert isinstance(chosen, S3Storage)
    yield chosen


def put_bytes(storage: S3Storage, key: str, data: bytes) -> Path:
    scratch = storage.temp_path("upload.mp4")
    scratch.write_bytes(data)
    storage.put(key, scratch)
    return scratch


def test_upload_open_seek_size_delete(storage: S3Storage, s3: S3Server) -> None:
    key = "task1/1.mp4"
    assert not storage.exists(key)
    scratch = put_bytes(storage, key, PAYLOAD)
    assert not scratch.exists(), "put removes the uploaded scratch file"
    assert storage.local_path(key) is None
    # the object really is in the bucket, under the prefix
    head = s3.client().head_object(Bucket="reelgen-test", Key="outputs/v1/task1/1.mp4")  # type: ignore[attr-defined]
    assert head["ContentLength"] == len(PAYLOAD)
    assert storage.exists(key) and storage.size(key) == len(PAYLOAD)
    with storage.open(key) as f:
        assert f.read() == PAYLOAD
    with storage.open(key) as f:  # seeking starts a ranged read
        f.seek(1_000_000)
        assert f.read(10) == PAYLOAD[1_000_000:1_000_010]
        f.seek(3)
        assert f.read(5) == PAYLOAD[3:8]
        f.seek(-4, 2)
        assert f.read() == b"tail"
    assert storage.delete(key) is True
    assert storage.delete(key) is False
    assert not storage.exists(key)
    with pytest.raises(ReelgenError) as err:
        storage.open(key)
    assert err.value.code is ErrorCode.NOT_FOUND
    with pytest.raises(ReelgenError):
        storage.size("../escape")


def test_presigned_download_has_the_right_bytes(storage: S3Storage, s3: S3Server) -> None:
    put_bytes(storage, "task2/1.mp4", PAYLOAD)
    url = storage.presigned_url("task2/1.mp4", 300)
    assert url is not None and url.startswith(s3.endpoint_url) and "X-Amz-Expires=300" in url
    reply = httpx.get(url)
    assert reply.status_code == 200
    assert reply.content == PAYLOAD
    assert reply.headers["content-type"] == "video/mp4"


def test_presigned_url_expires(tmp_path: Path) -> None:
    """Against s3rver, which verifies SigV4 presigned URLs: 200 before ``expires_in`` passes, 403 after."""
    with s3_server("s3rver", tmp_path / "s3") as server:
        chosen = pick(bucket_settings(tmp_path, server, "expiry-test"))
        assert isinstance(chosen, S3Storage)
        put_bytes(chosen, "t/1.mp4", PAYLOAD)
        expires_in = 3
        signed_at = int(time.time())  # X-Amz-Date has whole seconds, taken at signing
        url = chosen.presigned_url("t/1.mp4", expires_in)
        assert url is not None
        first = httpx.get(url)
        assert first.status_code == 200 and first.content == PAYLOAD
        deadline = time.monotonic() + expires_in + 10
        while True:  # poll until the server refuses the link
            reply = httpx.get(url)
            if reply.status_code != 200:
                break
            assert time.monotonic() < deadline, "the presigned URL never expired"
            time.sleep(0.25)
        refused_at = time.time()
        assert reply.status_code == 403
        assert "expired" in reply.text.lower()
        assert refused_at >= signed_at + expires_in - 1, "refused before its expiry"


def test_sweep_temp_removes_old_scratch_files(storage: S3Storage) -> None:
    import os

    old = storage.temp_path("old.1.mp4")
    old.write_bytes(b"x")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    fresh = storage.temp_path("fresh.1.mp4")
    fresh.write_bytes(b"y")
    assert storage.sweep_temp(3600) == 1
    assert not old.exists() and fresh.exists()


def test_missing_boto3_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "boto3", None)  # makes `import boto3` raise ImportError
    settings = Settings(data_dir=tmp_path, storage="s3://bucket/prefix")
    with pytest.raises(ReelgenError) as err:
        pick(settings)
    assert err.value.code is ErrorCode.INVALID_SETTINGS
    assert "pip install 'reelgen[s3]'" in err.value.message


@pytest.mark.parametrize("value", ["s3://", "s3:///prefix", "gs://bucket", "bucket"])
def test_storage_setting_is_validated(value: str) -> None:
    with pytest.raises(ValueError, match="storage"):
        Settings(storage=value)
