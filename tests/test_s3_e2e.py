"""One task end to end with outputs in a bucket: the API, its worker subprocess and the tiny engine,
with an S3 stand-in server process on loopback (moto's standalone server; see tests/s3_fixtures.py)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx

from reelgen import media
from reelgen.store import ledger
from reelgen.store.db import Database
from tests.api_fixtures import LiveServer, make_ctx, make_settings
from tests.factories import generate_body, make_account
from tests.s3_fixtures import s3_server
from tests.test_storage_s3 import bucket_settings


def test_end_to_end_task_with_s3_storage(tmp_path: Path) -> None:
    """The API and its worker subprocess with outputs in a bucket (moto stand-in): download by
    presigned URL, by the API's signed link and by ``?mode=proxy`` with Range, all the same bytes."""
    with s3_server("moto", tmp_path / "s3") as server:
        db = Database(f"sqlite:///{tmp_path / 'reelgen.db'}")
        db.upgrade()
        base = bucket_settings(tmp_path, server, "e2e-bucket")
        settings = make_settings(tmp_path, db, **{k: getattr(base, k) for k in _S3_FIELDS})
        ctx = make_ctx(settings, db)
        owner = make_account(ctx, credits=1000, name="owner")
        try:
            with (
                LiveServer(ctx, start_executor=True) as live,
                httpx.Client(base_url=live.url, headers=owner.headers, timeout=30) as c,
            ):
                sub = c.post("/api/v1/generate", json=generate_body(duration=3)).json()["data"]
                task = _wait_terminal(c, sub["id"])
                assert task["status"] == "completed", task["error"]

                presigned = c.get(f"/api/v1/tasks/{sub['id']}/download").json()["data"]["url"]
                assert presigned.startswith(server.endpoint_url + "/e2e-bucket/outputs/v1/")
                raw = httpx.get(presigned).content
                path = tmp_path / "out.mp4"
                path.write_bytes(raw)
                info = media.probe(path)
                assert abs(info.duration - 3.0) <= 1 / 24 + 1e-6 and info.has_audio

                proxied = c.get(f"/api/v1/tasks/{sub['id']}/download?mode=proxy")
                assert proxied.status_code == 200 and proxied.headers["content-type"] == "video/mp4"
                assert proxied.content == raw and int(proxied.headers["content-length"]) == len(raw)
                part = c.get(f"/api/v1/tasks/{sub['id']}/download?mode=proxy", headers={"Range": "bytes=10-19"})
                assert part.status_code == 206 and part.content == raw[10:20]
                assert part.headers["content-range"] == f"bytes 10-19/{len(raw)}"
                tail = c.get(f"/api/v1/tasks/{sub['id']}/download?mode=proxy", headers={"Range": "bytes=-7"})
                assert tail.status_code == 206 and tail.content == raw[-7:]
                beyond = c.get(
                    f"/api/v1/tasks/{sub['id']}/download?mode=proxy", headers={"Range": f"bytes={len(raw)}-"}
                )
                assert beyond.status_code == 416

                signed = task["result"]["url"]  # the API's own signed link streams from the bucket too
                assert signed.startswith(live.url + "/api/v1/files/")
                assert httpx.get(signed).content == raw
            # nothing was kept on local disk: outputs live in the bucket, scratch files are gone
            assert not settings.outputs_dir.exists() or not any(settings.outputs_dir.rglob("*.mp4"))
            assert not any((settings.data_dir / "scratch").glob("*"))
            assert db.run(ledger.check) == []
        finally:
            db.dispose()


_S3_FIELDS = ("storage", "s3_endpoint_url", "s3_region", "s3_access_key_id", "s3_secret_access_key")


def _wait_terminal(c: httpx.Client, task_id: str, timeout: float = 180.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        data: dict[str, Any] = c.get(f"/api/v1/tasks/{task_id}").json()["data"]
        if data["status"] in ("completed", "failed", "cancelled"):
            return data
        time.sleep(0.2)
    raise AssertionError(f"task {task_id} did not finish in {timeout} s")
