"""Model profiles: which engine, model generation and weights serve the Kling 3.0 model ids, how each
mode runs (stages, sigmas, guidance, LoRAs), at which output sizes and prices.

Profiles are data (``profiles.toml`` shipped in the package, or an operator's own file); this
module only reads and checks them. Nothing here imports torch. A profile may ``extends`` another
one: the tables are merged key by key (the child's values win), so a tiny test profile states only
what differs from the real one it mirrors.

A mode has one or two stages. Stage 1 runs at half the generation size when there is a stage 2
(the latent upsampler doubles it); each stage has explicit ``sigmas`` or ``steps`` (the reference
``LTX2Scheduler`` schedule, ``reelgen.schedules``), optional guidance (diffusers' keyword names;
absent keys mean "unguided") and the LoRAs active while it runs.

Why one module over 400 lines: a profile is checked as a whole (a stage's LoRAs, the camera table
and the generation refer to each other), so its reading and every rule on it stay together.
"""

from __future__ import annotations

import itertools
import math
import re
import tomllib
from dataclasses import dataclass, field, fields, replace
from importlib import resources
from pathlib import Path
from typing import Any

from reelgen import enhancement
from reelgen.enhancement import PromptEnhancement
from reelgen.errors import ErrorCode, ReelgenError
from reelgen.schedules import ltx2_sigmas
from reelgen.schemas import CAMERA_MOVES, MAX_CREDITS, MAX_DURATION, AspectRatio, Mode

ENGINES = ("ltx2",)
#: A custom engine: ``package.module:Class`` (a class with ``from_profile``; see ``reelgen.engines``).
CUSTOM_ENGINE = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$")
#: The LTX-2 model generations diffusers 0.42.1 serves.
GENERATIONS = ("2.0", "2.3", "2.5")
#: ``weights`` (or a LoRA ``path``) value meaning "build tiny random weights in code".
TINY_WEIGHTS = "tiny"
#: The guidance keyword arguments of diffusers' LTX-2 pipelines that a stage may set.
GUIDANCE_KEYS = (
    "guidance_scale",
    "audio_guidance_scale",
    "stg_scale",
    "audio_stg_scale",
    "modality_scale",
    "audio_modality_scale",
    "guidance_rescale",
    "audio_guidance_rescale",
)
#: A stage without guidance: one transformer row per step.
UNGUIDED: dict[str, float] = {
    "guidance_scale": 1.0,
    "audio_guidance_scale": 1.0,
    "stg_scale": 0.0,
    "audio_stg_scale": 0.0,
    "modality_scale": 1.0,
    "audio_modality_scale": 1.0,
    "guidance_rescale": 0.0,
    "audio_guidance_rescale": 0.0,
}
MAX_SIDE = 8192


#: ``acceleration.compile`` values: none, or ``torch.compile`` of the transformer's repeated blocks
COMPILE_MODES = ("off", "regional")
#: ``acceleration.fp8``: none, or torchao's float8 (dynamic row-wise activations and weights) on the
#: transformer blocks' linear layers (CUDA compute capability 8.9+: Ada, Hopper, Blackwell)
FP8_MODES = ("off", "torchao")
#: ``acceleration.step_cache``: none, or diffusers' TaylorSeer cache on the long guided stages
STEP_CACHE_MODES = ("off", "taylorseer")
#: ``acceleration.vae_tiling``: decode in tiles when the untiled decode would not fit (``auto``), always, never
VAE_TILING_MODES = ("auto", "on", "off")
#: ``acceleration.video_encoder``: NVENC when the GPU has it, else x264 (``auto``); or one named encoder
VIDEO_ENCODERS = ("auto", "libx264", "h264_nvenc")


@dataclass(frozen=True)
class Acceleration:
    """How the engine speeds the transformer up; every switch can be turned off (the defaults)."""

    #: ``regional``: ``torch.compile`` of the repeated transformer blocks, warmed when the engine loads
    compile: str = "off"
    #: a diffusers attention backend (``set_attention_backend``): ``native``, ``flash``, ``_flash_3``, ``sage``...
    attention_backend: str = "native"
    #: ``torchao``: float8 linear layers in the transformer blocks (the reference's layer choice)
    fp8: str = "off"
    #: ``taylorseer``: skip the transformer blocks on some steps of long guided stages, predicting the
    #: output from the last full steps (diffusers' ``TaylorSeerCacheConfig``)
    step_cache: str = "off"
    #: with a step cache: one full step every ``step_cache_interval`` steps once caching starts
    step_cache_interval: int = 3
    #: with a step cache: the first steps of a stage always run in full (and no stage shorter than
    #: ``step_cache_warmup + 2 * step_cache_interval`` steps is cached: the distilled stages never are)
    step_cache_warmup: int = 6
    vae_tiling: str = "auto"
    video_encoder: str = "auto"


