"""Pure pricing: credits for a request under a profile. No I/O."""

from __future__ import annotations

from reelgen.profiles import Profile
from reelgen.schemas import GenerateInput, Mode


def enhanced_prompts(inp: GenerateInput) -> int:
    """How many prompts ``enhance_prompt`` has the enhancer write: one per shot (one without shots)."""
    if not inp.enhance_prompt:
        return 0
    return len(inp.multi_prompt) if inp.multi_shots and inp.multi_prompt else 1


def credits_for(inp: GenerateInput, profile: Profile) -> int:
    """Credits reserved at submit (and captured on success): per-second rate x duration, plus the
    profile's ``prompt_enhancement.credits`` per enhanced prompt when the request asks for them."""
    price = profile.rate(inp.mode, inp.audio) * inp.duration
    spec = profile.prompt_enhancement
    if spec is not None:
        price += spec.credits * enhanced_prompts(inp)
    return price


def extension_credits(mode: Mode, audio: bool, added_seconds: int, profile: Profile) -> int:
    """Credits of an extension (the extend model): the original's mode rate x the seconds it adds."""
    return profile.rate(mode, audio) * added_seconds
