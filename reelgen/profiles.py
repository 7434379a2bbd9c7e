"""Model profiles: which engine and weights serve the Kling 3.0 model ids, at which sizes and prices.

Profiles are data (``profiles.toml`` shipped in the package, or an operator's own file); this
module only reads and checks them. Nothing here imports torch.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from reelgen.errors import ErrorCode, ReelgenError
from reelgen.schemas import AspectRatio, Mode

ENGINES = ("ltx2",)
#: ``weights`` value meaning "build tiny random weights in code".
TINY_WEIGHTS = "tiny"


@dataclass(frozen=True)
class ModeSpec:
    """How one mode runs: final output sizes per aspect ratio, steps, guidance, stages."""

    sizes: dict[AspectRatio, tuple[int, int]]
    steps: int
    guidance: dict[str, float]
    two_stage: bool = False
    stage2_sigmas: tuple[float, ...] = ()

    def size(self, aspect: AspectRatio) -> tuple[int, int]:
        return self.sizes[aspect]


@dataclass(frozen=True)
class Profile:
    name: str
    engine: str
    weights: str
    fps: int
    min_duration: int
    max_duration: int
    modes: dict[Mode, ModeSpec]
    #: credits per second: rates[mode][audio]
    rates: dict[Mode, dict[bool, int]]
    description: str = ""
    upsampler_weights: str | None = None
    max_sequence_length: int = 1024
    negative_prompt: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def is_tiny(self) -> bool:
        return self.weights == TINY_WEIGHTS

    def mode(self, mode: Mode | str) -> ModeSpec:
        return self.modes[Mode(mode)]

    def rate(self, mode: Mode | str, audio: bool) -> int:
        return self.rates[Mode(mode)][bool(audio)]


def _bad(name: str, msg: str) -> ReelgenError:
    return ReelgenError(ErrorCode.INVALID_PROFILE, f"profile {name!r}: {msg}")


def _mode_spec(name: str, mode: str, raw: dict[str, Any]) -> ModeSpec:
    try:
        sizes: dict[AspectRatio, tuple[int, int]] = {}
        for aspect in AspectRatio:
            w, h = (int(x) for x in raw["sizes"][aspect.value])
            sizes[aspect] = (w, h)
        two_stage = bool(raw.get("two_stage", False))
        multiple = 64 if two_stage else 32
        for aspect, (w, h) in sizes.items():
            if w % multiple or h % multiple:
                raise _bad(name, f"{mode} {aspect.value} size {w}x{h}: each side must be a multiple of {multiple}")
        spec = ModeSpec(
            sizes=sizes,
            steps=int(raw["steps"]),
            guidance={str(k): float(v) for k, v in dict(raw.get("guidance", {})).items()},
            two_stage=two_stage,
            stage2_sigmas=tuple(float(s) for s in raw.get("stage2_sigmas", ())),
        )
    except KeyError as exc:
        raise _bad(name, f"mode {mode!r} lacks {exc.args[0]!r}") from None
    except (TypeError, ValueError) as exc:
        raise _bad(name, f"mode {mode!r}: {exc}") from None
    if spec.steps < 1:
        raise _bad(name, f"mode {mode!r}: steps must be at least 1")
    if spec.two_stage and not spec.stage2_sigmas:
        raise _bad(name, f"mode {mode!r}: two_stage needs stage2_sigmas")
    return spec


def _profile(name: str, raw: dict[str, Any]) -> Profile:
    engine = raw.get("engine", "ltx2")
    if engine not in ENGINES:
        raise _bad(name, f"unknown engine {engine!r} (known: {', '.join(ENGINES)})")
    try:
        modes = {Mode(m): _mode_spec(name, m, raw["modes"][m]) for m in (Mode.STANDARD, Mode.PROFESSIONAL)}
        rates = {
            Mode(m): {True: int(raw["rates"][m]["audio"]), False: int(raw["rates"][m]["no_audio"])}
            for m in (Mode.STANDARD, Mode.PROFESSIONAL)
        }
        known = {
            "engine",
            "description",
            "weights",
            "upsampler_weights",
            "fps",
            "min_duration",
            "max_duration",
            "max_sequence_length",
            "negative_prompt",
            "modes",
            "rates",
        }
        profile = Profile(
            name=name,
            engine=engine,
            weights=str(raw["weights"]),
            fps=int(raw["fps"]),
            min_duration=int(raw.get("min_duration", 3)),
            max_duration=int(raw.get("max_duration", 15)),
            modes=modes,
            rates=rates,
            description=str(raw.get("description", "")),
            upsampler_weights=raw.get("upsampler_weights"),
            max_sequence_length=int(raw.get("max_sequence_length", 1024)),
            negative_prompt=str(raw.get("negative_prompt", "")),
            extra={k: v for k, v in raw.items() if k not in known},
        )
    except KeyError as exc:
        raise _bad(name, f"missing {exc.args[0]!r}") from None
    except (TypeError, ValueError) as exc:
        raise _bad(name, str(exc)) from None
    if profile.fps <= 0 or not 1 <= profile.min_duration <= profile.max_duration:
        raise _bad(name, "fps must be positive and 1 <= min_duration <= max_duration")
    if any(r < 0 for by_audio in rates.values() for r in by_audio.values()):
        raise _bad(name, "credit rates must not be negative")
    return profile


def load_profiles(path: str | Path | None = None) -> dict[str, Profile]:
    """Read every profile from ``path`` (default: the ``profiles.toml`` shipped in the package)."""
    try:
        if path is None:
            text = resources.files("reelgen").joinpath("profiles.toml").read_text(encoding="utf-8")
        else:
            text = Path(path).read_text(encoding="utf-8")
        data = tomllib.loads(text)
    except FileNotFoundError:
        raise ReelgenError(ErrorCode.INVALID_PROFILE, f"profiles file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ReelgenError(ErrorCode.INVALID_PROFILE, f"profiles file is not valid TOML: {exc}") from None
    return {name: _profile(name, raw) for name, raw in data.items() if isinstance(raw, dict)}


def get_profile(name: str, path: str | Path | None = None, *, weights: str | None = None) -> Profile:
    """One profile by name; ``weights`` (``--weights DIR``) overrides where its weights come from."""
    profiles = load_profiles(path)
    if name not in profiles:
        raise ReelgenError(
            ErrorCode.INVALID_PROFILE, f"unknown profile {name!r} (known: {', '.join(sorted(profiles))})"
        )
    profile = profiles[name]
    if weights:
        from dataclasses import replace

        profile = replace(profile, weights=weights)
    return profile
