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
import io
import json
import re
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Connection

from reelgen import pricing, progress, webhooks
from reelgen.config import Settings
from reelgen.domain import TaskStatus
from reelgen.errors import FAILURE_KEYS, ErrorCode, ReelgenError
from reelgen.inputs import FetchPolicy
from reelgen.profiles import Profile, get_profile
from reelgen.ratelimit import RateLimiter
from reelgen.schemas import (
    IMAGE_TO_VIDEO,
    MAX_DURATION,
    MIN_DURATION,
    MODEL_IDS,
    TEXT_TO_VIDEO,
    AspectRatio,
    GenerateRequest,
    Mode,
    parse_generate,
)
from reelgen.storage.base import Storage
from reelgen.store import idempotency, keys, ledger, limits, tasks, uploads
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
    #: The per-account request-rate buckets of this process.
    rate_limiter: RateLimiter = field(default_factory=RateLimiter)

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
def _bearer_key(authorization: str | None) -> str:
    if authorization is None or not authorization.strip():
        raise ReelgenError(ErrorCode.MISSING_AUTH_HEADER, "Missing Authorization header.")
    scheme, _, key = authorization.strip().partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key or " " in key:
        raise ReelgenError(ErrorCode.INVALID_AUTH_FORMAT, "Authorization header must be 'Bearer <api key>'.")
    if not key.startswith("sk-"):
        raise ReelgenError(ErrorCode.INVALID_KEY_FORMAT, "API keys start with 'sk-'.")
    return key


@dataclass(frozen=True)
class Admission:
    account_id: str
    #: ``X-RateLimit-*`` for the response (empty when the account's rate is unlimited)
    headers: dict[str, str]


def _limits(ctx: Context, conn: Connection, account_id: str) -> limits.Limits:
    return limits.get(
        conn,
        account_id,
        default_rpm=ctx.settings.rate_limit_rpm,
        default_active=ctx.settings.max_active_tasks,
    )


def admit(ctx: Context, authorization: str | None) -> Admission:
    """Authenticate and take one token of the account's request rate: the 401 codes, or 429
    ``RATE_LIMITED`` with ``Retry-After`` and the ``X-RateLimit-*`` headers."""
    key = _bearer_key(authorization)

    def read(conn: Connection) -> tuple[str | None, limits.Limits | None]:
        account_id = keys.verify_key(conn, key, ctx.secret, ctx.clock())
        return account_id, None if account_id is None else _limits(ctx, conn, account_id)

    account_id, found = ctx.db.run(read)
    if account_id is None or found is None:
        raise ReelgenError(ErrorCode.INVALID_API_KEY, "Invalid API key.")
    decision = ctx.rate_limiter.take(account_id, found.requests_per_minute)
    if decision is None:
        return Admission(account_id, {})
    if not decision.allowed:
        raise ReelgenError(
            ErrorCode.RATE_LIMITED,
            f"Rate limit exceeded: {decision.limit} requests per minute. Retry after {decision.retry_after} s.",
            headers=decision.headers,
        )
    return Admission(account_id, decision.headers)


def set_limits(ctx: Context, account_id: str, *, rpm: int | None, max_active: int | None) -> dict[str, int]:
    """Operator: override an account's limits (None keeps one); returns the effective limits."""

    def go(conn: Connection) -> limits.Limits:
        limits.set_limits(conn, account_id, rpm=rpm, max_active=max_active)
        return _limits(ctx, conn, account_id)

    found = ctx.db.run(go, immediate=True)
    return {"requestsPerMinute": found.requests_per_minute, "maxActiveTasks": found.max_active_tasks}


# --------------------------------------------------------------------------------------------
# Submit
# --------------------------------------------------------------------------------------------
def _validated(ctx: Context, body: Any) -> tuple[GenerateRequest, int]:
    """The parsed request and its price, or the contract's validation errors (nothing is written)."""
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
    return request, pricing.credits_for(inp, ctx.profile)


