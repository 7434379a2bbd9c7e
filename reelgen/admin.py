"""Operator commands behind ``reelgen``: serve, db upgrade, keys, credits, ledger check.

Each command builds ``Settings`` from the environment plus its flags, opens the store, and calls
the store or service. Output is for people by default and JSON with ``--json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from typing import Any

from reelgen.config import Settings
from reelgen.errors import ErrorCode, ReelgenError

# flag name on the command line -> Settings field
_SETTING_FLAGS = (
    "data_dir",
    "database_url",
    "host",
    "port",
    "profile",
    "profiles_file",
    "weights",
    "load_format",
    "devices",
    "parallel",
    "executor",
    "ray_address",
    "public_base_url",
)


def settings_from_args(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {
        name: getattr(args, name) for name in _SETTING_FLAGS if getattr(args, name, None) is not None
    }
    from pydantic import ValidationError

    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = [
            f"{'.'.join(str(p) for p in err['loc']) or 'settings'}: {str(err['msg']).removeprefix('Value error, ')}"
            for err in exc.errors(include_url=False)
        ]
        raise ReelgenError(ErrorCode.INVALID_SETTINGS, "; ".join(problems)) from None


_opened: list[Any] = []


def _open(args: argparse.Namespace) -> tuple[Settings, Any]:
    """Settings and a migrated database; ``dispatch`` disposes of it when the command ends."""
    from reelgen.store.db import Database

    settings = settings_from_args(args)
    db = Database.from_settings(settings)
    _opened.append(db)
    db.upgrade()
    return settings, db


def _now() -> datetime:
    return datetime.now(UTC)


def _print(args: argparse.Namespace, data: Any, text: str) -> None:
    print(json.dumps(data, indent=2, default=str) if getattr(args, "json", False) else text)


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from reelgen.api.app import create_app
    from reelgen.profiles import get_profile

    settings = settings_from_args(args)
    profile = get_profile(settings.profile, settings.profiles_file, weights=settings.weights)
    if settings.executor == "local":
        from reelgen.engines import check_profile

        # LoRA files, STG blocks, attention backend against the model (configs and file headers only):
        # a bad profile stops here, never mid-task. With Ray the weights live on the GPU nodes, where
        # each engine actor runs the same check when it loads.
        check_profile(profile, settings.load_format)
        from reelgen.executor.local import worker_devices

        worker_devices(settings)  # a device group this build cannot form stops here, not in a restart loop
        acc = profile.acceleration
        if acc.fp8 != "off" or acc.video_encoder == "h264_nvenc":  # switches that need the devices' hardware
            from reelgen.engines.acceleration import check_acceleration
            from reelgen.engines.weights import resolve_device

            for device in settings.device_list:
                check_acceleration(profile, resolve_device(device))
    if profile.is_tiny or settings.load_format == "dummy":
        print(
            f"reelgen: profile {profile.name} uses RANDOM weights - every video it makes is noise "
            "(shapes, durations, audio and timing are real).",
            file=sys.stderr,
        )
    print(
        f"reelgen: serving {profile.name} on http://{settings.host}:{settings.port} "
        f"(data {settings.data_dir.resolve()}, devices {settings.devices})",
        file=sys.stderr,
    )
    from reelgen.api.server import uvicorn_config

    config = uvicorn_config(
        create_app(settings), settings.host, settings.port, settings.request_read_timeout_seconds, log_level="info"
    )
    uvicorn.Server(config).run()
    return 0


def cmd_db(args: argparse.Namespace) -> int:
    _, db = _open(args)
    print(f"database at head: {db.display_url}")
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    from reelgen.store import keys, ledger

    settings, db = _open(args)
    secret = settings.resolved_secret()
    if args.action == "create":
        if args.credits < 0:
            raise ReelgenError(ErrorCode.INVALID_INPUT, "--credits must not be negative")

        def create(conn: Any) -> Any:
            now = _now()
            account_id = args.account
            if account_id is None:
                account_id = keys.create_account(conn, args.name)
            elif keys.get_account(conn, account_id) is None:
                raise ReelgenError(ErrorCode.ACCOUNT_NOT_FOUND, f"no account {account_id!r}")
            if args.credits:
                ledger.grant(conn, account_id, args.credits, now)
            return keys.issue_key(conn, account_id, args.name, secret)

        issued = db.run(create, immediate=True)
        data = {
            "key": issued.key,
            "key_id": issued.key_id,
            "account_id": issued.account_id,
            "name": args.name,
            "credits": args.credits,
        }
        _print(
            args,
            data,
            f"API key (shown once, store it now): {issued.key}\n"
            f"key id: {issued.key_id}\naccount: {issued.account_id}\ncredits granted: {args.credits}",
        )
        return 0
    if args.action == "limits":
        return _limits(args, settings)
    if args.action == "revoke":
        if not db.run(lambda conn: keys.revoke_key(conn, args.key_id, _now()), immediate=True):
            raise ReelgenError(ErrorCode.KEY_NOT_FOUND, f"no active key with id {args.key_id!r}")
        print(f"revoked key {args.key_id}")
        return 0
    rows = db.run(keys.list_keys)
    listed = [
        {
            "key_id": k.key_id,
            "account_id": k.account_id,
            "name": k.name,
            "prefix": k.prefix,
            "last4": k.last4,
            "revoked": k.revoked_at is not None,
        }
        for k in rows
    ]
    lines = [
        f"{d['key_id']}  {d['prefix']}…{d['last4']}  {d['name']}  account {d['account_id']}"
        + ("  (revoked)" if d["revoked"] else "")
        for d in listed
    ]
    _print(args, listed, "\n".join(lines) or "no keys")
    return 0


def _limits(args: argparse.Namespace, settings: Settings) -> int:
    """``keys limits``: set (``--rpm``, ``--max-active``) and show an account's effective limits."""
    from reelgen import service

    ctx = service.Context.from_settings(settings)
    _opened.append(ctx.db)
    found = service.set_limits(ctx, args.account, rpm=args.rpm, max_active=args.max_active)
    data = {"account_id": args.account, "rpm": found["requestsPerMinute"], "max_active": found["maxActiveTasks"]}

    def shown(n: int) -> str:
        return "unlimited" if n == 0 else str(n)

    _print(
        args,
        data,
        f"account {args.account}: {shown(data['rpm'])} requests per minute, {shown(data['max_active'])} active tasks",
    )
    return 0


