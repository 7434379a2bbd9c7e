"""The plan of one generation: ``plan(request, profile) -> Job``, the single source of truth of what runs.

A ``Job`` is the output (size, fps, audio) and one ``Segment`` per model call (a shot, or the whole
clip); each segment lists its ``Stage``s exactly as the engine will run them: pipeline, size, frames,
sigmas, guidance (diffusers' keyword names), LoRAs and image conditions by pixel frame. The engine
builds its pipeline calls from these values and nothing else, and ``reelgen generate --plan``
prints them (``Job.as_dict``), so what an operator reads is what runs. No torch here.

Invariants:
* ``Job.width`` x ``Job.height`` is the MP4's size; stages run at the generation size (the output
  rounded up to what the model accepts, stage 1 at half of it when a stage 2 follows) and the
  decoded frames are centre-cropped to the output, never resampled.
* A segment generates ``frames = 8k+1 >= seconds*fps + max(lead_frames, 1)`` frames and keeps
  ``seconds*fps`` of them from ``lead_frames`` on; an end image conditions the last frame kept
  (pixel frame ``lead_frames + seconds*fps - 1``). ``lead_frames`` is 0 unless the segment continues
  the frames before it, which condition it at pixel frame 0 (a ``previous`` condition): the
  previous shot's last frames (a ``continue`` shot, ``reelgen.continuity``) or the last frames of
  the video being extended (the extend model, ``reelgen.extension``).

* With ``enhance_prompt`` each segment carries an ``Enhancement``: the worker has the engine rewrite
  the segment's text first (``reelgen.generation.enhance``) and the segment's ``prompt`` becomes the
  enhanced text led by the LoRA trigger words (``Segment.enhanced``); the plan never runs a model.

Why one module over 400 lines: the plan's dataclasses and ``plan``, which fills them from every
request field, are one definition that an operator (``--plan``) and the engine read alike; what
stands apart already lives apart (``reelgen.continuity``, ``reelgen.extension``, ``reelgen.schedules``).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

from reelgen.continuity import lead_frames, shot_conditions
from reelgen.enhancement import SYSTEM_PROMPTS, Enhancement
from reelgen.errors import ErrorCode, ReelgenError
from reelgen.schemas import AspectRatio, GenerateInput, Mode

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

    from reelgen.profiles import Profile, StageSpec

#: Stage pipelines: text only, or with image conditions (first frame and keyframes by pixel frame).
TEXT_PIPELINE = "LTX2Pipeline"
CONDITION_PIPELINE = "LTX2ConditionPipeline"


def model_frames(seconds: int, fps: int, lead: int = 0) -> int:
    """Frames the LTX-2 model must generate to cover ``seconds`` after ``lead`` frames it does not
    keep: the smallest 8k+1 >= seconds*fps + max(lead, 1)."""
    return 8 * math.ceil((seconds * fps + max(lead, 1) - 1) / 8) + 1


def derive_seed(seed: int, index: int) -> int:
    """A per-shot seed derived from the task seed (stable across Python versions and runs)."""
    if index == 0:
        return seed
    digest = hashlib.sha256(f"{seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def nearest_aspect(width: int, height: int) -> AspectRatio:
    """The supported aspect ratio nearest (in log space) to a ``width`` x ``height`` image."""
    r = math.log(width / height)
    return min(AspectRatio, key=lambda a: abs(math.log(a.ratio) - r))


@dataclass(frozen=True)
class Condition:
    """An input pinned to a pixel frame of the generated clip (``image``: ``start``, ``end``,
    ``reference``, or ``previous``: the frames the segment continues, ``Job.previous_frames``)."""

    image: str
    pixel_frame: int
    strength: float = 1.0
    #: H.264 CRF the image is re-compressed with before encoding (0: not re-compressed)
    crf: int = 33
    #: pixel frames it holds: 1 for an image; the segment's lead frames for ``image="previous"``
    frames: int = 1
    #: a guide keyframe: appended tokens that steer the frames at ``pixel_frame`` without replacing
    #: any (at pixel frame 0 too, where an image otherwise replaces the first latent frame)
    guide: bool = False


@dataclass(frozen=True)
class Stage:
    """One denoising stage exactly as the engine runs it."""

    name: str
    pipeline: str
    width: int
    height: int
    frames: int
    sigmas: tuple[float, ...]
    #: every guidance keyword of the pipeline call, diffusers' names
    guidance: dict[str, Any]
    loras: tuple[tuple[str, float], ...] = ()
    conditions: tuple[Condition, ...] = ()
    #: the stage starts from the previous stage's latents doubled by the latent upsampler
    upsample: bool = False
    #: the profile's step cache runs on this stage (long guided stages only; see ``Acceleration``)
    step_cache: bool = False

    @property
    def steps(self) -> int:
        return len(self.sigmas)

    @property
    def guided(self) -> bool:
        g = self.guidance
        return bool(g["guidance_scale"] > 1 or g["audio_guidance_scale"] > 1)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "pipeline": self.pipeline,
            "width": self.width,
            "height": self.height,
            "frames": self.frames,
            "upsample": self.upsample,
            "step_cache": self.step_cache,
            "sigmas": list(self.sigmas),
            "guidance": dict(self.guidance),
            "loras": [{"name": n, "strength": s} for n, s in self.loras],
            "conditions": [asdict(c) for c in self.conditions],
        }


@dataclass(frozen=True)
class Segment:
    """One model call: a shot (or the whole clip when ``multi_shots`` is false)."""

    prompt: str
    seconds: int
    num_frames: int  # what the model generates (8k+1); the file keeps seconds*fps of them
    seed: int
    stages: tuple[Stage, ...] = ()
    #: used by classifier-free guidance; None when no stage is guided
    negative_prompt: str | None = None
    #: generated frames before the kept ones: the frames the segment continues (a ``continue`` shot's
    #: copy of the previous shot's end, or the end of the video being extended), dropped afterwards
    lead_frames: int = 0
    #: the enhancement to run before encoding (``enhance_prompt``); None: ``prompt`` is encoded as is
    enhancement: Enhancement | None = None

    @property
    def steps(self) -> int:
        return sum(s.steps for s in self.stages)

    def enhanced(self, text: str) -> Segment:
        """This segment conditioned on the enhancer's ``text`` (led by the LoRA trigger words)."""
        if self.enhancement is None:
            raise ValueError("the segment has no enhancement planned")
        return replace(self, prompt=_with_triggers(text, list(self.enhancement.triggers)))

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "prompt": self.prompt,
            "negative_prompt": self.negative_prompt,
            "seed": self.seed,
            "seconds": self.seconds,
            "frames": self.num_frames,
            "lead_frames": self.lead_frames,
            "stages": [s.as_dict() for s in self.stages],
        }
        if self.enhancement is not None:
            out["enhancement"] = self.enhancement.as_dict()
        return out


@dataclass(frozen=True)
class Job:
    """Everything an engine needs for one request; ``width``/``height`` are the output size."""

    width: int
    height: int
    fps: int
    mode: Mode
    audio: bool
    segments: tuple[Segment, ...]
    profile: str = ""
    generation: str = "2.0"
    #: the size the model generates at (the output is its centre crop)
    generation_width: int = 0
    generation_height: int = 0
    max_sequence_length: int = 1024
    #: ``multi_shot_continuity``: ``cut``, ``continue`` or ``same_subject`` (``reelgen.continuity``)
    continuity: str = "cut"
    start_image: Image.Image | None = field(default=None, compare=False)
    end_image: Image.Image | None = field(default=None, compare=False)
    #: the frames a ``previous`` condition continues, each at the output size: carried from earlier
    #: shots while the job runs (``continuity.Carry``: the previous shot's last frames), or the last
    #: frames of the video being extended (``extension.plan_extension``); and shot 1's reference
    previous_frames: tuple[Image.Image, ...] = field(default=(), compare=False)
    reference_image: Image.Image | None = field(default=None, compare=False)
    #: the sound under ``previous_frames`` (and some context before it), ``float32`` ``(channels,
    #: samples)`` at ``previous_audio_rate`` Hz, ending where they do: the generation's first audio
    #: tokens are held on it (``engines/audio_condition``; the extend model sets it). None: the new
    #: soundtrack is not conditioned on sound
    previous_audio: np.ndarray | None = field(default=None, compare=False)
    previous_audio_rate: int = 0

    @property
    def seconds(self) -> int:
        return sum(s.seconds for s in self.segments)

    def image(self, which: str) -> Image.Image | None:
        """The image a ``Condition`` names: ``start``, ``end`` or ``reference``."""
        return {"start": self.start_image, "end": self.end_image, "reference": self.reference_image}.get(which)

    def pictures(self, condition: Condition) -> list[Image.Image]:
        """What ``condition`` puts in: its image, or the last ``frames`` of ``previous_frames``
        (empty when the job does not hold them)."""
        if condition.image == "previous":
            held = self.previous_frames
            return list(held[-condition.frames :]) if len(held) >= condition.frames else []
        image = self.image(condition.image)
        return [] if image is None else [image]

    @property
    def total_steps(self) -> int:
        """Denoising steps across all segments and stages (for progress)."""
        return sum(s.steps for s in self.segments)

    def as_dict(self) -> dict[str, Any]:
        """The plan as ``reelgen generate --plan`` prints it."""
        return {
            "profile": self.profile,
            "generation": self.generation,
            "mode": self.mode.value,
            "width": self.width,
            "height": self.height,
            "fps": self.fps,
            "frames": self.seconds * self.fps,
            "audio": self.audio,
            "generation_width": self.generation_width,
            "generation_height": self.generation_height,
            "continuity": self.continuity,
            "segments": [s.as_dict() for s in self.segments],
        }