@dataclass(frozen=True)
class LoraSpec:
    """A LoRA the profile may apply: ``path`` is a ``.safetensors`` file (absolute, or relative to a
    local weights directory, or a file name in the weights' hub repo), or ``tiny`` (built in code)."""

    name: str
    path: str
    generation: str
    strength: float = 1.0
    #: the hub repo holding ``path`` when it is not the weights' own repo (the camera LoRAs)
    repo: str | None = None
    #: words put in front of the prompt when a request asks for this LoRA (when the prompt lacks them)
    trigger_words: tuple[str, ...] = ()
    #: requests may ask for it by name (``input.loras``); the stage LoRAs and camera LoRAs need not be
    requestable: bool = False
    #: the GPU memory it takes loaded (GiB), for the memory model; None: counted as the distilled LoRA
    memory_gib: float | None = None

    @property
    def is_tiny(self) -> bool:
        return self.path == TINY_WEIGHTS


@dataclass(frozen=True)
class StageSpec:
    """One denoising stage: its sigmas, guidance (only the keys the profile set), STG blocks, LoRAs."""

    name: str
    sigmas: tuple[float, ...]
    guidance: dict[str, float] = field(default_factory=dict)
    stg_blocks: tuple[int, ...] = ()
    loras: tuple[tuple[str, float], ...] = ()
    #: how ``sigmas`` were given: ``"steps=N"`` (the reference schedule) or ``"explicit"``
    schedule: str = "explicit"

    @property
    def steps(self) -> int:
        return len(self.sigmas)

    def full_guidance(self) -> dict[str, Any]:
        """Every guidance keyword the pipeline takes, as diffusers names them (unset ones unguided)."""
        g: dict[str, Any] = {**UNGUIDED, **self.guidance}
        stg = g["stg_scale"] > 0 or g["audio_stg_scale"] > 0
        g["spatio_temporal_guidance_blocks"] = list(self.stg_blocks) if stg else None
        return g


@dataclass(frozen=True)
class ModeSpec:
    """How one mode runs: output sizes per aspect ratio and its stages (two = latent upsampling)."""

    sizes: dict[AspectRatio, tuple[int, int]]
    stages: tuple[StageSpec, ...]

    @property
    def two_stage(self) -> bool:
        return len(self.stages) == 2

    @property
    def total_steps(self) -> int:
        return sum(s.steps for s in self.stages)

    @property
    def multiple(self) -> int:
        """Generation sizes are multiples of this: the VAE's 32, doubled when stage 1 runs at half size."""
        return 64 if self.two_stage else 32

    def size(self, aspect: AspectRatio) -> tuple[int, int]:
        """The output size (what the MP4 has)."""
        return self.sizes[aspect]

    def generation_size(self, aspect: AspectRatio) -> tuple[int, int]:
        """The size the model generates: the output size rounded up to ``multiple`` (then centre-cropped)."""
        m = self.multiple
        w, h = self.sizes[aspect]
        return m * math.ceil(w / m), m * math.ceil(h / m)


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
    generation: str = "2.0"
    description: str = ""
    upsampler_weights: str | None = None
    max_sequence_length: int = 1024
    negative_prompt: str = ""
    #: H.264 CRF applied to conditioning images before encoding (the reference's; 0 = none)
    image_crf: int = 33
    #: the weights' subfolder holding the full (non-distilled) transformer
    transformer_subfolder: str = "transformer"
    loras: dict[str, LoraSpec] = field(default_factory=dict)
    #: at most this many ``input.loras`` per request (0: the field is refused)
    max_request_loras: int = 3
    #: the worker keeps at most this many per-request (and camera) adapters loaded, least recently
    #: used evicted first; the stage LoRAs stay loaded and are not counted
    max_loaded_loras: int = 8
    #: ``camera_control.type`` -> the LoRA (under ``loras``) that makes that move; empty: refused
    camera: dict[str, str] = field(default_factory=dict)
    #: the GPU memory a worker has for one generation (GiB); a request whose estimate exceeds it is
    #: refused at submit (``reelgen.memory``); None: no limit checked
    max_memory_gib: float | None = None
    #: the prompt enhancer ``input.enhance_prompt`` runs (``reelgen.enhancement``); None: refused
    prompt_enhancement: PromptEnhancement | None = None
    acceleration: Acceleration = field(default_factory=Acceleration)
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


