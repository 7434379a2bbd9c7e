"""The ledger state machine across the service (RELIABILITY 1, invariants I1-I4).

The store-level machine of ``tests/test_store_ledger.py`` (grant, claim, succeed, fail, heartbeat,
hand back, cancel, kill the worker and rescue, expire holds) with two rules swapped in from the
service process: ``submit_task`` goes through ``service.submit`` (parse the wire body, price it,
reserve and create the task in one transaction), and ``sweep`` runs the executor's sweeper pass
(``sweep_once``: lease rescue, then hold expiry at ``max_run_seconds`` + slack) at a later time.
After every step the machine's invariant checks ``ledger.check() == []``, entries = 2 x movements,
every balance against a model (so available never goes below 0) and every task's state.

Prices come from the contract's table (API.md), not from ``pricing``: the machine is an oracle.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, multiple, rule, run_state_machine_as_test

from reelgen import service
from reelgen.domain import TaskStatus
from reelgen.errors import ErrorCode, ReelgenError
from reelgen.store.db import Database
from reelgen.sweeper import HOLD_SLACK_SECONDS, sweep_once
from tests.api_fixtures import make_ctx, make_settings
from tests.factories import generate_body
from tests.test_store_ledger import LEASE, MAX_ATTEMPTS, _machine, _Model

#: credits per second of output (API.md): (mode, audio) -> rate
RATES = {("standard", False): 28, ("standard", True): 42, ("professional", False): 38, ("professional", True): 56}
MAX_RUN_SECONDS = 60.0
TTL = MAX_RUN_SECONDS + HOLD_SLACK_SECONDS


def test_service_lifecycle_state_machine_keeps_the_invariants(tmp_path: Path, db: Database) -> None:
    ctx = make_ctx(
        make_settings(tmp_path, db, max_attempts=MAX_ATTEMPTS, max_run_seconds=MAX_RUN_SECONDS, lease_seconds=LEASE),
        db,
    )
    base = _machine(db)
    accounts: Bundle[str] = cast(Any, base).accounts
    submitted: Bundle[str] = cast(Any, base).submitted

    class ServiceMachine(base):  # type: ignore[valid-type,misc]
        def __init__(self) -> None:
            super().__init__()
            ctx.clock = lambda: self.now  # the service stamps tasks with the machine's clock

        @rule(
            target=submitted,
            account=accounts,
            duration=st.integers(3, 15),
            mode=st.sampled_from(["standard", "professional"]),
            audio=st.booleans(),
        )
        def submit_task(self, account: str, duration: int, mode: str, audio: bool) -> Any:
            now = self._tick()
            price = RATES[(mode, audio)] * duration
            body = generate_body(duration=duration, mode=mode, audio=audio)
            if self.balances[account]["available"] < price:
                with pytest.raises(ReelgenError) as info:
                    service.submit(ctx, account, body)
                assert info.value.code is ErrorCode.INSUFFICIENT_CREDITS
                assert info.value.message == (
                    f"Insufficient credits. Required: {price}, Available: {self.balances[account]['available']}"
                )
                return multiple()
            accepted = service.submit(ctx, account, body)
            self._move(account, available=-price, reserved=price)
            assert accepted["status"] == "pending" and accepted["creditsUsed"] == price
            assert accepted["creditsRemaining"] == self.balances[account]["available"]
            self.model[accepted["id"]] = _Model(account, price, now)
            return accepted["id"]

        @rule(seconds=st.one_of(st.integers(0, 2 * LEASE), st.integers(int(TTL) - 5, int(TTL) + 5)))
        def sweep(self, seconds: int) -> None:
            now = self._tick(seconds)
            rescued = self._expect_rescue(now)
            expired = self._expect_expiry(TTL)
            report = sweep_once(db, ctx.settings, now=now)
            assert sorted(report.requeued) == sorted(t for t, s in rescued.items() if s is TaskStatus.PENDING)
            assert sorted(report.failed) == sorted(t for t, s in rescued.items() if s is TaskStatus.FAILED)
            assert set(report.expired) == expired

        @rule(task=submitted)
        def read_through_the_service(self, task: str) -> None:
            m = self.model[task]
            view = service.get_task(ctx, m.account, task, "http://test/")
            assert view["status"] == m.status.value
            released = m.status in (TaskStatus.FAILED, TaskStatus.CANCELLED)
            assert view["creditsUsed"] == (0 if released else m.price)

    run_state_machine_as_test(
        ServiceMachine,
        settings=settings(
            max_examples=50,
            stateful_step_count=50,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )
