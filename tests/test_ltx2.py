"""The LTX-2 engine on CPU with tiny random weights: every input class, progress, cancellation,
determinism, input checks, and real weight loading from a diffusers-layout directory."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from reelgen.domain import Job, Stage, plan
from reelgen.engines import Cancelled, Clip, Engine, load_engine
from reelgen.errors import ErrorCode, ReelgenError
from reelgen.profiles import Profile, get_profile
from reelgen.schemas import AspectRatio, GenerateInput, Mode


def job_for(profile: Profile, *, seed: int = 7, images: int = 0, **inp: object) -> Job:
    """The plan of a request; ``images`` image URLs make it image-to-video (attach them with ``with_images``)."""
    fields: dict[str, object] = {"prompt": "a red fox runs through snow", "duration": 3} | inp
    if images:
        fields["image_urls"] = [f"https://example.com/{i}.png" for i in range(images)]
    return plan(GenerateInput.model_validate(fields), profile, seed=seed)


def with_images(job: Job, start: Image.Image, end: Image.Image | None = None) -> Job:
    return replace(job, start_image=start, end_image=end)


def picture(width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.mark.parametrize("aspect", list(AspectRatio))
def test_each_aspect_ratio(tiny_engine: Engine, tiny_profile: Profile, aspect: AspectRatio) -> None:
    job = job_for(tiny_profile, aspect_ratio=aspect.value)
    clip = tiny_engine.generate(job, job.segments[0])
    width, height = tiny_profile.mode(Mode.STANDARD).size(aspect)
    assert clip.frames.shape == (3 * 24, height, width, 3) and clip.frames.dtype == np.uint8
    assert clip.fps == 24
    assert clip.audio is not None and clip.sample_rate == 24000
    assert clip.audio.shape == (2, 3 * 24000) and clip.audio.dtype == np.float32
    assert clip.frames.std() > 0  # real decoded pixels, not a constant fill


def test_professional_is_two_stage_at_the_professional_size(tiny_engine: Engine, tiny_profile: Profile) -> None:
    job = job_for(tiny_profile, mode="professional", aspect_ratio="9:16")
    seen: list[tuple[int, int]] = []
    clip = tiny_engine.generate(job, job.segments[0], lambda d, t: seen.append((d, t)) is None)
    spec = tiny_profile.mode(Mode.PROFESSIONAL)
    width, height = spec.size(AspectRatio.TALL)
    assert clip.frames.shape == (72, height, width, 3)
    one, two = spec.stages
    total = one.steps + two.steps
    assert seen == [(i, total) for i in range(1, total + 1)]
    stages = [name for name, _ in clip.timings]
    assert stages.count("stage1_step") == one.steps and stages.count("stage2_step") == two.steps
    assert stages.index("upsample") < stages.index("stage2_step") < stages.index("vae_decode")


def test_progress_and_timings_of_the_distilled_standard_mode(tiny_engine: Engine, tiny_profile: Profile) -> None:
    job = job_for(tiny_profile)
    one, two = job.segments[0].stages
    seen: list[tuple[int, int]] = []
    clip = tiny_engine.generate(job, job.segments[0], lambda d, t: seen.append((d, t)) is None)
    assert (one.steps, two.steps) == (8, 3) and job.total_steps == 11
    assert seen == [(i, 11) for i in range(1, 12)]
    names = [name for name, _ in clip.timings]
    assert names == [
        "text_encoding",
        *["stage1_step"] * 8,
        "upsample",
        *["stage2_step"] * 3,
        "vae_decode",
        "audio_decode",
    ]
    assert all(seconds >= 0 for _, seconds in clip.timings)


def test_audio_off_skips_the_audio_decoder(tiny_engine: Engine, tiny_profile: Profile) -> None:
    job = job_for(tiny_profile, audio=False)
    clip = tiny_engine.generate(job, job.segments[0])
    assert clip.audio is None and clip.sample_rate is None
    assert "audio_decode" not in [name for name, _ in clip.timings]


def test_same_seed_same_output_other_seed_other_output(tiny_engine: Engine, tiny_profile: Profile) -> None:
    job = job_for(tiny_profile, seed=11)
    a = tiny_engine.generate(job, job.segments[0])
    b = tiny_engine.generate(job, job.segments[0])
    np.testing.assert_array_equal(a.frames, b.frames)
    assert a.audio is not None and b.audio is not None
    np.testing.assert_array_equal(a.audio, b.audio)
    other = job_for(tiny_profile, seed=12)
    c = tiny_engine.generate(other, other.segments[0])
    assert not np.array_equal(a.frames, c.frames)


def test_start_image_conditions_the_video(tiny_engine: Engine, tiny_profile: Profile) -> None:
    job = job_for(tiny_profile, seed=3, images=1)
    width, height = job.width, job.height
    with_a = with_images(job, picture(width, height, 1))
    with_b = with_images(job, picture(width, height, 2))
    a = tiny_engine.generate(with_a, with_a.segments[0])
    b = tiny_engine.generate(with_b, with_b.segments[0])
    t2v_job = job_for(tiny_profile, seed=3)
    t2v = tiny_engine.generate(t2v_job, t2v_job.segments[0])
    assert a.frames.shape == b.frames.shape == (72, height, width, 3)
    assert not np.array_equal(a.frames, b.frames) and not np.array_equal(a.frames, t2v.frames)


def test_start_and_end_images_both_condition(tiny_engine: Engine, tiny_profile: Profile) -> None:
    job = job_for(tiny_profile, seed=3, mode="professional", images=2)
    # images of another size are centre-cropped and resized by the engine
    start = picture(300, 500, 1)
    ab = with_images(job, start, picture(300, 500, 2))
    ac = with_images(job, start, picture(300, 500, 3))
    x = tiny_engine.generate(ab, ab.segments[0])
    y = tiny_engine.generate(ac, ac.segments[0])
    assert x.frames.shape == (72, job.height, job.width, 3)
    assert not np.array_equal(x.frames, y.frames)


def test_cancel_at_a_step_boundary(tiny_engine: Engine, tiny_profile: Profile) -> None:
    job = job_for(tiny_profile, mode="professional")
    calls: list[int] = []

    def stop_after_first(done: int, total: int) -> bool:
        calls.append(done)
        return False

    with pytest.raises(Cancelled) as err:
        tiny_engine.generate(job, job.segments[0], stop_after_first)
    assert err.value.code == ErrorCode.CANCELLED and calls == [1]
    # the engine is still usable afterwards
    job = job_for(tiny_profile)
    assert tiny_engine.generate(job, job.segments[0]).frames.shape[0] == 72


def test_a_shot_of_zero_seconds_is_refused(tiny_engine: Engine, tiny_profile: Profile) -> None:
    job = job_for(tiny_profile)
    bad = replace(job.segments[0], seconds=0, num_frames=1)
    job = replace(job, segments=(bad,))
    with pytest.raises(ReelgenError) as err:
        tiny_engine.generate(job, bad)
    assert err.value.code == ErrorCode.INVALID_INPUT and "0 s" in err.value.message


def _stage(job: Job, **change: object) -> Job:
    segment = job.segments[0]
    stages = (replace(segment.stages[0], **change), *segment.stages[1:])  # type: ignore[arg-type]
    return replace(job, segments=(replace(segment, stages=stages),))


@pytest.mark.parametrize(
    ("change", "code", "needle"),
    [
        (lambda j: _stage(j, width=100), ErrorCode.INVALID_INPUT, "100x"),
        (lambda j: _stage(j, sigmas=()), ErrorCode.INVALID_INPUT, "no sigmas"),
        (
            lambda j: _stage(j, guidance={**j.segments[0].stages[0].guidance, "spatio_temporal_guidance_blocks": [7]}),
            ErrorCode.INVALID_PROFILE,
            "[7]",
        ),
        (lambda j: replace(j, width=4096), ErrorCode.INVALID_INPUT, "larger than the generated"),
        (lambda j: job_for(j_profile(), images=1), ErrorCode.INVALID_INPUT, "start image"),
    ],
)
def test_bad_jobs_are_refused_before_any_work(
    tiny_engine: Engine, tiny_profile: Profile, change: Any, code: ErrorCode, needle: str
) -> None:
    job = change(job_for(tiny_profile))
    called: list[int] = []
    with pytest.raises(ReelgenError) as err:
        tiny_engine.generate(job, job.segments[0], lambda d, t: called.append(d) is None)
    assert err.value.code == code and needle in err.value.message and called == []


def j_profile() -> Profile:
    return get_profile("ltx-2-tiny")


def test_a_segment_from_another_job_is_refused(tiny_engine: Engine, tiny_profile: Profile) -> None:
    job = job_for(tiny_profile)
    stranger = replace(job.segments[0], prompt="other", seed=99)
    with pytest.raises(ReelgenError) as err:
        tiny_engine.generate(job, stranger)
    assert err.value.code == ErrorCode.INVALID_INPUT


def test_bad_device_and_load_format(tiny_profile: Profile) -> None:
    with pytest.raises(ReelgenError) as err:
        load_engine(tiny_profile, device="tpu")
    assert err.value.code == ErrorCode.INVALID_SETTINGS and "'tpu'" in err.value.message
    with pytest.raises(ReelgenError) as err:
        load_engine(tiny_profile, device="cpu", load_format="gguf")
    assert err.value.code == ErrorCode.INVALID_SETTINGS and "'gguf'" in err.value.message


def test_cuda_device_without_cuda_is_refused(tiny_profile: Profile) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is present here")
    with pytest.raises(ReelgenError) as err:
        load_engine(tiny_profile, device="cuda:0")
    assert err.value.code == ErrorCode.INVALID_SETTINGS


# ---------------------------------------------------------------------------------------------
# Weights: the ltx-2 profile loads a diffusers-layout directory exactly as it would the real one
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny components saved as the released checkpoint is laid out: pipeline + latent_upsampler/."""
    from diffusers import LTX2Pipeline
    from safetensors.torch import save_file

    from reelgen.engines.lora import build_tiny_lora
    from reelgen.engines.tiny import build_tiny_components, build_tiny_latent_upsampler

    root = tmp_path_factory.mktemp("ltx2-weights")
    comps = build_tiny_components()
    LTX2Pipeline(**comps).save_pretrained(root)
    build_tiny_latent_upsampler().save_pretrained(root / "latent_upsampler")
    # the distilled LoRA beside the checkpoint, in the layout Lightricks publishes (as the tiny profile builds it)
    save_file(build_tiny_lora(comps["transformer"]), root / "ltx-2-19b-distilled-lora-384.safetensors")
    return root


