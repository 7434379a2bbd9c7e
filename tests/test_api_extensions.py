"""The API.md extensions through the HTTP API: idempotent submits, cancel, list, ETAs, events, estimates."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from reelgen import service
from reelgen.api.sse import frames
from reelgen.store import ledger, tasks
from tests.api_fixtures import LiveServer, make_ctx, make_settings
from tests.engines import PROFILES, importable_env
from tests.factories import Account, generate_body, make_account
from tests.test_api import assert_error
from tests.test_e2e import wait_terminal


@pytest.fixture
def rich(ctx: service.Context) -> Account:
    return make_account(ctx, credits=10_000, name="rich")


def _credits(client: TestClient | httpx.Client, acc: Account) -> dict[str, int]:
    data: dict[str, int] = client.get("/api/v1/credits", headers=acc.headers).json()["data"]
    return data


def _task_count(ctx: service.Context, acc: Account) -> int:
    return ctx.db.run(lambda conn: len(tasks.list_for_account(conn, acc.id, limit=1000)))


def _claim(ctx: service.Context, now: Any) -> tasks.TaskRow:
    row = ctx.db.run(lambda conn: tasks.claim(conn, worker_id="test-worker", lease_seconds=60, now=now), immediate=True)
    assert row is not None
    return row


def _complete(ctx: service.Context, row: tasks.TaskRow, now: Any) -> None:
    won = ctx.db.run(
        lambda conn: tasks.complete(
            conn, row.id, row.attempt, result_key=f"{row.id}/1.mp4", duration=3.0, has_audio=True, now=now
        ),
        immediate=True,
    )
    assert won


# ---------------------------------------------------------------- Idempotency-Key
def test_idempotent_replay_returns_the_first_response_and_charges_once(client: TestClient, rich: Account) -> None:
    headers = {**rich.headers, "Idempotency-Key": "order-42"}
    first = client.post("/api/v1/generate", json=generate_body(duration=5), headers=headers)
    assert first.status_code == 200, first.text
    # the same body with its keys in another order and other spacing is the same request
    same = json.dumps(
        {"input": {"duration": 5, "prompt": "a red fox runs through snow"}, "model": first.json()["data"]["model"]}
    )
    again = client.post("/api/v1/generate", content=same, headers={**headers, "Content-Type": "application/json"})
    assert (again.status_code, again.json()) == (first.status_code, first.json())
    assert _credits(client, rich) == {"credits": 10_000 - 210, "reserved": 210}

    changed = client.post("/api/v1/generate", json=generate_body(duration=6), headers=headers)
    assert_error(changed, 422, "IDEMPOTENCY_KEY_REUSED")
    # another key is another request
    other = client.post(
        "/api/v1/generate", json=generate_body(duration=5), headers={**rich.headers, "Idempotency-Key": "order-43"}
    )
    assert other.status_code == 200 and other.json()["data"]["id"] != first.json()["data"]["id"]
    assert _credits(client, rich) == {"credits": 10_000 - 420, "reserved": 420}


def test_idempotency_keys_are_scoped_per_account(client: TestClient, ctx: service.Context, rich: Account) -> None:
    other = make_account(ctx, credits=1000, name="other")
    mine = client.post("/api/v1/generate", json=generate_body(), headers={**rich.headers, "Idempotency-Key": "k"})
    theirs = client.post("/api/v1/generate", json=generate_body(), headers={**other.headers, "Idempotency-Key": "k"})
    assert mine.status_code == theirs.status_code == 200
    assert mine.json()["data"]["id"] != theirs.json()["data"]["id"]
    assert _credits(client, other) == {"credits": 1000 - 126, "reserved": 126}


def test_refused_requests_do_not_store_the_key(client: TestClient, ctx: service.Context, rich: Account) -> None:
    headers = {**rich.headers, "Idempotency-Key": "retry-me"}
    bad = client.post("/api/v1/generate", json=generate_body(duration=99), headers=headers)
    assert_error(bad, 400, "INVALID_INPUT")
    poor = make_account(ctx, credits=100, name="poor")
    poor_headers = {**poor.headers, "Idempotency-Key": "retry-me"}
    assert_error(
        client.post("/api/v1/generate", json=generate_body(), headers=poor_headers), 402, "INSUFFICIENT_CREDITS"
    )
    # corrected retries with the same keys are new requests, not replays of the errors
    assert client.post("/api/v1/generate", json=generate_body(), headers=headers).status_code == 200
    ctx.db.run(lambda conn: ledger.grant(conn, poor.id, 100, service.utcnow()), immediate=True)
    assert client.post("/api/v1/generate", json=generate_body(), headers=poor_headers).status_code == 200


def test_keys_expire_after_24_hours(client: TestClient, ctx: service.Context, rich: Account) -> None:
    from reelgen.store.tables import idempotency_keys
    from reelgen.sweeper import sweep_once

    headers = {**rich.headers, "Idempotency-Key": "daily"}
    first = client.post("/api/v1/generate", json=generate_body(duration=3), headers=headers).json()["data"]
    later = service.utcnow() + timedelta(hours=24, seconds=1)
    ctx.clock = lambda: later
    # the old use is forgotten: another body is a new request, not IDEMPOTENCY_KEY_REUSED
    second = client.post("/api/v1/generate", json=generate_body(duration=4), headers=headers)
    assert second.status_code == 200 and second.json()["data"]["id"] != first["id"]
    client.post("/api/v1/generate", json=generate_body(), headers={**rich.headers, "Idempotency-Key": "other"})
    report = sweep_once(ctx.db, ctx.settings, now=later + timedelta(hours=24, seconds=1))
    assert report.purged_idempotency_keys == 2
    rows = ctx.db.run(lambda conn: conn.execute(idempotency_keys.select()).all())
    assert rows == []


@pytest.mark.parametrize("key", ["", "x" * 256, "tab\there"])
def test_malformed_idempotency_keys_are_refused(client: TestClient, rich: Account, key: str) -> None:
    r = client.post("/api/v1/generate", json=generate_body(), headers={**rich.headers, "Idempotency-Key": key})
    err = assert_error(r, 400, "INVALID_INPUT")
    assert err["details"][0]["field"] == "header.Idempotency-Key"
    assert _credits(client, rich)["reserved"] == 0


def test_fifty_racing_duplicates_make_one_task_and_one_hold(
    live_api: LiveServer, ctx: service.Context, rich: Account
) -> None:
    headers = {**rich.headers, "Idempotency-Key": "race"}

    def submit(_: int) -> httpx.Response:
        with httpx.Client(base_url=live_api.url, headers=headers, timeout=60) as c:
            return c.post("/api/v1/generate", json=generate_body())

    with ThreadPoolExecutor(max_workers=25) as pool:
        responses = list(pool.map(submit, range(50)))
    assert {r.status_code for r in responses} == {200}, [r.text for r in responses if r.status_code != 200]
    assert len({r.content for r in responses}) == 1
    assert _task_count(ctx, rich) == 1
    bal = ctx.db.run(lambda conn: ledger.balance(conn, rich.id))
    assert (bal.available, bal.reserved) == (10_000 - 126, 126)
    assert ctx.db.run(ledger.check) == []


# ---------------------------------------------------------------- cancel
def test_cancel_a_pending_task(client: TestClient, ctx: service.Context, rich: Account) -> None:
    task_id = client.post("/api/v1/generate", json=generate_body(), headers=rich.headers).json()["data"]["id"]
    r = client.post(f"/api/v1/tasks/{task_id}/cancel", headers=rich.headers)
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    assert data["status"] == "cancelled" and data["creditsUsed"] == 0 and data["completedAt"]
    assert data["error"]["code"] == "CANCELLED" and data["error"]["key"] == "cancelled"
    assert _credits(client, rich) == {"credits": 10_000, "reserved": 0}
    # cancelling again answers the same state and moves no money
    assert client.post(f"/api/v1/tasks/{task_id}/cancel", headers=rich.headers).json()["data"]["status"] == "cancelled"
    assert _credits(client, rich) == {"credits": 10_000, "reserved": 0}
    assert ctx.db.run(ledger.check) == []


def test_cancel_finished_foreign_and_unknown_tasks(client: TestClient, ctx: service.Context, rich: Account) -> None:
    other = make_account(ctx, credits=1000, name="other")
    task_id = client.post("/api/v1/generate", json=generate_body(), headers=rich.headers).json()["data"]["id"]
    foreign = client.post(f"/api/v1/tasks/{task_id}/cancel", headers=other.headers)
    unknown = client.post(f"/api/v1/tasks/{'0' * 32}/cancel", headers=other.headers)
    assert_error(foreign, 404, "TASK_NOT_FOUND")
    assert foreign.json() == unknown.json()
    now = service.utcnow()
    _complete(ctx, _claim(ctx, now), now + timedelta(seconds=1))
    assert_error(client.post(f"/api/v1/tasks/{task_id}/cancel", headers=rich.headers), 409, "NOT_CANCELLABLE")
    assert _credits(client, rich) == {"credits": 10_000 - 126, "reserved": 0}


def test_cancel_a_processing_task_stops_the_worker(
    tmp_path: Any, ctx: service.Context, rich: Account, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the test engine follows each denoising step of a "slow" task with a 30 s pause that only a stop cuts short
    monkeypatch.setenv("PYTHONPATH", importable_env(os.environ)["PYTHONPATH"])  # the worker imports it
    faulty = make_ctx(make_settings(tmp_path, ctx.db, profile="ltx-2-tiny-faults", profiles_file=PROFILES), ctx.db)
    with (
        LiveServer(faulty, start_executor=True) as live,
        httpx.Client(base_url=live.url, headers=rich.headers, timeout=30) as c,
    ):
        slow = c.post("/api/v1/generate", json=generate_body(prompt="a slow fox")).json()["data"]["id"]
        deadline = time.monotonic() + 120
        while True:  # mid-generation: the worker has reported its first step
            view = c.get(f"/api/v1/tasks/{slow}").json()["data"]
            if view["status"] == "processing" and view["progress"] > 0:
                break
            assert time.monotonic() < deadline, view
            time.sleep(0.1)
        cancelled = c.post(f"/api/v1/tasks/{slow}/cancel")
        assert cancelled.status_code == 200 and cancelled.json()["data"]["status"] == "cancelled"
        cancelled_at = time.monotonic()
        assert _credits(c, rich) == {"credits": 10_000, "reserved": 0}
        # the only worker takes the next task long before the 30 s pause would have ended
        fast = c.post("/api/v1/generate", json=generate_body()).json()["data"]["id"]
        done = wait_terminal(c, fast, timeout=60)
        assert done["status"] == "completed", done["error"]
        assert time.monotonic() - cancelled_at < 25
        final = c.get(f"/api/v1/tasks/{slow}").json()["data"]
        assert final["status"] == "cancelled" and final["result"] is None and final["creditsUsed"] == 0
        assert _credits(c, rich) == {"credits": 10_000 - 126, "reserved": 0}
    assert not ctx.storage.exists(f"{slow}/1.mp4")
    assert ctx.db.run(ledger.check) == []


# ---------------------------------------------------------------- list
def test_list_pages_newest_first_with_a_stable_cursor(client: TestClient, ctx: service.Context, rich: Account) -> None:
    other = make_account(ctx, credits=1000, name="other")
    client.post("/api/v1/generate", json=generate_body(), headers=other.headers)
    made = [
        client.post("/api/v1/generate", json=generate_body(), headers=rich.headers).json()["data"]["id"]
        for _ in range(5)
    ]
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        r = client.get("/api/v1/tasks", params=params, headers=rich.headers)
        assert r.status_code == 200, r.text
        page = r.json()["data"]
        pages += 1
        seen += [t["id"] for t in page["tasks"]]
        if pages == 1:  # a task created meanwhile does not shift the later pages
            made.append(
                client.post("/api/v1/generate", json=generate_body(), headers=rich.headers).json()["data"]["id"]
            )
        cursor = page["nextCursor"]
        if cursor is None:
            break
    assert pages == 3
    assert seen == list(reversed(made[:5]))
    client.post(f"/api/v1/tasks/{made[0]}/cancel", headers=rich.headers)
    cancelled = client.get("/api/v1/tasks?status=cancelled", headers=rich.headers).json()["data"]
    assert [t["id"] for t in cancelled["tasks"]] == [made[0]] and cancelled["nextCursor"] is None
    first = client.get("/api/v1/tasks?limit=1", headers=rich.headers).json()["data"]["tasks"][0]
    assert first["id"] == made[-1] and first["status"] == "pending" and first["queuePosition"] == 5


def test_listing_a_page_takes_the_same_few_queries_whatever_its_size(ctx: service.Context, rich: Account) -> None:
    """No query per row: the page, the queue positions of its pending tasks and each request
    class's recent runs are read once each."""
    from sqlalchemy import event

    for _ in range(12):
        service.submit(ctx, rich.id, generate_body())
    statements: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            statements.append(statement)

    event.listen(ctx.db.engine, "before_cursor_execute", count)
    try:
        small = service.list_tasks(ctx, rich.id, "http://testserver/", limit=2)
        n_small = len(statements)
        statements.clear()
        big = service.list_tasks(ctx, rich.id, "http://testserver/", limit=12)
        n_big = len(statements)
    finally:
        event.remove(ctx.db.engine, "before_cursor_execute", count)
    assert len(small["tasks"]) == 2 and len(big["tasks"]) == 12
    assert [t["queuePosition"] for t in big["tasks"]] == list(range(11, -1, -1))
    assert n_big == n_small <= 3