#: (video knob, audio knob, value that turns the audio knob's row off): a guidance row runs when
#: either knob asks for it, so a row only the audio asks for is wasted when the audio is thrown away
_AUDIO_ONLY_ROWS = (
    ("guidance_scale", "audio_guidance_scale", 1.0),
    ("stg_scale", "audio_stg_scale", 0.0),
    ("modality_scale", "audio_modality_scale", 1.0),
)


def _without_audio_only_rows(guidance: dict[str, Any]) -> dict[str, Any]:
    """Guidance for a request without audio: a classifier-free, STG or modality row that serves only
    the audio (its video knob is off) is dropped; rows the video uses stay exactly as they are."""
    g = dict(guidance)
    for video, audio, off in _AUDIO_ONLY_ROWS:
        if g[video] <= off:  # the video knob asks for no row of its own
            g[audio] = off
    if g["stg_scale"] <= 0 and g["audio_stg_scale"] <= 0:
        g["spatio_temporal_guidance_blocks"] = None
    return g


def _refuse(field_name: str, message: str) -> ReelgenError:
    return ReelgenError(
        ErrorCode.INVALID_INPUT,
        f"Invalid input: {field_name}: {message}",
        details=[{"field": field_name, "message": message}],
    )


def request_loras(inp: GenerateInput, profile: Profile) -> tuple[tuple[str, float], ...]:
    """The adapters a request adds to every stage: its ``loras`` (by the profile's names, each at the
    asked or the profile's strength), then the camera LoRA of its ``camera_control``. Refuses with
    ``INVALID_INPUT`` (naming what the profile offers) what this profile cannot run."""
    out: list[tuple[str, float]] = []
    asked = inp.loras or ()
    if asked:
        offered = sorted(n for n, spec in profile.loras.items() if spec.requestable)
        if len(asked) > profile.max_request_loras:
            raise _refuse("input.loras", f"at most {profile.max_request_loras} LoRA(s) per request on this server")
        for i, item in enumerate(asked):
            spec = profile.loras.get(item.name)
            if spec is None or not spec.requestable:
                allowed = ", ".join(offered) if offered else "none (this server offers no LoRAs)"
                raise _refuse(f"input.loras.{i}.name", f"unknown LoRA {item.name[:100]!r}; allowed: {allowed}")
            out.append((spec.name, spec.strength if item.strength is None else float(item.strength)))
    if inp.camera_control is not None:
        move = inp.camera_control.type
        lora = profile.camera.get(move)
        if lora is None:
            offered_moves = ", ".join(profile.camera) if profile.camera else "none"
            raise _refuse(
                "input.camera_control.type",
                f"this server has no camera LoRA for {move!r} (camera moves offered: {offered_moves})",
            )
        strength = inp.camera_control.strength
        out.append((lora, profile.loras[lora].strength if strength is None else float(strength)))
    return tuple(out)


