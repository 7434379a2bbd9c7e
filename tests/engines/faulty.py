"""A test engine: the real tiny LTX-2 engine, plus faults injected by prompt.

Selected by a profile (``engine = "tests.engines.faulty:FaultyEngine"``, see ``profiles.toml`` here)
whose ``faults`` table says what to do:

* ``crash_on_prompt = "<substring>"``: after the first denoising step of a segment whose prompt
  contains the substring, the process SIGKILLs itself (a poison task: the worker dies holding its claim);
* ``slow_on_prompt = "<substring>"`` with ``step_delay`` seconds (default 5): each denoising step of
  such a segment is followed by that pause (at least: it polls a fixed number of times), so a test
  can act while a task is reliably mid-generation. The pause keeps asking the attempt's step
  callback whether to go on and ends as soon as it says stop (a cancel, a lost claim, a drain),
  exactly as a long real step would end at its boundary.

Production code knows nothing of it: it is a custom engine like an operator's own.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from reelgen.engines.base import Clip, Engine, StepCallback

if TYPE_CHECKING:
    from reelgen.domain import Job, Segment
    from reelgen.profiles import Profile

log = logging.getLogger("reelgen.worker")

#: How often a pause asks the step callback whether to stop.
POLL_SECONDS = 0.05


@dataclass(frozen=True)
class Faults:
    """What the engine injects (all off by default)."""

    crash_on_prompt: str | None = None
    slow_on_prompt: str | None = None
    step_delay: float = 5.0

    @classmethod
    def from_profile(cls, profile: Profile) -> Faults:
        raw: dict[str, Any] = dict(profile.extra.get("faults", {}))
        return cls(
            crash_on_prompt=raw.get("crash_on_prompt") or None,
            slow_on_prompt=raw.get("slow_on_prompt") or None,
            step_delay=float(raw.get("step_delay", 5.0)),
        )


class FaultyEngine:
    """Wraps an engine; ``generate`` wraps its step callback with the faults."""

    def __init__(self, inner: Engine, faults: Faults) -> None:
        self.inner = inner
        self.faults = faults

    @property
    def random_weights(self) -> bool:
        return self.inner.random_weights

    def __getattr__(self, name: str) -> object:  # the wrapped engine's transformer, device, video_encoder ...
        return getattr(self.inner, name)

    @classmethod
    def check_profile(cls, profile: Profile, load_format: str = "auto") -> None:
        from reelgen.engines import check_profile

        check_profile(replace(profile, engine="ltx2"), load_format)

    @classmethod
    def from_profile(cls, profile: Profile, device: str | None = None, load_format: str = "auto") -> FaultyEngine:
        from reelgen.engines import load_engine

        faults = Faults.from_profile(profile)
        log.warning("test engine: faults are injected (%s)", faults)
        return cls(load_engine(replace(profile, engine="ltx2"), device, load_format), faults)

    def generate(self, job: Job, segment: Segment, on_step: StepCallback | None = None) -> Clip:
        prompt = segment.prompt
        faults = self.faults

        def step(done: int, total: int) -> bool | None:
            go_on = on_step(done, total) if on_step is not None else True
            if faults.crash_on_prompt and faults.crash_on_prompt in prompt and done >= 1:
                log.critical("test engine: crashing the process on a poison prompt")
                for handler in logging.getLogger().handlers:
                    handler.flush()
                os.kill(os.getpid(), signal.SIGKILL)
            if go_on is not False and faults.slow_on_prompt and faults.slow_on_prompt in prompt:
                # a fixed number of polls, not a deadline: on a device group every poll is a collective
                # (``group_steps``), so every rank must ask the same number of times
                for _ in range(max(1, math.ceil(faults.step_delay / POLL_SECONDS))):
                    time.sleep(POLL_SECONDS)
                    if on_step is not None and on_step(done, total) is False:
                        return False
            return go_on

        return self.inner.generate(job, segment, step)