@pytest.mark.parametrize(
    "query", ["limit=0", "limit=101", "limit=x", "status=done", "cursor=not-a-cursor", "cursor=WzEsMl0"]
)
def test_list_refuses_bad_parameters(client: TestClient, rich: Account, query: str) -> None:
    assert_error(client.get(f"/api/v1/tasks?{query}", headers=rich.headers), 400, "INVALID_INPUT")


def test_any_cursor_of_the_published_shape_is_a_position(client: TestClient, rich: Account) -> None:
    made = [
        client.post("/api/v1/generate", json=generate_body(), headers=rich.headers).json()["data"]["id"]
        for _ in range(2)
    ]
    far_future = client.get(f"/api/v1/tasks?cursor=9999999999999999-{'0' * 32}", headers=rich.headers)
    assert [t["id"] for t in far_future.json()["data"]["tasks"]] == list(reversed(made))
    before_all = client.get(f"/api/v1/tasks?cursor=0-{'f' * 32}", headers=rich.headers)
    assert before_all.json()["data"] == {"tasks": [], "nextCursor": None}


def test_list_requires_auth(client: TestClient) -> None:
    assert_error(client.get("/api/v1/tasks"), 401, "MISSING_AUTH_HEADER")


# ---------------------------------------------------------------- ETA and estimate
def test_eta_is_learned_from_completed_runs_of_the_same_class(
    client: TestClient, ctx: service.Context, rich: Account
) -> None:
    body = generate_body(duration=3, audio=True)
    first = client.post("/api/v1/generate", json=body, headers=rich.headers).json()["data"]["id"]
    assert client.get(f"/api/v1/tasks/{first}", headers=rich.headers).json()["data"]["etaSeconds"] is None
    assert client.post("/api/v1/estimate", json=body, headers=rich.headers).json()["data"]["etaSeconds"] is None
    t0 = service.utcnow()
    _complete(ctx, _claim(ctx, t0), t0 + timedelta(seconds=10))  # one run of this class: 10 s
    a, b = (client.post("/api/v1/generate", json=body, headers=rich.headers).json()["data"]["id"] for _ in range(2))
    # one worker (device): b waits for a, then runs itself
    assert client.get(f"/api/v1/tasks/{a}", headers=rich.headers).json()["data"]["etaSeconds"] == 10
    assert client.get(f"/api/v1/tasks/{b}", headers=rich.headers).json()["data"]["etaSeconds"] == 20
    assert client.get(f"/api/v1/tasks/{first}", headers=rich.headers).json()["data"]["etaSeconds"] == 0
    est = client.post("/api/v1/estimate", json=body, headers=rich.headers).json()["data"]
    assert est == {"model": "kling-3-0-text-to-video", "credits": 126, "etaSeconds": 30}
    # 5 s is in the same duration bucket (3-5 s); 6 s and a silent 3 s are other classes, not learned yet
    same = client.post("/api/v1/estimate", json=generate_body(duration=5, audio=True), headers=rich.headers)
    assert same.json()["data"] == {"model": "kling-3-0-text-to-video", "credits": 210, "etaSeconds": 30}
    for other_body, price in ((generate_body(duration=6, audio=True), 252), (generate_body(audio=False), 84)):
        other = client.post("/api/v1/estimate", json=other_body, headers=rich.headers)
        assert other.json()["data"] == {"model": "kling-3-0-text-to-video", "credits": price, "etaSeconds": None}


