"""The rules of the service: validate, price, reserve, create; read tasks; hand out results.

Plain functions over a ``Context`` (database, settings, profile, storage, clock); the HTTP layer
calls exactly one of them per route, and the CLI's operator verbs call them too. Money moves only
here and in ``store.ledger`` / ``store.tasks`` (reserve at submit; the worker's finish captures or
releases in the same transaction that ends the task).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection

from reelgen import pricing
from reelgen.config import Settings
from reelgen.domain import TaskStatus
from reelgen.errors import FAILURE_KEYS, ErrorCode, ReelgenError
from reelgen.profiles import Profile, get_profile
from reelgen.schemas import (
    IMAGE_TO_VIDEO,
    MAX_DURATION,
    MIN_DURATION,
    MODEL_IDS,
    TEXT_TO_VIDEO,
    AspectRatio,
    Mode,
    parse_generate,
)
from reelgen.storage.base import Storage
from reelgen.store import keys, ledger, tasks
from reelgen.store.db import Database

MODEL_NAMES = {
    TEXT_TO_VIDEO: "Kling 3.0 Text to Video",
    IMAGE_TO_VIDEO: "Kling 3.0 Image to Video",
}
MODEL_INPUTS = {
    TEXT_TO_VIDEO: ["prompt", "duration", "mode", "audio", "aspect_ratio", "multi_shots", "multi_prompt"],
    IMAGE_TO_VIDEO: ["prompt", "image_urls", "duration", "mode", "audio", "multi_shots", "multi_prompt"],
}


def utcnow() -> datetime:
    return datetime.now(UTC)


def iso(ts: datetime | None) -> str | None:
    """ISO 8601 UTC with a ``Z``, millisecond precision (the seed's ``createdAt`` shape)."""
    if ts is None:
        return None
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    return ts.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class Context:
    """What every service function needs; built once by the app's lifespan or the CLI."""

    db: Database
    settings: Settings
    profile: Profile
    storage: Storage
    secret: str
    clock: Callable[[], datetime] = field(default=utcnow)
    #: Called after a task is committed (the executor wakes an idle worker instead of waiting for its poll).
    on_submit: Callable[[], None] | None = None

    @classmethod
    def from_settings(cls, settings: Settings, *, storage: Storage | None = None) -> Context:
        from reelgen.storage import pick

        db = Database.from_settings(settings)
        db.upgrade()
        profile = get_profile(settings.profile, settings.profiles_file, weights=settings.weights)
        return cls(
            db=db,
            settings=settings,
            profile=profile,
            storage=storage or pick(settings),
            secret=settings.resolved_secret(),
        )


# --------------------------------------------------------------------------------------------
# Auth
# --------------------------------------------------------------------------------------------
def authenticate(ctx: Context, authorization: str | None) -> str:
    """``Authorization`` header → account id, or the contract's 401 codes."""
    if authorization is None or not authorization.strip():
        raise ReelgenError(ErrorCode.MISSING_AUTH_HEADER, "Missing Authorization header.")
    scheme, _, key = authorization.strip().partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key or " " in key:
        raise ReelgenError(ErrorCode.INVALID_AUTH_FORMAT, "Authorization header must be 'Bearer <api key>'.")
    if not key.startswith("sk-"):
        raise ReelgenError(ErrorCode.INVALID_KEY_FORMAT, "API keys start with 'sk-'.")
    account_id = ctx.db.run(lambda conn: keys.verify_key(conn, key, ctx.secret, ctx.clock()))
    if account_id is None:
        raise ReelgenError(ErrorCode.INVALID_API_KEY, "Invalid API key.")
    return account_id


# --------------------------------------------------------------------------------------------
# Submit
# --------------------------------------------------------------------------------------------
def submit(ctx: Context, account_id: str, body: Any, *, idempotency_key: str | None = None) -> dict[str, Any]:
    """Validate, price, and in ONE transaction create the task and reserve its price."""
    if idempotency_key is not None:
        # Refused rather than ignored: a client relying on it would otherwise be charged twice.
        raise ReelgenError(
            ErrorCode.INVALID_INPUT,
            "The Idempotency-Key header is not supported by this server yet; retry without it.",
            details=[{"field": "header.Idempotency-Key", "message": "not supported yet"}],
        )
    request = parse_generate(body, MODEL_IDS)
    inp = request.input
    if not ctx.profile.min_duration <= inp.duration <= ctx.profile.max_duration:
        raise ReelgenError(
            ErrorCode.INVALID_INPUT,
            f"Invalid input: input.duration: this server serves {ctx.profile.min_duration}-"
            f"{ctx.profile.max_duration} s",
            details=[
                {
                    "field": "input.duration",
                    "message": f"must be {ctx.profile.min_duration}-{ctx.profile.max_duration}",
                }
            ],
        )
    price = pricing.credits_for(inp, ctx.profile)
    stored_input = inp.model_dump(mode="json", exclude_none=True)
    seed = secrets.randbelow(2**31)

    def create(conn: Connection) -> tuple[tasks.TaskRow, int]:
        now = ctx.clock()
        row = tasks.create(
            conn,
            account_id=account_id,
            model=request.model,
            profile=ctx.profile.name,
            input=stored_input,
            prompt=inp.prompt,
            price=price,
            seed=seed,
            max_attempts=ctx.settings.max_attempts,
            now=now,
        )
        remaining = ledger.reserve(conn, account_id, row.id, price, now)
        return row, remaining

    row, remaining = ctx.db.run(create, immediate=True)
    if ctx.on_submit is not None:
        ctx.on_submit()
    return {
        "id": row.id,
        "model": row.model,
        "status": row.status.value,
        "creditsUsed": price,
        "creditsRemaining": remaining,
        "createdAt": iso(row.created_at),
    }


# --------------------------------------------------------------------------------------------
# Read
# --------------------------------------------------------------------------------------------
def _owned_task(ctx: Context, account_id: str, task_id: str) -> tuple[tasks.TaskRow, int | None]:
    def read(conn: Connection) -> tuple[tasks.TaskRow | None, int | None]:
        row = tasks.get(conn, task_id)
        if row is None or row.account_id != account_id:
            return None, None
        pos = tasks.queue_position(conn, task_id) if row.status == TaskStatus.PENDING else None
        return row, pos

    row, pos = ctx.db.run(read)
    # Another account's task answers exactly like an unknown id: no existence oracle.
    if row is None:
        raise ReelgenError(ErrorCode.TASK_NOT_FOUND, "Task not found.")
    return row, pos


def _credits_used(row: tasks.TaskRow) -> int:
    """What the task costs the caller: its price unless it failed or was cancelled (released)."""
    return 0 if row.status in (TaskStatus.FAILED, TaskStatus.CANCELLED) else row.price


def task_view(ctx: Context, row: tasks.TaskRow, base_url: str, queue_position: int | None = None) -> dict[str, Any]:
    result = output = error = None
    if row.status == TaskStatus.COMPLETED and row.result_key:
        url = signed_file_url(ctx, row.id, base_url)[0]
        result = {"url": url, "type": "video"}
        output = {
            "url": url,
            "duration": row.result_duration,
            "format": "mp4",
            "hasAudio": bool(row.result_has_audio),
        }
    if row.status in (TaskStatus.FAILED, TaskStatus.CANCELLED):
        code = row.error_code or (ErrorCode.CANCELLED if row.status == TaskStatus.CANCELLED else "GENERATION_FAILED")
        key = FAILURE_KEYS.get(ErrorCode(code), "generic") if code in ErrorCode._value2member_map_ else "generic"
        error = {"code": code, "key": key, "message": row.error_message or "The generation failed."}
    return {
        "id": row.id,
        "taskId": row.id,
        "model": row.model,
        "status": row.status.value,
        "mediaType": "video",
        "prompt": row.prompt,
        "input": row.input,
        "createdAt": iso(row.created_at),
        "startedAt": iso(row.started_at),
        "completedAt": iso(row.completed_at),
        "creditsUsed": _credits_used(row),
        "progress": 100 if row.status == TaskStatus.COMPLETED else int(row.progress or 0),
        "queuePosition": queue_position,
        "etaSeconds": None,
        "result": result,
        "output": output,
        "error": error,
    }


def get_task(ctx: Context, account_id: str, task_id: str, base_url: str) -> dict[str, Any]:
    row, pos = _owned_task(ctx, account_id, task_id)
    return task_view(ctx, row, base_url, pos)


def credits(ctx: Context, account_id: str) -> dict[str, int]:
    bal = ctx.db.run(lambda conn: ledger.balance(conn, account_id))
    return {"credits": bal.available, "reserved": bal.reserved}


def models(ctx: Context) -> list[dict[str, Any]]:
    p = ctx.profile
    pricing_table = {
        m.value: {"audio": p.rate(m, True), "noAudio": p.rate(m, False)} for m in (Mode.STANDARD, Mode.PROFESSIONAL)
    }
    return [
        {
            "id": model_id,
            "name": MODEL_NAMES[model_id],
            "type": "video",
            "inputs": MODEL_INPUTS[model_id],
            "aspectRatios": [a.value for a in AspectRatio] if model_id == TEXT_TO_VIDEO else None,
            "modes": [m.value for m in Mode],
            "minDuration": max(MIN_DURATION, p.min_duration),
            "maxDuration": min(MAX_DURATION, p.max_duration),
            "pricing": pricing_table,
            "profile": p.name,
        }
        for model_id in MODEL_IDS
    ]


# --------------------------------------------------------------------------------------------
# Results: signed URLs and owned downloads
# --------------------------------------------------------------------------------------------
def _sign(ctx: Context, task_id: str, expires: int) -> str:
    mac = hmac.new(ctx.secret.encode(), f"file:{task_id}:{expires}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac[:24]).decode().rstrip("=")


def signed_file_url(ctx: Context, task_id: str, base_url: str) -> tuple[str, datetime]:
    """An absolute, expiring URL for a task's MP4 that needs no key (HMAC over id and expiry)."""
    ttl = ctx.settings.download_url_ttl_seconds
    # Round the expiry up to a minute so repeated polls return a stable URL.
    expires = (int(time.time()) // 60 + 1) * 60 + ttl
    base = (ctx.settings.public_base_url or base_url).rstrip("/")
    token = _sign(ctx, task_id, expires)
    return f"{base}/api/v1/files/{task_id}.mp4?expires={expires}&token={token}", datetime.fromtimestamp(expires, UTC)


def download(ctx: Context, account_id: str, task_id: str, base_url: str) -> dict[str, Any]:
    row, _ = _owned_task(ctx, account_id, task_id)
    if row.status != TaskStatus.COMPLETED or not row.result_key:
        raise ReelgenError(ErrorCode.NO_RESULT, f"The task is {row.status.value}; it has no result yet.")
    url, expires_at = signed_file_url(ctx, row.id, base_url)
    presigned = ctx.storage.presigned_url(row.result_key, ctx.settings.download_url_ttl_seconds)
    return {"url": presigned or url, "type": "video", "expiresAt": iso(expires_at)}


@dataclass(frozen=True)
class ResultFile:
    path: Path
    size: int
    filename: str


def _result_file(ctx: Context, row: tasks.TaskRow) -> ResultFile:
    if row.status != TaskStatus.COMPLETED or not row.result_key:
        raise ReelgenError(ErrorCode.NO_RESULT, f"The task is {row.status.value}; it has no result yet.")
    path = ctx.storage.local_path(row.result_key)
    if path is None or not path.exists():
        raise ReelgenError(ErrorCode.NO_RESULT, "The result file is not available.")
    return ResultFile(path=path, size=path.stat().st_size, filename=f"{row.id}.mp4")


def result_for_owner(ctx: Context, account_id: str, task_id: str) -> ResultFile:
    """The MP4 of the caller's own completed task (``?mode=proxy``)."""
    row, _ = _owned_task(ctx, account_id, task_id)
    return _result_file(ctx, row)


def result_for_token(ctx: Context, task_id: str, expires: str | None, token: str | None) -> ResultFile:
    """The MP4 behind a signed URL; an expired or forged token answers like an unknown file."""
    if not expires or not token or not expires.isdigit():
        raise ReelgenError(ErrorCode.INVALID_TOKEN, "This download link is invalid or has expired.")
    exp = int(expires)
    if exp < time.time() or not hmac.compare_digest(_sign(ctx, task_id, exp), token):
        raise ReelgenError(ErrorCode.INVALID_TOKEN, "This download link is invalid or has expired.")
    row = ctx.db.run(lambda conn: tasks.get(conn, task_id))
    if row is None:
        raise ReelgenError(ErrorCode.NOT_FOUND, "Not found.")
    return _result_file(ctx, row)


# --------------------------------------------------------------------------------------------
# Health
# --------------------------------------------------------------------------------------------
def ready(ctx: Context) -> dict[str, Any]:
    """Readiness: the database answers. Raises SERVICE_UNAVAILABLE otherwise."""
    from sqlalchemy import text

    ctx.db.run(lambda conn: conn.execute(text("SELECT 1")).scalar_one())
    return {"status": "ready", "profile": ctx.profile.name, "randomWeights": ctx.profile.is_tiny}
