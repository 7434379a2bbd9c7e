"""Noise schedules of the LTX-2 reference pipelines, as plain numbers (no torch).

Every stage of a generation runs an explicit list of sigmas (the plan shows it; the engine hands
exactly that list to the pipeline, whose scheduler applies no shift of its own). Stage 1 of a guided
mode uses the reference's ``LTX2Scheduler`` schedule, which shifts by a *fixed* 4096-token anchor
(shift 2.05) whatever the clip's real token count, then stretches the last non-zero sigma to 0.1.
diffusers' ``LTX2Pipeline`` would instead shift by the real token count, extrapolating far past its
anchor (about 5.6 at 1280x704x121, about 15 at 15 s) and leaving too few low-noise steps for detail.

The lists here omit the final 0.0 the reference appends: diffusers' scheduler appends it itself.
"""

from __future__ import annotations

import math

#: The reference's token-count anchors for the shift (``ltx_core.components.schedulers``).
BASE_SHIFT_ANCHOR = 1024
MAX_SHIFT_ANCHOR = 4096


def ltx2_sigmas(
    steps: int,
    *,
    tokens: int = MAX_SHIFT_ANCHOR,
    base_shift: float = 0.95,
    max_shift: float = 2.05,
    terminal: float = 0.1,
) -> tuple[float, ...]:
    """The reference ``LTX2Scheduler`` schedule for ``steps`` steps, without the trailing 0.

    ``tokens`` defaults to the fixed anchor the reference pipelines use (they never pass a latent).
    """
    if steps < 1:
        raise ValueError(f"steps must be at least 1 (got {steps})")
    slope = (max_shift - base_shift) / (MAX_SHIFT_ANCHOR - BASE_SHIFT_ANCHOR)
    shift = math.exp(tokens * slope + base_shift - slope * BASE_SHIFT_ANCHOR)
    linear = [1.0 - i / steps for i in range(steps)]  # linspace(1, 0, steps + 1) without the final 0
    shifted = [shift / (shift + (1.0 / s - 1.0)) for s in linear]
    if steps == 1:
        # the one sigma is both the first and the last: stretched onto ``terminal`` (as the reference's
        # float32 arithmetic does; in exact arithmetic this would divide 0 by 0)
        return (terminal,)
    # Stretch so that the last non-zero sigma lands on ``terminal``.
    scale = (1.0 - shifted[-1]) / (1.0 - terminal)
    return tuple(1.0 - (1.0 - s) / scale for s in shifted)