def assert_same_output(a: Clip, b: Clip) -> None:
    """Equal up to float rounding: weights read back from safetensors may sit at other memory
    alignments, which lets BLAS pick other kernels for some shapes (a few pixels off by one)."""
    diff = np.abs(a.frames.astype(np.int16) - b.frames.astype(np.int16))
    assert diff.max() <= 2 and (diff > 0).mean() < 1e-3
    assert a.audio is not None and b.audio is not None
    np.testing.assert_allclose(a.audio, b.audio, atol=1e-3)


def small(job: Job, width: int, height: int) -> Job:
    """The ltx-2 profile's plan at a CPU-sized resolution and two steps per stage (same guidance, LoRAs, seeds);
    the STG block is the tiny transformer's last one (the real block 29 does not exist in 2 layers)."""

    def shrink(stage: Stage) -> Stage:
        half = stage.name == "stage1"
        g = dict(stage.guidance)
        if g["spatio_temporal_guidance_blocks"]:
            g["spatio_temporal_guidance_blocks"] = [1]
        return replace(
            stage,
            width=width // 2 if half else width,
            height=height // 2 if half else height,
            sigmas=stage.sigmas[:2],
            guidance=g,
        )

    segments = tuple(replace(s, stages=tuple(shrink(t) for t in s.stages)) for s in job.segments)
    return replace(job, width=width, height=height, segments=segments)


