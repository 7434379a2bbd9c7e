"""Outputs in an S3-compatible bucket (AWS S3, MinIO, Ceph RGW, R2, ...) through boto3.

``REELGEN_STORAGE=s3://bucket/prefix`` selects it; ``s3_endpoint_url``, ``s3_region`` and the
access key settings say where and as whom (unset credentials fall back to boto3's own chain:
environment, shared config, instance role). An object is ``<prefix>/<task id>/<attempt>.mp4``.

Writers render into a scratch file on local disk (``<data dir>/scratch/``) and ``put`` uploads it
with ``upload_file``; an S3 PUT (multipart included) becomes visible only once complete, so a
reader sees the whole object or nothing. Clients download with presigned, expiring GET URLs; the
API's own links and ``?mode=proxy`` stream the object through ``open``, which is seekable (each
seek starts a ranged GET), so HTTP Range requests work too.

boto3 is imported only here, and only when this backend is chosen (``pip install 'reelgen[s3]'``).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from reelgen.errors import ErrorCode, ReelgenError
from reelgen.storage.base import check_key, check_temp_name, sweep_dir

if TYPE_CHECKING:
    from reelgen.config import Settings

INSTALL_HINT = "pip install 'reelgen[s3]'"
SCRATCH_DIR = "scratch"
_MISSING = ("404", "NoSuchKey", "NotFound", "NoSuchBucket")


def parse_url(url: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` → ``("bucket", "some/prefix")``."""
    if not url.startswith("s3://"):
        raise ReelgenError(ErrorCode.INVALID_SETTINGS, f"storage {url!r} is not an s3:// URL")
    bucket, _, prefix = url[5:].partition("/")
    if not bucket:
        raise ReelgenError(ErrorCode.INVALID_SETTINGS, f"storage {url!r} names no bucket")
    return bucket, prefix.strip("/")


def _is_missing(exc: Exception) -> bool:
    response = getattr(exc, "response", None)
    code = str(response.get("Error", {}).get("Code", "")) if isinstance(response, dict) else ""
    return code in _MISSING


class S3Storage:
    def __init__(
        self,
        bucket: str,
        prefix: str,
        scratch_dir: Path,
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
    ) -> None:
        try:
            import boto3
            from botocore.config import Config
        except ImportError:
            raise ReelgenError(
                ErrorCode.INVALID_SETTINGS,
                f"S3 storage needs boto3, which is not installed: run {INSTALL_HINT}",
            ) from None
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.scratch = scratch_dir.resolve()
        # A custom endpoint (MinIO, Ceph, a loopback test server) usually has no wildcard DNS for
        # virtual-hosted buckets: address them by path there.
        config = Config(
            signature_version="s3v4",
            s3={"addressing_style": "path" if endpoint_url else "auto"},
            retries={"max_attempts": 5, "mode": "standard"},
        )
        self.client: Any = boto3.client(
            "s3",
            endpoint_url=endpoint_url,
            region_name=region,
            aws_access_key_id=access_key_id,
            aws_secret_access_key=secret_access_key,
            config=config,
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> S3Storage:
        bucket, prefix = parse_url(settings.storage)
        return cls(
            bucket,
            prefix,
            settings.data_dir / SCRATCH_DIR,
            endpoint_url=settings.s3_endpoint_url,
            region=settings.s3_region,
            access_key_id=settings.s3_access_key_id,
            secret_access_key=settings.s3_secret_access_key,
        )

    def object_key(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def temp_path(self, name: str) -> Path:
        self.scratch.mkdir(parents=True, exist_ok=True)
        return self.scratch / check_temp_name(name)

    def put(self, key: str, src_path: Path) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.upload_file(str(src_path), self.bucket, self.object_key(key))
        except (BotoCoreError, ClientError) as exc:  # the worker treats OSError as "storing failed"
            raise OSError(f"uploading to s3://{self.bucket}/{self.object_key(key)} failed: {exc}") from exc
        Path(src_path).unlink(missing_ok=True)

    def open(self, key: str) -> BinaryIO:
        size = self.size(key)
        return io.BufferedReader(_S3Reader(self.client, self.bucket, self.object_key(key), size), 1024 * 1024)

    def size(self, key: str) -> int:
        from botocore.exceptions import ClientError

        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self.object_key(key))
        except ClientError as exc:
            if _is_missing(exc):
                raise ReelgenError(ErrorCode.NOT_FOUND, "No such stored object.") from None
            raise
        return int(head["ContentLength"])

    def exists(self, key: str) -> bool:
        try:
            self.size(key)
        except ReelgenError:
            return False
        return True

    def delete(self, key: str) -> bool:
        if not self.exists(key):
            return False
        self.client.delete_object(Bucket=self.bucket, Key=self.object_key(key))
        return True

    def local_path(self, key: str) -> Path | None:
        return None

    def presigned_url(self, key: str, expires_in: int) -> str | None:
        url: str = self.client.generate_presigned_url(
            "get_object",
            Params={
                "Bucket": self.bucket,
                "Key": self.object_key(key),
                "ResponseContentType": "video/mp4",
            },
            ExpiresIn=int(expires_in),
        )
        return url

    def sweep_temp(self, older_than_seconds: float) -> int:
        return sweep_dir(self.scratch, older_than_seconds)


class _S3Reader(io.RawIOBase):
    """A seekable, read-only view of one object: reads stream a GET from the current position,
    and a seek drops that stream so the next read starts a ranged GET at the new position."""

    def __init__(self, client: Any, bucket: str, key: str, size: int) -> None:
        super().__init__()
        self._client, self._bucket, self._key, self._size = client, bucket, key, size
        self._pos = 0
        self._body: Any = None

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        pos = max(0, base + offset)
        if pos != self._pos:
            self._drop()
            self._pos = pos
        return self._pos

    def readinto(self, buffer: Any) -> int:
        if self._pos >= self._size or len(buffer) == 0:
            return 0
        if self._body is None:
            reply = self._client.get_object(Bucket=self._bucket, Key=self._key, Range=f"bytes={self._pos}-")
            self._body = reply["Body"]
        data = self._body.read(len(buffer))
        n = len(data)
        buffer[:n] = data
        self._pos += n
        return n

    def _drop(self) -> None:
        if self._body is not None:
            self._body.close()
            self._body = None

    def close(self) -> None:
        self._drop()
        super().close()
