"""The task queue: claim order, fenced heartbeats and finishes, rescue, expiry, cancel, listing
(RELIABILITY 4, 5, 8, 9 at the store level)."""

from __future__ import annotations

import functools
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from reelgen.domain import TaskStatus
from reelgen.errors import ErrorCode, ReelgenError
from reelgen.store import keys, ledger, tasks
from reelgen.store.db import Database
from reelgen.store.tables import movements
from tests.store_fixtures import T0, submit

LEASE = 30.0


def _account(db: Database, credits: int = 10_000) -> str:
    def go(conn: Any) -> str:
        account_id = keys.create_account(conn, "acme", now=T0)
        ledger.grant(conn, account_id, credits, T0)
        return account_id

    result: str = db.run(go, immediate=True)
    return result


def _at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def _claim(db: Database, now: datetime = T0, worker: str = "w1", profile: str | None = None) -> tasks.TaskRow | None:
    result: tasks.TaskRow | None = db.run(
        lambda c: tasks.claim(c, worker_id=worker, lease_seconds=LEASE, now=now, profile=profile),
        immediate=True,
    )
    return result


def _get(db: Database, task_id: str) -> tasks.TaskRow:
    task = db.run(lambda c: tasks.get(c, task_id))
    assert task is not None
    return task


def _complete(db: Database, task_id: str, attempt: int, key: str = "out.mp4", now: datetime = T0) -> bool:
    won: bool = db.run(
        lambda c: tasks.complete(c, task_id, attempt, result_key=key, duration=5.0, has_audio=True, now=now),
        immediate=True,
    )
    return won


def _fail(db: Database, task_id: str, attempt: int) -> bool:
    won: bool = db.run(
        lambda c: tasks.fail(c, task_id, attempt, code="GENERATION_FAILED", message="boom", now=T0),
        immediate=True,
    )
    return won


def _rescue(db: Database, now: datetime) -> list[tuple[str, TaskStatus]]:
    result: list[tuple[str, TaskStatus]] = db.run(lambda c: tasks.rescue_expired(c, now), immediate=True)
    return result


def _kinds(db: Database, task_id: str) -> list[str]:
    rows = db.run(
        lambda c: c.execute(
            sa.select(movements.c.kind).where(movements.c.task_id == task_id).order_by(movements.c.id)
        ).scalars()
    )
    return list(rows)


def _healthy(db: Database) -> None:
    assert db.run(ledger.check) == []


def test_create_and_get_round_trip(db: Database) -> None:
    account = _account(db)
    task, _ = submit(db, account, 210, now=_at(1))
    got = _get(db, task.id)
    assert got == task
    assert got.status is TaskStatus.PENDING
    assert (got.attempt, got.failures, got.max_attempts, got.progress) == (0, 0, 3, 0)
    assert got.input == {"prompt": "a fox", "duration": 3}
    assert got.created_at == _at(1) and got.started_at is None and got.worker_id is None
    assert len(got.id) == 32 and int(got.id, 16) >= 0
    assert db.run(lambda c: tasks.get(c, "0" * 32)) is None


def test_create_refuses_a_bad_price_or_attempt_budget(db: Database) -> None:
    account = _account(db)
    base: dict[str, Any] = dict(account_id=account, model="m", profile="p", input={}, prompt="p", seed=1, now=T0)
    with pytest.raises(ValueError, match="price"):
        db.run(lambda c: tasks.create(c, price=0, max_attempts=1, **base), immediate=True)
    with pytest.raises(ValueError, match="max_attempts"):
        db.run(lambda c: tasks.create(c, price=5, max_attempts=0, **base), immediate=True)


def test_claim_takes_the_oldest_pending_task_as_a_new_attempt(db: Database) -> None:
    account = _account(db)
    first, _ = submit(db, account, 10, now=_at(1))
    second, _ = submit(db, account, 10, now=_at(2))
    assert db.run(lambda c: tasks.queue_position(c, first.id)) == 0
    assert db.run(lambda c: tasks.queue_position(c, second.id)) == 1
    claimed = _claim(db, now=_at(5))
    assert claimed is not None and claimed.id == first.id
    assert claimed.status is TaskStatus.PROCESSING
    assert (claimed.attempt, claimed.worker_id, claimed.progress) == (1, "w1", 0)
    assert claimed.started_at == claimed.heartbeat_at == _at(5)
    assert claimed.lease_expires_at == _at(5 + LEASE)
    assert db.run(lambda c: tasks.queue_position(c, first.id)) is None
    assert db.run(lambda c: tasks.queue_position(c, second.id)) == 0
    nxt = _claim(db, now=_at(6), worker="w2")
    assert nxt is not None and nxt.id == second.id
    assert _claim(db, now=_at(7)) is None


