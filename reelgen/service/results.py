"""Results: the signed link of a completed task's MP4 (``/download``) and the file behind it, for
its owner (``?mode=proxy``) or for anyone holding a live signed link (``/files/{id}.mp4``)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any, BinaryIO

from reelgen.domain import TaskStatus
from reelgen.errors import ErrorCode, ReelgenError
from reelgen.service.context import Context
from reelgen.service.links import signed_file_url, valid_token
from reelgen.service.tasks import owned_task
from reelgen.store import tasks
from reelgen.views import iso

__all__ = ["S3_MAX_PRESIGN_SECONDS", "ResultFile", "download", "result_for_owner", "result_for_token"]

#: The longest lifetime S3 (SigV4) allows a presigned URL.
S3_MAX_PRESIGN_SECONDS = 7 * 24 * 3600


@dataclass(frozen=True)
class ResultFile:
    """A stored result to send, already open: ``file`` reads the object from its start (a local
    file or a bucket's object alike); the caller sends ``size`` bytes of it and closes it."""

    key: str
    size: int
    filename: str
    file: BinaryIO


def _no_result(row: tasks.TaskRow) -> ReelgenError:
    if row.status == TaskStatus.COMPLETED:  # its result was deleted (DELETE /v1/videos/{id})
        return ReelgenError(ErrorCode.NO_RESULT, "The task's result was deleted.")
    return ReelgenError(ErrorCode.NO_RESULT, f"The task is {row.status.value}; it has no result yet.")


def download(ctx: Context, account_id: str, task_id: str, base_url: str) -> dict[str, Any]:
    row, _, _ = owned_task(ctx, account_id, task_id)
    if row.status != TaskStatus.COMPLETED or not row.result_key:
        raise _no_result(row)
    url, expires_at = signed_file_url(ctx, row.id, base_url)
    ttl = ctx.settings.download_url_ttl_seconds
    # a bucket's presigned URL lives at most 7 days (SigV4) and never forever: past that the
    # link is this server's own, which streams the object from the bucket
    presigned = ctx.storage.presigned_url(row.result_key, ttl) if 0 < ttl <= S3_MAX_PRESIGN_SECONDS else None
    if presigned is not None:
        expires_at = ctx.clock() + timedelta(seconds=ttl)
    return {"url": presigned or url, "type": "video", "expiresAt": iso(expires_at)}


def _result_file(ctx: Context, row: tasks.TaskRow) -> ResultFile:
    """The task's MP4, opened. Opened here, before any byte is answered, so a result that is gone,
    or that is not a regular file (a directory, a FIFO), is ``NO_RESULT`` rather than a broken
    response; once open, a file removed meanwhile still reads in full."""
    if row.status != TaskStatus.COMPLETED or not row.result_key:
        raise _no_result(row)
    try:
        size = ctx.storage.size(row.result_key)
        file = ctx.storage.open(row.result_key)
    except ReelgenError:  # the storages' NOT_FOUND: missing, or not a regular file
        raise ReelgenError(ErrorCode.NO_RESULT, "The result file is not available.") from None
    return ResultFile(key=row.result_key, size=size, filename=f"{row.id}.mp4", file=file)


def result_for_owner(ctx: Context, account_id: str, task_id: str) -> ResultFile:
    """The MP4 of the caller's own completed task (``?mode=proxy``)."""
    row, _, _ = owned_task(ctx, account_id, task_id)
    return _result_file(ctx, row)


def result_for_token(ctx: Context, task_id: str, expires: str | None, token: str | None) -> ResultFile:
    """The MP4 behind a signed URL; an expired or forged token answers like an unknown file."""
    if not valid_token(ctx, task_id, expires, token):
        raise ReelgenError(ErrorCode.INVALID_TOKEN, "This download link is invalid or has expired.")
    row = ctx.db.run(lambda conn: tasks.get(conn, task_id))
    if row is None:
        raise ReelgenError(ErrorCode.NOT_FOUND, "Not found.")
    return _result_file(ctx, row)
