"""The ``reelgen`` command.

Operator verbs (serve, db, keys, credits grant/show, ledger) work on the store directly; user
verbs (generate, extend, tasks get/list/cancel/wait/preview, upload, credits, models) talk to a server's public
API through the SDK, with ``--server URL --api-key KEY`` or ``REELGEN_BASE_URL`` /
``REELGEN_API_KEY``; ``generate --local`` runs the engine in this process. Heavy modules are
imported inside each command, so ``reelgen --help`` stays fast and an SDK-only install
(``pip install reelgen``) runs the user verbs.

Over 400 lines on purpose: the parser is one table of every verb and its flags, read best whole;
the operator verbs' work lives in ``reelgen.admin`` and the engine run in ``reelgen.local``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reelgen.errors import ErrorCode, ReelgenError
from reelgen.schemas import CAMERA_MOVES, CONTINUITY_MODES

if TYPE_CHECKING:
    from reelgen.client import Client, Task

#: Exit status by error code; every other error exits 2. Listed in ``--help`` and the README.
EXIT_CODES: dict[str, int] = {
    ErrorCode.MISSING_AUTH_HEADER: 3,
    ErrorCode.INVALID_AUTH_FORMAT: 3,
    ErrorCode.INVALID_KEY_FORMAT: 3,
    ErrorCode.INVALID_API_KEY: 3,
    ErrorCode.INSUFFICIENT_CREDITS: 4,
    ErrorCode.TASK_FAILED: 5,
    ErrorCode.WAIT_TIMEOUT: 6,
    ErrorCode.CONNECTION_ERROR: 7,
    ErrorCode.SERVICE_UNAVAILABLE: 7,
    ErrorCode.RATE_LIMITED: 7,
    ErrorCode.TASK_NOT_FOUND: 8,
    ErrorCode.NO_RESULT: 8,
    ErrorCode.NO_PREVIEW: 8,
}
DESCRIPTION = """Self-hostable video generation (VicSee Kling 3.0 API).

user verbs talk to a server: --server URL --api-key KEY, or REELGEN_BASE_URL / REELGEN_API_KEY
  generate PROMPT ...   make one video and save it (--local: in this process, no server)
  extend ID --prompt P  continue a completed task by --duration seconds; saves the whole video
  tasks get ID          a task's status (-o FILE saves its video)
  tasks preview ID -o F its latest live preview (an animated WebP) while it runs
  credits               your balance
  models                models and prices
operator verbs work on the database: serve, db, keys, credits grant|show, ledger check
"""
EXIT_HELP = """exit status:
  0  done
  1  ledger check found drift
  2  usage or invalid input (bad flags, no API key given, INVALID_INPUT, ...)
  3  the server refused the API key (INVALID_API_KEY, ...)
  4  not enough credits (INSUFFICIENT_CREDITS)
  5  the generation failed or was cancelled (TASK_FAILED)
  6  still running when --timeout ran out (WAIT_TIMEOUT)
  7  server unreachable or busy (CONNECTION_ERROR, SERVICE_UNAVAILABLE, RATE_LIMITED)
  8  no such task, or no result or preview yet (TASK_NOT_FOUND, NO_RESULT, NO_PREVIEW)