def test_claim_can_be_limited_to_one_profile(db: Database) -> None:
    account = _account(db)
    tiny, _ = submit(db, account, 10, now=_at(1), profile="tiny")
    big, _ = submit(db, account, 10, now=_at(2), profile="big")
    got = _claim(db, profile="big")
    assert got is not None and got.id == big.id
    assert _claim(db, profile="big") is None
    got = _claim(db, profile="tiny")
    assert got is not None and got.id == tiny.id


def test_queue_position_counts_only_the_tasks_of_its_profile(db: Database) -> None:
    """Workers claim per profile, so only the same profile's pending tasks are ahead: the position
    agrees with what ``claim(profile=...)`` will take next (and with the ETA built on it)."""
    account = _account(db)
    tiny_1, _ = submit(db, account, 10, now=_at(1), profile="tiny")
    big, _ = submit(db, account, 10, now=_at(2), profile="big")
    tiny_2, _ = submit(db, account, 10, now=_at(3), profile="tiny")
    positions = {t.id: db.run(lambda c, t=t: tasks.queue_position(c, t.id)) for t in (tiny_1, big, tiny_2)}
    assert positions == {tiny_1.id: 0, big.id: 0, tiny_2.id: 1}
    assert db.run(lambda c: tasks.queue_positions(c, [tiny_1.id, big.id, tiny_2.id, "0" * 32])) == positions
    got = _claim(db, profile="big")
    assert got is not None and got.id == big.id  # position 0 was right: it was next for its workers
    assert db.run(lambda c: tasks.queue_positions(c, [big.id, tiny_2.id])) == {tiny_2.id: 1}


@pytest.mark.parametrize(
    ("start", "new"),
    [("completed", "pending"), ("failed", "processing"), ("cancelled", "completed"), ("pending", "completed")],
)
def test_every_status_write_obeys_the_state_machine(db: Database, start: str, new: str) -> None:
    """The store's one conditional write consults ``TaskStatus.can_move_to``: a move the state
    machine lacks is refused before any SQL runs, whatever the row says."""
    account = _account(db)
    task, _ = submit(db, account, 10, now=_at(1))
    with pytest.raises(ValueError, match=f"cannot move from {start} to {new}"):
        db.run(lambda c: tasks._move(c, task.id, start, None, status=new), immediate=True)
    assert _get(db, task.id) == task
    assert db.run(lambda c: tasks._move(c, task.id, "pending", None, status="processing"), immediate=True)


def test_concurrent_claims_hand_each_task_to_one_worker(db: Database) -> None:
    account = _account(db)
    ids = {submit(db, account, 10, now=_at(i))[0].id for i in range(12)}
    barrier = threading.Barrier(6)

    def worker(n: int) -> list[str]:
        barrier.wait(timeout=30)
        got = []
        while (task := _claim(db, worker=f"w{n}")) is not None:
            got.append(task.id)
        return got

    with ThreadPoolExecutor(max_workers=6) as pool:
        claimed = [t for batch in pool.map(worker, range(6)) for t in batch]
    assert Counter(claimed) == dict.fromkeys(ids, 1)
    assert all(_get(db, t).attempt == 1 for t in ids)


def test_heartbeat_is_fenced_by_attempt_and_worker(db: Database) -> None:
    account = _account(db)
    task, _ = submit(db, account, 10)
    claimed = _claim(db)
    assert claimed is not None

    def beat(attempt: int, worker: str, progress: int | None) -> bool:
        ok: bool = db.run(
            lambda c: tasks.heartbeat(c, task.id, attempt, worker, lease_seconds=LEASE, now=_at(10), progress=progress),
            immediate=True,
        )
        return ok

    assert beat(1, "w1", 40) is True
    got = _get(db, task.id)
    assert (got.progress, got.heartbeat_at, got.lease_expires_at) == (40, _at(10), _at(10 + LEASE))
    assert beat(1, "w1", None) is True and _get(db, task.id).progress == 40
    assert beat(1, "w1", 250) is True and _get(db, task.id).progress == 100  # clamped
    assert beat(2, "w1", 50) is False
    assert beat(1, "intruder", 50) is False
    assert _complete(db, task.id, 1)
    assert beat(1, "w1", 50) is False  # finished: the worker must stop