def ltx2_on(weights: Path) -> Profile:
    """The ltx-2 profile reading ``weights``, its STG block moved to the tiny transformer's last one."""
    profile = get_profile("ltx-2", weights=str(weights))
    modes = {
        mode: replace(spec, stages=tuple(replace(st, stg_blocks=(1,) if st.stg_blocks else ()) for st in spec.stages))
        for mode, spec in profile.modes.items()
    }
    return replace(profile, modes=modes)


def test_ltx2_profile_loads_weights_from_a_directory(
    weights_dir: Path, tiny_engine: Engine, tiny_profile: Profile
) -> None:
    profile = ltx2_on(weights_dir)
    engine = load_engine(profile, device="cpu")
    assert engine.random_weights is False
    # the loaded weights (and the distilled LoRA file beside them) are the saved ones: same job, same output
    standard = small(job_for(profile, seed=5), 128, 64)
    assert_same_output(
        engine.generate(standard, standard.segments[0]), tiny_engine.generate(standard, standard.segments[0])
    )
    # the professional mode runs through the upsampler from DIR/latent_upsampler
    pro = small(job_for(profile, seed=5, mode="professional"), 128, 128)
    assert len(pro.segments[0].stages) == 2
    assert_same_output(engine.generate(pro, pro.segments[0]), tiny_engine.generate(pro, pro.segments[0]))