def cmd_credits(args: argparse.Namespace) -> int:
    from reelgen.store import keys, ledger

    _, db = _open(args)
    if args.action == "grant":
        if args.amount <= 0:
            raise ReelgenError(ErrorCode.INVALID_INPUT, "--amount must be a positive number of credits")
        db.run(lambda conn: ledger.grant(conn, args.account, args.amount, _now()), immediate=True)
        bal = db.run(lambda conn: ledger.balance(conn, args.account))
        print(f"granted {args.amount} credits to {args.account}; available {bal.available}")
        return 0

    def show(conn: Any) -> list[dict[str, Any]]:
        accounts = keys.list_accounts(conn)
        out = []
        for acc in accounts:
            if args.account and acc.id != args.account:
                continue
            bal = ledger.balance(conn, acc.id)
            out.append(
                {
                    "account_id": acc.id,
                    "name": acc.name,
                    "available": bal.available,
                    "reserved": bal.reserved,
                    "captured": bal.captured,
                    "granted": bal.granted,
                }
            )
        return out

    data = db.run(show)
    if args.account and not data:
        raise ReelgenError(ErrorCode.ACCOUNT_NOT_FOUND, f"no account {args.account!r}")
    lines = [
        f"{d['account_id']}  {d['name']}: available {d['available']}, reserved {d['reserved']}, "
        f"spent {d['captured']}, granted {d['granted']}"
        for d in data
    ]
    _print(args, data, "\n".join(lines) or "no accounts")
    return 0


def cmd_ledger(args: argparse.Namespace) -> int:
    from reelgen.store import ledger

    _, db = _open(args)
    problems = db.run(ledger.check)
    if problems:
        for p in problems:
            print(f"drift: {p}")
        print(f"ledger check FAILED: {len(problems)} problem(s)", file=sys.stderr)
        return 1
    print("ledger check OK: balances equal the sums of their entries; every hold resolved once")
    return 0


def dispatch(args: argparse.Namespace) -> int:
    commands = {
        "serve": cmd_serve,
        "db": cmd_db,
        "keys": cmd_keys,
        "credits": cmd_credits,
        "ledger": cmd_ledger,
    }
    try:
        return commands[args.command](args)
    finally:
        while _opened:
            _opened.pop().dispose()