def test_complete_publishes_and_captures_once(db: Database) -> None:
    account = _account(db, 1000)
    task, _ = submit(db, account, 210)
    _claim(db)
    assert _complete(db, task.id, 1, key="tasks/abc.mp4", now=_at(9)) is True
    assert _complete(db, task.id, 1, key="other.mp4") is False
    assert _fail(db, task.id, 1) is False
    got = _get(db, task.id)
    assert got.status is TaskStatus.COMPLETED
    assert (got.result_key, got.result_duration, got.result_has_audio) == ("tasks/abc.mp4", 5.0, True)
    assert (got.progress, got.completed_at, got.lease_expires_at) == (100, _at(9), None)
    assert _kinds(db, task.id) == ["reserve", "capture"]
    assert db.run(lambda c: ledger.balance(c, account)) == ledger.Balance(790, 0, 210, 1000)
    _healthy(db)


def test_fail_records_the_error_and_releases_once(db: Database) -> None:
    account = _account(db, 1000)
    task, _ = submit(db, account, 210)
    _claim(db)
    assert _fail(db, task.id, 1) is True
    assert _fail(db, task.id, 1) is False
    assert _complete(db, task.id, 1) is False
    got = _get(db, task.id)
    assert (got.status, got.error_code, got.error_message) == (TaskStatus.FAILED, "GENERATION_FAILED", "boom")
    assert got.result_key is None
    assert _kinds(db, task.id) == ["reserve", "release"]
    assert db.run(lambda c: ledger.balance(c, account)) == ledger.Balance(1000, 0, 0, 1000)
    _healthy(db)


def test_a_pending_task_cannot_be_finished(db: Database) -> None:
    account = _account(db)
    task, _ = submit(db, account, 10)
    assert _complete(db, task.id, 0) is False
    assert _fail(db, task.id, 0) is False
    assert _get(db, task.id).status is TaskStatus.PENDING
    _healthy(db)


def test_finalization_is_fenced_against_a_rescued_attempt(db: Database) -> None:
    """RELIABILITY 4: attempt 1 loses its lease, attempt 2 claims; attempt 1's finish is rejected."""
    account = _account(db, 1000)
    task, _ = submit(db, account, 210)
    first = _claim(db, now=_at(0), worker="w1")
    assert first is not None and first.attempt == 1
    assert _rescue(db, _at(LEASE + 1)) == [(task.id, TaskStatus.PENDING)]
    second = _claim(db, now=_at(LEASE + 2), worker="w2")
    assert second is not None and (second.id, second.attempt) == (task.id, 2)
    assert _complete(db, task.id, 1, key="stale-attempt-1.mp4") is False
    assert _fail(db, task.id, 1) is False
    assert db.run(
        lambda c: tasks.heartbeat(c, task.id, 1, "w1", lease_seconds=LEASE, now=_at(LEASE + 3), progress=90),
        immediate=True,
    ) is False  # fmt: skip
    got = _get(db, task.id)
    assert (got.status, got.attempt, got.worker_id, got.result_key) == (TaskStatus.PROCESSING, 2, "w2", None)
    assert _complete(db, task.id, 2, key="attempt-2.mp4") is True
    assert _get(db, task.id).result_key == "attempt-2.mp4"
    assert _kinds(db, task.id) == ["reserve", "capture"]
    _healthy(db)


@pytest.mark.parametrize("rivals", ["complete+complete", "complete+fail"])
def test_concurrent_finishes_move_credits_once(db: Database, rivals: str) -> None:
    account = _account(db, 1000)
    task, _ = submit(db, account, 210)
    _claim(db)
    barrier = threading.Barrier(2)

    def finish(kind: str) -> bool:
        barrier.wait(timeout=30)
        return _complete(db, task.id, 1) if kind == "complete" else _fail(db, task.id, 1)

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(finish, rivals.split("+")))
    assert sorted(results) == [False, True]
    kinds = _kinds(db, task.id)
    assert kinds in (["reserve", "capture"], ["reserve", "release"])
    assert (kinds[1] == "capture") is (_get(db, task.id).status is TaskStatus.COMPLETED)
    _healthy(db)