def test_estimate_charges_nothing(client: TestClient, rich: Account) -> None:
    r = client.post("/api/v1/estimate", json=generate_body(duration=15, mode="professional"), headers=rich.headers)
    assert r.status_code == 200 and r.json()["data"]["credits"] == 840
    assert _credits(client, rich) == {"credits": 10_000, "reserved": 0}
    assert client.get("/api/v1/tasks", headers=rich.headers).json()["data"]["tasks"] == []


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b"{not json", "INVALID_JSON"),
        (b'{"input": {"prompt": "x"}}', "MISSING_MODEL"),
        (b'{"model": "sora-2", "input": {"prompt": "x"}}', "INVALID_MODEL"),
        (b'{"model": "kling-3-0-text-to-video"}', "MISSING_PROMPT"),
        (b'{"model": "kling-3-0-text-to-video", "input": {"prompt": "x", "duration": 20}}', "INVALID_INPUT"),
    ],
)
def test_estimate_validates_like_generate(client: TestClient, rich: Account, raw: bytes, code: str) -> None:
    headers = {**rich.headers, "Content-Type": "application/json"}
    est = client.post("/api/v1/estimate", content=raw, headers=headers)
    gen = client.post("/api/v1/generate", content=raw, headers=headers)
    assert_error(est, 400, code)
    assert est.json() == gen.json()
    assert_error(client.post("/api/v1/estimate", content=raw), 401, "MISSING_AUTH_HEADER")


