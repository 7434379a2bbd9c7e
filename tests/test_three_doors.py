"""One request through all three doors (``/api/v1``, ``/v1/videos``, MCP over ``/mcp``) against the
real server and its tiny-engine worker: the same task, the same price, the same ledger movements,
on SQLite and PostgreSQL."""

from __future__ import annotations

import time
from typing import Any

import anyio
import httpx
import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from sqlalchemy import select

from reelgen import service
from reelgen.store import ledger, tasks
from reelgen.store.tables import movements
from tests.api_fixtures import LiveServer
from tests.factories import make_account

PROMPT = "a heron lifts off a misty pond"


def _wait_done(c: httpx.Client, task_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        task: dict[str, Any] = c.get(f"/api/v1/tasks/{task_id}").json()["data"]
        if task["status"] in ("completed", "failed", "cancelled"):
            return task
        time.sleep(0.2)
    raise AssertionError(f"task {task_id} did not end")


def _via_mcp(url: str, key: str) -> str:
    async def main() -> str:
        headers = {"Authorization": f"Bearer {key}"}
        async with (
            httpx2.AsyncClient(headers=headers, timeout=120) as http,
            Client(streamable_http_client(f"{url}/mcp", http_client=http)) as client,
        ):
            args = {"prompt": PROMPT, "duration": 3, "aspect_ratio": "9:16", "mode": "professional"}
            made = await client.call_tool("generate", args)
            assert not made.is_error, made.content
            return str(made.structured_content["id"])

    result: str = anyio.run(main)
    return result


def test_same_request_through_three_doors_moves_credits_alike(live: LiveServer, ctx: service.Context) -> None:
    account = make_account(ctx, credits=5000, name="three-doors")
    with httpx.Client(base_url=live.url, headers=account.headers, timeout=60) as c:
        api_v1 = c.post(
            "/api/v1/generate",
            json={
                "model": "kling-3-0-text-to-video",
                "input": {"prompt": PROMPT, "duration": 3, "aspect_ratio": "9:16", "mode": "professional"},
            },
        ).json()["data"]["id"]
        # 1024x1792 = 9:16, professional (docs/api.md's table)
        openai_door = c.post(
            "/v1/videos", json={"prompt": PROMPT, "model": "sora-2-pro", "seconds": "3", "size": "1024x1792"}
        ).json()["id"]
        mcp_door = _via_mcp(live.url, account.key)
        ids = [api_v1, openai_door, mcp_door]
        done = [_wait_done(c, task_id) for task_id in ids]
    assert [t["status"] for t in done] == ["completed"] * 3, [t["error"] for t in done]

    rows = ctx.db.run(lambda conn: [tasks.get(conn, task_id) for task_id in ids])
    assert all(row is not None for row in rows)
    # one task, three ways in: same model, same stored input, same price (3 s x 56 = 168)
    assert {row.model for row in rows if row} == {"kling-3-0-text-to-video"}
    assert rows[0] and rows[1] and rows[2]
    assert rows[0].input == rows[1].input == rows[2].input
    assert [row.price for row in rows if row] == [168, 168, 168]

    def moves(conn: Any) -> dict[str, list[tuple[str, int]]]:
        found = conn.execute(
            select(movements.c.task_id, movements.c.kind, movements.c.amount)
            .where(movements.c.task_id.in_(ids))
            .order_by(movements.c.id)
        )
        out: dict[str, list[tuple[str, int]]] = {task_id: [] for task_id in ids}
        for task_id, kind, amount in found:
            out[task_id].append((kind, int(amount)))
        return out

    ledger_moves = ctx.db.run(moves)
    assert all(ledger_moves[task_id] == [("reserve", 168), ("capture", 168)] for task_id in ids), ledger_moves
    assert ctx.db.run(lambda conn: ledger.balance(conn, account.id)) == ledger.Balance(
        available=5000 - 3 * 168, reserved=0, captured=3 * 168, granted=5000
    )
    assert ctx.db.run(ledger.check) == []
