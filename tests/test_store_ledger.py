"""The credit ledger: double entry, exactly-once capture/release, no overdraft under concurrency,
drift detection, and a state machine over the whole task lifecycle (RELIABILITY 1, 2, I1-I4)."""

from __future__ import annotations

import functools
import multiprocessing
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    invariant,
    multiple,
    rule,
    run_state_machine_as_test,
)

from reelgen.domain import TaskStatus
from reelgen.errors import ErrorCode, ReelgenError
from reelgen.store import keys, ledger, tasks
from reelgen.store.db import Database
from reelgen.store.tables import accounts, ledger_entries, movements
from reelgen.store.tables import tasks as tasks_table
from tests.store_fixtures import T0, reserve_in_process, submit


def _account(db: Database, credits: int = 0) -> str:
    def go(conn: Any) -> str:
        account_id = keys.create_account(conn, "acme", now=T0)
        if credits:
            ledger.grant(conn, account_id, credits, T0)
        return account_id

    result: str = db.run(go, immediate=True)
    return result


def _balance(db: Database, account_id: str) -> ledger.Balance:
    cached: ledger.Balance = db.run(lambda conn: ledger.balance(conn, account_id))
    assert db.run(lambda conn: ledger.balance_from_entries(conn, account_id)) == cached
    return cached


def _counts(db: Database) -> tuple[int, int]:
    def go(conn: Any) -> tuple[int, int]:
        n_mov = conn.execute(sa.select(sa.func.count()).select_from(movements)).scalar_one()
        n_ent = conn.execute(sa.select(sa.func.count()).select_from(ledger_entries)).scalar_one()
        return int(n_mov), int(n_ent)

    result: tuple[int, int] = db.run(go)
    return result


def _healthy(db: Database) -> None:
    assert db.run(ledger.check) == []
    n_mov, n_ent = _counts(db)
    assert n_ent == 2 * n_mov


def _claim(db: Database, now: datetime = T0) -> tasks.TaskRow:
    task = db.run(lambda c: tasks.claim(c, worker_id="w1", lease_seconds=30, now=now), immediate=True)
    assert task is not None
    return task


def test_grant_reserve_capture_moves_credits_once(db: Database) -> None:
    account = _account(db, 1000)
    assert _balance(db, account) == ledger.Balance(available=1000, reserved=0, captured=0, granted=1000)
    task, available = submit(db, account, 210)
    assert available == 790
    assert _balance(db, account) == ledger.Balance(available=790, reserved=210, captured=0, granted=1000)
    assert db.run(lambda c: ledger.capture(c, task.id, T0), immediate=True) is True
    assert db.run(lambda c: ledger.capture(c, task.id, T0), immediate=True) is False
    assert db.run(lambda c: ledger.release(c, task.id, T0), immediate=True) is False
    assert _balance(db, account) == ledger.Balance(available=790, reserved=0, captured=210, granted=1000)
    assert _counts(db) == (3, 6)


def test_release_returns_the_hold_once(db: Database) -> None:
    account = _account(db, 500)
    task, _ = submit(db, account, 300)
    assert db.run(lambda c: ledger.release(c, task.id, T0), immediate=True) is True
    assert db.run(lambda c: ledger.release(c, task.id, T0), immediate=True) is False
    assert db.run(lambda c: ledger.capture(c, task.id, T0), immediate=True) is False
    assert _balance(db, account) == ledger.Balance(available=500, reserved=0, captured=0, granted=500)
    assert _counts(db) == (3, 6)


def test_each_movement_is_two_entries_that_sum_to_zero(db: Database) -> None:
    account = _account(db, 100)
    task, _ = submit(db, account, 40)
    db.run(lambda c: ledger.capture(c, task.id, T0), immediate=True)
    rows = db.run(
        lambda c: c.execute(
            sa.select(movements.c.kind, ledger_entries.c.account_id, ledger_entries.c.bucket, ledger_entries.c.amount)
            .select_from(movements.join(ledger_entries))
            .order_by(movements.c.id, ledger_entries.c.id)
        ).all()
    )
    assert [tuple(r) for r in rows] == [
        ("grant", None, "granted", -100),
        ("grant", account, "available", 100),
        ("reserve", account, "available", -40),
        ("reserve", account, "reserved", 40),
        ("capture", account, "reserved", -40),
        ("capture", None, "captured", 40),
    ]


