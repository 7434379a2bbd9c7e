"""Learned ETAs: how long a task will take, from recent runs of the same request class.

A *request class* groups requests that take about as long to render on one profile: the model,
the mode, a duration bucket (3-5 s, 6-10 s, 11-15 s) and whether audio is made. Its typical run time
is the median of the latest completed runs of that class (claim to completion). A task's
``etaSeconds`` is then a rough forecast, ``null`` until the class has at least one completed run:

* pending: ``median x (1 + tasks ahead in the queue / workers)``, the tasks ahead assumed to be
  like this one (``workers`` = the executor's devices);
* processing: ``median x (1 - progress/100)``;
* finished: ``0``.
"""

from __future__ import annotations

import math
import statistics
from typing import TYPE_CHECKING

from reelgen.domain import TaskStatus
from reelgen.store import tasks

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

    from reelgen.schemas import GenerateInput

__all__ = ["duration_bucket", "eta_for_new", "eta_for_task", "request_class", "typical_run_seconds"]

#: How many recent completed runs of a class the median is taken over.
RECENT_RUNS = 20


def duration_bucket(seconds: int) -> str:
    if seconds <= 5:
        return "3-5"
    if seconds <= 10:
        return "6-10"
    return "11-15"


def request_class(profile: str, model: str, inp: GenerateInput) -> str:
    """The key under which run times are learned, e.g. ``ltx-2-tiny|kling-3-0-text-to-video|standard|3-5|audio``."""
    audio = "audio" if inp.audio else "silent"
    return f"{profile}|{model}|{inp.mode.value}|{duration_bucket(inp.duration)}|{audio}"


def typical_run_seconds(conn: Connection, klass: str) -> float | None:
    """Median run time of the class's latest completed runs; None before the first one."""
    runs = tasks.recent_run_seconds(conn, klass, limit=RECENT_RUNS)
    return statistics.median(runs) if runs else None


def _pending_eta(typical: float, ahead: int, workers: int) -> int:
    return math.ceil(typical * (1 + ahead / max(1, workers)))


def eta_for_task(conn: Connection, task: tasks.TaskRow, queue_position: int | None, workers: int) -> int | None:
    """Seconds until ``task`` is likely finished (see the module docstring); None when unknown."""
    if task.status.is_terminal:
        return 0
    if task.request_class is None:
        return None
    typical = typical_run_seconds(conn, task.request_class)
    if typical is None:
        return None
    if task.status is TaskStatus.PROCESSING:
        return math.ceil(typical * (1 - min(99, task.progress) / 100))
    return _pending_eta(typical, queue_position or 0, workers)


def eta_for_new(conn: Connection, klass: str, profile: str, workers: int) -> int | None:
    """Seconds a request of class ``klass`` submitted now would likely take, queue included."""
    typical = typical_run_seconds(conn, klass)
    if typical is None:
        return None
    return _pending_eta(typical, tasks.count_pending(conn, profile), workers)
