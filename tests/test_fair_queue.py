"""Fair queueing at the store level, on SQLite and PostgreSQL (issue 19): one busy account never
starves the others, weights share the GPU time, tiers are strict, queue positions are the claim
order, idle accounts earn no credit, and scheduling never touches the ledger."""

from __future__ import annotations

import threading
from collections import Counter
from datetime import datetime, timedelta
from typing import Any

import pytest

from reelgen.errors import ErrorCode, ReelgenError
from reelgen.store import fair, keys, ledger, tasks
from reelgen.store.db import Database
from tests.store_fixtures import T0, submit

LEASE = 30.0


def _account(db: Database, name: str) -> str:
    def go(conn: Any) -> str:
        account_id = keys.create_account(conn, name, now=T0)
        ledger.grant(conn, account_id, 100_000, T0)
        return account_id

    result: str = db.run(go, immediate=True)
    return result


class Clock:
    """Submission times one microsecond apart, so FIFO order is the order of the calls."""

    def __init__(self) -> None:
        self.t = T0

    def __call__(self) -> datetime:
        self.t += timedelta(microseconds=1)
        return self.t


def _submit(db: Database, account: str, clock: Clock, n: int = 1) -> list[str]:
    return [submit(db, account, 10, now=clock())[0].id for _ in range(n)]


def _run_next(db: Database, clock: Clock, worker: str = "w1") -> tasks.TaskRow | None:
    """Claim the next task and complete it (one worker's turn)."""

    def go(conn: Any) -> tasks.TaskRow | None:
        row = tasks.claim(conn, worker_id=worker, lease_seconds=LEASE, now=clock())
        if row is not None:
            assert tasks.complete(conn, row.id, row.attempt, result_key="k", duration=3, has_audio=True, now=clock())
        return row

    result: tasks.TaskRow | None = db.run(go, immediate=True)
    return result


def _drain(db: Database, clock: Clock) -> list[tasks.TaskRow]:
    out: list[tasks.TaskRow] = []
    while (row := _run_next(db, clock)) is not None:
        out.append(row)
    return out


def _schedule(db: Database, account: str, *, weight: int | None = None, tier: str | None = None) -> None:
    db.run(lambda c: fair.set_schedule(c, account, weight=weight, tier=tier), immediate=True)


def test_a_busy_account_does_not_starve_the_others(db: Database) -> None:
    """The issue's acceptance at the store: A submits 20 (and one is already running), then B and C
    submit 3 each; the three accounts take turns, so B's and C's six tasks all run within the next
    nine claims (three rounds), not after A's 20."""
    clock = Clock()
    a, b, c = (_account(db, n) for n in "abc")
    _submit(db, a, clock, 20)
    first = _run_next(db, clock)  # A's first task ran before B and C arrived
    assert first is not None and first.account_id == a
    mine = set(_submit(db, b, clock, 3) + _submit(db, c, clock, 3))
    order = _drain(db, clock)
    assert len(order) == 25
    late = [i for i, row in enumerate(order) if row.id in mine]
    assert len(late) == 6 and max(late) < 9, [r.account_id for r in order]
    # FIFO within each account
    for account in (a, b, c):
        runs = [r for r in order if r.account_id == account]
        assert [r.created_at for r in runs] == sorted(r.created_at for r in runs)
    assert db.run(ledger.check) == []


def test_queue_positions_are_the_claim_order(db: Database) -> None:
    """Every pending task's reported position is exactly its place in the order tasks then start,
    with weights, tiers and accounts that arrive at different times."""
    clock = Clock()
    a, b, c, d = (_account(db, n) for n in "abcd")
    _schedule(db, b, weight=3)
    _schedule(db, d, tier="batch")
    _submit(db, a, clock, 6)
    _run_next(db, clock)
    _submit(db, b, clock, 5)
    _submit(db, d, clock, 3)
    _run_next(db, clock)
    _submit(db, c, clock, 4)
    _submit(db, a, clock, 2)
    pending = db.run(lambda conn: [r.id for r in tasks.list_for_account(conn, a, status="pending", limit=100)])
    for acc in (b, c, d):
        pending += db.run(lambda conn, acc=acc: [r.id for r in tasks.list_for_account(conn, acc, status="pending")])
    positions = db.run(lambda conn: tasks.queue_positions(conn, pending))
    assert sorted(positions.values()) == list(range(len(pending)))
    assert db.run(lambda conn: tasks.queue_position(conn, pending[0])) == positions[pending[0]]
    order = [row.id for row in _drain(db, clock)]
    assert order == sorted(pending, key=positions.__getitem__)
    assert [order.index(t) for t in pending] == [positions[t] for t in pending]