def test_insufficient_credits_writes_nothing(db: Database) -> None:
    account = _account(db, 100)
    with pytest.raises(ReelgenError) as info:
        submit(db, account, 210)
    assert info.value.code is ErrorCode.INSUFFICIENT_CREDITS
    assert info.value.message == "Insufficient credits. Required: 210, Available: 100"
    assert _balance(db, account).available == 100
    assert db.run(lambda c: tasks.count_active(c, account)) == 0
    assert _counts(db) == (1, 2)


def test_reserve_before_the_task_row_exists_is_allowed_in_one_transaction(db: Database) -> None:
    """The task foreign key is deferred: a caller may reserve first and insert the task after."""
    account = _account(db, 100)

    def go(conn: Any) -> str:
        task_id = "f" * 32
        ledger.reserve(conn, account, task_id, 50, T0)
        tasks.create(
            conn, account_id=account, model="m", profile="p", input={}, prompt="p", price=50, seed=1,
            max_attempts=1, now=T0, task_id=task_id,
        )  # fmt: skip
        return task_id

    db.run(go, immediate=True)
    _healthy(db)
    with pytest.raises(sa.exc.IntegrityError):  # but a hold for a task that never appears is refused
        db.run(lambda c: ledger.reserve(c, account, "e" * 32, 10, T0), immediate=True)


def test_bad_amounts_and_unknown_accounts_are_refused(db: Database) -> None:
    account = _account(db)
    for amount in (0, -5, True, 2.5):
        with pytest.raises(ReelgenError) as info:
            db.run(functools.partial(ledger.grant, account_id=account, amount=amount, now=T0), immediate=True)  # type: ignore[arg-type]
        assert info.value.code is ErrorCode.INVALID_INPUT
    for call in (
        lambda c: ledger.grant(c, "nobody", 10, T0),
        lambda c: ledger.reserve(c, "nobody", "t" * 32, 10, T0),
        lambda c: ledger.balance(c, "nobody"),
        lambda c: ledger.balance_from_entries(c, "nobody"),
    ):
        with pytest.raises(ReelgenError) as info:
            db.run(call, immediate=True)
        assert info.value.code is ErrorCode.ACCOUNT_NOT_FOUND
    assert _counts(db) == (0, 0)


def test_a_second_hold_or_resolving_a_missing_hold_is_a_bug(db: Database) -> None:
    account = _account(db, 100)
    task, _ = submit(db, account, 10)
    with pytest.raises(ValueError, match="already holds"):
        db.run(lambda c: ledger.reserve(c, account, task.id, 10, T0), immediate=True)
    with pytest.raises(ValueError, match="holds no credits"):
        db.run(lambda c: ledger.capture(c, "0" * 32, T0), immediate=True)
    _healthy(db)


# concurrency (RELIABILITY 2): exactly k of many racing submits succeed

PRICE = 210
K = 7


def test_concurrent_reserves_from_threads_never_overdraw(db: Database) -> None:
    account = _account(db, K * PRICE)
    n = 50
    barrier = threading.Barrier(n)

    def attempt(i: int) -> str:
        barrier.wait(timeout=30)
        try:
            submit(db, account, PRICE, now=T0 + timedelta(microseconds=i))
        except ReelgenError as exc:
            return str(exc.code) if exc.code is ErrorCode.INSUFFICIENT_CREDITS else repr(exc)
        except Exception as exc:
            return repr(exc)
        return "ok"

    with ThreadPoolExecutor(max_workers=n) as pool:
        outcomes = Counter(pool.map(attempt, range(n)))
    assert outcomes == {"ok": K, "INSUFFICIENT_CREDITS": n - K}
    assert _balance(db, account) == ledger.Balance(available=0, reserved=K * PRICE, captured=0, granted=K * PRICE)
    assert db.run(lambda c: tasks.count_active(c, account)) == K
    _healthy(db)


def test_concurrent_reserves_from_processes_never_overdraw(db: Database) -> None:
    account = _account(db, K * PRICE)
    ctx = multiprocessing.get_context("spawn")
    n_procs, per_proc = 8, 7
    barrier = ctx.Barrier(n_procs)
    results: Any = ctx.Queue()
    procs = [
        ctx.Process(target=reserve_in_process, args=(db.url, account, PRICE, per_proc, barrier, results))
        for _ in range(n_procs)
    ]
    for p in procs:
        p.start()
    outcomes: Counter[str] = Counter()
    for _ in procs:
        outcomes.update(results.get(timeout=120))
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert outcomes == {"ok": K, "INSUFFICIENT_CREDITS": n_procs * per_proc - K}
    assert _balance(db, account) == ledger.Balance(available=0, reserved=K * PRICE, captured=0, granted=K * PRICE)
    _healthy(db)


# drift detection: check() must notice tampering


