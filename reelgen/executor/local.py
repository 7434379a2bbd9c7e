"""The embedded executor: one worker subprocess per device, a supervisor, and the sweeper.

Each device in ``settings.device_list`` gets one ``python -m reelgen.worker`` child, which claims
tasks from the store on its own (the store is the queue). The parent only:

* passes its settings to the children as ``REELGEN_*`` variables (``settings_env``);
* wakes idle children when a task is queued (a line on the child's stdin; the child treats the
  end of its stdin as "the parent is gone" and drains, so a killed server leaves no orphans);
* restarts a child that died, with exponential backoff, and logs it;
* runs the sweeper (``reelgen.sweeper``): requeues tasks whose lease expired (or fails them once
  they have used ``max_attempts``), releases holds older than ``max_run_seconds`` plus slack, and
  once a minute removes scratch files older than an hour;
* on ``stop()`` sends SIGTERM to every child, waits the grace period, then SIGKILLs and reaps.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING

from reelgen.sweeper import Sweeper

if TYPE_CHECKING:
    from reelgen.config import Settings
    from reelgen.storage.base import Storage
    from reelgen.store.db import Database

log = logging.getLogger(__name__)

ENV_PREFIX = "REELGEN_"
SUPERVISE_INTERVAL = 0.5
#: Restart backoff: 0.5 s, 1 s, 2 s, ... up to this; reset once a worker has lived this long.
MAX_BACKOFF_SECONDS = 30.0
HEALTHY_AFTER_SECONDS = 60.0
#: Extra time ``stop()`` gives workers beyond their own grace period to hand back and exit.
STOP_MARGIN_SECONDS = 5.0


def settings_env(settings: Settings) -> dict[str, str]:
    """``os.environ`` plus every field of ``settings`` as a ``REELGEN_*`` variable, for a child process.

    Paths are made absolute (the child may resolve them from elsewhere), and a field that is
    None removes any inherited variable, so the child rebuilds exactly these settings.
    """
    env = dict(os.environ)
    for name in type(settings).model_fields:
        var = ENV_PREFIX + name.upper()
        value = getattr(settings, name)
        for inherited in [k for k in env if k.upper() == var]:
            del env[inherited]
        if value is None:
            continue
        if isinstance(value, Path):
            env[var] = str(value.resolve())
        elif isinstance(value, bool):
            env[var] = "true" if value else "false"
        elif isinstance(value, str | int | float):
            env[var] = str(value)
        else:
            env[var] = json.dumps(value)
    return env


@dataclass
class _Child:
    """One device's worker process, across restarts."""

    device: str
    generation: int = 0
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    failures: int = 0
    restart_at: float = 0.0

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class LocalExecutor:
    """One worker subprocess per device in ``settings.device_list``, supervised, plus the sweeper."""

    def __init__(self, settings: Settings, *, storage: Storage | None = None) -> None:
        self.settings = settings
        self._storage = storage
        self._children = [_Child(device=d) for d in worker_devices(settings)]
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._db: Database | None = None
        self._sweeper: Sweeper | None = None
        self._env = settings_env(settings)
        self._host = socket.gethostname()

    # public API

    def start(self) -> None:
        from reelgen.storage import pick
        from reelgen.store.db import Database

        if self._thread is not None:
            raise RuntimeError("the executor is already started")
        self._db = Database.from_settings(self.settings)
        if self._storage is None:
            self._storage = pick(self.settings)
        with self._lock:
            for child in self._children:
                self._spawn(child)
        self._sweeper = Sweeper(self.settings, self._db, self._storage)
        self._sweeper.start()
        self._thread = threading.Thread(target=self._supervise, name="reelgen-supervisor", daemon=True)
        self._thread.start()

    def notify(self) -> None:
        with self._lock:
            for child in self._children:
                if child.alive and child.proc is not None and child.proc.stdin is not None:
                    try:
                        child.proc.stdin.write(b"\n")
                        child.proc.stdin.flush()
                    except (BrokenPipeError, ValueError, OSError):  # died, or being restarted
                        continue

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join()
        if self._sweeper is not None:
            self._sweeper.stop()
            self._sweeper = None
        with self._lock:
            procs = [c.proc for c in self._children if c.proc is not None]
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.settings.shutdown_grace_seconds + STOP_MARGIN_SECONDS
        for proc in procs:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("worker pid %d did not stop within the grace period; killing it", proc.pid)
                proc.kill()
                proc.wait()
            _close(proc.stdin)
        if self._db is not None:
            self._db.dispose()
            self._db = None

    def pids(self) -> list[int]:
        """Process ids of the live workers (for operators and tests)."""
        with self._lock:
            return [c.proc.pid for c in self._children if c.alive and c.proc is not None]

    # internals

    def _spawn(self, child: _Child) -> None:
        child.generation += 1
        worker_id = f"{self._host}:{os.getpid()}:{child.device}:{child.generation}"
        cmd = [
            sys.executable, "-m", "reelgen.worker",
            "--device", child.device, "--worker-id", worker_id, "--parent-pipe",
        ]  # fmt: skip
        # its own session: a Ctrl-C in the server's terminal reaches the server, which drains
        # the workers itself, instead of every worker at once
        child.proc = subprocess.Popen(cmd, env=self._env, stdin=subprocess.PIPE, start_new_session=True)
        child.started_at = time.monotonic()
        log.info("started worker %s (pid %d) on %s", worker_id, child.proc.pid, child.device)

    def _supervise(self) -> None:
        while not self._stopping.wait(SUPERVISE_INTERVAL):
            self._restart_dead(time.monotonic())

    def _restart_dead(self, now: float) -> None:
        with self._lock:
            for child in self._children:
                if child.proc is None or child.alive or self._stopping.is_set():
                    continue
                if child.restart_at == 0.0:
                    code = child.proc.returncode
                    lived = now - child.started_at
                    child.failures = 1 if lived >= HEALTHY_AFTER_SECONDS else child.failures + 1
                    delay = min(MAX_BACKOFF_SECONDS, 0.5 * 2 ** (child.failures - 1))
                    child.restart_at = now + delay
                    log.error(
                        "worker on %s (pid %d) exited with %s after %.1f s; restarting in %.1f s",
                        child.device, child.proc.pid, _describe_exit(code), lived, delay,
                    )  # fmt: skip
                    _close(child.proc.stdin)
                if now >= child.restart_at:
                    child.restart_at = 0.0
                    self._spawn(child)


def _describe_exit(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"status {code}"


def _close(stream: IO[bytes] | None) -> None:
    if stream is not None:
        with contextlib.suppress(OSError):  # BrokenPipeError: the child already exited
            stream.close()


def worker_devices(settings: Settings) -> list[str]:
    """One entry per worker: a device, or with ``settings.parallel`` a comma list of a group's devices
    (``reelgen.groupworker``: the worker is the group's rank 0 and starts the others)."""
    from reelgen.errors import ErrorCode, ReelgenError
    from reelgen.groupworker import group_size

    devices = settings.device_list
    size = group_size(settings)
    if size == 1:
        return devices
    if len(devices) % size:
        raise ReelgenError(
            ErrorCode.INVALID_SETTINGS,
            f"parallel {settings.parallel} groups {size} devices; {len(devices)} listed ({settings.devices})",
        )
    return [",".join(devices[i : i + size]) for i in range(0, len(devices), size)]