def test_weights_share_the_gpu_time(db: Database) -> None:
    """Weight 2 against weight 1, both always waiting: the first 12 claims go 8 to 4."""
    clock = Clock()
    heavy, light = _account(db, "heavy"), _account(db, "light")
    _schedule(db, heavy, weight=2)
    _submit(db, light, clock, 20)
    _submit(db, heavy, clock, 20)
    first = [row.account_id for row in (_run_next(db, clock) for _ in range(12)) if row is not None]
    assert Counter(first) == {heavy: 8, light: 4}
    assert db.run(lambda conn: fair.get_schedule(conn, heavy)).weight == 2


def test_tiers_are_strict(db: Database) -> None:
    """``high`` runs before ``normal`` even when submitted later; ``batch`` only when nothing else waits."""
    clock = Clock()
    normal, batch, high = _account(db, "normal"), _account(db, "batch"), _account(db, "high")
    _schedule(db, batch, tier="batch")
    _schedule(db, high, tier="high")
    _submit(db, batch, clock, 3)
    _submit(db, normal, clock, 3)
    _run_next(db, clock)  # normal's first: batch waits although it came first
    _submit(db, high, clock, 2)
    order = [row.account_id for row in _drain(db, clock)]
    assert order == [high, high, normal, normal, batch, batch, batch]


def test_an_idle_account_earns_no_credit(db: Database) -> None:
    """A ran alone for 10 tasks while B had nothing queued; when B arrives, the two alternate
    instead of B taking the next ten."""
    clock = Clock()
    a, b = _account(db, "a"), _account(db, "b")
    _submit(db, a, clock, 10)
    _drain(db, clock)
    _submit(db, a, clock, 4)
    _run_next(db, clock)
    _submit(db, b, clock, 4)
    order = [row.account_id for row in _drain(db, clock)]
    assert order[:6] in ([b, a, b, a, b, a], [a, b, a, b, a, b]), order


def test_concurrent_claims_take_each_task_once(db: Database) -> None:
    """Four workers claim at once (PostgreSQL: SKIP LOCKED heads); every task is claimed exactly once."""
    clock = Clock()
    accounts = [_account(db, f"acc{i}") for i in range(4)]
    ids = [t for acc in accounts for t in _submit(db, acc, clock, 5)]
    claimed: list[str] = []
    lock = threading.Lock()

    def work(worker: str) -> None:
        while True:
            row = db.run(
                lambda c: tasks.claim(c, worker_id=worker, lease_seconds=LEASE, now=T0 + timedelta(hours=1)),
                immediate=True,
            )
            if row is None:
                return
            with lock:
                claimed.append(row.id)

    threads = [threading.Thread(target=work, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert sorted(claimed) == sorted(ids)
    assert db.run(ledger.check) == []


def test_the_schedule_is_validated(db: Database) -> None:
    account = _account(db, "a")
    assert db.run(lambda c: fair.get_schedule(c, account)) == fair.Schedule(weight=1, tier="normal", vtime=0)
    for bad in ({"weight": 0}, {"weight": 1001}, {"tier": "urgent"}):
        with pytest.raises(ReelgenError) as err:
            db.run(lambda c, bad=bad: fair.set_schedule(c, account, **{"weight": None, "tier": None, **bad}))
        assert err.value.code is ErrorCode.INVALID_INPUT
    with pytest.raises(ReelgenError) as err:
        db.run(lambda c: fair.set_schedule(c, "0" * 32, weight=2, tier=None))
    assert err.value.code is ErrorCode.ACCOUNT_NOT_FOUND
    _schedule(db, account, tier="high")
    _schedule(db, account, weight=5)
    assert db.run(lambda c: fair.get_schedule(c, account)) == fair.Schedule(weight=5, tier="high", vtime=0)


def test_a_new_task_is_charged_its_class_run_time(db: Database) -> None:
    """Without history a task is expected to take its video's seconds; then the class's median run."""
    clock = Clock()
    account = _account(db, "a")

    def make(conn: Any) -> tasks.TaskRow:
        now = clock()
        row = tasks.create(
            conn, account_id=account, model="m", profile="tiny", input={"duration": 4}, prompt="p",
            price=10, seed=1, max_attempts=1, now=now, request_class="k",
        )  # fmt: skip
        ledger.reserve(conn, account, row.id, 10, now)
        return row

    db.run(make, immediate=True)
    assert db.run(lambda c: tasks.expected_cost_us(c, "k", {"duration": 4})) == 4_000_000
    row = db.run(lambda c: tasks.claim(c, worker_id="w", lease_seconds=LEASE, now=T0), immediate=True)
    assert row is not None
    done = T0 + timedelta(seconds=7)
    db.run(
        lambda c: tasks.complete(c, row.id, row.attempt, result_key="k", duration=4, has_audio=True, now=done),
        immediate=True,
    )
    assert db.run(lambda c: tasks.expected_cost_us(c, "k", {"duration": 4})) == 7_000_000
    assert db.run(lambda c: fair.get_schedule(c, account)).vtime == 4_000_000