def submit(ctx: Context, account_id: str, body: Any, *, idempotency_key: str | None = None) -> dict[str, Any]:
    """Validate, price, and in ONE transaction create the task and reserve its price.

    With an ``idempotency_key`` the key and the response are stored in that same transaction; a
    repeat with the same body within 24 h gets the stored response (nothing new is created or
    held), one with another body gets ``IDEMPOTENCY_KEY_REUSED``. Requests refused before the
    transaction commits (validation, credits) store nothing, so a corrected retry may reuse the key.
    """
    key = idempotency.validate_key(idempotency_key) if idempotency_key is not None else None
    request, price = _validated(ctx, body)
    inp = request.input
    callback_url = None
    if request.callback_url is not None:
        callback_url = webhooks.validate_callback_url(request.callback_url, FetchPolicy.from_settings(ctx.settings))
    digest = idempotency.request_hash(body) if key is not None else ""
    stored_input = inp.model_dump(mode="json", exclude_none=True)
    klass = progress.request_class(ctx.profile.name, request.model, inp)
    seed = secrets.randbelow(2**31)

    def create(conn: Connection) -> tuple[dict[str, Any], bool]:
        now = ctx.clock()
        if key is not None:
            replay = idempotency.begin(conn, account_id, key, digest, now)
            if replay is not None:
                return replay.data, False
        _check_uploads(conn, account_id, inp.image_urls)
        # the cap is checked under the account lock, before the hold: a refused submit holds nothing
        limits.check_active(conn, account_id, _limits(ctx, conn, account_id).max_active_tasks)
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
            request_class=klass,
            callback_url=callback_url,
        )
        remaining = ledger.reserve(conn, account_id, row.id, price, now)
        data = {
            "id": row.id,
            "model": row.model,
            "status": row.status.value,
            "creditsUsed": price,
            "creditsRemaining": remaining,
            "createdAt": iso(row.created_at),
        }
        if key is not None:
            idempotency.finish(conn, account_id, key, 200, data, row.id)
        return data, True

    data, created = ctx.db.run(create, immediate=True)
    if created and ctx.on_submit is not None:
        ctx.on_submit()
    return data


# --------------------------------------------------------------------------------------------
# Read
# --------------------------------------------------------------------------------------------
def _owned_task(ctx: Context, account_id: str, task_id: str) -> tuple[tasks.TaskRow, int | None, int | None]:
    """The caller's task, its queue position and its ETA; ``TASK_NOT_FOUND`` for anyone else's."""

    def read(conn: Connection) -> tuple[tasks.TaskRow | None, int | None, int | None]:
        row = tasks.get(conn, task_id)
        if row is None or row.account_id != account_id:
            return None, None, None
        pos = tasks.queue_position(conn, task_id) if row.status == TaskStatus.PENDING else None
        return row, pos, progress.eta_for_task(conn, row, pos, len(ctx.settings.device_list))

    row, pos, eta = ctx.db.run(read)
    # Another account's task answers exactly like an unknown id: no existence oracle.
    if row is None:
        raise ReelgenError(ErrorCode.TASK_NOT_FOUND, "Task not found.")
    return row, pos, eta


def _credits_used(row: tasks.TaskRow) -> int:
    """What the task costs the caller: its price unless it failed or was cancelled (released)."""
    return 0 if row.status in (TaskStatus.FAILED, TaskStatus.CANCELLED) else row.price


def task_view(
    ctx: Context,
    row: tasks.TaskRow,
    base_url: str,
    queue_position: int | None = None,
    eta_seconds: int | None = None,
) -> dict[str, Any]:
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
        "etaSeconds": eta_seconds,
        "result": result,
        "output": output,
        "error": error,
    }


def get_task(ctx: Context, account_id: str, task_id: str, base_url: str) -> dict[str, Any]:
    row, pos, eta = _owned_task(ctx, account_id, task_id)
    return task_view(ctx, row, base_url, pos, eta)