def test_upsampler_in_its_own_pipeline_directory(tmp_path: Path, weights_dir: Path, tiny_engine: Engine) -> None:
    from diffusers import LTX2LatentUpsamplePipeline

    from reelgen.engines.tiny import build_tiny_components, build_tiny_latent_upsampler

    own = tmp_path / "upsampler-pipeline"
    LTX2LatentUpsamplePipeline(
        vae=build_tiny_components()["vae"], latent_upsampler=build_tiny_latent_upsampler()
    ).save_pretrained(own)
    profile = replace(ltx2_on(weights_dir), upsampler_weights=str(own))
    engine = load_engine(profile, device="cpu")
    pro = small(job_for(profile, seed=6, mode="professional"), 128, 128)
    assert_same_output(engine.generate(pro, pro.segments[0]), tiny_engine.generate(pro, pro.segments[0]))
    # ...and a different upsampler really would change the video
    other = tmp_path / "other-upsampler"
    build_tiny_latent_upsampler(seed=1).save_pretrained(other)
    changed = load_engine(replace(profile, upsampler_weights=str(other)), device="cpu")
    diff = np.abs(
        changed.generate(pro, pro.segments[0]).frames.astype(np.int16)
        - tiny_engine.generate(pro, pro.segments[0]).frames
    )
    assert (diff > 2).mean() > 0.1


def test_missing_weights(tmp_path: Path, weights_dir: Path) -> None:
    with pytest.raises(ReelgenError) as err:
        load_engine(get_profile("ltx-2", weights=str(tmp_path / "nowhere")), device="cpu")
    assert err.value.code == ErrorCode.WEIGHTS_NOT_FOUND and "model_index.json" in err.value.message
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ReelgenError) as err:
        load_engine(get_profile("ltx-2", weights=str(empty)), device="cpu")
    assert err.value.code == ErrorCode.WEIGHTS_NOT_FOUND
    no_upsampler = replace(ltx2_on(weights_dir), upsampler_weights="not_there")
    with pytest.raises(ReelgenError) as err:
        load_engine(no_upsampler, device="cpu")
    assert err.value.code == ErrorCode.WEIGHTS_NOT_FOUND and "not_there" in err.value.message


