"""The ``reelgen`` command: operator verbs (serve, db, keys, credits, ledger) and user verbs (generate).

Heavy modules are imported inside each command, so ``reelgen --help`` stays fast and the SDK-only
install can run the user verbs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from reelgen.errors import ReelgenError


def _add_store_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", help="data directory (REELGEN_DATA_DIR)")
    p.add_argument(
        "--database-url", help="SQLAlchemy URL (REELGEN_DATABASE_URL); default sqlite in the data dir"
    )


def _add_input_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("prompt", help="what the video shows")
    p.add_argument(
        "--model", help="kling-3-0-text-to-video (default) or kling-3-0-image-to-video (with --image)"
    )
    p.add_argument("--duration", type=int, default=5, help="seconds, 3-15 (default 5)")
    p.add_argument("--mode", choices=["standard", "professional"], default="standard")
    p.add_argument("--no-audio", action="store_true", help="an MP4 with no audio stream")
    p.add_argument(
        "--aspect-ratio", choices=["16:9", "9:16", "1:1"], help="text-to-video only (default 16:9)"
    )
    p.add_argument(
        "--image",
        action="append",
        default=[],
        metavar="URL_OR_PATH",
        help="start frame; give twice for start and end frame",
    )
    p.add_argument(
        "--shot",
        action="append",
        default=[],
        metavar="PROMPT=SECONDS",
        help="one shot of a multi-shot video; durations must add up to --duration",
    )
    p.add_argument("-o", "--output", help="where to write the MP4")
    p.add_argument("--json", action="store_true", help="print a JSON summary")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="reelgen", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run the API server and its workers")
    _add_store_args(p)
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--profile", help="model profile (default ltx-2-tiny)")
    p.add_argument("--profiles-file", help="an operator's own profiles TOML")
    p.add_argument("--weights", help="weights directory (diffusers layout) or hub id")
    p.add_argument("--load-format", choices=["auto", "dummy"], help="dummy = full-size random weights")
    p.add_argument("--devices", help="cpu, or cuda:0,cuda:1 (one worker per device)")
    p.add_argument("--public-base-url", help="absolute base URL used in result links")

    p = sub.add_parser("db", help="database schema")
    _add_store_args(p)
    p.add_argument("action", choices=["upgrade"])

    keys = sub.add_parser("keys", help="API keys").add_subparsers(dest="action", required=True)
    p = keys.add_parser("create", help="create an account (or use --account) and print its new key once")
    _add_store_args(p)
    p.add_argument("--name", required=True)
    p.add_argument("--account", help="add the key to this existing account")
    p.add_argument("--credits", type=int, default=0, help="credits granted to a new account")
    p.add_argument("--json", action="store_true")
    p = keys.add_parser("revoke", help="revoke a key by its id")
    _add_store_args(p)
    p.add_argument("key_id")
    p = keys.add_parser("list", help="list keys (display prefix only)")
    _add_store_args(p)
    p.add_argument("--json", action="store_true")

    credits = sub.add_parser("credits", help="account credits").add_subparsers(dest="action", required=True)
    p = credits.add_parser("grant", help="grant credits to an account")
    _add_store_args(p)
    p.add_argument("--account", required=True)
    p.add_argument("--amount", type=int, required=True)
    p = credits.add_parser("show", help="balances of one or all accounts")
    _add_store_args(p)
    p.add_argument("--account")
    p.add_argument("--json", action="store_true")

    ledger = sub.add_parser("ledger", help="credit ledger").add_subparsers(dest="action", required=True)
    p = ledger.add_parser("check", help="verify the ledger invariants; exit 1 on drift")
    _add_store_args(p)

    p = sub.add_parser("generate", help="generate one video (locally with --local, or through a server)")
    _add_input_args(p)
    p.add_argument("--local", action="store_true", help="run the engine in this process, no server")
    p.add_argument("--profile", default="ltx-2-tiny", help="with --local: model profile")
    p.add_argument("--profiles-file", help="with --local: an operator's own profiles TOML")
    p.add_argument("--weights", help="with --local: weights directory or hub id")
    p.add_argument("--load-format", choices=["auto", "dummy"], default="auto")
    p.add_argument("--device", default=None, help="with --local: cpu or cuda:N (default: cuda:0 if present)")
    p.add_argument("--seed", type=int, default=0, help="with --local: the generation seed")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "generate" and args.local:
            from reelgen.generation import run_local

            return run_local(args)
        from reelgen import admin

        return admin.dispatch(args)
    except ReelgenError as exc:
        print(f"error: {exc.code}: {exc.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