def _busy_ledger(db: Database) -> tuple[str, tasks.TaskRow, tasks.TaskRow]:
    """An account with a completed task and a pending one (healthy)."""
    account = _account(db, 1000)
    done, _ = submit(db, account, 100)
    pending, _ = submit(db, account, 50, now=T0 + timedelta(seconds=1))
    claimed = _claim(db)
    assert claimed.id == done.id
    assert db.run(
        lambda c: tasks.complete(c, done.id, 1, result_key="k", duration=3.0, has_audio=True, now=T0),
        immediate=True,
    )
    _healthy(db)
    return account, done, pending


def _tamper(db: Database, sql: str, **params: Any) -> list[str]:
    db.run(lambda c: c.execute(sa.text(sql), params), immediate=True)
    problems: list[str] = db.run(ledger.check)
    return problems


def test_check_detects_a_changed_cached_balance(db: Database) -> None:
    account, _, _ = _busy_ledger(db)
    problems = _tamper(db, "UPDATE accounts SET available = available + 1 WHERE id = :a", a=account)
    assert problems == [f"I1 account {account}: cached available 851 != 850 from its ledger entries"]


def test_check_detects_a_stray_entry(db: Database) -> None:
    account, _, _ = _busy_ledger(db)
    problems = _tamper(
        db,
        "INSERT INTO ledger_entries (movement_id, account_id, bucket, amount) "
        "SELECT MIN(id), :a, 'available', 5 FROM movements",
        a=account,
    )
    assert any(p.startswith(f"I1 account {account}: cached available") for p in problems)
    assert any(p.startswith("I2 movement") and "3 entries instead of 2" in p for p in problems)


def test_check_detects_a_deleted_entry_and_a_wrong_shape(db: Database) -> None:
    _busy_ledger(db)
    problems = _tamper(
        db, "DELETE FROM ledger_entries WHERE id = (SELECT MAX(id) FROM ledger_entries WHERE account_id IS NULL)"
    )
    assert any("1 entries instead of 2" in p for p in problems)
    # a balanced pair in the wrong buckets is still caught
    problems = _tamper(db, "UPDATE ledger_entries SET bucket = 'reserved' WHERE bucket = 'granted'")
    assert any("do not match a grant" in p for p in problems)


def test_check_detects_a_negative_balance_from_entries(db: Database) -> None:
    account, _, _ = _busy_ledger(db)
    problems = _tamper(
        db,
        "UPDATE ledger_entries SET amount = -2000 WHERE account_id = :a AND bucket = 'available' AND amount = 1000",
        a=account,
    )
    assert any(p.startswith(f"I3 account {account}: available is negative (entries") for p in problems)


def test_check_detects_holds_out_of_step_with_task_states(db: Database) -> None:
    _, done, pending = _busy_ledger(db)
    problems = _tamper(db, "UPDATE tasks SET status = 'failed' WHERE id = :t", t=done.id)
    assert problems == [f"I4 task {done.id} (failed): 1 captures and 0 releases"]
    problems = _tamper(db, "UPDATE tasks SET status = 'completed' WHERE id = :t", t=pending.id)
    assert f"I4 task {pending.id} (completed): 0 captures and 0 releases" in problems


def test_check_detects_capture_and_release_of_one_hold(db: Database) -> None:
    account, done, _ = _busy_ledger(db)

    def sneak_release(conn: Any) -> None:  # what the check under the account lock prevents
        mid = conn.execute(
            sa.insert(movements)
            .values(kind="release", account_id=account, task_id=done.id, amount=100, created_at=T0)
            .returning(movements.c.id)
        ).scalar_one()
        conn.execute(
            sa.insert(ledger_entries),
            [
                {"movement_id": mid, "account_id": account, "bucket": "reserved", "amount": -100},
                {"movement_id": mid, "account_id": account, "bucket": "available", "amount": 100},
            ],
        )
        conn.execute(sa.update(accounts).values(available=accounts.c.available + 100))

    db.run(sneak_release, immediate=True)
    problems = db.run(ledger.check)
    assert f"I4 task {done.id} (completed): captured 1 and released 1 times" in problems


def test_check_detects_a_task_without_a_hold(db: Database) -> None:
    account = _account(db, 100)
    task = db.run(
        lambda c: tasks.create(
            c, account_id=account, model="m", profile="p", input={}, prompt="p", price=10, seed=1,
            max_attempts=1, now=T0,
        ),
        immediate=True,
    )  # fmt: skip
    assert db.run(ledger.check) == [f"I4 task {task.id} (pending): 0 reserves instead of 1"]


# the whole lifecycle as a state machine, invariants after every step (RELIABILITY 1)

