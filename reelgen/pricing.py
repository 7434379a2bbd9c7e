"""Pure pricing: credits for a request under a profile. No I/O."""

from __future__ import annotations

from reelgen.profiles import Profile
from reelgen.schemas import GenerateInput, Mode


def credits_for(inp: GenerateInput, profile: Profile) -> int:
    """Credits reserved at submit (and captured on success): per-second rate x duration."""
    return profile.rate(inp.mode, inp.audio) * inp.duration


def extension_credits(mode: Mode, audio: bool, added_seconds: int, profile: Profile) -> int:
    """Credits of an extension (the extend model): the original's mode rate x the seconds it adds."""
    return profile.rate(mode, audio) * added_seconds