def test_rescue_requeues_until_max_attempts_then_fails_and_releases(db: Database) -> None:
    """RELIABILITY 8 and 9 at the store level: a dead worker's task is retried, but not forever."""
    account = _account(db, 1000)
    task, _ = submit(db, account, 210)  # max_attempts=3
    now = 0.0
    for attempt in (1, 2):
        claimed = _claim(db, now=_at(now))
        assert claimed is not None and claimed.attempt == attempt
        assert _rescue(db, _at(now + LEASE - 1)) == []  # lease still running
        now += LEASE + 1
        assert _rescue(db, _at(now)) == [(task.id, TaskStatus.PENDING)]
        got = _get(db, task.id)
        assert (got.status, got.failures, got.worker_id, got.lease_expires_at) == (
            TaskStatus.PENDING,
            attempt,
            None,
            None,
        )
    claimed = _claim(db, now=_at(now))
    assert claimed is not None and claimed.attempt == 3
    assert _rescue(db, _at(now + LEASE + 1)) == [(task.id, TaskStatus.FAILED)]
    got = _get(db, task.id)
    assert (got.status, got.failures, got.error_code) == (TaskStatus.FAILED, 3, "GENERATION_FAILED")
    assert got.error_message == "The generation failed after 3 attempts."
    assert _claim(db, now=_at(now + 100)) is None  # no 4th attempt
    assert _rescue(db, _at(now + 1000)) == []
    assert _kinds(db, task.id) == ["reserve", "release"]
    assert db.run(lambda c: ledger.balance(c, account)).available == 1000
    _healthy(db)


def test_a_heartbeat_keeps_the_task_from_rescue(db: Database) -> None:
    account = _account(db)
    task, _ = submit(db, account, 10)
    _claim(db, now=_at(0))
    assert db.run(
        lambda c: tasks.heartbeat(c, task.id, 1, "w1", lease_seconds=LEASE, now=_at(20), progress=None),
        immediate=True,
    )
    assert _rescue(db, _at(LEASE + 1)) == []
    assert _rescue(db, _at(20 + LEASE + 1)) == [(task.id, TaskStatus.PENDING)]


def test_hand_back_requeues_without_counting_a_failure(db: Database) -> None:
    account = _account(db)
    older, _ = submit(db, account, 10, now=_at(0))
    newer, _ = submit(db, account, 10, now=_at(1))
    claimed = _claim(db)
    assert claimed is not None and claimed.id == older.id
    assert db.run(lambda c: tasks.hand_back(c, older.id, 2, _at(3)), immediate=True) is False  # not its attempt
    assert db.run(lambda c: tasks.hand_back(c, older.id, 1, _at(3)), immediate=True) is True
    got = _get(db, older.id)
    assert (got.status, got.failures, got.worker_id, got.lease_expires_at, got.progress) == (
        TaskStatus.PENDING,
        0,
        None,
        None,
        0,
    )
    again = _claim(db, now=_at(4), worker="w2")  # keeps its place at the head of the queue
    assert again is not None and (again.id, again.attempt) == (older.id, 2)
    assert newer.id != again.id
    _healthy(db)


def test_expire_holds_fails_old_tasks_with_timeout_and_releases(db: Database) -> None:
    """RELIABILITY 5: workers stopped; holds older than the TTL are released by one sweep."""
    account = _account(db, 1000)
    stuck_pending, _ = submit(db, account, 100, now=_at(0))
    stuck_running, _ = submit(db, account, 100, now=_at(1))
    fresh, _ = submit(db, account, 100, now=_at(3000))
    _claim(db, now=_at(2))  # stuck_pending is older, so it is the one claimed...
    assert _get(db, stuck_pending.id).status is TaskStatus.PROCESSING
    expired = db.run(lambda c: tasks.expire_holds(c, max_age_seconds=3600, now=_at(3602)), immediate=True)
    assert sorted(expired) == sorted([stuck_pending.id, stuck_running.id])
    for t in (stuck_pending, stuck_running):
        got = _get(db, t.id)
        assert (got.status, got.error_code) == (TaskStatus.FAILED, "TIMEOUT")
        assert got.error_message == "The task did not finish within 3600 seconds."
        assert _kinds(db, t.id) == ["reserve", "release"]
    assert _get(db, fresh.id).status is TaskStatus.PENDING
    assert _complete(db, stuck_pending.id, 1) is False  # the worker that held it can no longer finish
    assert db.run(lambda c: ledger.balance(c, account)) == ledger.Balance(900, 100, 0, 1000)
    assert db.run(lambda c: tasks.expire_holds(c, max_age_seconds=3600, now=_at(3602)), immediate=True) == []
    _healthy(db)


def test_cancel_a_pending_task_releases_its_hold(db: Database) -> None:
    account = _account(db, 1000)
    task, _ = submit(db, account, 210)
    cancelled = db.run(lambda c: tasks.cancel(c, task.id, _at(5)), immediate=True)
    assert (cancelled.status, cancelled.completed_at) == (TaskStatus.CANCELLED, _at(5))
    assert db.run(lambda c: tasks.cancel(c, task.id, _at(6)), immediate=True) == cancelled  # idempotent
    assert _kinds(db, task.id) == ["reserve", "release"]
    assert db.run(lambda c: ledger.balance(c, account)).available == 1000
    assert _claim(db) is None
    _healthy(db)


