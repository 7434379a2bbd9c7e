"""The clock of one segment's denoising: steps, transformer rows, step times, cancellation.

``StepClock`` is the pipelines' ``callback_on_step_end`` and a forward pre-hook on the transformer.
It counts the steps (reported to ``on_step``, whose ``False`` raises ``Cancelled`` at that step
boundary) and the transformer rows of each stage (guidance adds rows), and times every step without
waiting for the device at each one: on CUDA a step boundary records an event and the elapsed times
are read once after the segment (``finish``); on the CPU the clock is the wall clock.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from reelgen.engines.base import Cancelled, StepCallback


@dataclass
class StepClock:
    """Counts denoising steps and transformer rows across the stages of one segment, times the steps,
    and relays cancellation.

    The steps are timed without waiting for the device at every step: on CUDA each step boundary
    records an event and the elapsed times are read once, after the segment (``finish``); on the CPU
    the clock is the wall clock. A step's time starts at its stage's first transformer forward.
    """

    total: int
    on_step: StepCallback | None
    timings: list[tuple[str, float]]
    cuda: bool = False
    done: int = 0
    stage: str = "stage1_step"
    mark: Any = field(default=None)
    rows: dict[str, int] = field(default_factory=dict)
    #: (index in timings, start mark, end mark) of the steps whose time is still on the device
    pending: list[tuple[int, Any, Any]] = field(default_factory=list)
    #: called after each step (and its progress report) with (pipe, step in stage, steps done, latents):
    #: live previews (``reelgen.engines.preview``); True when it made one (not counted in the next step)
    tap: Callable[[Any, int, int, Any], bool] | None = None

    def _now(self) -> Any:
        if not self.cuda:
            return time.perf_counter()
        import torch

        event = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
        event.record()
        return event

    def start_stage(self, stage: str) -> None:
        self.stage, self.mark = stage, None

    def before_forward(self, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        name = self.stage.removesuffix("_step")
        self.rows[name] = self.rows.get(name, 0) + (int(hidden.shape[0]) if hidden is not None else 1)
        if self.mark is None:
            self.mark = self._now()

    def __call__(self, pipe: Any, step: int, timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        now = self._now()
        start = self.mark if self.mark is not None else now
        if self.cuda:
            self.pending.append((len(self.timings), start, now))
            self.timings.append((self.stage, 0.0))
        else:
            self.timings.append((self.stage, now - start))
        self.mark = now
        self.done += 1
        if self.on_step is not None and self.on_step(self.done, self.total) is False:
            raise Cancelled()
        if self.tap is not None and self.tap(pipe, step, self.done, kwargs["latents"]):
            self.mark = None  # a preview was made: the next step starts at its first transformer call
        return {}

    def finish(self) -> None:
        """Read the device's step times (one wait for the device, after the whole segment)."""
        if self.pending:
            self.pending[-1][2].synchronize()
            for index, start, end in self.pending:
                self.timings[index] = (self.timings[index][0], start.elapsed_time(end) / 1000.0)
            self.pending.clear()