130  interrupted
Errors are one line on stderr: "error: CODE: message".
"""


def _add_store_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", help="data directory (REELGEN_DATA_DIR)")
    p.add_argument("--database-url", help="SQLAlchemy URL (REELGEN_DATABASE_URL); default sqlite in the data dir")


def _add_server_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--server", metavar="URL", help="API base URL (REELGEN_BASE_URL; default http://127.0.0.1:8000)")
    p.add_argument("--api-key", metavar="KEY", help="API key sk-... (REELGEN_API_KEY)")


def _add_input_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("prompt", help="what the video shows")
    p.add_argument("--model", help="kling-3-0-text-to-video (default) or kling-3-0-image-to-video (with --image)")
    p.add_argument("--duration", type=int, default=5, help="seconds, 3-15 (default 5)")
    p.add_argument("--mode", choices=["standard", "professional"], default="standard")
    p.add_argument("--no-audio", action="store_true", help="an MP4 with no audio stream")
    p.add_argument("--aspect-ratio", choices=["16:9", "9:16", "1:1"], help="text-to-video only (default 16:9)")
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
    p.add_argument(
        "--continuity",
        choices=CONTINUITY_MODES,
        help="with --shot: cut (default; independent shots), continue (each shot flows on from the last "
        "frames of the one before) or same_subject (later shots keep shot 1's subject, still cut)",
    )
    p.add_argument(
        "--lora",
        action="append",
        default=[],
        metavar="NAME[:STRENGTH]",
        help="one of the server's LoRAs by name (GET /api/v1/models lists them), optional strength; repeatable",
    )
    p.add_argument(
        "--camera",
        choices=CAMERA_MOVES,
        help="a camera move (the profile's camera LoRAs); --camera-strength sets its strength",
    )
    p.add_argument("--camera-strength", type=float, help="strength of the --camera move (default: the LoRA's)")
    p.add_argument(
        "--enhance-prompt",
        action="store_true",
        help="have the model's own enhancer rewrite each shot's prompt first (priced per prompt; see /models)",
    )
    p.add_argument("--negative-prompt", help="what to avoid (default: the profile's; guided stages only)")
    p.add_argument("--cfg-scale", type=float, help="0-1: how closely to follow the prompt (0.5 = the profile's)")
    p.add_argument("--external-task-id", help="your own id of the task (unique per account)")
    p.add_argument("-o", "--output", help="where to write the MP4")
    p.add_argument("--json", action="store_true", help="print a JSON summary")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="reelgen", description=DESCRIPTION, epilog=EXIT_HELP, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run the API server and its workers")
    _add_store_args(p)
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--profile", help="model profile (default ltx-2-tiny)")
    p.add_argument("--profiles-file", help="an operator's own profiles TOML")
    p.add_argument("--weights", help="weights directory (diffusers layout) or hub id")
    p.add_argument("--load-format", choices=["auto", "dummy"], help="dummy = full-size random weights")
    p.add_argument("--devices", help="cpu, or cuda:0,cuda:1 (one worker per device, or per group with --parallel)")
    p.add_argument(
        "--parallel", help="cfg=N,ulysses=N,ring=N: each task on a group of that many devices (cpu may repeat)"
    )
    p.add_argument(
        "--executor",
        choices=["local", "ray", "none"],
        help="local: worker subprocesses; ray: engine actors on a Ray cluster; none: API only (docs/deploy.md)",
    )
    p.add_argument("--ray-address", help="with --executor ray: the cluster to join, e.g. ray-head:6379")
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
    p = keys.add_parser(
        "limits", help="show or set an account's request rate, active-task cap and fair-queue weight and tier"
    )
    _add_store_args(p)
    p.add_argument("--account", required=True)
    p.add_argument("--rpm", type=int, help="requests per minute (0 = unlimited)")
    p.add_argument("--max-active", type=int, help="pending + processing tasks at once (0 = unlimited)")
    p.add_argument("--weight", type=int, help="share of GPU time against other accounts (1-1000, default 1)")
    p.add_argument(
        "--tier", choices=("high", "normal", "batch"), help="claimed before (high) or after (batch) normal work"
    )
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("credits", help="your balance from the server; operators: credits grant / show")
    _add_server_args(p)
    p.add_argument("--json", action="store_true")
    credits = p.add_subparsers(dest="action", required=False, metavar="{grant,show}")
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

    p = sub.add_parser(
        "generate",
        help="generate one video through a server (or in this process with --local)",
        epilog=EXIT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_input_args(p)
    _add_server_args(p)
    p.add_argument("--no-wait", action="store_true", help="print the task id and return at once")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds to wait for the result (default 1800)")
    p.add_argument("--local", action="store_true", help="run the engine in this process, no server")
    p.add_argument("--profile", default="ltx-2-tiny", help="with --local: model profile")
    p.add_argument("--profiles-file", help="with --local: an operator's own profiles TOML")
    p.add_argument("--weights", help="with --local: weights directory or hub id")
    p.add_argument("--load-format", choices=["auto", "dummy"], default="auto")
    p.add_argument("--device", default=None, help="with --local: cpu or cuda:N (default: cuda:0 if present)")
    p.add_argument("--seed", type=int, default=None, help="the generation seed (default: random; 0 with --local)")
    p.add_argument(
        "--devices",
        default=None,
        help="with --local: one task on a device group, e.g. cuda:0,cuda:1 or cpu,cpu (one process each)",
    )
    p.add_argument(
        "--parallel",
        default=None,
        help="with --devices: cfg=N,ulysses=N,ring=N (default: the profile's parallel, else cfg=len(devices))",
    )
    p.add_argument(
        "--plan",
        action="store_true",
        help="print the plan of the request as JSON (stages, sizes, sigmas, guidance, LoRAs, conditions) "
        "for --profile, without loading weights or generating",
    )

    p = sub.add_parser(
        "extend",
        help="continue a completed task by --duration seconds (one MP4 of the whole)",
        epilog=EXIT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_server_args(p)
    p.add_argument("task_id", help="the completed task to continue (an extension may be extended too)")
    p.add_argument("--prompt", required=True, help="what happens next")
    p.add_argument("--duration", type=int, default=5, help="seconds to add, 3-15 (default 5)")
    p.add_argument("--audio", action=argparse.BooleanOptionalAction, default=None, help="default: as the original")
    p.add_argument("-o", "--output", help="save the MP4 here (default: a name from the prompt)")
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    p.add_argument("--no-wait", action="store_true", help="print the task id and return at once")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds to wait for the result (default 1800)")

    tasks = sub.add_parser("tasks", help="your tasks on the server").add_subparsers(dest="action", required=True)
    p = tasks.add_parser("get", help="a task's status; with -o, save its video")
    _add_server_args(p)
    p.add_argument("task_id")
    p.add_argument("-o", "--output", help="save the MP4 here (the task must be completed)")
    p.add_argument("--json", action="store_true")
    p = tasks.add_parser("list", help="your tasks, newest first")
    _add_server_args(p)
    p.add_argument("--status", choices=["pending", "processing", "completed", "failed", "cancelled"])
    p.add_argument("--limit", type=int, default=20, help="tasks per page, 1-100 (default 20)")
    p.add_argument("--cursor", help="the next page: the cursor a previous page printed")
    p.add_argument("--external-task-id", help="only the task you gave this id")
    p.add_argument("--json", action="store_true")
    p = tasks.add_parser("cancel", help="cancel a pending or processing task (its credits are released)")
    _add_server_args(p)
    p.add_argument("task_id")
    p.add_argument("--json", action="store_true")
    p = tasks.add_parser("preview", help="save a task's latest live preview (an animated WebP)")
    _add_server_args(p)
    p.add_argument("task_id")
    p.add_argument("-o", "--output", required=True, help="save the WebP here")
    p.add_argument("--json", action="store_true")
    p = tasks.add_parser("wait", help="follow a task until it ends; with -o, save its video")
    _add_server_args(p)
    p.add_argument("task_id")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds to wait (default 1800)")
    p.add_argument("-o", "--output", help="save the MP4 here once completed")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("upload", help="upload a local image; prints its URL for --image / image_urls")
    _add_server_args(p)
    p.add_argument("file", help="a JPEG, PNG or WEBP file")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("models", help="the server's models and prices")
    _add_server_args(p)
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("mcp", help="an MCP server on stdin/stdout for AI agents, talking to a reelgen server")
    _add_server_args(p)
    return parser


# ---------------------------------------------------------------------------------------------
# User verbs: the public API through the SDK
# ---------------------------------------------------------------------------------------------
def _client(args: argparse.Namespace, *, key_required: bool = True) -> Client:
    from reelgen.client import Client

    if key_required and not (args.api_key or os.environ.get("REELGEN_API_KEY")):
        raise ReelgenError(ErrorCode.INVALID_SETTINGS, "no API key: pass --api-key sk-... or set REELGEN_API_KEY")
    return Client(args.api_key, base_url=args.server)


def _emit(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str))


def _output_path(prompt: str) -> Path:
    from reelgen.local import output_path

    return output_path(prompt)


@contextmanager
def _progress(enabled: bool) -> Iterator[Any]:
    """A rich bar on stderr (status, progress, elapsed) while waiting; nothing when not enabled."""
    if not enabled:
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description:<12}"), BarColumn(), TaskProgressColumn(), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True)) as bar:
        row = bar.add_task("submitted", total=100)

        def update(task: Task) -> None:
            status = task.status
            if task.status == "pending" and task.queuePosition is not None:
                status = f"queued #{task.queuePosition + 1}"
            bar.update(row, description=status, completed=task.progress or 0)

        yield update


def cmd_generate(args: argparse.Namespace) -> int:
    from reelgen.local import build_body

    body = build_body(args)
    inp = dict(body["input"])
    if "image_urls" in inp:  # local files go up by the presign flow rather than inside the body
        inp["image_urls"] = [
            Path(given).expanduser() if url.startswith("data:") and not given.lower().startswith("data:") else url
            for given, url in zip(args.image, inp["image_urls"], strict=True)
        ]
    with _client(args) as client:
        return _follow(args, client, client.generate(body["model"], **inp))


def cmd_extend(args: argparse.Namespace) -> int:
    with _client(args) as client:
        return _follow(args, client, client.extend(args.task_id, args.prompt, duration=args.duration, audio=args.audio))


def _follow(args: argparse.Namespace, client: Client, task: Task) -> int:
    """After a submit: print the id (``--no-wait``), or wait, save the MP4 and print a summary."""
    if args.no_wait:
        if args.json:
            _emit(task.model_dump(exclude_none=True))
        else:
            print(task.id)
            print(
                f"task {task.id} {task.status}: {task.creditsUsed} credits reserved, "
                f"{task.creditsRemaining} left; follow it with: reelgen tasks get {task.id}",
                file=sys.stderr,
            )
        return 0
    started = time.monotonic()
    try:
        with _progress(sys.stdout.isatty() and not args.json) as on_progress:
            # Polls at most 2 s apart (not the SDK's 10 s): someone is watching the bar.
            done = client.wait(task, timeout=args.timeout, max_interval=2.0, on_progress=on_progress)
    except KeyboardInterrupt:
        print(f"\nstopped waiting; the task goes on: reelgen tasks get {task.id}", file=sys.stderr)
        raise
    out = client.download(done, Path(args.output) if args.output else _output_path(args.prompt))
    balance = client.credits()
    elapsed = time.monotonic() - started
    output = done.output
    summary: dict[str, Any] = {
        "id": done.id,
        "status": done.status,
        "model": done.model,
        "creditsUsed": done.creditsUsed,
        "creditsRemaining": balance.credits,
        "file": str(out),
        "url": done.video_url,
        "duration": output.duration if output else None,
        "hasAudio": output.hasAudio if output else None,
        "elapsedSeconds": round(elapsed, 1),
    }
    if done.enhancedPrompt is not None or done.enhancedMultiPrompt is not None:
        summary["enhancedPrompt"] = done.enhancedPrompt
        summary["enhancedMultiPrompt"] = done.enhancedMultiPrompt
    if args.json:
        _emit(summary)
        return 0
    audio = "" if output is None or output.hasAudio is None else (", with audio" if output.hasAudio else ", no audio")
    length = f"{output.duration:.1f} s" if output is not None and output.duration is not None else "video"
    print(f"task {done.id} completed in {elapsed:.1f} s")
    print(f"cost {done.creditsUsed} credits, {balance.credits} credits left")
    print(f"wrote {out} ({length}{audio})")
    if done.enhancedPrompt is not None:
        print(f"enhanced prompt: {done.enhancedPrompt}")
    for i, shot in enumerate(done.enhancedMultiPrompt or (), 1):
        print(f"enhanced prompt of shot {i}: {shot.get('prompt')}")
    return 0


def _describe(task: Task) -> list[str]:
    lines = [f"task {task.id}: {task.status} ({task.progress or 0}%)"]
    if task.status == "pending" and task.queuePosition is not None:
        lines.append(f"queue position: {task.queuePosition + 1}")
    inp = task.input or {}
    if task.model:
        lines.append(f"model {task.model}, {inp.get('duration', '?')} s, {task.creditsUsed} credits")
    if task.error is not None:
        lines.append(f"error: {task.error.code}: {task.error.message}")
    if task.video_url:
        lines.append(f"url: {task.video_url}")
    return lines


def cmd_tasks(args: argparse.Namespace) -> int:
    if args.action == "list":
        return _list_tasks(args)
    if args.action == "preview":
        return _save_preview(args)
    with _client(args) as client:
        if args.action == "cancel":
            task = client.cancel(args.task_id)
        elif args.action == "wait":
            task = _wait(client, args)
        else:
            task = client.get(args.task_id)
        out = client.download(task, args.output) if getattr(args, "output", None) else None
    if args.json:
        _emit({**task.model_dump(exclude_none=True), **({"file": str(out)} if out else {})})
    else:
        print("\n".join(_describe(task)) + (f"\nwrote {out}" if out else ""))
    return 0


def _wait(client: Client, args: argparse.Namespace) -> Task:
    """The task once it ended: completed, or its own failure / cancellation printed (exit 1 via TASK_FAILED)."""
    with _progress(sys.stdout.isatty() and not args.json) as on_progress:
        return client.wait(args.task_id, timeout=args.timeout, on_progress=on_progress)


def _save_preview(args: argparse.Namespace) -> int:
    with _client(args) as client:
        data = client.preview(args.task_id)
    out = Path(args.output)
    part = out.with_name(f".{out.name}.part")
    part.write_bytes(data)
    part.replace(out)  # whole or not at all
    if args.json:
        _emit({"taskId": args.task_id, "file": str(out), "bytes": len(data)})
    else:
        print(f"wrote {out} ({len(data)} bytes)")
    return 0


def _list_tasks(args: argparse.Namespace) -> int:
    with _client(args) as client:
        page = client.list(
            status=args.status, limit=args.limit, cursor=args.cursor, external_task_id=args.external_task_id
        )
    if args.json:
        _emit({"tasks": [t.model_dump(exclude_none=True) for t in page.tasks], "nextCursor": page.nextCursor})
        return 0
    for task in page.tasks:
        print(f"{task.id}  {task.status:<10}  {task.createdAt or ''}  {task.model or ''}")
    if page.nextCursor:
        print(f"more: reelgen tasks list --cursor {page.nextCursor}", file=sys.stderr)
    return 0


def cmd_upload(args: argparse.Namespace) -> int:
    path = Path(args.file).expanduser()
    if not path.is_file():
        raise ReelgenError(ErrorCode.INVALID_IMAGE, f"{args.file!r}: no such file")
    with _client(args) as client:
        url = client.upload(path)
    if args.json:
        _emit({"publicUrl": url, "file": str(path)})
    else:
        print(url)
    return 0


def cmd_credits(args: argparse.Namespace) -> int:
    with _client(args) as client:
        balance = client.credits()
    if args.json:
        _emit(balance.model_dump())
    else:
        print(f"{balance.credits} credits available, {balance.reserved} reserved by running tasks")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    with _client(args, key_required=False) as client:
        models = client.models()
    if args.json:
        _emit([m.model_dump(exclude_none=True) for m in models])
        return 0
    for m in models:
        prices = ", ".join(f"{mode} {p.noAudio}/{p.audio}" for mode, p in m.pricing.items())
        print(f"{m.id}  {m.minDuration}-{m.maxDuration} s  credits/s (no audio/audio): {prices}")
    return 0


def _user_verb(args: argparse.Namespace) -> Any:
    if args.command == "generate" and not args.local:
        return cmd_generate
    if args.command == "extend":
        return cmd_extend
    if args.command == "credits" and args.action is None:
        return cmd_credits
    return {"tasks": cmd_tasks, "models": cmd_models, "upload": cmd_upload, "mcp": cmd_mcp}.get(args.command)


def cmd_mcp(args: argparse.Namespace) -> int:
    """``reelgen mcp``: serve MCP on stdio until the client closes it (``reelgen/doors/mcp_tools.py``)."""
    from reelgen.doors.mcp_tools import run_stdio

    run_stdio(args.api_key, args.server)
    return 0


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit status (see ``EXIT_HELP``)."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "generate" and (args.local or args.plan):
            from reelgen.local import print_plan, run_local

            return print_plan(args) if args.plan else run_local(args)
        verb = _user_verb(args)
        if verb is not None:
            result: int = verb(args)
            return result
        from reelgen import admin

        return admin.dispatch(args)
    except ReelgenError as exc:
        print(f"error: {exc.code}: {_one_line(exc.message)}", file=sys.stderr)
        return EXIT_CODES.get(str(exc.code), 2)
    except KeyboardInterrupt:
        return 130
