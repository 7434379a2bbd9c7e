"""Pure pricing: credits for a request under a profile. No I/O."""

from __future__ import annotations

from reelgen.profiles import Profile
from reelgen.schemas import GenerateInput


def credits_for(inp: GenerateInput, profile: Profile) -> int:
    """Credits reserved at submit (and captured on success): per-second rate x duration."""
    return profile.rate(inp.mode, inp.audio) * inp.duration
