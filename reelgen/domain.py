"""Internal types: task states, and (re-exported from ``reelgen.planning``) the plan of one generation.

Frozen dataclasses and enums; no torch here. The engine receives a ``Job``; images are attached
by the caller after fetching and cropping them (``reelgen.inputs``).
"""

from __future__ import annotations

from enum import StrEnum

from reelgen.enhancement import Enhancement
from reelgen.planning import (
    Condition,
    Job,
    Segment,
    Stage,
    derive_seed,
    model_frames,
    nearest_aspect,
    plan,
)

__all__ = [
    "Condition",
    "Enhancement",
    "Job",
    "Segment",
    "Stage",
    "TaskStatus",
    "derive_seed",
    "model_frames",
    "nearest_aspect",
    "plan",
]


class TaskStatus(StrEnum):
    PENDING = "pending"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in (TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED)

    def can_move_to(self, new: TaskStatus) -> bool:
        return new in _MOVES[self]


_MOVES: dict[TaskStatus, frozenset[TaskStatus]] = {
    TaskStatus.PENDING: frozenset({TaskStatus.PROCESSING, TaskStatus.FAILED, TaskStatus.CANCELLED}),
    # processing -> pending is a requeue (lease expired, worker drained) as a new attempt
    TaskStatus.PROCESSING: frozenset(
        {TaskStatus.PENDING, TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED}
    ),
    TaskStatus.COMPLETED: frozenset(),
    TaskStatus.FAILED: frozenset(),
    TaskStatus.CANCELLED: frozenset(),
}
