"""Uploads through the HTTP API: the same checks as fetched images, ownership at submit, and a
real worker reading an upload from storage (no network fetch)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from reelgen import service
from reelgen.api.app import create_app
from reelgen.store import ledger
from reelgen.store.db import Database
from tests.api_fixtures import LiveServer, make_ctx, make_settings
from tests.factories import Account, generate_body, make_account
from tests.test_api import assert_error
from tests.test_e2e import wait_terminal

I2V = "kling-3-0-image-to-video"


def image_bytes(w: int = 320, h: int = 200, fmt: str = "PNG") -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (w, h), (40, 120, 200)).save(buf, fmt)
    return buf.getvalue()


@pytest.fixture
def acc(ctx: service.Context) -> Account:
    return make_account(ctx, credits=5000, name="uploader")


def _upload(client: TestClient | httpx.Client, acc: Account, data: bytes, content_type: str = "image/png") -> Any:
    return client.post("/api/v1/upload", content=data, headers={**acc.headers, "Content-Type": content_type})


def test_raw_and_multipart_uploads(client: TestClient, acc: Account) -> None:
    raw = _upload(client, acc, image_bytes(320, 200))
    assert raw.status_code == 200, raw.text
    data = raw.json()["data"]
    assert data["url"] == f"reelgen-upload://{data['id']}" and len(data["id"]) == 32
    assert (data["format"], data["width"], data["height"]) == ("png", 320, 200)
    jpeg = image_bytes(200, 300, "JPEG")
    form = client.post("/api/v1/upload", files={"file": ("start.jpg", jpeg, "image/jpeg")}, headers=acc.headers)
    assert form.status_code == 200, form.text
    assert form.json()["data"]["format"] == "jpeg" and form.json()["data"]["size"] == len(jpeg)
    assert raw.json()["data"]["id"] != form.json()["data"]["id"]


def test_an_upload_whose_row_cannot_be_written_leaves_no_object(ctx: service.Context) -> None:
    """The object is stored first and its row second: when the row fails (here a foreign-key
    violation: no such account), the stored object is removed instead of being orphaned."""
    uploads_dir = ctx.storage.local_path("uploads/x")
    assert uploads_dir is not None
    with pytest.raises(Exception, match=r"(?i)foreign key"):
        service.upload(ctx, "no-such-account", image_bytes())
    assert not uploads_dir.parent.exists() or list(uploads_dir.parent.iterdir()) == []


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"GIF89a not an image we take",
        b"\x89PNG\r\n\x1a\n truncated",
    ],
)
def test_unreadable_uploads_are_refused(client: TestClient, acc: Account, data: bytes) -> None:
    err = assert_error(_upload(client, acc, data), 400, "INVALID_INPUT")
    assert err["details"][0]["field"] == "file"


def test_upload_checks_match_fetched_images(client: TestClient, acc: Account) -> None:
    ratio = assert_error(_upload(client, acc, image_bytes(1000, 100)), 400, "INVALID_INPUT")
    assert "ratio" in ratio["message"]
    gif = io.BytesIO()
    from PIL import Image

    Image.new("RGB", (64, 64)).save(gif, "GIF")
    assert_error(_upload(client, acc, gif.getvalue(), "image/gif"), 400, "INVALID_INPUT")
    missing = client.post("/api/v1/upload", files={"other": ("x.png", image_bytes(), "image/png")}, headers=acc.headers)
    assert_error(missing, 400, "INVALID_INPUT")
    assert_error(client.post("/api/v1/upload", content=image_bytes()), 401, "MISSING_AUTH_HEADER")


def test_upload_size_limit(tmp_path: Path, db: Database) -> None:
    ctx = make_ctx(make_settings(tmp_path, db, max_image_bytes=2000), db)
    acc = make_account(ctx, credits=0)
    big = image_bytes(400, 400, "BMP")[:2001]
    with TestClient(create_app(ctx.settings, start_executor=False, ctx=ctx)) as client:
        assert_error(_upload(client, acc, big), 413, "PAYLOAD_TOO_LARGE")


def test_submit_accepts_only_the_callers_uploads(client: TestClient, ctx: service.Context, acc: Account) -> None:
    other = make_account(ctx, credits=5000, name="other")
    mine = _upload(client, acc, image_bytes()).json()["data"]["url"]
    theirs = _upload(client, other, image_bytes()).json()["data"]["url"]
    for url in (theirs, "reelgen-upload://" + "0" * 32, "reelgen-upload://nope"):
        r = client.post("/api/v1/generate", json=generate_body(I2V, image_urls=[url]), headers=acc.headers)
        err = assert_error(r, 400, "INVALID_INPUT")
        assert err["details"][0]["field"] == "input.image_urls.0"
    assert client.get("/api/v1/credits", headers=acc.headers).json()["data"] == {"credits": 5000, "reserved": 0}
    ok = client.post("/api/v1/generate", json=generate_body(I2V, image_urls=[mine]), headers=acc.headers)
    assert ok.status_code == 200, ok.text


def test_openapi_documents_the_upload_body(client: TestClient) -> None:
    body = client.get("/openapi.json").json()["paths"]["/api/v1/upload"]["post"]["requestBody"]["content"]
    assert {"image/png", "image/jpeg", "image/webp", "multipart/form-data"} <= set(body)


def test_the_worker_reads_uploads_from_storage(tmp_path: Path, db: Database) -> None:
    # the operator default: private and loopback hosts refused; an upload needs no network fetch
    ctx = make_ctx(make_settings(tmp_path, db, allow_private_image_hosts=False), db)
    acc = make_account(ctx, credits=2000)
    with (
        LiveServer(ctx, start_executor=True) as live,
        httpx.Client(base_url=live.url, headers=acc.headers, timeout=30) as c,
    ):
        start = _upload(c, acc, image_bytes(200, 320)).json()["data"]["url"]
        end = _upload(c, acc, image_bytes(200, 320, "WEBP"), "image/webp").json()["data"]["url"]
        task = c.post("/api/v1/generate", json=generate_body(I2V, image_urls=[start, end], audio=False)).json()["data"]
        done = wait_terminal(c, task["id"])
        assert done["status"] == "completed", done["error"]
        assert done["input"]["image_urls"] == [start, end]
    assert ctx.db.run(ledger.check) == []