def test_dummy_builds_the_released_architecture() -> None:
    """Full-size random weights, built on the meta device (no memory): the real sizes and geometry."""
    import torch
    from diffusers import LTX2Pipeline

    from reelgen.engines.architectures import build_dummy_components, build_dummy_latent_upsampler

    comps = build_dummy_components("meta", torch.bfloat16)
    params = {k: sum(p.numel() for p in v.parameters()) for k, v in comps.items() if isinstance(v, torch.nn.Module)}
    assert params["transformer"] == pytest.approx(18.88e9, rel=0.01)
    assert params["text_encoder"] == pytest.approx(12.19e9, rel=0.01)  # Gemma-3-12B
    assert params["connectors"] == pytest.approx(1.43e9, rel=0.01)
    assert all(p.dtype == torch.bfloat16 for p in comps["transformer"].parameters())
    pipe = LTX2Pipeline(**comps)
    assert (pipe.vae_spatial_compression_ratio, pipe.vae_temporal_compression_ratio) == (32, 8)
    assert comps["vae"].config.latent_channels == comps["transformer"].config.in_channels == 128
    assert comps["text_encoder"].config.text_config.hidden_size * 49 == 3840 * 49
    assert comps["vocoder"].config.output_sampling_rate == 24000
    up = build_dummy_latent_upsampler("meta", torch.bfloat16)
    assert up.config.in_channels == 128


def test_tiny_builds_are_identical() -> None:
    import torch

    from reelgen.engines.tiny import build_tiny_components

    a, b = build_tiny_components(), build_tiny_components()
    for name, module in a.items():
        if isinstance(module, torch.nn.Module):
            for (ka, va), (kb, vb) in zip(module.state_dict().items(), b[name].state_dict().items(), strict=True):
                assert ka == kb and torch.equal(va, vb), f"{name}.{ka}"
    # and the real compression geometry
    assert a["vae"].spatial_compression_ratio == 32 and a["vae"].temporal_compression_ratio == 8
    assert a["audio_vae"].config.sample_rate == 16000 and a["audio_vae"].config.mel_hop_length == 160


def test_full_size_dummy_that_cannot_fit_is_refused_up_front() -> None:
    import os

    ram = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    if ram >= 130 * 2**30:
        pytest.skip("this host could hold the full-size fp32 dummy; not building 128 GiB in a test")
    with pytest.raises(ReelgenError) as err:
        load_engine(get_profile("ltx-2"), device="cpu", load_format="dummy")
    assert err.value.code == ErrorCode.INVALID_SETTINGS and "GiB" in err.value.message


def test_multi_shot_images_go_to_the_first_and_last_shots(tiny_engine: Engine, tiny_profile: Profile) -> None:
    shots = [{"prompt": "it wakes", "duration": 1}, {"prompt": "it runs", "duration": 2}]
    job = job_for(tiny_profile, seed=4, multi_shots=True, multi_prompt=shots, images=2)
    start = picture(job.width, job.height, 1)
    one = with_images(job, start, picture(job.width, job.height, 2))
    two = with_images(job, start, picture(job.width, job.height, 3))
    first_one, first_two = (tiny_engine.generate(j, j.segments[0]) for j in (one, two))
    last_one, last_two = (tiny_engine.generate(j, j.segments[1]) for j in (one, two))
    # the end frame conditions only the last shot; the start frame only the first
    np.testing.assert_array_equal(first_one.frames, first_two.frames)
    assert not np.array_equal(last_one.frames, last_two.frames)
    no_start = with_images(one, picture(job.width, job.height, 9), one.end_image)
    np.testing.assert_array_equal(tiny_engine.generate(no_start, no_start.segments[1]).frames, last_one.frames)
    assert last_one.frames.shape == (48, job.height, job.width, 3)
