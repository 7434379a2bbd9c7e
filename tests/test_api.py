"""The HTTP contract of API.md, driven through the real app (in-process and on a real socket)."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from reelgen import service
from reelgen.store import keys, ledger
from tests.api_fixtures import LiveServer
from tests.factories import Account, generate_body, make_account

LEAK = re.compile(r"Traceback|File \"|/work/|/tmp/|\.py\b|sqlalchemy|psycopg|127\.0\.0\.1:\d+/|site-packages", re.I)


def assert_error(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["success"] is False
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert not LEAK.search(r.text), r.text
    return dict(body["error"])


@pytest.fixture
def rich(ctx: service.Context) -> Account:
    return make_account(ctx, credits=10_000, name="rich")


# ---------------------------------------------------------------- auth
@pytest.mark.parametrize(
    ("header", "code"),
    [
        (None, "MISSING_AUTH_HEADER"),
        ("", "MISSING_AUTH_HEADER"),
        ("Token sk-abc", "INVALID_AUTH_FORMAT"),
        ("Bearer", "INVALID_AUTH_FORMAT"),
        ("Bearer a b", "INVALID_AUTH_FORMAT"),
        ("Bearer pk-abc", "INVALID_KEY_FORMAT"),
        ("Bearer sk-", "INVALID_API_KEY"),
        ("Bearer sk-short", "INVALID_API_KEY"),
        ("Bearer sk-" + "A" * 43, "INVALID_API_KEY"),
    ],
)
@pytest.mark.parametrize("route", ["/api/v1/credits", "/api/v1/tasks/abc", "/api/v1/tasks/abc/download"])
def test_auth_codes(client: TestClient, header: str | None, code: str, route: str) -> None:
    headers = {} if header is None else {"Authorization": header}
    assert_error(client.get(route, headers=headers), 401, code)


def test_generate_requires_auth(client: TestClient) -> None:
    assert_error(client.post("/api/v1/generate", json=generate_body()), 401, "MISSING_AUTH_HEADER")


def test_revoked_key_looks_like_unknown(client: TestClient, ctx: service.Context, rich: Account) -> None:
    assert client.get("/api/v1/credits", headers=rich.headers).status_code == 200
    unknown = client.get("/api/v1/credits", headers={"Authorization": "Bearer sk-" + "x" * 43})
    ctx.db.run(lambda conn: keys.revoke_key(conn, rich.key_id, service.utcnow()), immediate=True)
    revoked = client.get("/api/v1/credits", headers=rich.headers)
    assert_error(revoked, 401, "INVALID_API_KEY")
    assert revoked.json() == unknown.json()


# ---------------------------------------------------------------- generate
def test_generate_success_envelope(client: TestClient, rich: Account) -> None:
    r = client.post("/api/v1/generate", json=generate_body(duration=5), headers=rich.headers)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["success"] is True
    data = body["data"]
    assert set(data) == {"id", "model", "status", "creditsUsed", "creditsRemaining", "createdAt"}
    assert data["status"] == "pending" and data["model"] == "kling-3-0-text-to-video"
    assert data["creditsUsed"] == 210 and data["creditsRemaining"] == 10_000 - 210
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", data["createdAt"])
    assert len(data["id"]) >= 32
    credits = client.get("/api/v1/credits", headers=rich.headers).json()["data"]
    assert credits == {"credits": 10_000 - 210, "reserved": 210}


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b"{not json", "INVALID_JSON"),
        (b"[1, 2]", "INVALID_JSON"),
        (b"", "INVALID_JSON"),
        (b'{"input": {"prompt": "x"}}', "MISSING_MODEL"),
        (b'{"model": "sora-2", "input": {"prompt": "x"}}', "INVALID_MODEL"),
        (b'{"model": "kling-3-0-text-to-video"}', "MISSING_PROMPT"),
        (b'{"model": "kling-3-0-text-to-video", "input": {"prompt": "  "}}', "MISSING_PROMPT"),
        (b'{"model": "kling-3-0-text-to-video", "input": {"prompt": "x", "duration": 20}}', "INVALID_INPUT"),
        (b'{"model": "kling-3-0-text-to-video", "input": {"prompt": "x", "sound": true}}', "INVALID_INPUT"),
        (b'{"model": "kling-3-0-image-to-video", "input": {"prompt": "x"}}', "INVALID_INPUT"),
    ],
)
def test_generate_bad_requests(client: TestClient, rich: Account, raw: bytes, code: str) -> None:
    r = client.post("/api/v1/generate", content=raw, headers={**rich.headers, "Content-Type": "application/json"})
    err = assert_error(r, 400, code)
    if code == "INVALID_INPUT":
        assert err["details"] and all("field" in d and "message" in d for d in err["details"])
    # nothing was reserved
    assert client.get("/api/v1/credits", headers=rich.headers).json()["data"] == {"credits": 10_000, "reserved": 0}


def test_insufficient_credits(client: TestClient, ctx: service.Context) -> None:
    poor = make_account(ctx, credits=100)
    r = client.post("/api/v1/generate", json=generate_body(duration=5), headers=poor.headers)
    err = assert_error(r, 402, "INSUFFICIENT_CREDITS")
    assert err["message"] == "Insufficient credits. Required: 210, Available: 100"


def test_payload_too_large(client: TestClient, rich: Account) -> None:
    limit = client.app.state.ctx.settings.max_body_bytes  # type: ignore[attr-defined]
    big = generate_body(prompt="x" * (limit + 10))
    assert_error(client.post("/api/v1/generate", json=big, headers=rich.headers), 413, "PAYLOAD_TOO_LARGE")

    def chunks() -> Any:  # no Content-Length: counted while streaming
        yield b'{"model": "kling-3-0-text-to-video", "input": {"prompt": "'
        for _ in range(limit // 65536 + 2):
            yield b"x" * 65536
        yield b'"}}'

    r = client.post("/api/v1/generate", content=chunks(), headers=rich.headers)
    assert_error(r, 413, "PAYLOAD_TOO_LARGE")
    assert client.get("/api/v1/credits", headers=rich.headers).json()["data"]["reserved"] == 0


# ---------------------------------------------------------------- tasks
def test_task_view_while_pending(client: TestClient, rich: Account) -> None:
    ids = [
        client.post("/api/v1/generate", json=generate_body(), headers=rich.headers).json()["data"]["id"]
        for _ in range(2)
    ]
    r = client.get(f"/api/v1/tasks/{ids[1]}", headers=rich.headers)
    assert r.status_code == 200
    t = r.json()["data"]
    for field in (
        "id",
        "taskId",
        "model",
        "status",
        "mediaType",
        "prompt",
        "input",
        "createdAt",
        "startedAt",
        "completedAt",
        "creditsUsed",
        "progress",
        "result",
        "output",
        "error",
    ):
        assert field in t
    assert t["id"] == t["taskId"] == ids[1]
    assert t["status"] == "pending" and t["mediaType"] == "video" and t["progress"] == 0
    assert t["queuePosition"] == 1
    assert t["result"] is None and t["output"] is None and t["error"] is None
    assert t["input"]["duration"] == 3 and t["input"]["aspect_ratio"] == "16:9"
    assert t["creditsUsed"] == 126
    assert_error(client.get(f"/api/v1/tasks/{ids[0]}/download", headers=rich.headers), 409, "NO_RESULT")
    assert_error(client.get(f"/api/v1/tasks/{ids[0]}/download?mode=proxy", headers=rich.headers), 409, "NO_RESULT")


def test_unknown_and_foreign_tasks_are_not_found(client: TestClient, ctx: service.Context, rich: Account) -> None:
    other = make_account(ctx, credits=1000, name="other")
    task_id = client.post("/api/v1/generate", json=generate_body(), headers=rich.headers).json()["data"]["id"]
    for route in (
        f"/api/v1/tasks/{task_id}",
        f"/api/v1/tasks/{task_id}/download",
        f"/api/v1/tasks/{task_id}/download?mode=proxy",
    ):
        foreign = client.get(route, headers=other.headers)
        unknown = client.get(route.replace(task_id, "0" * 32), headers=other.headers)
        assert_error(foreign, 404, "TASK_NOT_FOUND")
        assert foreign.json() == unknown.json()
    # no side effect on the owner's task
    assert client.get(f"/api/v1/tasks/{task_id}", headers=rich.headers).json()["data"]["status"] == "pending"


def test_forged_or_expired_file_links(client: TestClient) -> None:
    assert_error(client.get("/api/v1/files/abc.mp4"), 403, "INVALID_TOKEN")
    assert_error(client.get("/api/v1/files/abc.mp4?expires=99999999999&token=AAAA"), 403, "INVALID_TOKEN")
    assert_error(client.get("/api/v1/files/abc.mp4?expires=1&token=AAAA"), 403, "INVALID_TOKEN")


# ---------------------------------------------------------------- credits, models, health, docs
def test_credits(client: TestClient, ctx: service.Context) -> None:
    acc = make_account(ctx, credits=500)
    assert client.get("/api/v1/credits", headers=acc.headers).json() == {
        "success": True,
        "data": {"credits": 500, "reserved": 0},
    }


def test_models_without_auth(client: TestClient) -> None:
    r = client.get("/api/v1/models?type=video")
    assert r.status_code == 200
    data = r.json()["data"]
    ids = ["kling-3-0-text-to-video", "kling-3-0-image-to-video", "kling-3-0-video-extend"]
    assert [m["id"] for m in data] == ids
    for m in data:
        assert m["type"] == "video" and m["maxDuration"] == 15
        assert m["pricing"] == {"standard": {"audio": 42, "noAudio": 28}, "professional": {"audio": 56, "noAudio": 38}}
    assert "image_urls" in data[1]["inputs"] and "aspect_ratio" not in data[1]["inputs"]


def test_health_docs_and_unknown_routes(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"success": True, "data": {"status": "ok"}}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["data"]["status"] == "ready"
    spec = client.get("/openapi.json").json()
    assert "/api/v1/generate" in spec["paths"] and "GenerateRequest" in spec["components"]["schemas"]
    assert client.get("/docs").status_code == 200
    assert_error(client.get("/api/v1/nope"), 404, "NOT_FOUND")
    assert_error(client.delete("/api/v1/credits"), 405, "METHOD_NOT_ALLOWED")


# ---------------------------------------------------------------- money under concurrency
@pytest.mark.parametrize("k", [3])
def test_concurrent_submits_never_overdraw(live_api: LiveServer, ctx: service.Context, k: int) -> None:
    price = 126  # 3 s standard with audio
    acc = make_account(ctx, credits=k * price)

    def submit(_: int) -> httpx.Response:
        with httpx.Client(base_url=live_api.url, headers=acc.headers, timeout=60) as c:
            return c.post("/api/v1/generate", json=generate_body())

    with ThreadPoolExecutor(max_workers=16) as pool:
        responses = list(pool.map(submit, range(50)))
    statuses = sorted(r.status_code for r in responses)
    assert statuses.count(200) == k, [r.text for r in responses if r.status_code not in (200, 402)]
    assert statuses.count(402) == 50 - k
    for r in responses:
        if r.status_code == 402:
            assert_error(r, 402, "INSUFFICIENT_CREDITS")
    assert ctx.db.run(ledger.check) == []
    bal = ctx.db.run(lambda conn: ledger.balance(conn, acc.id))
    assert (bal.available, bal.reserved) == (0, k * price)


def test_created_at_is_utc(client: TestClient, rich: Account) -> None:
    d = client.post("/api/v1/generate", json=generate_body(), headers=rich.headers).json()["data"]
    ts = datetime.fromisoformat(d["createdAt"].replace("Z", "+00:00"))
    assert abs((service.utcnow() - ts).total_seconds()) < 60
