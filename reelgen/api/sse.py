"""Server-Sent Events framing for ``GET /api/v1/tasks/{id}/events``: each ``service.TaskEvent``
becomes ``id: <n>``, ``event: <kind>`` and ``data: <task JSON>`` (a ``preview`` event: the preview
object, with its ``url``); a keep-alive is a comment line."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from reelgen.service import TaskEvent

__all__ = ["frames"]


async def frames(events: AsyncIterator[TaskEvent]) -> AsyncIterator[str]:
    """The text/event-stream chunks of ``events``, numbered from 1 (keep-alives carry no id)."""
    seq = 0
    async for event in events:
        if event.task is None:
            yield ": keep-alive\n\n"
            continue
        seq += 1
        yield f"id: {seq}\nevent: {event.kind}\ndata: {json.dumps(event.task, separators=(',', ':'))}\n\n"
