"""Live previews of a running task: what a profile asks for, what the engine hands over, and the
animated WebP the API serves (``GET /api/v1/tasks/{id}/preview``, the ``preview`` event).

The engine (``reelgen.engines.preview``) decodes the current denoising estimate of a few latent
frames into a ``LivePreview`` after every ``every``-th step and after every stage but the last; the
worker's ``Publisher`` encodes it as an animated WebP on a thread of its own (the render never waits
for it), stores it under the task's preview key and records it in the store (``store.previews``),
which every API replica reads. No torch here: the frames arrive as ``uint8`` arrays.
"""

from __future__ import annotations

import io
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from reelgen.errors import ErrorCode, ReelgenError

if TYPE_CHECKING:
    import numpy as np

    from reelgen.storage.base import Storage
    from reelgen.store.db import Database

__all__ = [
    "CONTENT_TYPE",
    "LivePreview",
    "PreviewSink",
    "Previews",
    "Publisher",
    "parse_previews",
    "preview_key",
    "webp",
]

log = logging.getLogger("reelgen.worker")

CONTENT_TYPE = "image/webp"
#: the largest ``frames`` and ``max_side`` a profile may ask for (a preview stays small)
MAX_FRAMES = 16
MAX_SIDE = 512


@dataclass(frozen=True)
class Previews:
    """A profile's ``previews`` table: whether running tasks get live previews, and their shape."""

    #: make previews at all (on in the tiny profiles, off unless a profile says so)
    enabled: bool = False
    #: also after every ``every``-th denoising step of a segment (0: only after each stage but the last)
    every: int = 0
    #: latent frames decoded, evenly spaced over the clip: the preview's frame count
    frames: int = 4
    #: the preview's longest side in pixels (frames are decoded at the stage's size, then shrunk)
    max_side: int = 160


def parse_previews(name: str, raw: Any) -> Previews:
    """The profile's ``previews`` table, checked; ``INVALID_PROFILE`` naming the bad key otherwise."""
    if not isinstance(raw, dict):
        raise ReelgenError(ErrorCode.INVALID_PROFILE, f"profile {name!r}: previews must be a table")
    known = {f.name for f in fields(Previews)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ReelgenError(
            ErrorCode.INVALID_PROFILE, f"profile {name!r}: previews: unknown key(s) {unknown} (known: {sorted(known)})"
        )
    enabled = raw.get("enabled", Previews.enabled)
    if not isinstance(enabled, bool):
        raise ReelgenError(ErrorCode.INVALID_PROFILE, f"profile {name!r}: previews.enabled must be true or false")
    limits = {"every": (0, 10_000), "frames": (1, MAX_FRAMES), "max_side": (32, MAX_SIDE)}
    values: dict[str, int] = {}
    for key, (low, high) in limits.items():
        value = raw.get(key, getattr(Previews, key))
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ReelgenError(
                ErrorCode.INVALID_PROFILE, f"profile {name!r}: previews.{key} {value!r}: a whole number {low}-{high}"
            )
        values[key] = value
    return Previews(enabled=enabled, **values)


@dataclass(frozen=True)
class LivePreview:
    """Decoded preview frames (``uint8``, ``(frames, height, width, 3)``) after ``step`` of ``total``
    denoising steps (of the segment from the engine; of the whole job once ``render`` has mapped it)."""

    frames: np.ndarray
    step: int
    total: int
    #: frames per second of the animation (the clip's duration spread over the preview's frames)
    fps: float


#: what the engine calls with each preview
PreviewSink = Callable[[LivePreview], None]


def preview_key(task_id: str, attempt: int) -> str:
    """Where attempt ``attempt`` of a task keeps its latest preview (one object, overwritten)."""
    return f"{task_id}/preview-{attempt}.webp"


def webp(preview: LivePreview) -> bytes:
    """The frames as an animated WebP (looping; one frame: a still WebP)."""
    from PIL import Image

    images = [Image.fromarray(frame) for frame in preview.frames]
    out = io.BytesIO()
    duration = max(20, round(1000 / max(preview.fps, 0.1)))
    images[0].save(
        out, format="WEBP", save_all=len(images) > 1, append_images=images[1:], duration=duration, loop=0, quality=70
    )
    return out.getvalue()


class Publisher:
    """Stores an attempt's previews off the render thread: the latest preview handed in wins (one
    waiting at most), each is encoded, put under ``preview_key`` and recorded with a fenced write;
    ``close`` waits for the last one. A failure to store a preview is logged, never the task's."""

    def __init__(self, db: Database, storage: Storage, task_id: str, attempt: int) -> None:
        self.db, self.storage = db, storage
        self.task_id, self.attempt = task_id, attempt
        self.key = preview_key(task_id, attempt)
        self.published = 0
        #: CPU seconds this publisher's thread spent encoding, storing and recording (benchmarks)
        self.cpu_seconds = 0.0
        self._next: LivePreview | None = None
        self._closed = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._loop, name="preview", daemon=True)
        self._thread.start()

    def __call__(self, preview: LivePreview) -> None:
        with self._cond:
            if not self._closed:
                self._next = preview
                self._cond.notify()

    def close(self) -> None:
        """Publish what is waiting, then stop."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while self._next is None and not self._closed:
                    self._cond.wait()
                preview, self._next = self._next, None
                if preview is None:
                    return
            start = time.thread_time()
            try:
                self._publish(preview)
            except Exception as exc:  # a preview is a courtesy: the task goes on without it
                log.warning("task %s attempt %d: preview not stored (%s)", self.task_id, self.attempt, exc)
            finally:
                self.cpu_seconds += time.thread_time() - start

    def _publish(self, preview: LivePreview) -> None:
        from PIL import Image

        from reelgen.store import previews

        data = webp(preview)
        with Image.open(io.BytesIO(data), formats=["WEBP"]) as image:
            # what the file holds: the encoder merges a frame identical to the one before it
            (width, height), count = image.size, int(getattr(image, "n_frames", 1))
        scratch = self.storage.temp_path(f"preview-{self.task_id}-{self.attempt}.webp")
        try:
            scratch.write_bytes(data)
            self.storage.put(self.key, scratch)
        finally:
            scratch.unlink(missing_ok=True)
        info = previews.PreviewInfo(
            key=self.key, width=width, height=height, frames=count, step=preview.step, total_steps=preview.total
        )
        recorded, other = self.db.run(
            lambda conn: previews.record(conn, self.task_id, self.attempt, info, datetime.now(UTC)), immediate=True
        )
        if recorded:
            self.published += 1
        # the object nobody points at any more: an earlier attempt's, or ours once the task moved on
        stale = other if recorded else self.key
        if stale is not None and stale != (self.key if recorded else other):
            self.storage.delete(stale)
