"""Issue 15, defect 1: amounts are bounded wherever money enters, and ``reelgen ledger check``
reports drift or says OK on any data, never crashes (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert, text, update

from reelgen.cli import main
from reelgen.errors import ReelgenError
from reelgen.profiles import load_profiles
from reelgen.schemas import MAX_CREDITS
from reelgen.store import ledger, tasks
from reelgen.store.db import Database
from reelgen.store.tables import accounts, ledger_entries, movements
from tests.store_fixtures import submit

INT64_MAX = 9223372036854775807


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def store_args(tmp_path: Path, db: Database) -> list[str]:
    return ["--data-dir", str(tmp_path / "data"), "--database-url", db.url]


def new_account(capsys: pytest.CaptureFixture[str], store_args: list[str], credits: int = 0) -> str:
    code, out, err = run(capsys, "keys", "create", "--name", "a", "--credits", str(credits), "--json", *store_args)
    assert code == 0, err
    return str(json.loads(out)["account_id"])


@pytest.mark.parametrize("amount", [INT64_MAX, INT64_MAX + 1, 10**40, MAX_CREDITS + 1])
def test_grant_past_the_limit_is_refused_naming_it(
    capsys: pytest.CaptureFixture[str], store_args: list[str], db: Database, amount: int
) -> None:
    account = new_account(capsys, store_args, credits=5)
    code, out, err = run(capsys, "credits", "grant", "--account", account, "--amount", str(amount), *store_args)
    assert code == 2 and str(MAX_CREDITS) in err and "Traceback" not in err + out
    code, _, err = run(capsys, "keys", "create", "--name", "b", "--credits", str(amount), *store_args)
    assert code == 2 and str(MAX_CREDITS) in err
    assert db.run(lambda conn: ledger.balance(conn, account)).available == 5
    code, out, _ = run(capsys, "ledger", "check", *store_args)
    assert code == 0 and "OK" in out


def test_balances_are_bounded_and_still_move(
    capsys: pytest.CaptureFixture[str], store_args: list[str], db: Database
) -> None:
    account = new_account(capsys, store_args)
    code, _, err = run(capsys, "credits", "grant", "--account", account, "--amount", str(MAX_CREDITS), *store_args)
    assert code == 0, err
    code, _, err = run(capsys, "credits", "grant", "--account", account, "--amount", "1", *store_args)
    assert code == 2 and "past the limit" in err
    # at the limit the balance still moves exactly as tasks are reserved and completed
    task, remaining = submit(db, account, 7)
    assert remaining == MAX_CREDITS - 7
    now = datetime.now(UTC)
    assert db.run(lambda conn: tasks.claim(conn, worker_id="w", lease_seconds=30, now=now), immediate=True)
    done = db.run(
        lambda conn: tasks.complete(conn, task.id, 1, result_key="x/1.mp4", duration=3.0, has_audio=False, now=now),
        immediate=True,
    )
    assert done
    bal = db.run(lambda conn: ledger.balance(conn, account))
    assert (bal.available, bal.reserved, bal.captured, bal.granted) == (MAX_CREDITS - 7, 0, 7, MAX_CREDITS)
    # lifetime grants are bounded too, so spending and re-granting cannot grow them past the limit
    with pytest.raises(ReelgenError, match=str(MAX_CREDITS)):
        db.run(lambda conn: ledger.grant(conn, account, 7, now), immediate=True)
    code, out, _ = run(capsys, "ledger", "check", *store_args)
    assert code == 0 and "OK" in out


def test_prices_are_bounded(tmp_path: Path) -> None:
    """A profile whose rate could price a task past the limit does not load."""
    path = tmp_path / "profiles.toml"
    for rate, loads in ((MAX_CREDITS // 15, True), (MAX_CREDITS // 15 + 1, False)):
        path.write_text(f'[cheap]\nextends = "ltx-2-tiny"\n[cheap.rates.standard]\naudio = {rate}\nno_audio = 1\n')
        if loads:
            assert load_profiles(path)["cheap"].rate("standard", True) == rate
        else:
            with pytest.raises(ReelgenError, match=str(MAX_CREDITS)):
                load_profiles(path)


def _corrupt(db: Database, account: str) -> None:
    """What an unbounded grant left behind: a balance past 2**63 (SQLite keeps it as a float) and
    entries whose sum overflows a 64-bit integer."""

    def go(conn: Any) -> None:
        now = datetime.now(UTC)
        for _ in range(2):
            movement = conn.execute(
                insert(movements)
                .values(kind="grant", account_id=account, task_id=None, amount=INT64_MAX, created_at=now)
                .returning(movements.c.id)
            ).scalar_one()
            conn.execute(
                insert(ledger_entries),
                [
                    {"movement_id": movement, "account_id": None, "bucket": "granted", "amount": -INT64_MAX},
                    {"movement_id": movement, "account_id": account, "bucket": "available", "amount": INT64_MAX},
                ],
            )
        if db.is_sqlite:
            conn.execute(
                text("UPDATE accounts SET available = 1.8446744073709552e19, granted = 'lots' WHERE id = :a"),
                {"a": account},
            )
        else:
            conn.execute(update(accounts).where(accounts.c.id == account).values(available=INT64_MAX))

    db.run(go, immediate=True)


def test_ledger_check_reports_a_corrupt_ledger_instead_of_crashing(
    capsys: pytest.CaptureFixture[str], store_args: list[str], db: Database
) -> None:
    account = new_account(capsys, store_args, credits=5)
    _corrupt(db, account)
    code, out, err = run(capsys, "ledger", "check", *store_args)
    assert code == 1, err
    assert "Traceback" not in out + err and "FAILED" in err
    assert "I5 movement" in out and "not a whole number of credits" in out
    assert f"I1 account {account}" in out or f"I5 account {account}" in out