def _stage(name: str, where: str, raw: dict[str, Any], loras: dict[str, LoraSpec]) -> StageSpec:
    if ("steps" in raw) == ("sigmas" in raw):
        raise _bad(name, f"{where}: give exactly one of steps (the reference schedule) or sigmas")
    if "steps" in raw:
        steps = int(raw["steps"])
        if steps < 1:
            raise _bad(name, f"{where}: steps must be at least 1")
        sigmas, schedule = ltx2_sigmas(steps), f"steps={steps}"
    else:
        sigmas, schedule = tuple(float(s) for s in raw["sigmas"]), "explicit"
        if not sigmas or any(not 0 < s <= 1 for s in sigmas) or any(a <= b for a, b in itertools.pairwise(sigmas)):
            raise _bad(name, f"{where}: sigmas must be a non-empty, strictly decreasing list in (0, 1]")
    guidance = {str(k): float(v) for k, v in dict(raw.get("guidance", {})).items()}
    unknown = sorted(set(guidance) - set(GUIDANCE_KEYS))
    if unknown:
        raise _bad(name, f"{where}: unknown guidance key(s) {unknown}; known: {', '.join(GUIDANCE_KEYS)}")
    if any(not math.isfinite(v) for v in guidance.values()):
        raise _bad(name, f"{where}: guidance values must be finite numbers")
    blocks = tuple(int(b) for b in raw.get("stg_blocks", ()))
    if any(b < 0 for b in blocks):
        raise _bad(name, f"{where}: stg_blocks must be transformer block indices (>= 0)")
    stage_loras = tuple((str(k), float(v)) for k, v in dict(raw.get("loras", {})).items())
    for lora, strength in stage_loras:
        if lora not in loras:
            raise _bad(name, f"{where}: LoRA {lora!r} is not declared under [{name}.loras]")
        if not math.isfinite(strength):
            raise _bad(name, f"{where}: LoRA {lora!r} strength must be a finite number")
    spec = StageSpec(where.rsplit(".", 1)[-1], sigmas, guidance, blocks, stage_loras, schedule)
    if (spec.guidance.get("stg_scale", 0) > 0 or spec.guidance.get("audio_stg_scale", 0) > 0) and not blocks:
        raise _bad(name, f"{where}: spatio-temporal guidance needs stg_blocks")
    return spec


def _mode_spec(name: str, mode: str, raw: dict[str, Any], loras: dict[str, LoraSpec]) -> ModeSpec:
    try:
        sizes: dict[AspectRatio, tuple[int, int]] = {}
        for aspect in AspectRatio:
            w, h = (int(x) for x in raw["sizes"][aspect.value])
            if not (0 < w <= MAX_SIDE and 0 < h <= MAX_SIDE) or w % 2 or h % 2:
                raise _bad(
                    name, f"{mode} {aspect.value} size {w}x{h}: sides must be even (H.264) and 2-{MAX_SIDE} pixels"
                )
            sizes[aspect] = (w, h)
        if "stage1" not in raw:
            raise _bad(name, f"mode {mode!r} lacks [modes.{mode}.stage1]")
        stages = [_stage(name, f"modes.{mode}.stage1", dict(raw["stage1"]), loras)]
        if "stage2" in raw:
            stages.append(_stage(name, f"modes.{mode}.stage2", dict(raw["stage2"]), loras))
            if stages[1].guidance:
                raise _bad(name, f"modes.{mode}.stage2 refines unguided (as the reference does): remove its guidance")
    except KeyError as exc:
        raise _bad(name, f"mode {mode!r} lacks {exc.args[0]!r}") from None
    except (TypeError, ValueError) as exc:
        raise _bad(name, f"mode {mode!r}: {exc}") from None
    return ModeSpec(sizes=sizes, stages=tuple(stages))


def _loras(name: str, raw: dict[str, Any], generation: str) -> dict[str, LoraSpec]:
    out: dict[str, LoraSpec] = {}
    for lora, spec in dict(raw).items():
        if not isinstance(spec, dict) or "path" not in spec:
            raise _bad(name, f"LoRA {lora!r} needs a path")
        fits = str(spec.get("generation", generation))
        if fits not in GENERATIONS:
            raise _bad(name, f"LoRA {lora!r}: unknown generation {fits!r} (known: {', '.join(GENERATIONS)})")
        triggers = spec.get("trigger_words", [])
        if not isinstance(triggers, list) or not all(isinstance(t, str) and t.strip() for t in triggers):
            raise _bad(name, f"LoRA {lora!r}: trigger_words must be a list of non-blank strings")
        requestable = spec.get("requestable", False)
        if not isinstance(requestable, bool):
            raise _bad(name, f"LoRA {lora!r}: requestable must be true or false")
        strength = float(spec.get("strength", 1.0))
        if not math.isfinite(strength):
            raise _bad(name, f"LoRA {lora!r}: strength must be a finite number")
        repo = spec.get("repo")
        memory = spec.get("memory_gib")
        if memory is not None and (isinstance(memory, bool) or not isinstance(memory, int | float) or memory < 0):
            raise _bad(name, f"LoRA {lora!r}: memory_gib must be a number of GiB (>= 0)")
        out[str(lora)] = LoraSpec(
            str(lora),
            str(spec["path"]),
            fits,
            strength,
            repo=None if repo is None else str(repo),
            trigger_words=tuple(t.strip() for t in triggers),
            requestable=requestable,
            memory_gib=None if memory is None else float(memory),
        )
    return out


