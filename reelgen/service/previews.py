"""Live previews of a task (``GET /api/v1/tasks/{id}/preview`` and the event stream's ``preview``
events): the latest small animated WebP the worker stored while the task ran.

A preview is shown to the task's owner only (anyone else gets ``TASK_NOT_FOUND``, as for the task
itself) while the task is pending or processing, and after it completed for as long as its result is
kept: a task that failed or was cancelled, or whose result was deleted, shows none (``NO_PREVIEW``)
and the sweeper removes the object (``sweeper.purge_previews``). Before the first preview: ``NO_PREVIEW``.
"""

from __future__ import annotations

from typing import Any

from reelgen.domain import TaskStatus
from reelgen.errors import ErrorCode, ReelgenError
from reelgen.livepreview import CONTENT_TYPE
from reelgen.service.context import Context
from reelgen.service.videos import Preview
from reelgen.store import previews, tasks
from reelgen.views import iso

__all__ = ["preview_file", "preview_object", "visible_preview"]


def visible_preview(ctx: Context, row: tasks.TaskRow) -> previews.PreviewRow | None:
    """The task's latest preview if it may be shown now (see the module docstring)."""
    if row.status in (TaskStatus.FAILED, TaskStatus.CANCELLED):
        return None
    if row.status == TaskStatus.COMPLETED and not row.result_key:
        return None  # its result was deleted: so is what showed it coming
    return ctx.db.run(lambda conn: previews.get(conn, row.id))


def preview_object(found: previews.PreviewRow, base_url: str, public_base_url: str | None = None) -> dict[str, Any]:
    """The wire object of a preview (the data of a ``preview`` event). ``url`` is the preview route,
    with the version so that a cache never answers an older one; it needs the API key, as the task does."""
    base = (public_base_url or base_url).rstrip("/")
    info = found.info
    return {
        "taskId": found.task_id,
        "url": f"{base}/api/v1/tasks/{found.task_id}/preview?v={found.seq}",
        "contentType": CONTENT_TYPE,
        "width": info.width,
        "height": info.height,
        "frames": info.frames,
        "step": info.step,
        "totalSteps": info.total_steps,
        "version": found.seq,
        "updatedAt": iso(found.updated_at),
    }


def preview_file(ctx: Context, account_id: str, task_id: str) -> Preview:
    """The caller's task's latest preview: the animated WebP's bytes."""
    from reelgen.service.tasks import owned_task

    row, _, _ = owned_task(ctx, account_id, task_id)
    found = visible_preview(ctx, row)
    missing = ReelgenError(ErrorCode.NO_PREVIEW, "The task has no preview yet.")
    if found is None:
        raise missing
    try:
        with ctx.storage.open(found.info.key) as f:
            data = f.read()
    except (OSError, ReelgenError):  # removed meanwhile (the task ended and was swept)
        raise missing from None
    return Preview(data, CONTENT_TYPE, f"{task_id}.preview.webp")
