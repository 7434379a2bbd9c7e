"""Operator commands of the ``reelgen`` CLI on a real database."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import text

from reelgen.cli import main
from reelgen.store.db import Database


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def store_args(tmp_path: Path, db: Database) -> list[str]:
    return ["--data-dir", str(tmp_path / "data"), "--database-url", db.url]


def test_keys_credits_and_ledger(
    capsys: pytest.CaptureFixture[str], store_args: list[str], db: Database, tmp_path: Path
) -> None:
    code, out, _ = run(capsys, "keys", "create", "--name", "alice", "--credits", "500", "--json", *store_args)
    assert code == 0
    created = json.loads(out)
    assert created["key"].startswith("sk-") and len(created["key"]) >= 3 + 43
    account = created["account_id"]

    code, out, _ = run(capsys, "credits", "grant", "--account", account, "--amount", "250", *store_args)
    assert code == 0 and "available 750" in out
    code, out, _ = run(capsys, "credits", "show", "--account", account, "--json", *store_args)
    shown = json.loads(out)
    assert shown == [
        {"account_id": account, "name": "alice", "available": 750, "reserved": 0, "captured": 0, "granted": 750}
    ]

    code, out, _ = run(capsys, "keys", "create", "--name", "alice-2", "--account", account, "--json", *store_args)
    second = json.loads(out)
    assert code == 0 and second["account_id"] == account and second["key"] != created["key"]

    code, out, _ = run(capsys, "keys", "list", "--json", *store_args)
    listed = json.loads(out)
    assert {k["key_id"] for k in listed} == {created["key_id"], second["key_id"]}
    assert created["key"] not in out

    code, out, _ = run(capsys, "keys", "revoke", created["key_id"], *store_args)
    assert code == 0
    code, _, err = run(capsys, "keys", "revoke", "no-such-key", *store_args)
    assert code == 2 and "KEY_NOT_FOUND" in err

    code, out, _ = run(capsys, "ledger", "check", *store_args)
    assert code == 0 and "OK" in out

    # drift: a cached balance edited behind the ledger's back
    with db.transaction() as conn:
        conn.execute(text("UPDATE accounts SET available = available + 1"))
    code, out, _ = run(capsys, "ledger", "check", *store_args)
    assert code == 1 and "drift" in out


@pytest.mark.parametrize(
    ("argv", "code_name"),
    [
        (["credits", "grant", "--account", "nobody", "--amount", "5"], "ACCOUNT_NOT_FOUND"),
        (["credits", "grant", "--account", "nobody", "--amount", "0"], "INVALID_INPUT"),
        (["credits", "show", "--account", "nobody"], "ACCOUNT_NOT_FOUND"),
        (["keys", "create", "--name", "x", "--account", "nobody"], "ACCOUNT_NOT_FOUND"),
        (["generate", "a fox"], "INVALID_SETTINGS"),
    ],
)
def test_cli_errors_are_one_line(
    capsys: pytest.CaptureFixture[str], store_args: list[str], argv: list[str], code_name: str
) -> None:
    extra = store_args if argv[0] != "generate" else []
    code, _, err = run(capsys, *argv, *extra)
    assert code == 2
    assert err.strip().count("\n") == 0 and code_name in err and "Traceback" not in err


def test_db_upgrade_never_prints_the_database_password(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from sqlalchemy.engine import make_url

    from tests.store_fixtures import pg_schema

    password = "hunter2-not-for-eyes"
    with pg_schema() as url:
        # the test server trusts local connections: the password is accepted and unused
        with_password = make_url(url).set(password=password).render_as_string(hide_password=False)
        code, out, err = run(capsys, "db", "upgrade", "--data-dir", str(tmp_path), "--database-url", with_password)
    assert code == 0 and "database at head: postgresql+psycopg://" in out and ":***@" in out
    assert password not in out + err
