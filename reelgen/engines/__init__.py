"""Generation engines: turn a planned ``Job`` into frames and audio.

``load_engine(profile)`` picks the implementation named by the profile's ``engine`` and imports it
(and torch) only then, so importing ``reelgen.engines`` stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from reelgen.engines.base import Cancelled, Clip, Engine, StepCallback
from reelgen.errors import ErrorCode, ReelgenError

if TYPE_CHECKING:
    from reelgen.profiles import Profile

__all__ = ["Cancelled", "Clip", "Engine", "StepCallback", "check_profile", "load_engine"]


def check_profile(profile: Profile, load_format: str = "auto") -> None:
    """Refuse a profile its model cannot run (LoRA files, STG blocks) before serving; imports torch."""
    if profile.engine == "ltx2":
        from reelgen.engines.weights import check_profile as check_ltx2

        check_ltx2(profile, load_format)


def load_engine(profile: Profile, device: str | None = None, load_format: str = "auto") -> Engine:
    """Load the profile's engine once on ``device`` (``cpu``, ``cuda:N``; default: ``cuda:0`` if present).

    ``load_format="auto"`` loads the profile's weights (tiny ones are built in code);
    ``"dummy"`` builds the profile's full architecture with random weights (output is noise).
    """
    if profile.engine == "ltx2":
        from reelgen.engines.ltx2 import LTX2Engine

        return LTX2Engine.from_profile(profile, device=device, load_format=load_format)
    raise ReelgenError(ErrorCode.INVALID_PROFILE, f"profile {profile.name!r}: unknown engine {profile.engine!r}")