LEASE = 30


@dataclass
class _Model:
    account: str
    price: int
    created: datetime
    status: TaskStatus = TaskStatus.PENDING
    attempt: int = 0
    failures: int = 0
    lease_until: datetime | None = None


MAX_ATTEMPTS = 2


def _machine(db: Database) -> type[RuleBasedStateMachine]:
    class LedgerMachine(RuleBasedStateMachine):
        accounts = Bundle("accounts")
        submitted = Bundle("tasks")

        def __init__(self) -> None:
            super().__init__()
            self.now = T0
            self.balances: dict[str, dict[str, int]] = {}
            self.model: dict[str, _Model] = {}

        def teardown(self) -> None:
            def wipe(conn: Any) -> None:
                for table in ("ledger_entries", "movements", "api_keys", "tasks", "account_queue", "accounts"):
                    conn.execute(sa.text(f"DELETE FROM {table}"))

            db.run(wipe, immediate=True)

        def _tick(self, seconds: float = 0.001) -> datetime:
            self.now += timedelta(seconds=seconds)
            return self.now

        def _move(self, account: str, **deltas: int) -> None:
            for k, v in deltas.items():
                self.balances[account][k] += v

        @rule(target=accounts)
        def new_account(self) -> str:
            account = db.run(lambda c: keys.create_account(c, "acct", now=self.now), immediate=True)
            self.balances[account] = {"available": 0, "reserved": 0, "captured": 0, "granted": 0}
            return account

        @rule(account=accounts, amount=st.integers(1, 600))
        def grant(self, account: str, amount: int) -> None:
            db.run(lambda c: ledger.grant(c, account, amount, self.now), immediate=True)
            self._move(account, available=amount, granted=amount)

        @rule(target=submitted, account=accounts, price=st.integers(1, 400))
        def submit_task(self, account: str, price: int) -> Any:
            now = self._tick()
            if self.balances[account]["available"] < price:
                with pytest.raises(ReelgenError) as info:
                    submit(db, account, price, now=now, max_attempts=MAX_ATTEMPTS)
                assert info.value.code is ErrorCode.INSUFFICIENT_CREDITS
                return multiple()
            task, available = submit(db, account, price, now=now, max_attempts=MAX_ATTEMPTS)
            self._move(account, available=-price, reserved=price)
            assert available == self.balances[account]["available"]
            self.model[task.id] = _Model(account, price, now)
            return task.id

        @rule()
        def claim(self) -> None:
            waiting = sorted((m.created, tid) for tid, m in self.model.items() if m.status is TaskStatus.PENDING)
            got = db.run(lambda c: tasks.claim(c, worker_id="w", lease_seconds=LEASE, now=self.now), immediate=True)
            if not waiting:
                assert got is None
                return
            # which account goes next is the fair queue's choice (tests/test_fair_queue.py);
            # within that account it is the oldest pending task
            assert got is not None and got.id in {tid for _, tid in waiting}
            assert got.id == min((c, tid) for c, tid in waiting if self.model[tid].account == got.account_id)[1]
            m = self.model[got.id]
            m.status, m.attempt, m.lease_until = (
                TaskStatus.PROCESSING,
                m.attempt + 1,
                self.now + timedelta(seconds=LEASE),
            )
            assert got.attempt == m.attempt

        def _owns(self, m: _Model, stale: bool) -> tuple[int, bool]:
            attempt = m.attempt - 1 if stale else m.attempt
            return attempt, m.status is TaskStatus.PROCESSING and not stale

        @rule(task=submitted, stale=st.booleans())
        def complete(self, task: str, stale: bool) -> None:
            m = self.model[task]
            attempt, expected = self._owns(m, stale)
            won = db.run(
                lambda c: tasks.complete(
                    c, task, attempt, result_key=f"{task}.mp4", duration=3.0, has_audio=True, now=self.now
                ),
                immediate=True,
            )
            assert won is expected
            if won:
                m.status = TaskStatus.COMPLETED
                self._move(m.account, reserved=-m.price, captured=m.price)

        @rule(task=submitted, stale=st.booleans())
        def fail(self, task: str, stale: bool) -> None:
            m = self.model[task]
            attempt, expected = self._owns(m, stale)
            won = db.run(
                lambda c: tasks.fail(c, task, attempt, code="GENERATION_FAILED", message="boom", now=self.now),
                immediate=True,
            )
            assert won is expected
            if won:
                m.status = TaskStatus.FAILED
                self._move(m.account, reserved=-m.price, available=m.price)

        @rule(task=submitted)
        def heartbeat(self, task: str) -> None:
            m = self.model[task]
            ok = db.run(
                lambda c: tasks.heartbeat(c, task, m.attempt, "w", lease_seconds=LEASE, now=self.now, progress=50),
                immediate=True,
            )
            assert ok is (m.status is TaskStatus.PROCESSING)
            if ok:
                m.lease_until = self.now + timedelta(seconds=LEASE)

        @rule(task=submitted)
        def hand_back(self, task: str) -> None:
            m = self.model[task]
            ok = db.run(lambda c: tasks.hand_back(c, task, m.attempt, self.now), immediate=True)
            assert ok is (m.status is TaskStatus.PROCESSING)
            if ok:
                m.status, m.lease_until = TaskStatus.PENDING, None

        @rule(task=submitted)
        def cancel(self, task: str) -> None:
            m = self.model[task]
            # pending and processing tasks are cancelled (a processing one's worker is fenced out)
            if m.status in (TaskStatus.PENDING, TaskStatus.PROCESSING, TaskStatus.CANCELLED):
                row = db.run(lambda c: tasks.cancel(c, task, self.now), immediate=True)
                assert row.status is TaskStatus.CANCELLED
                if m.status is not TaskStatus.CANCELLED:
                    m.status, m.lease_until = TaskStatus.CANCELLED, None
                    self._move(m.account, reserved=-m.price, available=m.price)
            else:
                with pytest.raises(ReelgenError) as info:
                    db.run(lambda c: tasks.cancel(c, task, self.now), immediate=True)
                assert info.value.code is ErrorCode.NOT_CANCELLABLE

        def _expect_rescue(self, now: datetime) -> dict[str, TaskStatus]:
            """Apply a rescuer pass at ``now`` to the model; the outcome per rescued task."""
            expected: dict[str, TaskStatus] = {}
            for tid, m in self.model.items():
                if m.status is TaskStatus.PROCESSING and m.lease_until is not None and m.lease_until < now:
                    m.failures += 1
                    m.lease_until = None
                    if m.failures < MAX_ATTEMPTS:
                        m.status = TaskStatus.PENDING
                    else:
                        m.status = TaskStatus.FAILED
                        self._move(m.account, reserved=-m.price, available=m.price)
                    expected[tid] = m.status
            return expected

        def _expect_expiry(self, max_age: float) -> set[str]:
            """Apply hold expiry (holds older than ``max_age`` s) to the model; the expired tasks."""
            cutoff = self.now - timedelta(seconds=max_age)
            expected = set()
            for tid, m in self.model.items():
                if m.status in (TaskStatus.PENDING, TaskStatus.PROCESSING) and m.created < cutoff:
                    m.status, m.lease_until = TaskStatus.FAILED, None
                    self._move(m.account, reserved=-m.price, available=m.price)
                    expected.add(tid)
            return expected

        @rule(seconds=st.integers(0, 2 * LEASE))
        def kill_workers_and_rescue(self, seconds: int) -> None:
            now = self._tick(seconds)
            expected = self._expect_rescue(now)
            got = db.run(lambda c: tasks.rescue_expired(c, now), immediate=True)
            assert dict(got) == expected

        @rule(max_age=st.integers(1, 120))
        def expire_holds(self, max_age: int) -> None:
            expected = self._expect_expiry(max_age)
            got = db.run(lambda c: tasks.expire_holds(c, max_age_seconds=max_age, now=self.now), immediate=True)
            assert set(got) == expected

        @invariant()
        def ledger_balances_and_states_are_consistent(self) -> None:
            def read(conn: Any) -> tuple[list[str], tuple[int, int], dict[str, Any], dict[str, str]]:
                problems = ledger.check(conn)
                n_mov = conn.execute(sa.select(sa.func.count()).select_from(movements)).scalar_one()
                n_ent = conn.execute(sa.select(sa.func.count()).select_from(ledger_entries)).scalar_one()
                bal = {a: asdict(ledger.balance(conn, a)) for a in self.balances}
                states = dict(conn.execute(sa.select(tasks_table.c.id, tasks_table.c.status)).all())
                return problems, (n_mov, n_ent), bal, states

            problems, (n_mov, n_ent), bal, states = db.run(read)
            assert problems == []
            assert n_ent == 2 * n_mov
            assert bal == self.balances
            assert states == {t: m.status.value for t, m in self.model.items()}

    return LedgerMachine


def test_lifecycle_state_machine_keeps_the_invariants(db: Database) -> None:
    run_state_machine_as_test(
        _machine(db),
        settings=settings(
            max_examples=25,
            stateful_step_count=20,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )
