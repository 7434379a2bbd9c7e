"""The worker process shell: ``python -m reelgen.worker --device cpu --worker-id ID``.

One process per device (the local executor starts them), with settings from ``REELGEN_*``
variables. The work itself (claim, heartbeat, render, store, a fenced outcome) is
``reelgen.attempt.Worker``; this module owns what belongs to a process: signals, the parent pipe,
the grace period and the exit.

Shutdown: the first SIGTERM (or SIGINT, or the end of stdin with ``--parent-pipe``) stops claiming;
the current task may finish within ``shutdown_grace_seconds``, else it stops at the next step
boundary and is handed back to the queue (a hand-back is not a failure); the process exits 0. A
second SIGTERM hands the task back at once and exits 0. SIGKILL is safe too: the lease expires and
the sweeper requeues the task as a new attempt (``reelgen.sweeper.sweep_once``).

Test-only fault seams (``REELGEN_FAULT_*``) are read from the environment at start: see
``reelgen.faults``.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from typing import BinaryIO

from reelgen.attempt import Worker
from reelgen.errors import ReelgenError
from reelgen.faults import Faults

__all__ = ["Shell", "main"]

log = logging.getLogger("reelgen.worker")

#: After the grace period, how long to wait for a step boundary before handing back regardless.
STEP_WAIT_SECONDS = 5.0
_STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}


class Shell:
    """Turns signals and the parent pipe into the worker's drain, grace period and exit."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker

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
            self.worker.wake()
        self._stop_requested("parent process gone")

    def _stop_requested(self, why: str) -> None:
        if not self.worker.ready:  # still loading: nothing claimed, nothing to wait for
            log.info("%s: exiting before the engine finished loading", why)
            _exit(0)
        if self.worker.drain(why):
            grace = self.worker.settings.shutdown_grace_seconds
            threading.Thread(target=self._enforce_grace, args=(grace,), name="grace", daemon=True).start()

    def _enforce_grace(self, grace: float) -> None:
        # the process normally exits before this wakes up (it is a daemon thread)
        threading.Event().wait(grace)
        att = self.worker.stop_current()
        if att is not None and not att.done.wait(STEP_WAIT_SECONDS):
            self.abort(f"no step boundary within {STEP_WAIT_SECONDS:.0f} s after the grace period")

    def abort(self, why: str) -> None:
        """Hand the current attempt back now (unless it is already settling) and exit 0 at once."""
        log.warning("%s: stopping now", why)
        self.worker.hand_back_now()
        _exit(0)


def _flush_logs() -> None:
    for handler in logging.getLogger().handlers:
        handler.flush()


def _exit(status: int) -> None:
    """Leave without the interpreter's teardown, which takes seconds once torch is loaded and would
    eat into the shutdown grace period; the store and the logs are closed by now."""
    _flush_logs()
    sys.stdout.flush()
    os._exit(status)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m reelgen.worker", description="one reelgen worker for one device")
    p.add_argument(
        "--device", required=True, help="cpu or cuda:N; a comma list runs a device group (reelgen.groupworker)"
    )
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
    group = None
    if "," in args.device:  # a device group: this process is rank 0 and starts the others, which stop
        # when rank 0 tells them to or is gone
        from reelgen.groupworker import start_followers

        try:
            group = start_followers(args.device, Settings())
        except ReelgenError as exc:
            log.error("cannot start: %s", exc)
            return 2
        # multiprocessing's resource tracker unblocks SIGINT/SIGTERM when it starts: block them again
        # before the group's threads (and ours) are created
        signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    worker = Worker(Settings(), device=args.device, worker_id=args.worker_id, faults=Faults.from_env(os.environ))
    shell = Shell(worker)
    threading.Thread(target=shell.watch_signals, name="signals", daemon=True).start()
    if args.parent_pipe:
        threading.Thread(target=shell.watch_parent, args=(sys.stdin.buffer,), name="parent", daemon=True).start()
    try:
        worker.load(group.load_leader(worker.settings) if group is not None else None)
    except ReelgenError as exc:
        log.error("cannot start: %s", exc)
        return 2
    status = worker.run()
    if group is not None:
        group.stop()
    return status


if __name__ == "__main__":
    _exit(main())
