"""Claiming and running tasks: one claimed attempt from claim to a fenced outcome.

A ``Worker`` loads its engine once and then claims tasks of its profile from the store and runs
each as an ``Attempt``:

1. a heartbeat thread renews the lease every ``heartbeat_seconds`` and records progress (0-100)
   from the engine's denoising steps; if a heartbeat is refused, the attempt has lost its claim
   (the lease expired and the task was requeued, or it was cancelled): the render stops at the
   next step boundary (``StopReason.LOST``) and its output is discarded;
2. input images are fetched and decoded (``inputs.load_images``), the request is planned, the
   images are cropped to the job's size and attached as start/end frames;
3. the video is rendered into an attempt-specific scratch file (with the profile's live previews
   stored and recorded as it goes, ``reelgen.livepreview``), moved into storage under
   ``<task id>/<attempt>.mp4``, and the task is completed, which captures the credits in the same
   transaction; if completing is refused (a newer attempt owns the task) the stored file is deleted,
   so an output is only ever served through the attempt that won;
4. expected failures (``ReelgenError``: image errors, invalid input) fail the task with their code
   and message; anything else fails it with ``GENERATION_FAILED`` and a generic message, with the
   traceback in the log only. Failing releases the credits.

Stopping is asked for, never forced, here: ``drain`` stops claiming, ``stop_current`` makes the
render stop at its next step boundary and hand the task back (``StopReason.SHUTDOWN``), and
``hand_back_now`` returns the task at once. No signals and no process exits: the process shell
(``reelgen.worker``) owns those, and the Ray engine actor uses this module without it.

Over 400 lines on purpose: the render, the heartbeat and the hand-back share one attempt's state
and one lock; the fenced outcomes read best next to the code that races them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from reelgen.errors import ErrorCode, ReelgenError
from reelgen.schemas import VIDEO_EXTEND

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

    from reelgen.config import Settings
    from reelgen.domain import Job
    from reelgen.engines.base import Engine
    from reelgen.media import MediaInfo
    from reelgen.profiles import Profile
    from reelgen.storage.base import Storage
    from reelgen.store.db import Database
    from reelgen.store.tasks import TaskRow

log = logging.getLogger("reelgen.worker")
T = TypeVar("T")

#: How often an idle worker looks for a task (the executor also wakes it when one is queued).
POLL_SECONDS = 0.25
GENERIC_FAILURE = "The generation failed."


def utcnow() -> datetime:
    return datetime.now(UTC)


class StopReason(StrEnum):
    """Why a render must stop at its next step boundary."""

    #: the claim is gone (the lease expired and the task was requeued, or it was cancelled)
    LOST = "lost"
    #: the worker is draining: the task goes back to the queue
    SHUTDOWN = "shutdown"


class AttemptState(StrEnum):
    """Where an attempt stands; once it has left ``RUNNING`` nothing more is written for it."""

    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    HANDED_BACK = "handed back"
    #: the output is not published: the claim was lost, or the outcome is unknown (the lease will expire)
    DISCARDED = "discarded"


@dataclass
class Attempt:
    """One claimed attempt, shared by the render (main thread), the heartbeat and whoever asks it to stop."""

    task: TaskRow
    scratch: Path
    progress: int = 0
    #: why the render must stop at its next step boundary (None: it need not)
    stop_reason: StopReason | None = None
    stop: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)
    state: AttemptState = AttemptState.RUNNING

    @property
    def key(self) -> str:
        return result_key(self.task.id, self.task.attempt)

    @property
    def settled(self) -> bool:
        """The outcome is written (or abandoned): nothing more may be written for this attempt."""
        return self.state is not AttemptState.RUNNING

    def request_stop(self, reason: StopReason) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
        self.stop.set()


def result_key(task_id: str, attempt: int) -> str:
    """Where attempt ``attempt`` of a task stores its output."""
    return f"{task_id}/{attempt}.mp4"


class Worker:
    """Claims tasks for one profile on one device and runs them to a fenced outcome."""

    def __init__(
        self,
        settings: Settings,
        *,
        device: str,
        worker_id: str,
    ) -> None:
        self.settings = settings
        self.device = device
        self.worker_id = worker_id
        self._draining = threading.Event()
        self._wake = threading.Event()
        self._ready = threading.Event()
        # held while an attempt stores its output and completes: an emergency hand-back waits for it
        self._finish_lock = threading.Lock()
        self._attempt: Attempt | None = None
        self._seen = 0.0  # time.monotonic() of the last refresh of this worker's row
        self.db: Database
        self.storage: Storage
        self.profile: Profile
        self.engine: Engine

    # -- start ------------------------------------------------------------------------------
    def load(self, engine: Engine | None = None) -> None:
        """Open the store and storage, read the profile and load the engine (once per process).

        ``engine``: one already loaded for this profile in this process, to share instead.
        """
        from reelgen.engines import load_engine
        from reelgen.profiles import get_profile
        from reelgen.storage import pick
        from reelgen.store.db import Database

        self.db = Database.from_settings(self.settings)
        self.storage = pick(self.settings)
        self.profile = get_profile(self.settings.profile, self.settings.profiles_file, weights=self.settings.weights)
        log.info("loading profile %s on %s (load format %s)", self.profile.name, self.device, self.settings.load_format)

        self._until_stored("registering this worker", lambda c: self._announce(c, "loading", restart=True))
        # loads the weights and, with acceleration.compile, compiles and warms up: /readyz counts this
        # worker as loading until it is done
        self.engine = engine or load_engine(self.profile, self.device, self.settings.load_format)
        self._until_stored("marking this worker ready", lambda c: self._announce(c, "ready"))
        self._seen = time.monotonic()
        if self.engine.random_weights:
            log.warning("profile %s runs RANDOM weights: output is noise", self.profile.name)
        self._ready.set()
        log.info("ready: claiming %s tasks", self.profile.name)

    # -- the loop ---------------------------------------------------------------------------
    def wake(self) -> None:
        """A task may be waiting: look now instead of at the next poll (the Ray engine actor's notify)."""
        self._wake.set()

    def run(self) -> int:
        """Claim and run tasks until asked to drain; returns the exit status (0)."""
        while not self._draining.is_set():
            self._wake.clear()
            try:
                self._alive()
                task = self._db(self._claim)
            except ReelgenError as exc:  # the store is unavailable: wait, don't spin
                log.warning("claiming failed (%s); retrying", exc)
                self._wake.wait(1.0)
                continue
            if task is None:
                self._wake.wait(POLL_SECONDS)
                continue
            self.run_attempt(task)
        log.info("drained: exiting")
        from reelgen.store import workers

        try:
            self._db(lambda c: workers.remove(c, self.worker_id))
        except ReelgenError as exc:  # the row goes stale and stops being counted after one lease
            log.warning("could not remove this worker's row (%s)", exc)
        self.db.dispose()
        return 0

    def _alive(self) -> None:
        """Refresh this worker's ``seen_at`` (at most once per heartbeat interval)."""
        if time.monotonic() - self._seen >= self.settings.heartbeat_seconds:
            self._seen = time.monotonic()
            self._db(lambda c: self._announce(c, None))

    def _announce(self, conn: Connection, state: str | None, *, restart: bool = False) -> None:
        """This worker's row says it is alive (in ``state``, if given). ``restart`` starts it over; a
        row that is missing (its insert's commit was lost with the connection) is made again."""
        from reelgen.store import workers

        now = utcnow()
        if restart or not workers.seen(conn, self.worker_id, now=now, state=state):
            workers.register(
                conn, self.worker_id, profile=self.profile.name, device=self.device, now=now, state=state or "ready"
            )

    def _until_stored(self, what: str, fn: Callable[[Connection], None]) -> None:
        """``fn`` (idempotent) retried until the store takes it: a worker that starts while the database
        is unreachable waits for it, as its claim loop does, instead of exiting (a stop signal still
        ends the process meanwhile)."""
        while True:
            try:
                self._db(fn)
                return
            except ReelgenError as exc:
                if exc.code is not ErrorCode.SERVICE_UNAVAILABLE:
                    raise
                log.warning("%s failed (%s); retrying", what, exc)
                time.sleep(1.0)

    def _claim(self, conn: Connection) -> TaskRow | None:
        from reelgen.store import tasks

        return tasks.claim(
            conn,
            worker_id=self.worker_id,
            lease_seconds=self.settings.lease_seconds,
            now=utcnow(),
            profile=self.profile.name,
        )

    def run_attempt(self, task: TaskRow) -> None:
        """Run one claimed attempt to its outcome: completed, failed, handed back, or discarded."""
        att = Attempt(task=task, scratch=self.storage.temp_path(f"{task.id}.{task.attempt}.mp4"))
        log.info("task %s attempt %d: claimed (%s)", task.id, task.attempt, task.model)
        self._attempt = att
        beat = threading.Thread(target=self._heartbeat, args=(att,), name="heartbeat", daemon=True)
        beat.start()
        try:
            self._discard_superseded(task)
            self._execute(att)
        finally:
            att.done.set()
            beat.join()
            with self._finish_lock:
                if not att.settled:
                    att.state = AttemptState.DISCARDED
                self._attempt = None
            att.scratch.unlink(missing_ok=True)

    def _discard_superseded(self, task: TaskRow) -> None:
        """Delete the outputs of earlier attempts (never published, so never served): best effort,
        under the heartbeat, because a storage error here must not cost this attempt its claim."""
        for earlier in range(1, task.attempt):
            self._delete_unpublished(task, earlier)

    def _delete_unpublished(self, task: TaskRow, attempt: int) -> None:
        try:
            self.storage.delete(result_key(task.id, attempt))
        except Exception as exc:  # any backend's error: the file stays unpublished either way
            log.warning(
                "task %s attempt %d: could not delete the output of attempt %d (%s); continuing",
                task.id, task.attempt, attempt, type(exc).__name__,
            )  # fmt: skip

    def _execute(self, att: Attempt) -> None:
        from reelgen.engines.base import Cancelled
        from reelgen.generation import enhance

        task = att.task
        enhanced: tuple[str, ...] = ()  # the prompts the enhancer wrote (an extension's is not enhanced)
        try:
            if task.model == VIDEO_EXTEND:  # continue another task's video (``reelgen.extension``)
                info = self._extend(att)
            else:
                job = self._plan(task)
                job, enhanced = enhance(job, self.engine, on_progress=lambda d, t: self._on_step(att, d, t))
                info = self._render(att, job)
        except Cancelled:
            if att.stop_reason is StopReason.SHUTDOWN:
                self._hand_back(att)
            else:
                log.warning(
                    "task %s attempt %d: stopped after losing its claim; output discarded", task.id, task.attempt
                )
            return
        except ReelgenError as exc:
            if att.stop_reason is StopReason.LOST:
                log.warning("task %s attempt %d: lost its claim; not recording %s", task.id, task.attempt, exc.code)
                return
            self._fail(att, str(exc.code), exc.message)
            return
        except Exception:
            log.exception("task %s attempt %d: unexpected error", task.id, task.attempt)
            self._fail(att, ErrorCode.GENERATION_FAILED.value, GENERIC_FAILURE)
            return
        self._finish(att, info, enhanced or None)

    def _render(self, att: Attempt, job: Job) -> MediaInfo:
        """Render the job into the attempt's scratch file; with the profile's live previews on, each
        preview is stored and recorded off this thread (``livepreview.Publisher``), the last one
        before this returns (so none is recorded after the outcome)."""
        from reelgen.generation import render
        from reelgen.livepreview import Publisher

        def on_progress(done: int, total: int) -> bool:
            return self._on_step(att, done, total)

        spec = self.profile.previews
        if not spec.enabled:
            return render(job, self.engine, att.scratch, on_progress=on_progress)
        publisher = Publisher(self.db, self.storage, att.task.id, att.task.attempt)
        try:
            return render(job, self.engine, att.scratch, on_progress=on_progress, previews=spec, on_preview=publisher)
        finally:
            publisher.close()

    def _plan(self, task: TaskRow) -> Job:
        """Validate the stored input, fetch and fit its images, and plan the job."""
        from reelgen.domain import plan
        from reelgen.inputs import fit_image, load_images
        from reelgen.safehttp import FetchPolicy
        from reelgen.schemas import GenerateInput, stored_input

        inp = stored_input(GenerateInput, task.input)
        policy = FetchPolicy.from_settings(self.settings)
        images = load_images(inp.image_urls, policy, read_upload=self._read_upload) if inp.image_urls else []
        job = plan(inp, self.profile, seed=task.seed, start_image_size=images[0].size if images else None)
        fitted = [fit_image(img, job.width, job.height) for img in images]
        if fitted:
            job = replace(job, start_image=fitted[0], end_image=fitted[1] if len(fitted) > 1 else None)
        return job

    def _extend(self, att: Attempt) -> MediaInfo:
        from reelgen.extension import extend

        return extend(
            att.task,
            profile=self.profile,
            engine=self.engine,
            storage=self.storage,
            read_task=self._db,
            out_path=att.scratch,
            on_progress=lambda d, t: self._on_step(att, d, t),
        )

    def _read_upload(self, url: str) -> bytes:
        """The bytes of a ``reelgen-upload://`` image from storage (submit checked that the task's
        account owns it)."""
        from reelgen.store import uploads

        upload_id = uploads.parse_url(url)
        missing = ReelgenError(ErrorCode.IMAGE_FETCH_FAILED, "The uploaded image is no longer available.")
        if upload_id is None:
            raise missing
        try:
            with self.storage.open(uploads.storage_key(upload_id)) as f:
                data = f.read(self.settings.max_image_bytes + 1)
        except (OSError, ReelgenError):
            raise missing from None
        if len(data) > self.settings.max_image_bytes:
            raise ReelgenError(ErrorCode.IMAGE_FETCH_FAILED, "The uploaded image is too large.")
        return data

    def _on_step(self, att: Attempt, done: int, total: int) -> bool:
        """After each denoising step: record progress, say whether to go on."""
        att.progress = max(0, min(99, 100 * done // max(1, total)))
        return not att.stop.is_set()

    # -- outcomes ---------------------------------------------------------------------------
    def _finish(self, att: Attempt, info: MediaInfo, enhanced: tuple[str, ...] | None = None) -> None:
        """Store the output, then complete the task (capturing credits) with the prompts the enhancer
        wrote (``enhanced``, one per segment); delete the output if completing is refused."""
        from reelgen.store import tasks

        task = att.task
        with self._finish_lock:
            if att.settled or att.stop_reason is StopReason.LOST:
                log.warning("task %s attempt %d: lost its claim; output discarded", task.id, task.attempt)
                return
            try:
                self.storage.put(att.key, att.scratch)
            except OSError:
                log.exception("task %s attempt %d: storing the output failed", task.id, task.attempt)
                self._fail(att, ErrorCode.GENERATION_FAILED.value, GENERIC_FAILURE)
                if not att.settled:
                    att.state = AttemptState.DISCARDED
                return

            def complete(conn: Connection) -> bool:
                return tasks.complete(
                    conn,
                    task.id,
                    task.attempt,
                    result_key=att.key,
                    duration=info.duration,
                    has_audio=info.has_audio,
                    now=utcnow(),
                    enhanced_prompts=enhanced,
                )

            won: bool | None
            try:
                won = self._db(complete)
            except ReelgenError as exc:
                # the commit may or may not have happened: decide from what the store now says
                log.warning("task %s attempt %d: completing failed (%s); checking", task.id, task.attempt, exc)
                won = self._completed_by_us(att)
            att.state = AttemptState.COMPLETED if won else AttemptState.DISCARDED
            if won:
                log.info("task %s attempt %d: completed (%.2f s)", task.id, task.attempt, info.duration)
            elif won is None:
                # not published (no result_key points at it); a later attempt deletes it on claim
                log.error("task %s attempt %d: outcome unknown; output kept unpublished", task.id, task.attempt)
            else:
                self._delete_unpublished(task, task.attempt)
                log.warning("task %s attempt %d: a newer attempt owns the task; output deleted", task.id, task.attempt)

    def _completed_by_us(self, att: Attempt) -> bool | None:
        """After a failed ``complete``: True if it committed, False if another attempt owns the task, None if unsure."""
        from reelgen.domain import TaskStatus
        from reelgen.store import tasks

        try:
            row = self._db(lambda conn: tasks.get(conn, att.task.id))
        except ReelgenError:
            return None
        if row is None:
            return False
        if row.status == TaskStatus.COMPLETED and row.result_key == att.key:
            return True
        if row.status == TaskStatus.PROCESSING and row.attempt == att.task.attempt:
            return None  # still ours and not completed: the lease will expire and the task be retried
        return False

    def _fail(self, att: Attempt, code: str, message: str) -> None:
        from reelgen.store import tasks

        def fail(conn: Connection) -> bool:
            return tasks.fail(conn, att.task.id, att.task.attempt, code=code, message=message, now=utcnow())

        self._record(att, AttemptState.FAILED, f"failed ({code}: {message})", fail)

    def _hand_back(self, att: Attempt) -> None:
        from reelgen.store import tasks

        self._record(
            att,
            AttemptState.HANDED_BACK,
            "handed back",
            lambda conn: tasks.hand_back(conn, att.task.id, att.task.attempt, utcnow()),
        )

    def _record(self, att: Attempt, outcome: AttemptState, what: str, fn: Callable[[Connection], bool]) -> None:
        task = att.task
        try:
            won = self._db(fn)
        except ReelgenError as exc:
            log.error(
                "task %s attempt %d: could not be %s (%s); its lease will expire", task.id, task.attempt, what, exc
            )
            return
        att.state = outcome if won else AttemptState.DISCARDED
        if won:
            log.info("task %s attempt %d: %s", task.id, task.attempt, what)
        else:
            log.warning("task %s attempt %d: not %s: the attempt no longer owns the task", task.id, task.attempt, what)

    # -- heartbeat ----------------------------------------------------------------------------
    def _heartbeat(self, att: Attempt) -> None:
        from reelgen.store import tasks

        task = att.task
        while not att.done.wait(self.settings.heartbeat_seconds):

            def beat(conn: Connection) -> bool:
                return tasks.heartbeat(
                    conn,
                    task.id,
                    task.attempt,
                    self.worker_id,
                    lease_seconds=self.settings.lease_seconds,
                    now=utcnow(),
                    progress=att.progress,
                )

            try:
                ok = self._db(beat)
                self._alive()
            except ReelgenError as exc:  # keep trying: the lease may still be ours next time
                log.warning("task %s attempt %d: heartbeat failed (%s)", task.id, task.attempt, exc)
                continue
            if not ok:
                if not att.done.is_set() and not att.settled:
                    log.warning(
                        "task %s attempt %d: lost its claim (requeued or cancelled); stopping at the next step",
                        task.id, task.attempt,
                    )  # fmt: skip
                    att.request_stop(StopReason.LOST)
                return

    # -- stopping (asked for by the process shell or the Ray actor) ---------------------------
    @property
    def current(self) -> Attempt | None:
        """The attempt now running, if any."""
        return self._attempt

    @property
    def ready(self) -> bool:
        """The engine is loaded (before that nothing can have been claimed)."""
        return self._ready.is_set()

    @property
    def draining(self) -> bool:
        return self._draining.is_set()

    def drain(self, why: str) -> bool:
        """Stop claiming (the current attempt runs on); False if already draining."""
        if self._draining.is_set():
            return False
        self._draining.set()
        self._wake.set()
        att = self._attempt
        if att is None:
            log.info("%s: draining (idle)", why)
        else:
            log.info("%s: draining; task %s may finish within the grace period", why, att.task.id)
        return True

    def stop_current(self) -> Attempt | None:
        """Ask the current attempt to stop at its next step boundary and hand its task back."""
        att = self._attempt
        if att is None or att.done.is_set():
            return None
        log.warning("handing back task %s at the next step boundary", att.task.id)
        att.request_stop(StopReason.SHUTDOWN)
        return att

    def hand_back_now(self) -> None:
        """Hand the current attempt's task back now, unless it is already settling (an attempt that is
        storing its output and completing gets up to 30 s to finish)."""
        if not self._finish_lock.acquire(timeout=30.0):
            return
        try:
            att = self._attempt
            if att is not None and not att.settled:
                att.request_stop(StopReason.SHUTDOWN)
                att.state = AttemptState.DISCARDED  # nothing else may be written for it from now on
                self._hand_back(att)
                att.scratch.unlink(missing_ok=True)
        finally:
            self._finish_lock.release()

    # -- helpers ------------------------------------------------------------------------------
    def _db(self, fn: Callable[[Connection], T]) -> T:
        return self.db.run(fn, immediate=True)
