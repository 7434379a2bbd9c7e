"""Test-only fault seams, read from the environment when a worker starts; never set them in production.

* ``REELGEN_FAULT_CRASH_ON_PROMPT=<substring>``: the worker process SIGKILLs itself after the first
  denoising step of any task whose prompt contains the substring.
* ``REELGEN_FAULT_SLOW_ON_PROMPT=<substring>``: each denoising step of such a task is followed by a
  pause of ``REELGEN_FAULT_STEP_DELAY_SECONDS`` (default 5), cut short when the attempt is told to
  stop, so tests can act while a task is reliably mid-generation.

They live apart from the attempt (``reelgen.attempt`` only calls ``after_step``), so the code that
runs tasks holds no signal or exit of its own.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["FAULT_CRASH_ENV", "FAULT_SLOW_ENV", "FAULT_STEP_DELAY_ENV", "Faults"]

log = logging.getLogger("reelgen.worker")

FAULT_CRASH_ENV = "REELGEN_FAULT_CRASH_ON_PROMPT"
FAULT_SLOW_ENV = "REELGEN_FAULT_SLOW_ON_PROMPT"
FAULT_STEP_DELAY_ENV = "REELGEN_FAULT_STEP_DELAY_SECONDS"


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

    def after_step(self, prompt: str, done: int, stop: threading.Event) -> None:
        """Apply the seams after denoising step ``done`` of a task with ``prompt``."""
        if self.crash_on_prompt and self.crash_on_prompt in prompt and done >= 1:
            log.critical("fault seam: crashing the worker process")
            for handler in logging.getLogger().handlers:
                handler.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        if self.slow_on_prompt and self.slow_on_prompt in prompt:
            stop.wait(self.step_delay)