def test_cancel_refuses_finished_tasks(db: Database) -> None:
    account = _account(db, 1000)
    done, _ = submit(db, account, 10, now=_at(0))
    _claim(db)
    _complete(db, done.id, 1)
    with pytest.raises(ReelgenError) as info:
        db.run(functools.partial(tasks.cancel, task_id=done.id, now=T0), immediate=True)
    assert info.value.code is ErrorCode.NOT_CANCELLABLE
    with pytest.raises(ReelgenError) as info:
        db.run(lambda c: tasks.cancel(c, "0" * 32, T0), immediate=True)
    assert info.value.code is ErrorCode.TASK_NOT_FOUND
    _healthy(db)


def test_cancel_a_processing_task_fences_its_worker(db: Database) -> None:
    account = _account(db, 1000)
    task, _ = submit(db, account, 10)
    claimed = _claim(db)
    assert claimed is not None and claimed.id == task.id
    cancelled = db.run(lambda c: tasks.cancel(c, task.id, _at(3)), immediate=True)
    assert (cancelled.status, cancelled.error_code) == (TaskStatus.CANCELLED, "CANCELLED")
    # the worker's next heartbeat is refused (it stops), and it can neither complete nor fail
    beat = db.run(lambda c: tasks.heartbeat(c, task.id, 1, "w1", lease_seconds=10, now=_at(4)), immediate=True)
    assert beat is False
    assert _complete(db, task.id, 1) is False
    failed = db.run(lambda c: tasks.fail(c, task.id, 1, code="GENERATION_FAILED", message="x", now=_at(5)))
    assert failed is False
    assert _kinds(db, task.id) == ["reserve", "release"]
    assert db.run(lambda c: ledger.balance(c, account)).available == 1000
    _healthy(db)


@pytest.mark.parametrize("first", ["cancel", "complete"])
def test_cancel_racing_a_completion_resolves_the_hold_once(db: Database, first: str) -> None:
    account = _account(db, 1000)
    task, _ = submit(db, account, 10)
    _claim(db)
    barrier = threading.Barrier(2)
    outcomes: dict[str, Any] = {}

    def cancel() -> None:
        barrier.wait(timeout=10)
        try:
            outcomes["cancel"] = db.run(lambda c: tasks.cancel(c, task.id, _at(2)), immediate=True).status
        except ReelgenError as exc:
            outcomes["cancel"] = exc.code

    def complete() -> None:
        barrier.wait(timeout=10)
        outcomes["complete"] = _complete(db, task.id, 1)

    order = [cancel, complete] if first == "cancel" else [complete, cancel]
    threads = [threading.Thread(target=fn) for fn in order]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    final = _get(db, task.id)
    if final.status is TaskStatus.COMPLETED:
        assert outcomes == {"complete": True, "cancel": ErrorCode.NOT_CANCELLABLE}
        assert _kinds(db, task.id) == ["reserve", "capture"]
    else:
        assert final.status is TaskStatus.CANCELLED
        assert outcomes == {"complete": False, "cancel": TaskStatus.CANCELLED}
        assert _kinds(db, task.id) == ["reserve", "release"]
    _healthy(db)


def test_list_for_account_is_newest_first_with_a_cursor(db: Database) -> None:
    account = _account(db)
    other = _account(db)
    made = [submit(db, account, 10, now=_at(i // 2))[0] for i in range(7)]  # pairs share a created_at
    submit(db, other, 10, now=_at(10))
    expected = sorted(made, key=lambda t: (t.created_at, t.id), reverse=True)
    pages: list[list[tasks.TaskRow]] = []
    cursor: tuple[datetime, str] | None = None
    while True:
        page = db.run(functools.partial(tasks.list_for_account, account_id=account, limit=3, before=cursor))
        if not page:
            break
        pages.append(page)
        cursor = (page[-1].created_at, page[-1].id)
    assert [len(p) for p in pages] == [3, 3, 1]
    assert [t.id for p in pages for t in p] == [t.id for t in expected]
    while (claimed := _claim(db)) is not None and claimed.account_id != account:
        pass  # the fair queue may serve the other account first; this account's first task comes next
    processing = db.run(lambda c: tasks.list_for_account(c, account, status="processing"))
    assert [t.id for t in processing] == [made[0].id]
    assert db.run(lambda c: tasks.list_for_account(c, account, status=TaskStatus.COMPLETED)) == []
    assert db.run(lambda c: tasks.count_active(c, account)) == 7
    assert db.run(lambda c: tasks.count_active(c, other)) == 1
    db.run(lambda c: tasks.cancel(c, expected[0].id, T0), immediate=True)
    assert db.run(lambda c: tasks.count_active(c, account)) == 6
