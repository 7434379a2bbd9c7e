"""Webhooks through the HTTP API: outbox on task end, Standard Webhooks signatures, retries with
backoff, no redirects, address rules, endpoints disabled after repeated failures."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import standardwebhooks
from fastapi.testclient import TestClient

from reelgen import service
from reelgen.api.app import create_app
from reelgen.store import ledger, tasks, webhooks
from reelgen.store.db import Database
from tests.api_fixtures import make_ctx, make_settings
from tests.factories import Account, generate_body, make_account
from tests.test_api import assert_error


class Receiver:
    """A local HTTP endpoint answering a script of statuses (the last one repeats), recording requests."""

    def __init__(self, statuses: list[int], location: str | None = None) -> None:
        self.statuses = statuses
        self.location = location
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.times: list[float] = []  # time.monotonic() of each request
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                receiver.times.append(time.monotonic())
                receiver.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
                status = receiver.statuses[min(len(receiver.requests), len(receiver.statuses)) - 1]
                self.send_response(status)
                if receiver.location:
                    self.send_header("Location", receiver.location)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def poll(what: Callable[[], Any], timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = what()
        if value:
            return value
        assert time.monotonic() < deadline, "condition not reached before the deadline"
        time.sleep(0.05)


@pytest.fixture
def make_client(tmp_path: Path, db: Database) -> Iterator[Callable[..., tuple[TestClient, service.Context]]]:
    made: list[TestClient] = []

    def make(**overrides: Any) -> tuple[TestClient, service.Context]:
        values = {"webhook_retry_base_seconds": 0.05, **overrides}
        ctx = make_ctx(make_settings(tmp_path, db, **values), db)
        client = TestClient(create_app(ctx.settings, start_executor=False, ctx=ctx), raise_server_exceptions=False)
        client.__enter__()
        made.append(client)
        return client, ctx

    yield make
    for c in made:
        c.__exit__(None, None, None)


def _deliveries(ctx: service.Context, task_id: str) -> list[webhooks.Delivery]:
    return ctx.db.run(lambda conn: webhooks.list_for_task(conn, task_id))


def _submit(client: TestClient, acc: Account, url: str) -> str:
    r = client.post("/api/v1/generate", json={**generate_body(), "callback_url": url}, headers=acc.headers)
    assert r.status_code == 200, r.text
    task_id: str = r.json()["data"]["id"]
    return task_id


def test_retries_500_500_200_with_one_id_each_verified(make_client: Any) -> None:
    client, ctx = make_client()
    acc = make_account(ctx, credits=1000)
    secret = client.get("/api/v1/webhooks/secret", headers=acc.headers).json()["data"]["secret"]
    assert secret.startswith("whsec_")
    with Receiver([500, 500, 200]) as rx:
        task_id = _submit(client, acc, rx.url)
        assert _deliveries(ctx, task_id) == []  # nothing is owed before the task ends
        now = service.utcnow()
        row = ctx.db.run(lambda c: tasks.claim(c, worker_id="w", lease_seconds=60, now=now), immediate=True)
        assert row is not None
        ctx.db.run(
            lambda c: tasks.complete(c, row.id, 1, result_key="k.mp4", duration=3.0, has_audio=True, now=now),
            immediate=True,
        )
        poll(lambda: [d for d in _deliveries(ctx, task_id) if d.status == "delivered"])
    assert len(rx.requests) == 3
    ids = {headers["webhook-id"] for headers, _ in rx.requests}
    assert len(ids) == 1 and ids.pop().startswith("msg_")
    verifier = standardwebhooks.Webhook(secret)
    for headers, body in rx.requests:
        assert headers["content-type"] == "application/json"
        assert headers["webhook-signature"].startswith("v1,")
        payload = verifier.verify(body, headers)
        assert payload["type"] == "task.completed"
        assert payload["data"]["id"] == task_id and payload["data"]["status"] == "completed"
        assert payload["data"]["creditsUsed"] == 126 and payload["data"]["error"] is None
    assert len({body for _, body in rx.requests}) == 1  # byte-identical retries
    (delivery,) = _deliveries(ctx, task_id)
    assert (delivery.status, delivery.attempts, delivery.last_error) == ("delivered", 3, None)

    headers, body = rx.requests[-1]
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        verifier.verify(body.replace(b"completed", b"cancelled"), headers)
    stale = int(time.time()) - 600
    signed = verifier.sign(headers["webhook-id"], datetime.fromtimestamp(stale), body.decode())
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        verifier.verify(body, {**headers, "webhook-timestamp": str(stale), "webhook-signature": signed})
    with pytest.raises(standardwebhooks.WebhookVerificationError):  # another account's secret
        other = make_account(ctx, credits=0, name="other")
        other_secret = client.get("/api/v1/webhooks/secret", headers=other.headers).json()["data"]["secret"]
        standardwebhooks.Webhook(other_secret).verify(body, headers)


def test_cancel_is_delivered_and_the_ledger_holds(make_client: Any) -> None:
    client, ctx = make_client()
    acc = make_account(ctx, credits=1000)
    with Receiver([204]) as rx:
        task_id = _submit(client, acc, rx.url)
        assert client.post(f"/api/v1/tasks/{task_id}/cancel", headers=acc.headers).status_code == 200
        poll(lambda: rx.requests)
    payload = json.loads(rx.requests[0][1])
    assert payload["type"] == "task.cancelled" and payload["data"]["error"]["code"] == "CANCELLED"
    assert payload["data"]["creditsUsed"] == 0
    assert ctx.db.run(ledger.check) == []


def test_redirects_are_not_followed(make_client: Any) -> None:
    client, ctx = make_client(webhook_max_attempts=1)
    acc = make_account(ctx, credits=1000)
    with Receiver([200]) as target, Receiver([302], location=target.url) as redirector:
        task_id = _submit(client, acc, redirector.url)
        client.post(f"/api/v1/tasks/{task_id}/cancel", headers=acc.headers)
        (failed,) = poll(lambda: [d for d in _deliveries(ctx, task_id) if d.status == "failed"])
    assert len(redirector.requests) == 1
    assert target.requests == []
    assert failed.last_error is not None and "redirect" in failed.last_error


def test_endpoint_is_disabled_after_repeated_failures(make_client: Any) -> None:
    client, ctx = make_client(webhook_max_attempts=2, webhook_disable_after=2)
    acc = make_account(ctx, credits=1000)
    with Receiver([500]) as rx:
        for expected_requests in (2, 4):
            task_id = _submit(client, acc, rx.url)
            client.post(f"/api/v1/tasks/{task_id}/cancel", headers=acc.headers)
            poll(lambda: [d for d in _deliveries(ctx, task_id) if d.status == "failed"])  # noqa: B023
            assert len(rx.requests) == expected_requests
        task_id = _submit(client, acc, rx.url)
        client.post(f"/api/v1/tasks/{task_id}/cancel", headers=acc.headers)
        (failed,) = poll(lambda: [d for d in _deliveries(ctx, task_id) if d.status == "failed"])
    assert len(rx.requests) == 4  # the disabled endpoint was not called again
    assert failed.attempts == 1 and failed.last_error is not None and "disabled" in failed.last_error


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/hook",
        "http://user:pw@example.com/hook",
        "http://169.254.169.254/latest",  # link-local: refused even where private hosts are allowed
        "not a url",
        5,
    ],
)
def test_invalid_callback_urls_are_refused_at_submit(make_client: Any, url: Any) -> None:
    client, ctx = make_client()
    acc = make_account(ctx, credits=1000)
    r = client.post("/api/v1/generate", json={**generate_body(), "callback_url": url}, headers=acc.headers)
    err = assert_error(r, 400, "INVALID_INPUT")
    assert err["details"][0]["field"] == "callback_url"
    assert client.get("/api/v1/credits", headers=acc.headers).json()["data"] == {"credits": 1000, "reserved": 0}


def test_private_callback_hosts_are_refused_by_default(make_client: Any) -> None:
    client, ctx = make_client(allow_private_image_hosts=False)
    acc = make_account(ctx, credits=1000)
    r = client.post(
        "/api/v1/generate", json={**generate_body(), "callback_url": "http://127.0.0.1/hook"}, headers=acc.headers
    )
    assert_error(r, 400, "INVALID_INPUT")


def test_a_host_resolving_to_a_private_address_is_refused_at_delivery(make_client: Any) -> None:
    client, ctx = make_client(allow_private_image_hosts=False, webhook_max_attempts=1)
    acc = make_account(ctx, credits=1000)
    task_id = _submit(client, acc, "http://localhost/hook")  # a name: resolved and checked when sending
    client.post(f"/api/v1/tasks/{task_id}/cancel", headers=acc.headers)
    (failed,) = poll(lambda: [d for d in _deliveries(ctx, task_id) if d.status == "failed"])
    assert failed.last_error is not None and "refused" in failed.last_error


def test_secret_requires_auth(make_client: Any) -> None:
    client, _ = make_client()
    assert_error(client.get("/api/v1/webhooks/secret"), 401, "MISSING_AUTH_HEADER")


def test_backoff_grows_between_attempts(make_client: Any) -> None:
    client, ctx = make_client(webhook_retry_base_seconds=0.2, webhook_max_attempts=3)
    acc = make_account(ctx, credits=1000)
    with Receiver([500]) as rx:
        task_id = _submit(client, acc, rx.url)
        client.post(f"/api/v1/tasks/{task_id}/cancel", headers=acc.headers)
        poll(lambda: [d for d in _deliveries(ctx, task_id) if d.status == "failed"])
    stamps = rx.times
    assert len(stamps) == 3
    # base 0.2 s: waits of 0.2 x [0.5, 1.5) then 0.4 x [0.5, 1.5) (plus polling)
    assert stamps[1] - stamps[0] >= 0.1 and stamps[2] - stamps[1] >= 0.2
    assert timedelta(seconds=stamps[2] - stamps[0]) < timedelta(seconds=10)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://example.com/hook", "Callback URLs must use http or https."),
        ("http://127.0.0.1/hook", "The callback URL was refused: it must point to a public internet address."),
        ("https://", "The callback URL has no host."),
    ],
)
def test_callback_refusals_name_the_callback_not_an_image(url: str, message: str) -> None:
    """safehttp is told the purpose: its messages say "callback" without being rewritten afterwards."""
    from reelgen.errors import ErrorCode, ReelgenError
    from reelgen.safehttp import FetchPolicy
    from reelgen.webhooks import validate_callback_url

    with pytest.raises(ReelgenError) as info:
        validate_callback_url(url, FetchPolicy())
    assert info.value.code is ErrorCode.INVALID_INPUT
    assert info.value.message == f"Invalid input: callback_url: {message}"
    assert "image" not in info.value.message.lower()