def cancel(ctx: Context, account_id: str, task_id: str, base_url: str) -> dict[str, Any]:
    """Cancel the caller's pending or processing task and release its hold (see ``tasks.cancel``)."""

    def go(conn: Connection) -> tasks.TaskRow | None:
        row = tasks.get(conn, task_id)
        if row is None or row.account_id != account_id:
            return None
        return tasks.cancel(conn, task_id, ctx.clock())

    row = ctx.db.run(go, immediate=True)
    if row is None:
        raise ReelgenError(ErrorCode.TASK_NOT_FOUND, "Task not found.")
    return task_view(ctx, row, base_url, None, 0)


#: ``GET /api/v1/tasks``: page size when none is given, and the most one page may hold.
DEFAULT_PAGE_SIZE = 20
MAX_PAGE_SIZE = 100


def _invalid_param(field_name: str, message: str) -> ReelgenError:
    return ReelgenError(
        ErrorCode.INVALID_INPUT,
        f"Invalid {field_name}: {message}",
        details=[{"field": f"query.{field_name}", "message": message}],
    )


#: A page cursor: the last task's creation time (microseconds since the epoch) and id. Clients treat
#: it as opaque; every string of this shape is a valid position, so any cursor the pattern admits works.
CURSOR_PATTERN = r"^[0-9]{1,16}-[0-9a-f]{32}$"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _encode_cursor(row: tasks.TaskRow) -> str:
    micros = (row.created_at - _EPOCH) // timedelta(microseconds=1)
    return f"{micros}-{row.id}"


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    if not re.fullmatch(CURSOR_PATTERN, cursor):
        raise _invalid_param("cursor", "not a cursor from a previous page")
    micros, last_id = cursor.split("-")
    return _EPOCH + timedelta(microseconds=int(micros)), last_id


def list_tasks(
    ctx: Context,
    account_id: str,
    base_url: str,
    *,
    status: str | None = None,
    limit: int = DEFAULT_PAGE_SIZE,
    cursor: str | None = None,
) -> dict[str, Any]:
    """The caller's tasks, newest first: ``{tasks: [...], nextCursor}`` (``nextCursor`` null on the last page).

    The cursor is the (created_at, id) of the last task shown, so pages stay stable while new
    tasks arrive.
    """
    if status is not None and status not in TaskStatus._value2member_map_:
        raise _invalid_param("status", f"one of {', '.join(s.value for s in TaskStatus)}")
    if not 1 <= limit <= MAX_PAGE_SIZE:
        raise _invalid_param("limit", f"must be 1-{MAX_PAGE_SIZE}")
    before = _decode_cursor(cursor) if cursor else None
    workers = len(ctx.settings.device_list)

    def read(conn: Connection) -> list[tuple[tasks.TaskRow, int | None, int | None]]:
        # one extra row says whether another page follows; a fixed number of queries per page
        rows = tasks.list_for_account(conn, account_id, status=status, limit=limit + 1, before=before)
        positions = tasks.queue_positions(conn, [row.id for row in rows if row.status == TaskStatus.PENDING])
        placed = [(row, positions.get(row.id)) for row in rows]
        etas = progress.eta_for_tasks(conn, placed, workers)
        return [(row, pos, eta) for (row, pos), eta in zip(placed, etas, strict=True)]

    found = ctx.db.run(read)
    page = found[:limit]
    more = len(found) > limit
    return {
        "tasks": [task_view(ctx, row, base_url, pos, eta) for row, pos, eta in page],
        "nextCursor": _encode_cursor(page[-1][0]) if more and page else None,
    }


def estimate(ctx: Context, account_id: str, body: Any) -> dict[str, Any]:
    """What ``submit`` would charge for ``body`` and how long it would likely take; writes nothing."""
    del account_id  # prices are the same for every account; the key is still required
    request, price = _validated(ctx, body)
    klass = progress.request_class(ctx.profile.name, request.model, request.input)
    workers = len(ctx.settings.device_list)
    eta = ctx.db.run(lambda conn: progress.eta_for_new(conn, klass, ctx.profile.name, workers))
    return {"model": request.model, "credits": price, "etaSeconds": eta}


