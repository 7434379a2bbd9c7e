"""Learned ETAs: how long a task will take, from recent runs of the same request class.

A *request class* groups requests that take about as long to render on one profile: the model,
the mode, a duration bucket (3-5 s, 6-10 s, 11-15 s) and whether audio is made. Its typical run time
is the median of the latest completed runs of that class (claim to completion). A task's
``etaSeconds`` is then a rough forecast, ``null`` until the class has at least one completed run:

* pending: ``median x (1 + tasks ahead in the queue / workers)``, the tasks ahead (in the fair
  queue's claim order, ``store.fair``) assumed to be like this one (``workers`` = the executor's
  devices);
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
    from collections.abc import Sequence

    from sqlalchemy.engine import Connection

    from reelgen.schemas import GenerateInput

__all__ = [
    "duration_bucket",
    "eta_for_new",
    "eta_for_task",
    "eta_for_tasks",
    "request_class",
    "typical_run_seconds",
]

#: How many recent completed runs of a class the median is taken over.
RECENT_RUNS = 20


def duration_bucket(seconds: int) -> str:
    if seconds <= 5:
        return "3-5"
    if seconds <= 10:
        return "6-10"
    return "11-15"


def request_class(profile: str, model: str, inp: GenerateInput) -> str:
    """The key under which run times are learned, e.g. ``ltx-2-tiny|kling-3-0-text-to-video|standard|3-5|audio``;
    a request that runs through adapters (``loras``, ``camera_control``: loaded on first use, then switched
    per task) is learned apart, ``...|audio|adapters``, and so is one whose prompt the enhancer rewrites
    first, ``...|enhanced``."""
    audio = "audio" if inp.audio else "silent"
    klass = f"{profile}|{model}|{inp.mode.value}|{duration_bucket(inp.duration)}|{audio}"
    klass = f"{klass}|adapters" if inp.loras or inp.camera_control else klass
    return f"{klass}|enhanced" if inp.enhance_prompt else klass


def typical_run_seconds(conn: Connection, klass: str) -> float | None:
    """Median run time of the class's latest completed runs; None before the first one."""
    runs = tasks.recent_run_seconds(conn, klass, limit=RECENT_RUNS)
    return statistics.median(runs) if runs else None


def _pending_eta(typical: float, ahead: int, workers: int) -> int:
    return math.ceil(typical * (1 + ahead / max(1, workers)))


def eta_for_task(conn: Connection, task: tasks.TaskRow, queue_position: int | None, workers: int) -> int | None:
    """Seconds until ``task`` is likely finished (see the module docstring); None when unknown."""
    return eta_for_tasks(conn, [(task, queue_position)], workers)[0]


def eta_for_tasks(conn: Connection, rows: Sequence[tuple[tasks.TaskRow, int | None]], workers: int) -> list[int | None]:
    """``eta_for_task`` of each (task, queue position), reading each request class's runs once."""
    typical: dict[str, float | None] = {}
    out: list[int | None] = []
    for task, queue_position in rows:
        if task.status.is_terminal:
            out.append(0)
            continue
        klass = task.request_class
        if klass is not None and klass not in typical:
            typical[klass] = typical_run_seconds(conn, klass)
        seconds = None if klass is None else typical[klass]
        if seconds is None:
            out.append(None)
        elif task.status is TaskStatus.PROCESSING:
            out.append(math.ceil(seconds * (1 - min(99, task.progress) / 100)))
        else:
            out.append(_pending_eta(seconds, queue_position or 0, workers))
    return out


def eta_for_new(conn: Connection, klass: str, profile: str, workers: int, account_id: str) -> int | None:
    """Seconds a request of class ``klass`` that ``account_id`` submitted now would likely take,
    counting the tasks the fair queue would claim before it."""
    typical = typical_run_seconds(conn, klass)
    if typical is None:
        return None
    return _pending_eta(typical, tasks.queue_position_for_new(conn, account_id, profile), workers)
