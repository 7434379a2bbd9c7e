"""Regression tests of issue 15 (hardening, round two): each sends the request, or makes the fault,
that once broke the service, and checks the clear answer that replaced the 500 or the wrong one."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from fastapi.testclient import TestClient

from reelgen import service
from reelgen.schemas import IMAGE_TO_VIDEO
from reelgen.store import ledger, tasks
from tests.factories import Account, generate_body, make_account
from tests.leaks import leaks
from tests.store_fixtures import submit

MP4 = bytes(range(256)) * 40  # 10240 bytes standing in for a result (only its bytes are served)


def assert_error(r: Any, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["success"] is False and body["error"]["code"] == code, r.text
    assert leaks(r.text, sent="", error=True) == []
    return dict(body["error"])


@pytest.fixture
def rich(ctx: service.Context) -> Account:
    return make_account(ctx, credits=100_000, name="rich")


def completed_task(ctx: service.Context, account: Account, data: bytes = MP4) -> str:
    """A completed task whose result holds ``data``, made through the real store and storage."""
    task, _ = submit(ctx.db, account.id, 10)
    now = datetime.now(UTC)
    claimed = ctx.db.run(
        lambda conn: tasks.claim(conn, worker_id="w", lease_seconds=30, now=now, profile="tiny"), immediate=True
    )
    assert claimed is not None and claimed.id == task.id
    key = f"{task.id}/1.mp4"
    scratch = ctx.storage.temp_path(f"result-{task.id}")
    scratch.write_bytes(data)
    ctx.storage.put(key, scratch)
    won = ctx.db.run(
        lambda conn: tasks.complete(conn, task.id, 1, result_key=key, duration=3.0, has_audio=False, now=now),
        immediate=True,
    )
    assert won
    return task.id


def signed_link(client: TestClient, account: Account, task_id: str) -> str:
    url = client.get(f"/api/v1/tasks/{task_id}/download", headers=account.headers).json()["data"]["url"]
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}"


# ------------------------------------------------------------------ 2: signed link parsing
@pytest.mark.parametrize(
    "query",
    [
        "expires=9999999999&token=%C3%A9",  # non-ASCII token: hmac.compare_digest raised TypeError
        "expires=%C2%B2&token=AAAA",  # "²" is a digit to str.isdigit, not to int
        "expires=" + "9" * 5000 + "&token=AAAA",  # int() refuses over 4300 digits
        "expires=%EF%BC%99&token=AAAA",  # a full-width digit
        "expires=9999999999&token=%ED%A0%80",  # bytes of a lone surrogate
    ],
)
def test_signed_link_parsing_never_raises(client: TestClient, query: str) -> None:
    assert_error(client.get(f"/api/v1/files/abc.mp4?{query}"), 403, "INVALID_TOKEN")
    assert_error(client.get(f"/api/v1/files/abc%00def.mp4?{query}"), 403, "INVALID_TOKEN")


def test_valid_signed_link_still_serves(client: TestClient, ctx: service.Context, rich: Account) -> None:
    link = signed_link(client, rich, completed_task(ctx, rich))
    r = client.get(link)
    assert r.status_code == 200 and r.content == MP4
    expires = parse_qs(urlsplit(link).query)["expires"][0]
    assert_error(client.get(link.replace(f"expires={expires}", f"expires={int(expires) + 60}")), 403, "INVALID_TOKEN")


# ------------------------------------------------------------------ 3: deeply nested JSON
@pytest.mark.parametrize("route", ["/api/v1/generate", "/api/v1/estimate"])
@pytest.mark.parametrize("opener", ["[", '{"a":'])
def test_deeply_nested_json_is_invalid_json(client: TestClient, rich: Account, route: str, opener: str) -> None:
    closer = "]" if opener == "[" else "}"
    body = opener * 1000 + "1" + closer * 1000
    error = assert_error(
        client.post(route, content=body, headers={**rich.headers, "Content-Type": "application/json"}),
        400,
        "INVALID_JSON",
    )
    assert "32 levels" in error["message"]
    # nesting inside the prompt (brackets in a string) is text, not depth
    prompt = generate_body(prompt="[" * 2000)
    assert client.post("/api/v1/estimate", json=prompt, headers=rich.headers).status_code == 200


# ------------------------------------------------------------------ 4: ids checked before the database
@pytest.mark.parametrize(
    ("method", "route"),
    [
        ("GET", "/api/v1/tasks/{}"),
        ("GET", "/api/v1/tasks/{}/download"),
        ("GET", "/api/v1/tasks/{}/download?mode=proxy"),
        ("POST", "/api/v1/tasks/{}/cancel"),
        ("GET", "/api/v1/tasks/{}/events"),
        ("GET", "/api/v1/tasks/{}/preview"),
    ],
)
@pytest.mark.parametrize("task_id", ["abc%00def", "%C3%A9t%C3%A9", "x" * 300])
def test_task_ids_that_cannot_exist_are_not_found(
    client: TestClient, rich: Account, method: str, route: str, task_id: str
) -> None:
    assert_error(client.request(method, route.format(task_id), headers=rich.headers), 404, "TASK_NOT_FOUND")


# ------------------------------------------------------------------ 6, 7, 10: results, Range, HEAD
def _proxy(client: TestClient, account: Account, task_id: str, **headers: str) -> Any:
    return client.get(f"/api/v1/tasks/{task_id}/download?mode=proxy", headers={**account.headers, **headers})


@pytest.mark.parametrize(
    ("header", "status", "body"),
    [
        ("bytes=10-19", 206, MP4[10:20]),
        ("bytes=-7", 206, MP4[-7:]),
        ("bytes=0-1,5-6", 200, MP4),  # several ranges: the whole file, as the module documents
        ("bytes=x-y", 200, MP4),  # malformed: ignored
        ("items=0-9", 200, MP4),  # another unit: ignored
        ("bytes=5-4", 416, None),
        ("bytes=10240-", 416, None),
        ("bytes=-0", 416, None),
        ("bytes=99999999999999999999999-", 416, None),
    ],
)
def test_ranges_answer_alike_with_json_errors(
    client: TestClient, ctx: service.Context, rich: Account, header: str, status: int, body: bytes | None
) -> None:
    task_id = completed_task(ctx, rich)
    for r in (
        _proxy(client, rich, task_id, Range=header),
        client.get(signed_link(client, rich, task_id), headers={"Range": header}),
    ):
        if body is None:
            assert_error(r, 416, "RANGE_NOT_SATISFIABLE")
            assert r.headers["content-range"] == f"bytes */{len(MP4)}"
            continue
        assert r.status_code == status and r.content == body
        assert int(r.headers["content-length"]) == len(body)
        assert "multipart" not in r.headers["content-type"]


def test_result_path_that_is_not_a_regular_file(client: TestClient, ctx: service.Context, rich: Account) -> None:
    task_id = completed_task(ctx, rich)
    row = ctx.db.run(lambda conn: tasks.get(conn, task_id))
    assert row is not None and row.result_key is not None
    path = ctx.storage.local_path(row.result_key)
    assert path is not None
    path.unlink()
    path.mkdir()  # a directory where the MP4 was
    assert_error(_proxy(client, rich, task_id), 409, "NO_RESULT")
    assert_error(client.get(signed_link(client, rich, task_id)), 409, "NO_RESULT")
    path.rmdir()
    os.mkfifo(path)  # a FIFO: opening it for reading would wait for a writer forever
    assert_error(_proxy(client, rich, task_id), 409, "NO_RESULT")
    path.unlink()
    assert_error(_proxy(client, rich, task_id), 409, "NO_RESULT")  # removed


def test_head_wherever_get_is_served(client: TestClient, ctx: service.Context, rich: Account) -> None:
    task_id = completed_task(ctx, rich)
    for route, headers in (
        ("/healthz", {}),
        ("/readyz", {}),
        ("/api/v1/models", {}),
        ("/openapi.json", {}),
        ("/", {}),
        ("/api/v1/credits", rich.headers),
        (f"/api/v1/tasks/{task_id}", rich.headers),
        (f"/api/v1/tasks/{task_id}/download", rich.headers),
        (f"/api/v1/tasks/{task_id}/events", rich.headers),
        ("/api/v1/tasks", rich.headers),
    ):
        got = client.get(route, headers=headers)
        head = client.head(route, headers=headers)
        assert head.status_code == got.status_code == 200, (route, head.status_code)
        assert head.content == b""
        assert head.headers["content-type"] == got.headers["content-type"]
    link = signed_link(client, rich, task_id)
    for head in (client.head(link), client.head(f"/api/v1/tasks/{task_id}/download?mode=proxy", headers=rich.headers)):
        assert head.status_code == 200 and head.content == b""
        assert head.headers["content-length"] == str(len(MP4))
    part = client.head(link, headers={"Range": "bytes=0-9"})
    assert part.status_code == 206 and part.headers["content-range"] == f"bytes 0-9/{len(MP4)}"
    # errors keep their status; a route without GET still refuses HEAD
    assert client.head(f"/api/v1/tasks/{'0' * 32}", headers=rich.headers).status_code == 404
    assert client.head("/api/v1/credits").status_code == 401
    assert client.head("/api/v1/generate", headers=rich.headers).status_code == 405


# ------------------------------------------------------------------ 8: upper-case upload scheme
def test_upper_case_upload_scheme_is_refused_at_submit(client: TestClient, ctx: service.Context, rich: Account) -> None:
    before = ctx.db.run(lambda conn: ledger.balance(conn, rich.id))
    for scheme in ("REELGEN-UPLOAD://", "Reelgen-Upload://"):
        body = generate_body(IMAGE_TO_VIDEO, image_urls=[scheme + "0" * 32])
        for route in ("/api/v1/generate", "/api/v1/estimate"):
            assert_error(client.post(route, json=body, headers=rich.headers), 400, "INVALID_INPUT")
    assert ctx.db.run(lambda conn: ledger.balance(conn, rich.id)) == before


# ------------------------------------------------------------------ 9: /estimate shares /generate's checks
@pytest.mark.parametrize(
    "body",
    [
        {**generate_body(), "callback_url": "file:///etc/passwd"},
        generate_body(IMAGE_TO_VIDEO, image_urls=["reelgen-upload://" + "0" * 32]),  # unknown upload
        generate_body(IMAGE_TO_VIDEO, image_urls=["reelgen-upload://nothex"]),
    ],
)
def test_estimate_refuses_what_generate_refuses(
    client: TestClient, ctx: service.Context, rich: Account, body: dict[str, Any]
) -> None:
    generated = client.post("/api/v1/generate", json=body, headers=rich.headers)
    estimated = client.post("/api/v1/estimate", json=body, headers=rich.headers)
    assert generated.status_code == 400, generated.text
    assert estimated.status_code == 400 and estimated.json() == generated.json()


def test_estimate_refuses_a_foreign_upload(
    client: TestClient, ctx: service.Context, rich: Account, tmp_path: Path
) -> None:
    other = make_account(ctx, credits=10, name="other")
    url = service.upload(ctx, other.id, _png())["url"]
    body = generate_body(IMAGE_TO_VIDEO, image_urls=[url])
    assert client.post("/api/v1/estimate", json=body, headers=other.headers).status_code == 200
    foreign = client.post("/api/v1/estimate", json=body, headers=rich.headers)
    assert_error(foreign, 400, "INVALID_INPUT")
    assert foreign.json() == client.post("/api/v1/generate", json=body, headers=rich.headers).json()


def _png(width: int = 64, height: int = 64) -> bytes:
    import io

    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(out, format="PNG")
    return out.getvalue()


# ------------------------------------------------------------------ also seen: auth, plain messages
def test_two_authorization_headers_are_refused(client: TestClient, rich: Account) -> None:
    other = f"Bearer sk-{'x' * 40}"
    for headers in (
        [("Authorization", rich.headers["Authorization"]), ("Authorization", other)],
        [("Authorization", other), ("Authorization", rich.headers["Authorization"])],
        [("Authorization", rich.headers["Authorization"]), ("authorization", rich.headers["Authorization"])],
    ):
        r = client.get("/api/v1/credits", headers=headers)
        error = assert_error(r, 401, "INVALID_AUTH_FORMAT")
        assert "one Authorization header" in error["message"]
    assert client.get("/api/v1/credits", headers=rich.headers).status_code == 200


def test_error_messages_name_no_exception_class(client: TestClient, rich: Account) -> None:
    r = client.post(
        "/api/v1/upload", content=b"not an image at all", headers={**rich.headers, "Content-Type": "image/png"}
    )
    error = assert_error(r, 400, "INVALID_INPUT")
    assert "Error" not in error["message"] and "Unidentified" not in r.text


# ------------------------------------------------------------------ also seen: upload quota
def test_upload_quota_per_account(tmp_path: Path, db: Any) -> None:
    from reelgen.api.app import create_app
    from tests.api_fixtures import make_ctx, make_settings

    png = _png()
    ctx = make_ctx(make_settings(tmp_path, db, upload_quota_bytes=2 * len(png) + 10), db)
    one, two = make_account(ctx, credits=10, name="one"), make_account(ctx, credits=10, name="two")
    with TestClient(create_app(ctx.settings, start_executor=False, ctx=ctx)) as client:
        for _ in range(2):
            assert client.post("/api/v1/upload", content=png, headers=one.headers).status_code == 200
        error = assert_error(
            client.post("/api/v1/upload", content=png, headers=one.headers), 413, "UPLOAD_QUOTA_EXCEEDED"
        )
        assert str(2 * len(png) + 10) in error["message"]
        # the quota is per account, and nothing of the refused upload was stored
        assert client.post("/api/v1/upload", content=png, headers=two.headers).status_code == 200
        stored = ctx.storage.local_path("uploads/x")
        assert stored is not None and len(list(stored.parent.iterdir())) == 3
