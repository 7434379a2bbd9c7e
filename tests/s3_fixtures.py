"""S3-compatible servers on loopback, started by the test: STAND-INS FOR A CLOUD BUCKET.

We cannot reach a cloud bucket from here, so the S3 backend is exercised against real S3 server
processes speaking the S3 HTTP API on 127.0.0.1:

* ``moto``: moto's standalone server (``python -m moto.server``), a Python process. It stores
  objects and answers ranged and presigned GETs, but it does not check signatures or the expiry
  of presigned URLs.
* ``s3rver``: the s3rver Node.js server (``make install`` puts it under ``.venv/node``), which
  verifies SigV4 signatures, including the ``X-Amz-Expires`` of presigned URLs: the expiry test
  runs against it.

Under ``CI=true`` a missing server fails the test; elsewhere it is skipped with the reason.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
S3RVER_JS = Path(os.environ.get("REELGEN_TEST_S3RVER") or ROOT / ".venv/node/node_modules/s3rver/bin/s3rver.js")
START_DEADLINE = 60.0


@dataclass(frozen=True)
class S3Server:
    kind: str
    endpoint_url: str
    access_key_id: str
    secret_access_key: str
    region: str = "us-east-1"
    #: whether the server rejects expired presigned URLs
    checks_expiry: bool = False

    def client(self) -> object:
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=self.region,
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
            config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
        )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_listening(proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
    deadline = time.monotonic() + START_DEADLINE
    while True:
        if proc.poll() is not None:
            pytest.fail(f"the S3 stand-in exited with {proc.returncode}:\n{log.read_text(errors='replace')[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                pytest.fail(f"the S3 stand-in did not listen within {START_DEADLINE:.0f} s")
            time.sleep(0.1)


def _missing(why: str) -> None:
    if os.environ.get("CI", "").lower() in ("true", "1"):
        pytest.fail(f"{why}; CI=true requires it", pytrace=False)
    pytest.skip(why)


@contextmanager
def s3_server(kind: str, workdir: Path) -> Iterator[S3Server]:
    """Start one stand-in server process on a free loopback port; stop it afterwards."""
    port = _free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / f"{kind}.log"
    if kind == "moto":
        cmd = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
        server = S3Server(kind, f"http://127.0.0.1:{port}", "testing", "testing")
    else:
        node = shutil.which("node")
        if node is None or not S3RVER_JS.is_file():
            _missing(f"s3rver needs node and {S3RVER_JS} (make install puts it there)")
        assert node is not None
        data = workdir / "s3rver-data"
        data.mkdir(exist_ok=True)
        cmd = [node, str(S3RVER_JS), "-d", str(data), "-a", "127.0.0.1", "-p", str(port), "--no-vhost-buckets"]
        server = S3Server(kind, f"http://127.0.0.1:{port}", "S3RVER", "S3RVER", checks_expiry=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    try:
        _wait_listening(proc, port, log)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(params=["moto", "s3rver"])
def s3(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[S3Server]:
    """A running S3 stand-in of each kind."""
    with s3_server(request.param, tmp_path / "s3") as server:
        yield server