def request_enhancement(inp: GenerateInput, profile: Profile) -> bool:
    """Whether the request asks for prompt enhancement; ``INVALID_INPUT`` when it does and this
    profile has no enhancer."""
    if not inp.enhance_prompt:
        return False
    if profile.prompt_enhancement is None:
        raise _refuse("input.enhance_prompt", "this server has no prompt enhancer (its profile offers none)")
    return True


def _enhancement(
    inp: GenerateInput, profile: Profile, source: str, *, first_frame: bool, triggers: list[str]
) -> Enhancement | None:
    """The enhancement a segment whose text is ``source`` runs (``first_frame``: the start image
    conditions it, so the enhancer sees that image with the generation's image-to-video prompt)."""
    if not request_enhancement(inp, profile):
        return None
    spec = profile.prompt_enhancement
    assert spec is not None  # request_enhancement refused otherwise
    return Enhancement(
        source=source,
        system_prompt=SYSTEM_PROMPTS[(profile.generation, first_frame)],
        image="start" if first_frame else None,
        max_new_tokens=spec.max_new_tokens,
        sampling=spec.sampling,
        triggers=tuple(triggers),
    )


def _with_request_loras(
    stage: tuple[tuple[str, float], ...], extra: tuple[tuple[str, float], ...]
) -> tuple[tuple[str, float], ...]:
    """The stage's own adapters, then the request's (one the stage already runs keeps its strength)."""
    have = {name for name, _ in stage}
    return stage + tuple((n, s) for n, s in extra if n not in have)


def _with_triggers(prompt: str, triggers: list[str]) -> str:
    """The prompt led by the trigger words of the requested LoRAs that it does not contain yet."""
    missing = [t for t in triggers if t.lower() not in prompt.lower()]
    return " ".join([*missing, prompt]) if missing else prompt


#: Kling's ``cfg_scale`` (0-1) moves each classifier-free guidance knob ``g`` of a guided stage
#: linearly over the profile's range [(1+g)/2, (3g-1)/2]: 0.5 (Kling's default) is the profile's own
#: value, 0 and 1 half of its distance to unguided (1.0) below and above it, so guidance never
#: turns off (or on) and the stage runs the same transformer rows.
CFG_KNOBS = ("guidance_scale", "audio_guidance_scale")


def cfg_range(profile_value: float) -> tuple[float, float]:
    """The guidance a knob set to ``profile_value`` by the profile spans as ``cfg_scale`` goes 0 → 1."""
    g = float(profile_value)
    return (1 + g) / 2, (3 * g - 1) / 2


def _with_cfg_scale(guidance: dict[str, Any], cfg_scale: float | None) -> dict[str, Any]:
    """Guidance with each guided CFG knob moved to ``cfg_scale`` on its range (``cfg_range``)."""
    if cfg_scale is None:
        return guidance
    g = dict(guidance)
    for knob in CFG_KNOBS:
        if g[knob] > 1:
            low, high = cfg_range(g[knob])
            g[knob] = round(low + (high - low) * cfg_scale, 6)
    return g


def _shot_prompt(shared: str, shot: str) -> str:
    # The shot's own text first: the tokenizer truncates on the right, so an over-long combination
    # loses the shared context, never what this shot must show.
    return f"{shot}\n{shared}" if shared else shot