def _camera(name: str, raw: Any, loras: dict[str, LoraSpec]) -> dict[str, str]:
    if not isinstance(raw, dict):
        raise _bad(name, "camera must be a table of camera move = LoRA name")
    out: dict[str, str] = {}
    for move, lora in raw.items():
        if move not in CAMERA_MOVES:
            raise _bad(name, f"camera.{move}: unknown camera move (known: {', '.join(CAMERA_MOVES)})")
        if str(lora) not in loras:
            raise _bad(name, f"camera.{move}: LoRA {lora!r} is not declared under [{name}.loras]")
        out[str(move)] = str(lora)
    return out


def _acceleration(name: str, raw: dict[str, Any]) -> Acceleration:
    known = {f.name: f for f in fields(Acceleration)}
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise _bad(name, f"acceleration: unknown key(s) {unknown} (known: {', '.join(known)})")
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if known[key].type in ("int", int):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise _bad(name, f"acceleration.{key} {value!r}: a whole number of steps, at least 1")
            values[key] = value
        else:
            values[key] = str(value)
    acc = Acceleration(**values)
    for key, allowed in (
        ("compile", COMPILE_MODES),
        ("fp8", FP8_MODES),
        ("step_cache", STEP_CACHE_MODES),
        ("vae_tiling", VAE_TILING_MODES),
        ("video_encoder", VIDEO_ENCODERS),
    ):
        if getattr(acc, key) not in allowed:
            raise _bad(name, f"acceleration.{key} {getattr(acc, key)!r}: use one of {', '.join(allowed)}")
    if acc.compile != "off" and acc.step_cache != "off":
        # the cache's hooks decide per step, outside any graph: they cannot live inside compiled blocks
        raise _bad(name, "acceleration: compile and step_cache cannot be combined; turn one of them off")
    return acc


_KNOWN = {
    "engine",
    "generation",
    "description",
    "weights",
    "upsampler_weights",
    "fps",
    "min_duration",
    "max_duration",
    "max_sequence_length",
    "negative_prompt",
    "image_crf",
    "transformer_subfolder",
    "loras",
    "max_request_loras",
    "max_loaded_loras",
    "camera",
    "max_memory_gib",
    "prompt_enhancement",
    "acceleration",
    "modes",
    "rates",
    "extends",
}