#: ``GET /api/v1/tasks/{id}/events``: how often the store is polled, and the keep-alive interval.
EVENT_POLL_SECONDS = 0.5
KEEPALIVE_SECONDS = 15.0


async def task_events(
    ctx: Context,
    account_id: str,
    task_id: str,
    base_url: str,
    *,
    poll_seconds: float = EVENT_POLL_SECONDS,
    keepalive_seconds: float = KEEPALIVE_SECONDS,
) -> AsyncIterator[str]:
    """Server-Sent Events for the caller's task: ``status`` when the status changes, ``progress``
    when only progress, queue position or ETA change, each with the task view as ``data``; a
    ``: keep-alive`` comment when nothing changed for ``keepalive_seconds``; the stream ends after
    the event that shows a terminal status. Ownership is checked before the stream starts, so an
    unknown or foreign id is an ordinary 404.
    """
    import anyio.to_thread

    def view() -> dict[str, Any]:
        return get_task(ctx, account_id, task_id, base_url)

    first = await anyio.to_thread.run_sync(view)

    async def stream() -> AsyncIterator[str]:
        current, sent, seq = first, None, 0
        quiet_since = time.monotonic()
        while True:
            key = (current["status"], current["progress"], current["queuePosition"], current["etaSeconds"])
            if sent is None or key != sent:
                seq += 1
                kind = "status" if sent is None or sent[0] != key[0] else "progress"
                yield f"id: {seq}\nevent: {kind}\ndata: {json.dumps(current, separators=(',', ':'))}\n\n"
                sent, quiet_since = key, time.monotonic()
                if TaskStatus(current["status"]).is_terminal:
                    return
            elif time.monotonic() - quiet_since >= keepalive_seconds:
                yield ": keep-alive\n\n"
                quiet_since = time.monotonic()
            await anyio.sleep(poll_seconds)
            current = await anyio.to_thread.run_sync(view)

    return stream()


def upload(ctx: Context, account_id: str, data: bytes) -> dict[str, Any]:
    """Store an input image after the same checks as a fetched one (size, type, pixels, ratio);
    returns ``{id, url, format, width, height, size}`` where ``url`` (``reelgen-upload://<id>``)
    is usable in this account's ``image_urls``."""
    from reelgen.inputs import decode_image

    limit = ctx.settings.max_image_bytes
    if len(data) > limit:
        raise ReelgenError(ErrorCode.PAYLOAD_TOO_LARGE, f"The image is larger than {limit} bytes.")
    if not data:
        raise _invalid_upload("the request body is empty: send the image bytes, or a multipart field 'file'")
    try:
        image = decode_image(data)
    except ReelgenError as exc:  # the task-failure codes become a request error here
        raise _invalid_upload(exc.message) from None
    fmt = _image_format(data)
    upload_id = uuid.uuid4().hex
    key = uploads.storage_key(upload_id)
    scratch = ctx.storage.temp_path(f"upload-{upload_id}")
    try:
        scratch.write_bytes(data)
        ctx.storage.put(key, scratch)
    finally:
        scratch.unlink(missing_ok=True)
    row = uploads.Upload(
        id=upload_id,
        account_id=account_id,
        key=key,
        format=fmt,
        size=len(data),
        width=image.width,
        height=image.height,
        created_at=ctx.clock(),
    )
    try:
        ctx.db.run(lambda conn: uploads.create(conn, row), immediate=True)
    except BaseException:
        # no row will ever name the object: remove it now, or it is orphaned for good
        ctx.storage.delete(key)
        raise
    return {
        "id": upload_id,
        "url": uploads.url_for(upload_id),
        "format": fmt.lower(),
        "width": image.width,
        "height": image.height,
        "size": len(data),
    }


def _invalid_upload(message: str) -> ReelgenError:
    return ReelgenError(
        ErrorCode.INVALID_INPUT, f"Invalid image: {message}", details=[{"field": "file", "message": message}]
    )