def plan(
    inp: GenerateInput,
    profile: Profile,
    *,
    seed: int,
    start_image_size: tuple[int, int] | None = None,
) -> Job:
    """Map a validated Kling 3.0 input onto the profile: sizes, frames, stages, conditions, shots.

    Kling's own fields: ``negative_prompt`` replaces the profile's (an empty one means none) and
    ``cfg_scale`` moves the guided stages' CFG knobs (``cfg_range``); both matter only where a stage
    is guided (professional mode; the distilled standard mode runs no classifier-free guidance).
    The task's ``seed`` (the request's ``seed`` when given) seeds the first shot."""
    if not profile.min_duration <= inp.duration <= profile.max_duration:
        raise ReelgenError(
            ErrorCode.INVALID_INPUT,
            f"duration {inp.duration} s is outside {profile.min_duration}-{profile.max_duration} s "
            f"for profile {profile.name!r}",
        )
    spec = profile.mode(inp.mode)
    aspect = nearest_aspect(*start_image_size) if start_image_size else AspectRatio(inp.aspect_ratio or "16:9")
    width, height = spec.size(aspect)
    gen_w, gen_h = spec.generation_size(aspect)
    images = len(inp.image_urls or ())
    extra = request_loras(inp, profile)
    triggers = list(dict.fromkeys(t for name, _ in extra for t in profile.loras[name].trigger_words))
    continuity = inp.multi_shot_continuity if inp.multi_shots else None
    if inp.multi_shots and inp.multi_prompt:
        shared = inp.prompt.strip()
        shots = [(_shot_prompt(shared, s.prompt.strip()), s.duration) for s in inp.multi_prompt]
    else:
        shots = [(inp.prompt.strip(), inp.duration)]
    segments = []
    negative = profile.negative_prompt if inp.negative_prompt is None else inp.negative_prompt
    for i, (text, seconds) in enumerate(shots):
        prompt = _with_triggers(text, triggers)
        if seconds < 1:
            raise ReelgenError(ErrorCode.INVALID_INPUT, f"a shot must last at least 1 s (got {seconds} s)")
        lead = lead_frames(continuity, i)
        frames = model_frames(seconds, profile.fps, lead)
        conditions: list[Condition] = shot_conditions(continuity, i, profile)
        if images >= 1 and i == 0:
            conditions.append(Condition("start", 0, 1.0, profile.image_crf))
        if images >= 2 and i == len(shots) - 1:
            conditions.append(Condition("end", lead + seconds * profile.fps - 1, 1.0, profile.image_crf))
        stages = []
        for k, st in enumerate(spec.stages):
            half = spec.two_stage and k == 0
            guidance = _with_cfg_scale(st.full_guidance(), inp.cfg_scale)
            stages.append(
                Stage(
                    name=st.name,
                    pipeline=CONDITION_PIPELINE if conditions else TEXT_PIPELINE,
                    width=gen_w // 2 if half else gen_w,
                    height=gen_h // 2 if half else gen_h,
                    frames=frames,
                    sigmas=st.sigmas,
                    guidance=guidance if inp.audio else _without_audio_only_rows(guidance),
                    loras=_with_request_loras(st.loras, extra),
                    conditions=tuple(conditions),
                    upsample=k > 0,
                    step_cache=_caches(profile, st),
                )
            )
        guided = any(s.guided for s in stages)
        segments.append(
            Segment(
                prompt=prompt,
                seconds=seconds,
                num_frames=frames,
                seed=derive_seed(seed, i),
                stages=tuple(stages),
                negative_prompt=negative if guided else None,
                lead_frames=lead,
                enhancement=_enhancement(inp, profile, text, first_frame=images >= 1 and i == 0, triggers=triggers),
            )
        )
    return Job(
        width=width,
        height=height,
        fps=profile.fps,
        mode=Mode(inp.mode),
        audio=inp.audio,
        segments=tuple(segments),
        profile=profile.name,
        generation=profile.generation,
        generation_width=gen_w,
        generation_height=gen_h,
        max_sequence_length=profile.max_sequence_length,
        continuity=continuity or "cut",
    )


def _caches(profile: Profile, stage: StageSpec) -> bool:
    """Whether the profile's step cache runs on ``stage``: only guided stages long enough to leave
    full steps around every cached one (the few-step distilled stages are never cached)."""
    acc = profile.acceleration
    if acc.step_cache == "off":
        return False
    long_enough = len(stage.sigmas) >= acc.step_cache_warmup + 2 * acc.step_cache_interval
    g = stage.full_guidance()
    return long_enough and (g["guidance_scale"] > 1 or g["audio_guidance_scale"] > 1)
