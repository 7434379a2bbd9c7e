"""The fast path's switches on the tiny model: the step cache (what it skips, how far it moves the
output, and that nothing of it leaks into an uncached stage), FP8 refused where it cannot run and the
layers it would convert at full size, VAE tiling by need, the video encoder choice, and overlapped
encoding of multi-shot jobs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from reelgen.cli import main as cli_main
from reelgen.domain import plan
from reelgen.engines import Engine, load_engine
from reelgen.engines.acceleration import (
    check_acceleration,
    decode_bytes,
    fp8_targets,
    pick_video_encoder,
    use_vae_tiling,
)
from reelgen.errors import ErrorCode, ReelgenError
from reelgen.generation import render
from reelgen.profiles import Profile, get_profile
from reelgen.schemas import GenerateInput, Shot


def operator_profile(tmp_path: Path, name: str, acceleration: str) -> Profile:
    f = tmp_path / f"{name}.toml"
    f.write_text(f'["{name}"]\nextends = "ltx-2-tiny"\n["{name}".acceleration]\n{acceleration}\n')
    return get_profile(name, f)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


# -- step cache -----------------------------------------------------------------------------
CACHE = 'step_cache = "taylorseer"\nstep_cache_interval = 3\nstep_cache_warmup = 6'


@pytest.fixture(scope="module")
def cached_profile(tmp_path_factory: pytest.TempPathFactory) -> Profile:
    return operator_profile(tmp_path_factory.mktemp("p"), "cached", CACHE)


@pytest.fixture(scope="module")
def cached_engine(cached_profile: Profile) -> Engine:
    return load_engine(cached_profile, device="cpu")


def test_the_plan_caches_only_long_guided_stages(tmp_path: Path) -> None:
    profile = operator_profile(tmp_path, "cached", CACHE)
    for mode, expected in (("professional", [True, False]), ("standard", [False, False])):
        job = plan(GenerateInput(prompt="a fox", duration=3, mode=mode), profile, seed=1)
        assert [s.step_cache for s in job.segments[0].stages] == expected
        assert [s["step_cache"] for s in job.as_dict()["segments"][0]["stages"]] == expected
    off = plan(GenerateInput(prompt="a fox", duration=3, mode="professional"), get_profile("ltx-2-tiny"), seed=1)
    assert not any(s.step_cache for s in off.segments[0].stages)


def test_the_step_cache_skips_what_its_schedule_says_and_stays_close(
    cached_engine: Engine, cached_profile: Profile, tiny_engine: Engine, tiny_profile: Profile
) -> None:
    inp = GenerateInput(prompt="a fox", duration=3, mode="professional")
    job, plain = plan(inp, cached_profile, seed=3), plan(inp, tiny_profile, seed=3)
    cached, full = cached_engine.generate(job, job.segments[0]), tiny_engine.generate(plain, plain.segments[0])
    # 40 guided steps, three calls each (conditional+unconditional, STG, modality), every call its own
    # history: steps 0-5 run in full, then one in three (7, 10, ... 37): 17 full, 23 predicted per call
    assert cached.cached == {"stage1": 3 * 23}
    assert full.cached == {} and cached.rows == full.rows  # the same rows go in; fewer run the blocks
    assert not np.array_equal(cached.frames, full.frames)  # it does change the output...
    assert psnr(cached.frames, full.frames) > 30  # ...by little (measured ~39 dB on the tiny model)
    assert cached.audio is not None and full.audio is not None
    assert np.abs(cached.audio - full.audio).max() < 0.05


def test_an_uncached_stage_after_a_cached_one_is_bit_identical(
    cached_engine: Engine, cached_profile: Profile, tiny_engine: Engine, tiny_profile: Profile
) -> None:
    """The cache's hooks come off for a stage the plan does not cache: a standard job on the engine
    that just ran a cached professional one equals the same job on an engine that never cached."""
    pro = plan(GenerateInput(prompt="warm", duration=3, mode="professional"), cached_profile, seed=4)
    cached_engine.generate(pro, pro.segments[0])
    job = plan(GenerateInput(prompt="a fox", duration=3), tiny_profile, seed=5)
    after, fresh = cached_engine.generate(job, job.segments[0]), tiny_engine.generate(job, job.segments[0])
    assert after.cached == {}
    np.testing.assert_array_equal(after.frames, fresh.frames)
    assert after.audio is not None and fresh.audio is not None
    np.testing.assert_array_equal(after.audio, fresh.audio)


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('step_cache = "teacache"', "step_cache 'teacache'"),
        ("step_cache_interval = 0", "step_cache_interval 0"),
        ('step_cache_warmup = "six"', "step_cache_warmup 'six'"),
        ('compile = "regional"\nstep_cache = "taylorseer"', "cannot be combined"),
        ('fp8 = "e4m3"', "fp8 'e4m3'"),
        ('vae_tiling = "sometimes"', "vae_tiling 'sometimes'"),
        ('video_encoder = "h265"', "video_encoder 'h265'"),
    ],
)
def test_bad_acceleration_settings_are_refused(tmp_path: Path, table: str, message: str) -> None:
    with pytest.raises(ReelgenError) as err:
        operator_profile(tmp_path, "bad", table)
    assert err.value.code == ErrorCode.INVALID_PROFILE and message in err.value.message


# -- FP8 ------------------------------------------------------------------------------------
def test_fp8_is_refused_on_cpu_at_serve_start_and_at_load(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    profile = operator_profile(tmp_path, "fp8", 'fp8 = "torchao"')
    with pytest.raises(ReelgenError) as err:
        check_acceleration(profile, "cpu")
    assert err.value.code == ErrorCode.INVALID_PROFILE
    assert "compute capability 8.9" in err.value.message and 'fp8 = "off"' in err.value.message
    with pytest.raises(ReelgenError) as err:  # the worker's engine load, before any weight
        load_engine(profile, device="cpu")
    assert "compute capability 8.9" in err.value.message
    f = tmp_path / "fp8.toml"
    code = cli_main(["serve", "--profile", "fp8", "--profiles-file", str(f), "--data-dir", str(tmp_path / "d")])
    assert code != 0 and "INVALID_PROFILE" in capsys.readouterr().err


def test_fp8_converts_the_reference_layers_of_the_full_size_transformer() -> None:
    import torch

    from reelgen.engines.architectures import build_dummy_components

    transformer = build_dummy_components("meta", torch.bfloat16, generation="2.0")["transformer"]
    names = fp8_targets(transformer)
    blocks = {int(n.split(".")[1]) for n in names}
    assert blocks == set(range(1, 43))  # block 0 and the last 5 of 48 stay bf16, as in the reference
    linears = [n for n, m in transformer.named_modules() if isinstance(m, torch.nn.Linear)]
    in_blocks = [n for n in linears if n.startswith("transformer_blocks.")]
    assert set(names) < set(in_blocks) and len(names) == len(in_blocks) * 42 // 48
    assert not any(n.startswith(("proj_out", "audio_proj_out", "patchify_proj")) for n in names)


# -- VAE tiling -----------------------------------------------------------------------------
def test_vae_tiling_by_need(tiny_engine: Engine) -> None:
    import torch

    from reelgen.engines.architectures import build_dummy_components

    vae = build_dummy_components("meta", torch.bfloat16, generation="2.0")["vae"]
    shape = (1, 128, 16, 22, 40)  # 121 frames of 1280x704
    # the decoder's last stage: 128 channels at 1/4 size over 121 frames, bf16, six live copies
    assert decode_bytes(vae, shape, torch.bfloat16) == 121 * 176 * 320 * 128 * 2 * 6
    cpu = torch.device("cpu")
    assert use_vae_tiling("on", vae, shape, cpu) and not use_vae_tiling("off", vae, shape, cpu)
    assert not use_vae_tiling("auto", vae, shape, cpu)  # host memory: never tiled on CPU


def test_forced_vae_tiling_decodes_the_same_video(tmp_path: Path, tiny_engine: Engine) -> None:
    import torch

    engine = load_engine(operator_profile(tmp_path, "tiled", 'vae_tiling = "on"'), device="cpu")
    vae = engine._components["vae"]  # type: ignore[attr-defined]
    vae.tile_sample_min_height = vae.tile_sample_min_width = 128  # tiles smaller than these frames
    vae.tile_sample_stride_height = vae.tile_sample_stride_width = 96
    latents = torch.randn(1, int(vae.config.latent_channels), 3, 6, 8, generator=torch.Generator().manual_seed(0))
    tiled = engine._decode_video(latents)  # type: ignore[attr-defined]
    assert vae.use_tiling
    whole = tiny_engine._decode_video(latents)  # type: ignore[attr-defined]
    assert tiled.shape == whole.shape == (17, 192, 256, 3)
    assert not np.array_equal(tiled, whole)  # tiled for real (with random weights the seams show)...
    corr = np.corrcoef(tiled.astype(np.float64).ravel(), whole.astype(np.float64).ravel())[0, 1]
    assert corr > 0.6  # ...but it is the same picture (0.76 measured on the tiny random VAE)


# -- video encoder and overlapped encoding --------------------------------------------------
def test_the_video_encoder_choice(tmp_path: Path, tiny_engine: Engine) -> None:
    assert pick_video_encoder("auto", "cpu") == "libx264" and pick_video_encoder("libx264", "cuda:0") == "libx264"
    assert tiny_engine.video_encoder == "libx264"  # type: ignore[attr-defined]
    profile = operator_profile(tmp_path, "nvenc", 'video_encoder = "h264_nvenc"')
    with pytest.raises(ReelgenError) as err:
        check_acceleration(profile, "cpu")
    assert err.value.code == ErrorCode.INVALID_PROFILE and "h264_nvenc' cannot run here" in err.value.message


def test_multi_shot_jobs_encode_while_the_next_shot_generates(
    tmp_path: Path, tiny_engine: Engine, tiny_profile: Profile
) -> None:
    inp = GenerateInput(
        prompt="a",
        duration=4,
        multi_shots=True,
        multi_prompt=[Shot(prompt="one", duration=1), Shot(prompt="two", duration=3)],
    )
    job = plan(inp, tiny_profile, seed=9)
    timings: list[tuple[str, float]] = []
    info = render(job, tiny_engine, tmp_path / "out.mp4", timings=timings)
    assert abs(info.duration - 4) < 0.05 and info.has_audio and info.frames == 4 * job.fps
    assert _codec(tmp_path / "out.mp4") == "h264"
    assert [n for n, _ in timings].count("muxing") == 3  # one per shot and the final flush


def _codec(path: Path) -> str:
    import av

    with av.open(str(path)) as container:
        return str(container.streams.video[0].codec_context.name)