def _profile(name: str, raw: dict[str, Any]) -> Profile:
    engine = raw.get("engine", "ltx2")
    if not isinstance(engine, str) or (engine not in ENGINES and not CUSTOM_ENGINE.match(engine)):
        raise _bad(
            name,
            f"unknown engine {engine!r} (known: {', '.join(ENGINES)}; or a custom engine as 'package.module:Class')",
        )
    generation = str(raw.get("generation", "2.0"))
    if generation not in GENERATIONS:
        raise _bad(name, f"unknown generation {generation!r} (known: {', '.join(GENERATIONS)})")
    try:
        loras = _loras(name, raw.get("loras", {}), generation)
        modes = {Mode(m): _mode_spec(name, m, raw["modes"][m], loras) for m in (Mode.STANDARD, Mode.PROFESSIONAL)}
        rates = {
            Mode(m): {True: int(raw["rates"][m]["audio"]), False: int(raw["rates"][m]["no_audio"])}
            for m in (Mode.STANDARD, Mode.PROFESSIONAL)
        }
        profile = Profile(
            name=name,
            engine=engine,
            generation=generation,
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
            image_crf=int(raw.get("image_crf", 33)),
            transformer_subfolder=str(raw.get("transformer_subfolder", "transformer")),
            loras=loras,
            max_request_loras=int(raw.get("max_request_loras", 3)),
            max_loaded_loras=int(raw.get("max_loaded_loras", 8)),
            camera=_camera(name, raw.get("camera", {}), loras),
            max_memory_gib=None if raw.get("max_memory_gib") is None else float(raw["max_memory_gib"]),
            prompt_enhancement=None
            if raw.get("prompt_enhancement") in (None, False)
            else enhancement.parse(
                raw["prompt_enhancement"],
                generation=generation,
                tiny=str(raw["weights"]) == TINY_WEIGHTS,
                bad=lambda msg: _bad(name, msg),
            ),
            acceleration=_acceleration(name, dict(raw.get("acceleration", {}))),
            extra={k: v for k, v in raw.items() if k not in _KNOWN},
        )
    except KeyError as exc:
        raise _bad(name, f"missing {exc.args[0]!r}") from None
    except (TypeError, ValueError) as exc:
        raise _bad(name, str(exc)) from None
    if profile.fps <= 0 or not 1 <= profile.min_duration <= profile.max_duration:
        raise _bad(name, "fps must be positive and 1 <= min_duration <= max_duration")
    if any(r < 0 for by_audio in rates.values() for r in by_audio.values()):
        raise _bad(name, "credit rates must not be negative")
    if not 0 <= profile.max_request_loras <= 16 or profile.max_loaded_loras < 1:
        raise _bad(name, "max_request_loras must be 0-16 and max_loaded_loras at least 1")
    gib = profile.max_memory_gib
    if gib is not None and not (math.isfinite(gib) and gib > 0):
        raise _bad(name, "max_memory_gib must be a positive number of GiB")
    if any(r * MAX_DURATION > MAX_CREDITS for by_audio in rates.values() for r in by_audio.values()):
        raise _bad(name, f"a credit rate times {MAX_DURATION} s must not exceed {MAX_CREDITS} credits")
    if not 0 <= profile.image_crf <= 51:
        raise _bad(name, "image_crf must be 0 (no re-compression) to 51")
    for lora in loras.values():
        if lora.generation != generation:
            raise _bad(name, f"LoRA {lora.name!r} is for LTX-{lora.generation}, the profile serves LTX-{generation}")
    needs_upsampler = any(m.two_stage for m in modes.values())
    if needs_upsampler and not profile.is_tiny and not profile.upsampler_weights:
        raise _bad(name, "a two-stage mode needs upsampler_weights (the latent upsampler)")
    return profile


def _merge(base: dict[str, Any], child: dict[str, Any]) -> dict[str, Any]:
    """``child`` over ``base``, table by table; a child's ``key = false`` where the base has a table
    removes that table (an extending profile dropping an inherited LoRA or ``camera``)."""
    out = dict(base)
    for key, value in child.items():
        if value is False and isinstance(out.get(key), dict):
            del out[key]
            continue
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _resolve(name: str, data: dict[str, Any], shipped: dict[str, Any], seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """A profile's table with its ``extends`` chain merged in; a parent missing from an operator's
    file is looked up among the shipped profiles (so ``extends = "ltx-2.5"`` works anywhere)."""
    raw = data[name] if name in data else shipped[name]
    parent = raw.get("extends")
    if parent is None:
        return dict(raw)
    if parent in seen or parent == name:
        raise _bad(name, f"extends forms a loop ({' -> '.join((*seen, name, parent))})")
    if not isinstance(data.get(parent, shipped.get(parent)), dict):
        raise _bad(name, f"extends unknown profile {parent!r}")
    return _merge(_resolve(parent, data, shipped, (*seen, name)), {k: v for k, v in raw.items() if k != "extends"})


def load_profiles(path: str | Path | None = None) -> dict[str, Profile]:
    """Read every profile from ``path`` (default: the ``profiles.toml`` shipped in the package)."""
    try:
        shipped = tomllib.loads(resources.files("reelgen").joinpath("profiles.toml").read_text(encoding="utf-8"))
        data = shipped if path is None else tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ReelgenError(ErrorCode.INVALID_PROFILE, f"profiles file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ReelgenError(ErrorCode.INVALID_PROFILE, f"profiles file is not valid TOML: {exc}") from None
    return {name: _profile(name, _resolve(name, data, shipped)) for name, raw in data.items() if isinstance(raw, dict)}


def get_profile(name: str, path: str | Path | None = None, *, weights: str | None = None) -> Profile:
    """One profile by name; ``weights`` (``--weights DIR``) overrides where its weights come from."""
    profiles = load_profiles(path)
    if name not in profiles:
        raise ReelgenError(
            ErrorCode.INVALID_PROFILE, f"unknown profile {name!r} (known: {', '.join(sorted(profiles))})"
        )
    profile = profiles[name]
    if weights:
        profile = replace(profile, weights=weights)
    return profile