# ---------------------------------------------------------------- Server-Sent Events
def _events(lines: Any) -> Any:
    """Yield ("comment", text) or (event, data) from an SSE line iterator."""
    event: str | None = None
    data: list[str] = []
    for line in lines:
        if line.startswith(":"):
            yield "comment", line[1:].strip()
        elif line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: "):
            data.append(line[6:])
        elif line == "" and event is not None:
            yield event, json.loads("\n".join(data))
            event, data = None, []


def test_events_stream_status_and_progress_until_terminal(
    live_api: LiveServer, ctx: service.Context, rich: Account
) -> None:
    with httpx.Client(base_url=live_api.url, headers=rich.headers, timeout=30) as c:
        task_id = c.post("/api/v1/generate", json=generate_body()).json()["data"]["id"]
        got: list[tuple[str, Any]] = []
        with c.stream("GET", f"/api/v1/tasks/{task_id}/events") as r:
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
            stream = _events(r.iter_lines())
            got.append(next(stream))
            now = service.utcnow()
            row = _claim(ctx, now)
            got.append(next(stream))
            ctx.db.run(
                lambda conn: tasks.heartbeat(
                    conn, row.id, row.attempt, "test-worker", lease_seconds=60, now=now, progress=50
                ),
                immediate=True,
            )
            got.append(next(stream))
            _complete(ctx, row, now + timedelta(seconds=2))
            got += list(stream)  # ends by itself after the terminal event
    kinds = [(kind, data["status"], data["progress"]) for kind, data in got if kind != "comment"]
    assert kinds == [
        ("status", "pending", 0),
        ("status", "processing", 0),
        ("progress", "processing", 50),
        ("status", "completed", 100),
    ]
    assert got[-1][1]["result"]["url"].startswith(live_api.url)


