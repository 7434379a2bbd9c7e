"""reelgen's plans against Lightricks' reference (``ltx-core`` / ``ltx-pipelines`` 1.0.0, installed as test
dependencies without their torchaudio-pulling dependencies): every number is read from the reference
package at test time, never copied here.

What 1.0.0 covers: LTX-2.0 (``LTX_2_PARAMS``) and LTX-2.3 (``LTX_2_3_PARAMS``). LTX-2.5's reference is
not on PyPI; its head (Lightricks/LTX-2) defines ``LTX_2_4_PARAMS = replace(LTX_2_3_PARAMS,
default_image_crf=18)``, so 2.5 is checked against the 2.3 values plus the differences it names
(CRF 18, a longer negative prompt). Deliberate differences of reelgen are named in the tests below
and in docs/engine.md ("reelgen vs reference").
"""

from __future__ import annotations

import importlib.util
import os
import sys
import types
from typing import Any

import pytest

from reelgen.domain import plan
from reelgen.engines import Engine
from reelgen.profiles import get_profile
from reelgen.schemas import GenerateInput

#: profile -> the reference parameter set of its generation
GENERATION_PARAMS = {"2.0": "LTX_2_PARAMS", "2.3": "LTX_2_3_PARAMS", "2.5": "LTX_2_3_PARAMS"}
REAL = ["ltx-2", "ltx-2.3", "ltx-2.5"]
TINY = ["ltx-2-tiny", "ltx-2.3-tiny", "ltx-2.5-tiny"]
#: LTX-2.5's negative prompt in the reference's head: these tags, then the 1.0.0 default
LTX_2_5_NEGATIVE_PREFIX = (
    "has_subtitles, has_blurbox, transition from black, transition to black, speech_ending_short, "
)


@pytest.fixture(scope="module")
def ref() -> types.SimpleNamespace:
    """The reference's constants and scheduler, imported without the packages' ``__init__`` (which
    would import every pipeline and, through the audio VAE, torchaudio)."""
    spec = importlib.util.find_spec("ltx_core")
    assert spec is not None and spec.origin, "ltx-core is a test dependency (make install puts it there)"
    root = os.path.dirname(os.path.dirname(spec.origin))
    for pkg in ("ltx_pipelines", "ltx_pipelines.utils"):
        if pkg not in sys.modules:
            module = types.ModuleType(pkg)
            module.__path__ = [os.path.join(root, *pkg.split("."))]
            sys.modules[pkg] = module
    from ltx_core.components.schedulers import LTX2Scheduler
    from ltx_pipelines.utils import constants

    return types.SimpleNamespace(constants=constants, scheduler=LTX2Scheduler)


def params(ref: types.SimpleNamespace, profile: str) -> Any:
    return getattr(ref.constants, GENERATION_PARAMS[get_profile(profile).generation])


def stages(profile: str, mode: str, **inp: Any) -> tuple[Any, ...]:
    request = GenerateInput.model_validate({"prompt": "a fox", "mode": mode} | inp)
    return plan(request, get_profile(profile), seed=1).segments[0].stages


