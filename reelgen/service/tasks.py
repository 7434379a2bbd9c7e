"""Tasks: submit (validate, price, reserve, create, in one transaction), read, list, cancel, estimate
and follow (the events behind ``/tasks/{id}/events``).

Money moves only in ``store.ledger`` / ``store.tasks``: the hold is reserved here, in the
transaction that creates the task; the worker's finish captures or releases it in the transaction
that ends the task. Another account's task answers exactly like an unknown id (no existence oracle).

One module over 400 lines on purpose: submit, read, list, cancel, estimate and follow are one use case's
verbs over the same validation, pricing and view helpers; extend and previews have their own modules.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from sqlalchemy import Connection
from sqlalchemy.exc import IntegrityError

from reelgen import memory, pricing, progress, webhooks
from reelgen.domain import TaskStatus
from reelgen.errors import ErrorCode, ReelgenError
from reelgen.planning import request_enhancement, request_loras
from reelgen.safehttp import FetchPolicy
from reelgen.schemas import MAX_SEED, ExtendRequest, GenerateInput, GenerateRequest, parse_request
from reelgen.service import extend
from reelgen.service.admission import limits_of
from reelgen.service.context import Context
from reelgen.service.links import signed_file_url
from reelgen.service.uploads import upload_id_of
from reelgen.store import idempotency, ledger, limits, tasks, uploads
from reelgen.views import iso, task_object

__all__ = [
    "CURSOR_PATTERN",
    "DEFAULT_PAGE_SIZE",
    "MAX_PAGE_SIZE",
    "TaskEvent",
    "cancel",
    "estimate",
    "get_task",
    "list_tasks",
    "owned_task",
    "submit",
    "task_events",
    "task_view",
]

#: ``GET /api/v1/tasks``: page size when none is given, and the most one page may hold.
DEFAULT_PAGE_SIZE = 20
MAX_PAGE_SIZE = 100
#: A page cursor: the last task's creation time (microseconds since the epoch) and id. Clients treat
#: it as opaque; every string of this shape is a valid position, so any cursor the pattern admits works.
CURSOR_PATTERN = r"^[0-9]{1,16}-[0-9a-f]{32}$"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: ``GET /api/v1/tasks/{id}/events``: how often the store is polled, and the keep-alive interval.
EVENT_POLL_SECONDS = 0.5
KEEPALIVE_SECONDS = 15.0


# --------------------------------------------------------------------------------------------
# Submit
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Checked:
    """A ``/generate`` body that passed every check before the creating transaction: the request, its
    price, its callback URL in canonical form, and for the extend model the checked extension."""

    request: GenerateRequest | ExtendRequest
    price: int
    callback_url: str | None
    extension: extend.Extension | None = None

    @property
    def generation(self) -> GenerateInput:
        """The input as a generation (an extension's equivalent one): run-time class, memory."""
        if self.extension is not None:
            return self.extension.equivalent
        assert isinstance(self.request, GenerateRequest)
        return self.request.input


def _validated(ctx: Context, body: Any, account_id: str) -> _Checked:
    """The checks ``submit`` and ``estimate`` share before the creating transaction: the contract's
    parse, the profile's durations, the price, the callback URL and, for the extend model, its
    original (``service.extend``; the upload check runs in their queries)."""
    request = parse_request(body)
    _check_duration(ctx, request.input.duration)
    callback_url = None
    if request.callback_url is not None:
        callback_url = webhooks.validate_callback_url(request.callback_url, FetchPolicy.from_settings(ctx.settings))
    if isinstance(request, ExtendRequest):
        ext = extend.resolve(ctx, account_id, request)
        return _Checked(request, ext.price, callback_url, ext)
    inp = request.input
    request_loras(inp, ctx.profile)  # LoRAs and camera moves this server offers, or INVALID_INPUT
    request_enhancement(inp, ctx.profile)  # a prompt enhancer this server has, or INVALID_INPUT
    memory.check_fits(inp, ctx.profile)  # a request that can never fit a worker's GPU: INVALID_INPUT
    return _Checked(request, pricing.credits_for(inp, ctx.profile), callback_url)


def _check_duration(ctx: Context, duration: int) -> None:
    """``duration`` within what this server's profile serves, else ``INVALID_INPUT``."""
    if not ctx.profile.min_duration <= duration <= ctx.profile.max_duration:
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


def submit(
    ctx: Context,
    account_id: str,
    body: Any,
    *,
    idempotency_key: str | None = None,
    base_url: str | None = None,
    seed: int | None = None,
    on_create: Callable[[Connection, str], None] | None = None,
) -> dict[str, Any]:
    """Validate, price, and in ONE transaction create the task and reserve its price.

    With an ``idempotency_key`` the key and the response are stored in that same transaction; a
    repeat with the same body within 24 h gets the stored response (nothing new is created or
    held), one with another body gets ``IDEMPOTENCY_KEY_REUSED``. Requests refused before the
    transaction commits (validation, credits) store nothing, so a corrected retry may reuse the key.

    ``base_url`` is the URL the request came in on: an ``image_urls`` entry that is a ``publicUrl``
    of this server (``service.uploads``) is read from storage, never fetched. Kling's
    ``external_task_id`` must be new for the account (``DUPLICATE_EXTERNAL_TASK_ID`` otherwise).
    ``seed`` fixes the task's seed when the input names none (a remix reuses its original's);
    ``on_create(conn, task_id)`` runs in the creating transaction (another door records what it
    needs beside the task).
    """
    key = idempotency.validate_key(idempotency_key) if idempotency_key is not None else None
    checked = _validated(ctx, body, account_id)
    request, price, callback_url, ext = checked.request, checked.price, checked.callback_url, checked.extension
    digest = idempotency.request_hash(body) if key is not None else ""
    klass = progress.request_class(ctx.profile.name, request.model, checked.generation)
    image_urls: tuple[str, ...] | None = None
    external_id: str | None = None
    if isinstance(request, GenerateRequest):
        inp = _local_uploads(ctx, request.input, base_url)
        stored_input = inp.model_dump(mode="json", exclude_none=True)
        image_urls, external_id = inp.image_urls, inp.external_task_id
        if inp.seed is not None:
            seed = inp.seed
    else:
        assert ext is not None  # an ExtendRequest is always resolved
        stored_input = ext.input
    if seed is None:
        seed = secrets.randbelow(MAX_SEED + 1)

    def create(conn: Connection) -> tuple[dict[str, Any], bool]:
        now = ctx.clock()
        if key is not None:
            replay = idempotency.begin(conn, account_id, key, digest, now)
            if replay is not None:
                return replay.data, False
        _check_uploads(conn, account_id, image_urls, now)
        if ext is not None:  # the original may have lost its result since it was checked
            extend.recheck(conn, account_id, ext)
        # the cap is checked under the account lock, before the hold: a refused submit holds nothing
        limits.check_active(conn, account_id, limits_of(ctx, conn, account_id).max_active_tasks)
        if external_id is not None and tasks.find_external(conn, account_id, external_id) is not None:
            raise _duplicate_external(external_id)
        row = tasks.create(
            conn,
            account_id=account_id,
            model=request.model,
            profile=ctx.profile.name,
            input=stored_input,
            prompt=request.input.prompt,
            price=price,
            seed=seed,
            max_attempts=ctx.settings.max_attempts,
            now=now,
            request_class=klass,
            callback_url=callback_url,
            external_task_id=external_id,
        )
        remaining = ledger.reserve(conn, account_id, row.id, price, now)
        if on_create is not None:
            on_create(conn, row.id)
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

    try:
        data, created = ctx.db.run(create, immediate=True)
    except IntegrityError:
        # two submits with one external_task_id at once: the unique index let one in
        if external_id is None:
            raise
        raise _duplicate_external(external_id) from None
    if created and ctx.on_submit is not None:
        ctx.on_submit()
    return data


def _duplicate_external(external_id: str) -> ReelgenError:
    return ReelgenError(
        ErrorCode.DUPLICATE_EXTERNAL_TASK_ID,
        f"A task with external_task_id {external_id!r} already exists for this account.",
        details=[{"field": "input.external_task_id", "message": "already used by another task of this account"}],
    )


def _local_uploads(ctx: Context, inp: GenerateInput, base_url: str | None) -> GenerateInput:
    """``inp`` with each ``publicUrl`` of this server in ``image_urls`` as its ``reelgen-upload://``
    form, which the worker reads from storage (never over the network)."""
    if not inp.image_urls or base_url is None:
        return inp
    urls = []
    for url in inp.image_urls:
        upload_id = upload_id_of(ctx, url, base_url)
        urls.append(uploads.url_for(upload_id) if upload_id is not None else url)
    return inp.model_copy(update={"image_urls": tuple(urls)})


def _check_uploads(conn: Connection, account_id: str, image_urls: tuple[str, ...] | None, now: datetime | None) -> None:
    """Every upload URL must name one of the caller's uploads (else ``INVALID_INPUT``); with ``now``
    each is marked used, so the retention purge keeps it (``estimate`` checks without writing)."""
    for i, url in enumerate(image_urls or ()):
        if not url.startswith(uploads.SCHEME):
            continue
        upload_id = uploads.parse_url(url)
        if upload_id is None:
            owned = False
        elif now is None:
            found = uploads.get(conn, upload_id)
            owned = found is not None and found.account_id == account_id
        else:
            owned = uploads.mark_used(conn, upload_id, account_id, now)
        if not owned:
            message = "no such upload (use the url returned by POST /api/v1/upload)"
            raise ReelgenError(
                ErrorCode.INVALID_INPUT,
                f"Invalid input: input.image_urls.{i}: {message}",
                details=[{"field": f"input.image_urls.{i}", "message": message}],
            )


def estimate(ctx: Context, account_id: str, body: Any, base_url: str | None = None) -> dict[str, Any]:
    """What ``submit`` would charge for ``body`` and how long it would likely take (the caller's
    place in the fair queue included); writes nothing (``base_url``: as for ``submit``, so a
    ``publicUrl`` of this server is checked like ``submit`` does)."""
    checked = _validated(ctx, body, account_id)  # every check of ``submit`` (the same prices for every account)
    request = checked.request
    klass = progress.request_class(ctx.profile.name, request.model, checked.generation)
    workers = len(ctx.settings.device_list)

    def read(conn: Connection) -> int | None:
        if isinstance(request, GenerateRequest):
            _check_uploads(conn, account_id, _local_uploads(ctx, request.input, base_url).image_urls, None)
        return progress.eta_for_new(conn, klass, ctx.profile.name, workers, account_id)

    eta = ctx.db.run(read)
    return {"model": request.model, "credits": checked.price, "etaSeconds": eta}


# --------------------------------------------------------------------------------------------
# Read
# --------------------------------------------------------------------------------------------
def owned_task(ctx: Context, account_id: str, task_id: str) -> tuple[tasks.TaskRow, int | None, int | None]:
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


def task_view(
    ctx: Context,
    row: tasks.TaskRow,
    base_url: str,
    queue_position: int | None = None,
    eta_seconds: int | None = None,
) -> dict[str, Any]:
    """The API's task object (``views.task_object``) with a signed link to its result, if any."""
    url = None
    if row.status == TaskStatus.COMPLETED and row.result_key:
        url = signed_file_url(ctx, row.id, base_url)[0]
    return task_object(row, url, queue_position, eta_seconds)


def get_task(ctx: Context, account_id: str, task_id: str, base_url: str) -> dict[str, Any]:
    row, pos, eta = owned_task(ctx, account_id, task_id)
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


def _invalid_param(field_name: str, message: str) -> ReelgenError:
    return ReelgenError(
        ErrorCode.INVALID_INPUT,
        f"Invalid {field_name}: {message}",
        details=[{"field": f"query.{field_name}", "message": message}],
    )


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
    external_task_id: str | None = None,
) -> dict[str, Any]:
    """The caller's tasks, newest first: ``{tasks: [...], nextCursor}`` (``nextCursor`` null on the last page).
    ``external_task_id`` finds the task the caller gave that id (Kling's field): a page of 0 or 1.

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
        rows = tasks.list_for_account(
            conn, account_id, status=status, limit=limit + 1, before=before, external_task_id=external_task_id
        )
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


# --------------------------------------------------------------------------------------------
# Follow
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TaskEvent:
    """One event of a followed task: its ``status`` changed, or only its ``progress`` (progress,
    queue position or ETA), with the task as ``task``; a new live ``preview`` (``task`` is then the
    preview object, ``service.previews.preview_object``); ``keep-alive`` when nothing changed for a
    while (``task`` is None)."""

    kind: Literal["status", "progress", "preview", "keep-alive"]
    task: dict[str, Any] | None = None


async def task_events(
    ctx: Context,
    account_id: str,
    task_id: str,
    base_url: str,
    *,
    poll_seconds: float = EVENT_POLL_SECONDS,
    keepalive_seconds: float = KEEPALIVE_SECONDS,
) -> AsyncIterator[TaskEvent]:
    """The caller's task as a stream of events (see ``TaskEvent``), ending after the event that shows
    a terminal status. Ownership is checked before the stream starts, so an unknown or foreign id is
    an ordinary ``TASK_NOT_FOUND``. A preview stored since the last poll comes before the task's
    event of that poll, so the last preview is sent before the terminal status. The HTTP layer
    frames the events (``api/sse.py``).
    """
    import anyio.to_thread

    from reelgen.service.previews import preview_object, visible_preview

    def view() -> tuple[dict[str, Any], dict[str, Any] | None]:
        row, pos, eta = owned_task(ctx, account_id, task_id)
        found = visible_preview(ctx, row)
        shown = preview_object(found, base_url, ctx.settings.public_base_url) if found else None
        return task_view(ctx, row, base_url, pos, eta), shown

    first = await anyio.to_thread.run_sync(view)

    async def stream() -> AsyncIterator[TaskEvent]:
        (current, preview), sent, version = first, None, None
        quiet_since = time.monotonic()
        while True:
            if preview is not None and preview["version"] != version:
                yield TaskEvent("preview", preview)
                version, quiet_since = preview["version"], time.monotonic()
            key = (current["status"], current["progress"], current["queuePosition"], current["etaSeconds"])
            if sent is None or key != sent:
                yield TaskEvent("status" if sent is None or sent[0] != key[0] else "progress", current)
                sent, quiet_since = key, time.monotonic()
                if TaskStatus(current["status"]).is_terminal:
                    return
            elif time.monotonic() - quiet_since >= keepalive_seconds:
                yield TaskEvent("keep-alive")
                quiet_since = time.monotonic()
            await anyio.sleep(poll_seconds)
            current, preview = await anyio.to_thread.run_sync(view)

    return stream()