def test_events_for_foreign_or_unknown_tasks_are_not_found(
    client: TestClient, ctx: service.Context, rich: Account
) -> None:
    other = make_account(ctx, credits=1000, name="other")
    task_id = client.post("/api/v1/generate", json=generate_body(), headers=rich.headers).json()["data"]["id"]
    foreign = client.get(f"/api/v1/tasks/{task_id}/events", headers=other.headers)
    assert_error(foreign, 404, "TASK_NOT_FOUND")
    assert foreign.json() == client.get(f"/api/v1/tasks/{'0' * 32}/events", headers=other.headers).json()


def test_openapi_documents_the_extensions(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    paths = spec["paths"]
    assert {"get"} <= set(paths["/api/v1/tasks"]) and {"post"} <= set(paths["/api/v1/tasks/{task_id}/cancel"])
    assert {p["name"] for p in paths["/api/v1/tasks"]["get"]["parameters"]} >= {"status", "limit", "cursor"}
    assert "text/event-stream" in paths["/api/v1/tasks/{task_id}/events"]["get"]["responses"]["200"]["content"]
    body = paths["/api/v1/estimate"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/GenerateRequest"}


def test_events_send_keep_alives_while_nothing_changes(ctx: service.Context, rich: Account) -> None:
    import anyio

    task_id = service.submit(ctx, rich.id, generate_body())["id"]

    async def collect() -> list[str]:
        got: list[str] = []
        events = await service.task_events(
            ctx, rich.id, task_id, "http://test/", poll_seconds=0.01, keepalive_seconds=0.05
        )
        async for chunk in frames(events):
            got.append(chunk)
            if chunk.startswith(":") and not any(c.startswith(":") for c in got[:-1]):
                await anyio.to_thread.run_sync(lambda: service.cancel(ctx, rich.id, task_id, "http://test/"))
        return got

    chunks = anyio.run(collect)
    assert chunks[0].startswith("id: 1\nevent: status\n") and '"status":"pending"' in chunks[0]
    assert ": keep-alive\n\n" in chunks
    assert chunks[-1].startswith("id: 2\nevent: status\n") and '"status":"cancelled"' in chunks[-1]


class ResponseDroppingProxy:
    """A TCP proxy to the live server that forwards each request but cuts the client's connection as
    soon as the server starts answering: the server commits, the client never sees the response."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.dropped = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            threading.Thread(target=self._pump_requests, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._drop_response, args=(client, upstream), daemon=True).start()

    @staticmethod
    def _pump_requests(client: socket.socket, upstream: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := client.recv(65536):
                upstream.sendall(data)

    def _drop_response(self, client: socket.socket, upstream: socket.socket) -> None:
        with contextlib.suppress(OSError):
            if upstream.recv(1):  # the server has committed and begun its answer
                self.dropped += 1
        for s in (client, upstream):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def close(self) -> None:
        self.listener.close()


def test_a_lost_response_is_safe_to_retry(live_api: LiveServer, ctx: service.Context, rich: Account) -> None:
    """RELIABILITY 7: the connection is cut after the server committed; the retry gets the same task."""
    proxy = ResponseDroppingProxy(live_api.port)
    headers = {**rich.headers, "Idempotency-Key": "lost-response"}
    try:
        with (
            httpx.Client(base_url=f"http://127.0.0.1:{proxy.port}", headers=headers, timeout=30) as through_proxy,
            pytest.raises(httpx.TransportError),
        ):
            through_proxy.post("/api/v1/generate", json=generate_body())
        assert proxy.dropped == 1
    finally:
        proxy.close()
    assert _task_count(ctx, rich) == 1  # the server did commit
    with httpx.Client(base_url=live_api.url, headers=headers, timeout=30) as direct:
        retry = direct.post("/api/v1/generate", json=generate_body())
        assert retry.status_code == 200
        (task,) = ctx.db.run(lambda conn: tasks.list_for_account(conn, rich.id))
        assert retry.json()["data"]["id"] == task.id
        assert _credits(direct, rich) == {"credits": 10_000 - 126, "reserved": 126}
