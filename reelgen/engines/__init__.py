"""Generation engines: turn a planned ``Job`` into frames and audio.

``load_engine(profile)`` picks the implementation named by the profile's ``engine`` and imports it
(and torch) only then, so importing ``reelgen.engines`` stays cheap.

``engine`` is ``ltx2`` (the shipped engine) or a custom engine named by import path,
``package.module:Class``: a class (or any object) with ``from_profile(profile, device, load_format)``
returning an ``Engine``, and optionally ``check_profile(profile, load_format)`` for what must be
refused before serving. The module must be importable by every process that loads the engine (the
workers of the local executor inherit the server's environment; Ray engine actors need it in the
job's runtime environment). A path that cannot be imported, or names something without
``from_profile``, is refused with ``INVALID_PROFILE`` at ``reelgen serve`` start (local executor)
and when a worker loads the engine.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from reelgen.engines.base import Cancelled, Clip, Engine, StepCallback
from reelgen.errors import ErrorCode, ReelgenError

if TYPE_CHECKING:
    from reelgen.profiles import Profile

__all__ = ["Cancelled", "Clip", "Engine", "StepCallback", "check_profile", "custom_engine", "load_engine"]


def custom_engine(profile: Profile) -> Any:
    """The class a profile's ``engine = "package.module:Class"`` names, imported; ``INVALID_PROFILE``
    with the reason when it cannot be imported or has no ``from_profile``."""
    module_name, _, attr = profile.engine.partition(":")

    def bad(why: str) -> ReelgenError:
        return ReelgenError(ErrorCode.INVALID_PROFILE, f"profile {profile.name!r}: engine {profile.engine!r} {why}")

    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise bad(f"cannot be imported ({type(exc).__name__}: {exc})") from None
    for part in attr.split("."):
        if not hasattr(target, part):
            raise bad(f"names nothing: module {module_name!r} has no {attr!r}")
        target = getattr(target, part)
    if not callable(getattr(target, "from_profile", None)):
        raise bad("is not an engine: it has no from_profile(profile, device, load_format)")
    return target


def check_profile(profile: Profile, load_format: str = "auto") -> None:
    """Refuse a profile its model cannot run (LoRA files, STG blocks; a custom engine that cannot be
    imported) before serving; imports torch."""
    if profile.engine == "ltx2":
        from reelgen.engines.weights import check_profile as check_ltx2

        check_ltx2(profile, load_format)
        return
    check = getattr(custom_engine(profile), "check_profile", None)
    if callable(check):
        check(profile, load_format)


def load_engine(profile: Profile, device: str | None = None, load_format: str = "auto") -> Engine:
    """Load the profile's engine once on ``device`` (``cpu``, ``cuda:N``; default: ``cuda:0`` if present).

    ``load_format="auto"`` loads the profile's weights (tiny ones are built in code);
    ``"dummy"`` builds the profile's full architecture with random weights (output is noise).
    """
    if profile.engine == "ltx2":
        from reelgen.engines.ltx2 import LTX2Engine

        return LTX2Engine.from_profile(profile, device=device, load_format=load_format)
    engine: Engine = custom_engine(profile).from_profile(profile, device=device, load_format=load_format)
    return engine
