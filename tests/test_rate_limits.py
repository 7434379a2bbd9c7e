"""Rate limits through the HTTP API: per-account request rate (token bucket, X-RateLimit-* headers,
429 with Retry-After) and the cap on pending+processing tasks, checked before any hold."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from fastapi.testclient import TestClient

from reelgen import service
from reelgen.errors import ErrorCode, ReelgenError
from reelgen.ratelimit import RateLimiter
from reelgen.store import ledger
from tests.api_fixtures import LiveServer
from tests.factories import Account, generate_body, make_account
from tests.test_api import assert_error


@pytest.fixture
def acc(ctx: service.Context) -> Account:
    return make_account(ctx, credits=100_000, name="limited")


def _balance(ctx: service.Context, acc: Account) -> tuple[int, int]:
    bal = ctx.db.run(lambda conn: ledger.balance(conn, acc.id))
    return bal.available, bal.reserved


def test_every_authenticated_response_carries_the_headers(client: TestClient, acc: Account) -> None:
    first = client.get("/api/v1/credits", headers=acc.headers)
    assert first.headers["X-RateLimit-Limit"] == "600"
    assert first.headers["X-RateLimit-Remaining"] == "599"
    assert 0 < int(first.headers["X-RateLimit-Reset"]) <= 60
    missing = client.get(f"/api/v1/tasks/{'0' * 32}", headers=acc.headers)  # an error answer too
    assert missing.status_code == 404 and missing.headers["X-RateLimit-Remaining"] == "598"
    generated = client.post("/api/v1/generate", json=generate_body(), headers=acc.headers)
    assert generated.headers["X-RateLimit-Remaining"] == "597"
    # unauthenticated answers carry none
    assert "X-RateLimit-Limit" not in client.get("/api/v1/models").headers
    assert "X-RateLimit-Limit" not in client.get("/api/v1/credits").headers


def test_a_burst_over_the_rate_gets_429_and_leaves_the_balance(
    client: TestClient, ctx: service.Context, acc: Account
) -> None:
    assert service.set_limits(ctx, acc.id, rpm=10, max_active=None) == {"requestsPerMinute": 10, "maxActiveTasks": 50}
    responses = [client.post("/api/v1/generate", json=generate_body(), headers=acc.headers) for _ in range(30)]
    ok = [r for r in responses if r.status_code == 200]
    limited = [r for r in responses if r.status_code == 429]
    assert len(ok) + len(limited) == 30
    assert 10 <= len(ok) <= 11  # a full bucket of 10, and at most one refill (one per 6 s)
    for r in limited:
        assert_error(r, 429, "RATE_LIMITED")
        assert int(r.headers["Retry-After"]) >= 1
        assert r.headers["X-RateLimit-Limit"] == "10" and r.headers["X-RateLimit-Remaining"] == "0"
    assert _balance(ctx, acc) == (100_000 - 126 * len(ok), 126 * len(ok))
    assert ctx.db.run(ledger.check) == []


def test_the_active_task_cap_refuses_before_the_hold(client: TestClient, ctx: service.Context, acc: Account) -> None:
    service.set_limits(ctx, acc.id, rpm=None, max_active=3)
    ids = [
        client.post("/api/v1/generate", json=generate_body(), headers=acc.headers).json()["data"]["id"]
        for _ in range(3)
    ]
    refused = client.post("/api/v1/generate", json=generate_body(), headers=acc.headers)
    err = assert_error(refused, 429, "RATE_LIMITED")
    assert "active tasks" in err["message"] and int(refused.headers["Retry-After"]) >= 1
    assert _balance(ctx, acc) == (100_000 - 3 * 126, 3 * 126)
    # an idempotent replay of an accepted submit is still answered at the cap: it creates nothing
    key = {**acc.headers, "Idempotency-Key": "k1"}
    client.post(f"/api/v1/tasks/{ids[0]}/cancel", headers=acc.headers)
    first = client.post("/api/v1/generate", json=generate_body(), headers=key)
    assert first.status_code == 200
    assert client.post("/api/v1/generate", json=generate_body(), headers=key).json() == first.json()
    assert_error(client.post("/api/v1/generate", json=generate_body(), headers=acc.headers), 429, "RATE_LIMITED")
    # other accounts are not affected
    other = make_account(ctx, credits=1000, name="other")
    assert client.post("/api/v1/generate", json=generate_body(), headers=other.headers).status_code == 200


def test_the_cap_holds_under_concurrent_submits(live_api: LiveServer, ctx: service.Context, acc: Account) -> None:
    service.set_limits(ctx, acc.id, rpm=0, max_active=5)

    def submit(_: int) -> httpx.Response:
        with httpx.Client(base_url=live_api.url, headers=acc.headers, timeout=60) as c:
            return c.post("/api/v1/generate", json=generate_body())

    with ThreadPoolExecutor(max_workers=10) as pool:
        responses = list(pool.map(submit, range(30)))
    statuses = [r.status_code for r in responses]
    assert statuses.count(200) == 5 and statuses.count(429) == 25, [r.text for r in responses if r.status_code >= 500]
    assert _balance(ctx, acc) == (100_000 - 5 * 126, 5 * 126)
    assert ctx.db.run(ledger.check) == []


def test_zero_means_unlimited(client: TestClient, ctx: service.Context, acc: Account) -> None:
    service.set_limits(ctx, acc.id, rpm=0, max_active=0)
    for _ in range(60):
        r = client.post("/api/v1/generate", json=generate_body(), headers=acc.headers)
        assert r.status_code == 200 and "X-RateLimit-Limit" not in r.headers
    assert service.set_limits(ctx, acc.id, rpm=None, max_active=None) == {"requestsPerMinute": 0, "maxActiveTasks": 0}


def test_limits_need_a_known_account_and_whole_numbers(ctx: service.Context, acc: Account) -> None:
    with pytest.raises(ReelgenError) as info:
        service.set_limits(ctx, "0" * 32, rpm=1, max_active=1)
    assert info.value.code is ErrorCode.ACCOUNT_NOT_FOUND
    with pytest.raises(ReelgenError) as info:
        service.set_limits(ctx, acc.id, rpm=-1, max_active=None)
    assert info.value.code is ErrorCode.INVALID_INPUT


def test_token_bucket_refills_at_the_steady_rate() -> None:
    now = [0.0]
    limiter = RateLimiter(clock=lambda: now[0])
    decisions = [limiter.take("a", 60) for _ in range(61)]
    assert all(d is not None and d.allowed for d in decisions[:60])
    last = decisions[60]
    assert last is not None and not last.allowed and last.retry_after == 1 and last.reset_seconds == 60
    now[0] = 1.0  # 60 per minute = one token per second
    again = limiter.take("a", 60)
    assert again is not None and again.allowed and again.remaining == 0
    assert limiter.take("b", 60) is not None  # buckets are per account
    assert limiter.take("a", 0) is None


def test_operator_sets_limits_with_the_cli(
    capsys: pytest.CaptureFixture[str], client: TestClient, ctx: service.Context, acc: Account
) -> None:
    from reelgen.cli import main

    store = ["--data-dir", str(ctx.settings.data_dir), "--database-url", ctx.db.url]
    assert main(["keys", "limits", "--account", acc.id, "--rpm", "2", "--max-active", "0", "--json", *store]) == 0
    assert json.loads(capsys.readouterr().out) == {
        "account_id": acc.id,
        "rpm": 2,
        "max_active": 0,
        "weight": 1,
        "tier": "normal",
    }
    assert main(["keys", "limits", "--account", acc.id, "--weight", "3", "--tier", "batch", *store]) == 0
    assert "2 requests per minute, unlimited active tasks, queue weight 3, batch tier" in capsys.readouterr().out
    assert main(["keys", "limits", "--account", acc.id, *store]) == 0
    assert "queue weight 3, batch tier" in capsys.readouterr().out
    assert main(["keys", "limits", "--account", acc.id, "--rpm", "5", "--weight", "0", *store]) == 2
    assert "INVALID_INPUT" in capsys.readouterr().err
    assert service.set_limits(ctx, acc.id, rpm=None, max_active=None)["requestsPerMinute"] == 2  # nothing written
    assert service.set_schedule(ctx, acc.id, weight=None, tier="high") == {"weight": 3, "tier": "high"}
    statuses = [client.get("/api/v1/credits", headers=acc.headers).status_code for _ in range(3)]
    assert statuses == [200, 200, 429]
    assert main(["keys", "limits", "--account", "nobody", "--rpm", "1", *store]) == 2
    assert "ACCOUNT_NOT_FOUND" in capsys.readouterr().err