def _image_format(data: bytes) -> str:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        return str(img.format)


def _check_uploads(conn: Connection, account_id: str, image_urls: tuple[str, ...] | None) -> None:
    """Every ``reelgen-upload://`` image must be one of the caller's uploads (else ``INVALID_INPUT``)."""
    for i, url in enumerate(image_urls or ()):
        if not url.startswith(uploads.SCHEME):
            continue
        upload_id = uploads.parse_url(url)
        found = uploads.get(conn, upload_id) if upload_id else None
        if found is None or found.account_id != account_id:
            message = "no such upload (use the url returned by POST /api/v1/upload)"
            raise ReelgenError(
                ErrorCode.INVALID_INPUT,
                f"Invalid input: input.image_urls.{i}: {message}",
                details=[{"field": f"input.image_urls.{i}", "message": message}],
            )


def webhook_secret(ctx: Context, account_id: str) -> dict[str, str]:
    """The secret the account's webhooks are signed with (``whsec_...``, Standard Webhooks)."""
    return {"secret": webhooks.account_secret(ctx.secret, account_id)}


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
    row, _, _ = _owned_task(ctx, account_id, task_id)
    if row.status != TaskStatus.COMPLETED or not row.result_key:
        raise ReelgenError(ErrorCode.NO_RESULT, f"The task is {row.status.value}; it has no result yet.")
    url, expires_at = signed_file_url(ctx, row.id, base_url)
    presigned = ctx.storage.presigned_url(row.result_key, ctx.settings.download_url_ttl_seconds)
    return {"url": presigned or url, "type": "video", "expiresAt": iso(expires_at)}


@dataclass(frozen=True)
class ResultFile:
    """A stored result to send: ``path`` when the API can serve a local file itself, else None and
    the route streams ``storage.open(key)`` (remote storage such as a bucket)."""

    key: str
    size: int
    filename: str
    path: Path | None = None


def _result_file(ctx: Context, row: tasks.TaskRow) -> ResultFile:
    if row.status != TaskStatus.COMPLETED or not row.result_key:
        raise ReelgenError(ErrorCode.NO_RESULT, f"The task is {row.status.value}; it has no result yet.")
    filename = f"{row.id}.mp4"
    path = ctx.storage.local_path(row.result_key)
    if path is not None:
        if not path.exists():
            raise ReelgenError(ErrorCode.NO_RESULT, "The result file is not available.")
        return ResultFile(key=row.result_key, size=path.stat().st_size, filename=filename, path=path)
    try:
        size = ctx.storage.size(row.result_key)
    except ReelgenError:
        raise ReelgenError(ErrorCode.NO_RESULT, "The result file is not available.") from None
    return ResultFile(key=row.result_key, size=size, filename=filename)


def result_for_owner(ctx: Context, account_id: str, task_id: str) -> ResultFile:
    """The MP4 of the caller's own completed task (``?mode=proxy``)."""
    row, _, _ = _owned_task(ctx, account_id, task_id)
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
def metrics(ctx: Context, authorization: str | None, local_workers: int | None) -> bytes:
    """The Prometheus page; with ``REELGEN_METRICS_TOKEN`` set it needs ``Bearer <that token>``."""
    from reelgen import metrics as prometheus

    token = ctx.settings.metrics_token
    if token:
        given = (authorization or "").strip()
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            raise ReelgenError(ErrorCode.INVALID_API_KEY, "Invalid metrics token.")
    return prometheus.render(ctx.db, ctx.clock(), local_workers)


def ready(ctx: Context) -> dict[str, Any]:
    """Readiness: the database answers. Raises SERVICE_UNAVAILABLE otherwise."""
    from sqlalchemy import text

    ctx.db.run(lambda conn: conn.execute(text("SELECT 1")).scalar_one())
    return {"status": "ready", "profile": ctx.profile.name, "randomWeights": ctx.profile.is_tiny}