def close(a: Any, b: Any, tol: float = 1e-6) -> bool:
    return len(a) == len(b) and all(abs(float(x) - float(y)) <= tol for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("profile", REAL + TINY)
@pytest.mark.parametrize(("aspect", "duration"), [("16:9", 3), ("16:9", 5), ("9:16", 10), ("1:1", 15), ("16:9", 15)])
def test_stage1_sigmas_are_the_reference_schedule_at_every_size_and_duration(
    ref: types.SimpleNamespace, profile: str, aspect: str, duration: int
) -> None:
    one, _ = stages(profile, "professional", aspect_ratio=aspect, duration=duration)
    steps = params(ref, profile).num_inference_steps
    reference = ref.scheduler().execute(steps=steps).tolist()
    assert reference[-1] == 0.0  # diffusers' scheduler appends the final 0 itself
    assert one.steps == steps and close(one.sigmas, reference[:-1])
    # the fixed 4096-token anchor: the same schedule at every size and length (no token-count shift)
    assert one.sigmas == stages(profile, "professional", aspect_ratio="1:1", duration=3)[0].sigmas


@pytest.mark.parametrize("profile", REAL + TINY)
def test_distilled_and_stage2_sigmas(ref: types.SimpleNamespace, profile: str) -> None:
    c = ref.constants
    std1, std2 = stages(profile, "standard")
    _, pro2 = stages(profile, "professional")
    assert close(std1.sigmas, c.DISTILLED_SIGMA_VALUES[:-1])
    assert close(std2.sigmas, c.STAGE_2_DISTILLED_SIGMA_VALUES[:-1])
    assert close(pro2.sigmas, c.STAGE_2_DISTILLED_SIGMA_VALUES[:-1])
    assert c.DISTILLED_SIGMA_VALUES[-1] == c.STAGE_2_DISTILLED_SIGMA_VALUES[-1] == 0.0


@pytest.mark.parametrize("profile", REAL + TINY)
def test_guidance_of_the_guided_stage(ref: types.SimpleNamespace, profile: str) -> None:
    p = params(ref, profile)
    video, audio = p.video_guider_params, p.audio_guider_params
    one, two = stages(profile, "professional")
    g = one.guidance
    assert (g["guidance_scale"], g["audio_guidance_scale"]) == (video.cfg_scale, audio.cfg_scale)
    assert (g["stg_scale"], g["audio_stg_scale"]) == (video.stg_scale, audio.stg_scale)
    assert (g["guidance_rescale"], g["audio_guidance_rescale"]) == (video.rescale_scale, audio.rescale_scale)
    assert (g["modality_scale"], g["audio_modality_scale"]) == (video.modality_scale, audio.modality_scale)
    assert video.skip_step == audio.skip_step == 0  # the reference skips no step: nothing to mirror
    assert video.stg_blocks == audio.stg_blocks  # diffusers takes one block list for both
    if profile in TINY:
        # deliberate: the 2-layer tiny transformer perturbs its last block (the real block does not exist)
        assert g["spatio_temporal_guidance_blocks"] == [1]
    else:
        assert g["spatio_temporal_guidance_blocks"] == list(video.stg_blocks)
    # stage 2 and the distilled mode run unguided: one transformer row per step
    for stage in (two, *stages(profile, "standard")):
        u = stage.guidance
        assert (u["guidance_scale"], u["audio_guidance_scale"], u["stg_scale"], u["audio_stg_scale"]) == (1, 1, 0, 0)
        assert (u["modality_scale"], u["audio_modality_scale"]) == (1, 1)
        assert u["spatio_temporal_guidance_blocks"] is None


@pytest.mark.parametrize("profile", REAL + TINY)
def test_loras_negative_prompt_crf_and_frame_rate(ref: types.SimpleNamespace, profile: str) -> None:
    c = ref.constants
    pro1, pro2 = stages(profile, "professional")
    # ti2vid_two_stages: the base model in stage 1, the distilled LoRA at its default strength in stage 2
    assert pro1.loras == () and pro2.loras == (("distilled", c.DEFAULT_LORA_STRENGTH),)
    # deliberate: standard is the distilled pipeline as the base weights plus the distilled LoRA at full
    # strength (one copy of the weights serves both modes) instead of a second, distilled checkpoint
    assert all(s.loras == (("distilled", c.DEFAULT_LORA_STRENGTH),) for s in stages(profile, "standard"))
    p = get_profile(profile)
    job = plan(GenerateInput(prompt="x", mode="professional"), p, seed=1)  # type: ignore[arg-type]
    assert p.fps == params(ref, profile).frame_rate
    if p.generation == "2.5":
        assert job.segments[0].negative_prompt == LTX_2_5_NEGATIVE_PREFIX + c.DEFAULT_NEGATIVE_PROMPT
        assert p.image_crf == 18  # the head's LTX_2_4_IMAGE_CRF
    else:
        assert job.segments[0].negative_prompt == c.DEFAULT_NEGATIVE_PROMPT
        assert p.image_crf == c.DEFAULT_IMAGE_CRF


@pytest.mark.parametrize("profile", REAL)
def test_two_stage_sizes_are_what_the_reference_accepts(ref: types.SimpleNamespace, profile: str) -> None:
    """The reference's two-stage pipelines need multiples of 64 (``assert_resolution``), stage 1 at half."""
    for mode in ("standard", "professional"):
        for aspect in ("16:9", "9:16", "1:1"):
            one, two = stages(profile, mode, aspect_ratio=aspect)
            assert two.width % 64 == 0 and two.height % 64 == 0
            assert (one.width, one.height) == (two.width // 2, two.height // 2)


def test_the_engine_runs_the_plans_sigmas_unshifted(tiny_engine: Engine) -> None:
    """What the pipelines' scheduler makes of the plan's sigmas, given the token-count shift diffusers
    would apply at 1280x704x121 (mu 5.6): exactly the plan's sigmas, then the final 0."""
    one, _ = stages("ltx-2-tiny", "professional", duration=5)
    for kind in ("LTX2Pipeline", "LTX2ConditionPipeline"):
        scheduler = tiny_engine._pipeline(kind).scheduler  # type: ignore[attr-defined]
        scheduler.set_timesteps(sigmas=list(one.sigmas), mu=5.6)
        ran = scheduler.sigmas.tolist()
        assert close(ran[:-1], one.sigmas) and ran[-1] == 0.0
