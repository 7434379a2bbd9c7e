"""A worker process for one device: load the engine once, then claim and run tasks until told to stop.

Run as ``python -m reelgen.worker --device cpu --worker-id ID`` with settings from ``REELGEN_*``
variables (the local executor starts one per device). For each task it claims from the store:

1. a heartbeat thread renews the lease every ``heartbeat_seconds`` and records progress (0-100)
   from the engine's denoising steps; if a heartbeat is refused, the attempt has lost its claim
   (the lease expired and the task was requeued, or it was cancelled): the render stops at the
   next step boundary and its output is discarded;
2. input images are fetched and decoded (``inputs.load_images``), the request is planned, the
   images are cropped to the job's size and attached as start/end frames;
3. the video is rendered into an attempt-specific scratch file, moved into storage under
   ``<task id>/<attempt>.mp4``, and the task is completed, which captures the credits in the same
   transaction; if completing is refused (a newer attempt owns the task) the stored file is deleted,
   so an output is only ever served through the attempt that won;
4. expected failures (``ReelgenError``: image errors, invalid input) fail the task with their code
   and message; anything else fails it with ``GENERATION_FAILED`` and a generic message, with the
   traceback in the log only. Failing releases the credits.

Shutdown: the first SIGTERM (or SIGINT, or the end of stdin with ``--parent-pipe``) stops claiming;
the current task may finish within ``shutdown_grace_seconds``, else it stops at the next step
boundary and is handed back to the queue (a hand-back is not a failure); the process exits 0. A
second SIGTERM hands the task back at once and exits 0. SIGKILL is safe too: the lease expires and
the sweeper requeues the task as a new attempt (``reelgen.sweeper.sweep_once``).

Test-only fault seams (read from the environment at start; never set them in production):

* ``REELGEN_FAULT_CRASH_ON_PROMPT=<substring>``: the worker SIGKILLs itself after the first
  denoising step of any task whose prompt contains the substring.
* ``REELGEN_FAULT_SLOW_ON_PROMPT=<substring>``: each denoising step of such a task is followed by a
  pause of ``REELGEN_FAULT_STEP_DELAY_SECONDS`` (default 5), cut short when the attempt is told to
  stop, so tests can act while a task is reliably mid-generation.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, TypeVar

from reelgen.errors import ErrorCode, ReelgenError

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

FAULT_CRASH_ENV = "REELGEN_FAULT_CRASH_ON_PROMPT"
FAULT_SLOW_ENV = "REELGEN_FAULT_SLOW_ON_PROMPT"
FAULT_STEP_DELAY_ENV = "REELGEN_FAULT_STEP_DELAY_SECONDS"
#: How often an idle worker looks for a task (the executor also wakes it when one is queued).
POLL_SECONDS = 0.25
#: After the grace period, how long to wait for a step boundary before handing back regardless.
STEP_WAIT_SECONDS = 5.0
GENERIC_FAILURE = "The generation failed."
_STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Faults:
    """The test-only fault seams (see the module docstring); all off by default."""

    crash_on_prompt: str | None = None
    slow_on_prompt: str | None = None
    step_delay: float = 5.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Faults:
        return cls(
            crash_on_prompt=environ.get(FAULT_CRASH_ENV) or None,
            slow_on_prompt=environ.get(FAULT_SLOW_ENV) or None,
            step_delay=float(environ.get(FAULT_STEP_DELAY_ENV) or 5.0),
        )

    @property
    def any(self) -> bool:
        return bool(self.crash_on_prompt or self.slow_on_prompt)


@dataclass
class Attempt:
    """One claimed attempt, shared by the render (main thread), the heartbeat and the signal watcher."""

    task: TaskRow
    scratch: Path
    progress: int = 0
    #: why the render must stop at its next step boundary: "lost" (claim gone) or "shutdown"
    stop_reason: str | None = None
    stop: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)
    #: set once the attempt's outcome is written (or abandoned); nothing more may be written for it
    settled: bool = False

    @property
    def key(self) -> str:
        return result_key(self.task.id, self.task.attempt)

    def request_stop(self, reason: str) -> None:
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
        faults: Faults | None = None,
    ) -> None:
        self.settings = settings
        self.device = device
        self.worker_id = worker_id
        self.faults = faults or Faults()
        self._draining = threading.Event()
        self._wake = threading.Event()
        self._ready = threading.Event()
        # held while an attempt stores its output and completes: an emergency hand-back waits for it
        self._finish_lock = threading.Lock()
        self._attempt: Attempt | None = None
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
        self.engine = engine or load_engine(self.profile, self.device, self.settings.load_format)
        if self.engine.random_weights:
            log.warning("profile %s runs RANDOM weights: output is noise", self.profile.name)
        if self.faults.any:
            log.warning("test-only fault seams are active: %s", self.faults)
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
        self.db.dispose()
        return 0

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
                att.settled = True
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
        from reelgen.generation import render

        task = att.task
        try:
            job = self._plan(task)
            info = render(job, self.engine, att.scratch, on_progress=lambda d, t: self._on_step(att, d, t))
        except Cancelled:
            if att.stop_reason == "shutdown":
                self._hand_back(att)
            else:
                log.warning(
                    "task %s attempt %d: stopped after losing its claim; output discarded", task.id, task.attempt
                )
            return
        except ReelgenError as exc:
            if att.stop_reason == "lost":
                log.warning("task %s attempt %d: lost its claim; not recording %s", task.id, task.attempt, exc.code)
                return
            self._fail(att, str(exc.code), exc.message)
            return
        except Exception:
            log.exception("task %s attempt %d: unexpected error", task.id, task.attempt)
            self._fail(att, ErrorCode.GENERATION_FAILED.value, GENERIC_FAILURE)
            return
        self._finish(att, info)

    def _plan(self, task: TaskRow) -> Job:
        """Validate the stored input, fetch and fit its images, and plan the job."""
        from pydantic import ValidationError

        from reelgen.domain import plan
        from reelgen.inputs import fit_image, load_images
        from reelgen.safehttp import FetchPolicy
        from reelgen.schemas import GenerateInput

        try:
            inp = GenerateInput.model_validate(task.input)
        except ValidationError as exc:
            fields = ", ".join(".".join(str(p) for p in e["loc"]) or "input" for e in exc.errors())
            raise ReelgenError(ErrorCode.INVALID_INPUT, f"The stored input is invalid ({fields}).") from None
        policy = FetchPolicy.from_settings(self.settings)
        images = load_images(inp.image_urls, policy, read_upload=self._read_upload) if inp.image_urls else []
        job = plan(inp, self.profile, seed=task.seed, start_image_size=images[0].size if images else None)
        fitted = [fit_image(img, job.width, job.height) for img in images]
        if fitted:
            job = replace(job, start_image=fitted[0], end_image=fitted[1] if len(fitted) > 1 else None)
        return job

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
        """After each denoising step: record progress, apply the fault seams, say whether to go on."""
        att.progress = max(0, min(99, 100 * done // max(1, total)))
        prompt = att.task.prompt
        if self.faults.crash_on_prompt and self.faults.crash_on_prompt in prompt and done >= 1:
            log.critical("fault seam: crashing on task %s attempt %d", att.task.id, att.task.attempt)
            _flush_logs()
            os.kill(os.getpid(), signal.SIGKILL)
        if self.faults.slow_on_prompt and self.faults.slow_on_prompt in prompt:
            att.stop.wait(self.faults.step_delay)
        return not att.stop.is_set()

    # -- outcomes ---------------------------------------------------------------------------
    def _finish(self, att: Attempt, info: MediaInfo) -> None:
        """Store the output, then complete the task (capturing credits); delete the output if that is refused."""
        from reelgen.store import tasks

        task = att.task
        with self._finish_lock:
            if att.settled or att.stop_reason == "lost":
                log.warning("task %s attempt %d: lost its claim; output discarded", task.id, task.attempt)
                return
            try:
                self.storage.put(att.key, att.scratch)
            except OSError:
                log.exception("task %s attempt %d: storing the output failed", task.id, task.attempt)
                self._fail(att, ErrorCode.GENERATION_FAILED.value, GENERIC_FAILURE)
                att.settled = True
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
                )

            won: bool | None
            try:
                won = self._db(complete)
            except ReelgenError as exc:
                # the commit may or may not have happened: decide from what the store now says
                log.warning("task %s attempt %d: completing failed (%s); checking", task.id, task.attempt, exc)
                won = self._completed_by_us(att)
            if won:
                log.info("task %s attempt %d: completed (%.2f s)", task.id, task.attempt, info.duration)
            elif won is None:
                # not published (no result_key points at it); a later attempt deletes it on claim
                log.error("task %s attempt %d: outcome unknown; output kept unpublished", task.id, task.attempt)
            else:
                self._delete_unpublished(task, task.attempt)
                log.warning("task %s attempt %d: a newer attempt owns the task; output deleted", task.id, task.attempt)
            att.settled = True

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

        self._record(att, f"failed ({code}: {message})", fail)

    def _hand_back(self, att: Attempt) -> None:
        from reelgen.store import tasks

        self._record(att, "handed back", lambda conn: tasks.hand_back(conn, att.task.id, att.task.attempt, utcnow()))

    def _record(self, att: Attempt, what: str, fn: Callable[[Connection], bool]) -> None:
        task = att.task
        try:
            won = self._db(fn)
        except ReelgenError as exc:
            log.error(
                "task %s attempt %d: could not be %s (%s); its lease will expire", task.id, task.attempt, what, exc
            )
            return
        att.settled = True
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
            except ReelgenError as exc:  # keep trying: the lease may still be ours next time
                log.warning("task %s attempt %d: heartbeat failed (%s)", task.id, task.attempt, exc)
                continue
            if not ok:
                if not att.done.is_set() and not att.settled:
                    log.warning(
                        "task %s attempt %d: lost its claim (requeued or cancelled); stopping at the next step",
                        task.id, task.attempt,
                    )  # fmt: skip
                    att.request_stop("lost")
                return

    # -- shutdown -----------------------------------------------------------------------------
    def drain(self, why: str) -> None:
        """Stop claiming; let the current attempt finish within the grace period, then hand it back."""
        if self._draining.is_set():
            return
        self._draining.set()
        self._wake.set()
        grace = self.settings.shutdown_grace_seconds
        att = self._attempt
        if att is None:
            log.info("%s: draining (idle)", why)
        else:
            log.info("%s: draining; task %s may finish within %.1f s", why, att.task.id, grace)
        threading.Thread(target=self._enforce_grace, args=(grace,), name="grace", daemon=True).start()

    def _enforce_grace(self, grace: float) -> None:
        # the process normally exits before this wakes up (it is a daemon thread)
        threading.Event().wait(grace)
        att = self._attempt
        if att is None or att.done.is_set():
            return
        log.warning("grace period over: handing back task %s at the next step boundary", att.task.id)
        att.request_stop("shutdown")
        if not att.done.wait(STEP_WAIT_SECONDS):
            self.abort(f"no step boundary within {STEP_WAIT_SECONDS:.0f} s after the grace period")

    def abort(self, why: str) -> None:
        """Hand the current attempt back now (unless it is already settling) and exit 0 at once."""
        log.warning("%s: stopping now", why)
        if self._finish_lock.acquire(timeout=30.0):  # an attempt storing its output gets to finish
            att = self._attempt
            if att is not None and not att.settled:
                att.request_stop("shutdown")
                att.settled = True
                self._hand_back(att)
                att.scratch.unlink(missing_ok=True)
        _flush_logs()
        os._exit(0)

    def watch_signals(self) -> None:
        """Runs in its own thread, with SIGTERM/SIGINT blocked everywhere: first drains, second aborts."""
        received = 0
        while True:
            sig = signal.sigwait(_STOP_SIGNALS)
            received += 1
            name = signal.Signals(sig).name
            if received == 1:
                self._stop_requested(name)
            else:
                self.abort(f"second {name}")

    def watch_parent(self, stream: BinaryIO) -> None:
        """Each line from the parent is a wake-up; the end of the stream means the parent is gone."""
        while stream.readline():
            self._wake.set()
        self._stop_requested("parent process gone")

    def _stop_requested(self, why: str) -> None:
        if not self._ready.is_set():  # still loading: nothing claimed, nothing to wait for
            log.info("%s: exiting before the engine finished loading", why)
            _flush_logs()
            os._exit(0)
        self.drain(why)

    # -- helpers ------------------------------------------------------------------------------
    def _db(self, fn: Callable[[Connection], T]) -> T:
        return self.db.run(fn, immediate=True)


def _flush_logs() -> None:
    for handler in logging.getLogger().handlers:
        handler.flush()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m reelgen.worker", description="one reelgen worker for one device")
    p.add_argument("--device", required=True, help="cpu or cuda:N")
    p.add_argument("--worker-id", required=True, help="unique id recorded on the tasks this worker claims")
    p.add_argument(
        "--parent-pipe",
        action="store_true",
        help="stdin is a pipe from the executor: a line wakes the worker, its end drains it",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from reelgen.config import Settings

    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format=f"%(asctime)s %(levelname)s worker[{args.worker_id}] %(name)s: %(message)s",
    )
    # SIGTERM/SIGINT go to one watcher thread (blocked here before any thread starts, so every
    # thread inherits the mask): it acts at once even while the main thread is deep in a render
    signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    worker = Worker(Settings(), device=args.device, worker_id=args.worker_id, faults=Faults.from_env(os.environ))
    threading.Thread(target=worker.watch_signals, name="signals", daemon=True).start()
    if args.parent_pipe:
        threading.Thread(target=worker.watch_parent, args=(sys.stdin.buffer,), name="parent", daemon=True).start()
    try:
        worker.load()
    except ReelgenError as exc:
        log.error("cannot start: %s", exc)
        return 2
    return worker.run()


if __name__ == "__main__":
    status = main()
    # Leave without the interpreter's teardown, which takes seconds once torch is loaded and
    # would eat into the shutdown grace period; the store and the logs are closed by now.
    _flush_logs()
    sys.stdout.flush()
    os._exit(status)
