"""The engine runs its plan as the reference pipelines do, on the tiny model: keyframes by pixel frame,
stage-2 re-conditioning at full size, one generator across stages, LoRAs loaded once and switched per
stage, every model generation, serve-time profile checks, and the plan the command line prints."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from diffusers import LTX2ConditionPipeline, LTX2Pipeline
from PIL import Image

from reelgen.cli import main as cli_main
from reelgen.domain import Job, plan
from reelgen.engines import Engine, check_profile, load_engine
from reelgen.errors import ErrorCode, ReelgenError
from reelgen.profiles import Profile, get_profile
from reelgen.schemas import GenerateInput, Mode


def picture(width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def keyframe_job(profile: Profile, *, mode: str = "standard", duration: int = 3) -> Job:
    inp = GenerateInput.model_validate(
        {"prompt": "a fox", "duration": duration, "mode": mode, "image_urls": ["https://a/1.png", "https://a/2.png"]}
    )
    job = plan(inp, profile, seed=2, start_image_size=(1280, 720))
    return replace(job, start_image=picture(job.width, job.height, 1), end_image=picture(job.width, job.height, 2))


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, list[Any]]]:
    """Record what diffusers' own pipeline code receives (the pipelines run unchanged)."""
    seen: dict[str, list[Any]] = {"keyframe_pixels": [], "condition_sizes": [], "generators": []}
    coords = LTX2ConditionPipeline._prepare_keyframe_coords
    preprocess = LTX2ConditionPipeline.preprocess_conditions

    def record_coords(self: Any, **kwargs: Any) -> Any:
        seen["keyframe_pixels"].append(kwargs["pixel_frame_idx"])
        return coords(self, **kwargs)

    def record_preprocess(self: Any, conditions: Any, height: int, width: int, *args: Any, **kwargs: Any) -> Any:
        seen["condition_sizes"].append((width, height))
        return preprocess(self, conditions, height, width, *args, **kwargs)

    for cls in (LTX2Pipeline, LTX2ConditionPipeline):
        call = cls.__call__

        def record_call(self: Any, *args: Any, _call: Any = call, **kwargs: Any) -> Any:
            seen["generators"].append(kwargs["generator"])
            return _call(self, *args, **kwargs)

        monkeypatch.setattr(cls, "__call__", record_call)
    monkeypatch.setattr(LTX2ConditionPipeline, "_prepare_keyframe_coords", record_coords)
    monkeypatch.setattr(LTX2ConditionPipeline, "preprocess_conditions", record_preprocess)
    yield seen


def test_the_end_image_conditions_the_last_frame_kept(
    tiny_engine: Engine, tiny_profile: Profile, spy: dict[str, list[Any]]
) -> None:
    job = keyframe_job(tiny_profile, duration=3)
    clip = tiny_engine.generate(job, job.segments[0])
    # 3 s at 24 fps keeps frames 0-71 of the 73 generated: the end image is pixel frame 71 in both stages
    # (diffusers' latent index -1 would have put it at frame 65, 0.25 s early)
    assert spy["keyframe_pixels"] == [71, 71]
    assert clip.frames.shape == (72, job.height, job.width, 3)


def test_stage2_reconditions_on_the_images_at_full_size_with_one_generator(
    tiny_engine: Engine, tiny_profile: Profile, spy: dict[str, list[Any]]
) -> None:
    job = keyframe_job(tiny_profile, mode="professional")
    tiny_engine.generate(job, job.segments[0])
    one, two = job.segments[0].stages
    # both stages encode the images, each at its own size (stage 2 at the full generation size)
    assert spy["condition_sizes"] == [(one.width, one.height), (two.width, two.height)]
    assert (two.width, two.height) == (job.generation_width, job.generation_height)
    # one generator feeds both stages (the reference's noiser), not a fresh one reseeded for stage 2
    a, b = spy["generators"]
    assert a is b


def test_a_one_image_job_conditions_only_the_first_frame(
    tiny_engine: Engine, tiny_profile: Profile, spy: dict[str, list[Any]]
) -> None:
    inp = GenerateInput.model_validate({"prompt": "a fox", "duration": 3, "image_urls": ["https://a/1.png"]})
    job = plan(inp, tiny_profile, seed=2, start_image_size=(1280, 720))
    job = replace(job, start_image=picture(job.width, job.height, 1))
    tiny_engine.generate(job, job.segments[0])
    assert spy["keyframe_pixels"] == []  # the start image replaces the first latent frame, no keyframe tokens
    assert len(spy["condition_sizes"]) == 2


@pytest.fixture(scope="module")
def style_lora(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny LoRA file in the layout Lightricks publishes, as an operator would drop it on disk."""
    from safetensors.torch import save_file

    from reelgen.engines.lora import build_tiny_lora
    from reelgen.engines.tiny import build_tiny_components

    path = tmp_path_factory.mktemp("loras") / "style.safetensors"
    save_file(build_tiny_lora(build_tiny_components()["transformer"], seed=11), path)
    return path


def operator_profile(tmp_path: Path, body: str) -> Path:
    f = tmp_path / "profiles.toml"
    f.write_text(body)
    return f


def test_a_lora_changes_the_output_and_switching_it_off_restores_it_bit_for_bit(
    tmp_path: Path, tiny_engine: Engine, tiny_profile: Profile, style_lora: Path
) -> None:
    f = operator_profile(
        tmp_path,
        f"""
[tiny-style]
extends = "ltx-2-tiny"
loras.style = {{ path = "{style_lora}" }}
modes.standard.stage1.loras = {{ distilled = 1.0, style = 0.8 }}
""",
    )
    styled = get_profile("tiny-style", f)
    engine = load_engine(styled, device="cpu")
    std = plan(GenerateInput(prompt="a fox", duration=3), styled, seed=4)
    pro = plan(GenerateInput(prompt="a fox", duration=3, mode="professional"), styled, seed=4)  # type: ignore[arg-type]
    assert std.segments[0].stages[0].loras == (("distilled", 1.0), ("style", 0.8))
    plain = plan(GenerateInput(prompt="a fox", duration=3), tiny_profile, seed=4)
    base_std = tiny_engine.generate(plain, plain.segments[0])
    base_pro = tiny_engine.generate(pro, pro.segments[0])
    before = engine.generate(pro, pro.segments[0])  # style loaded but not active in professional
    with_style = engine.generate(std, std.segments[0])
    after = engine.generate(pro, pro.segments[0])  # ...and nothing of it leaks into the next task
    assert not np.array_equal(with_style.frames, base_std.frames)
    for clip in (before, after):
        np.testing.assert_array_equal(clip.frames, base_pro.frames)
        assert clip.audio is not None and base_pro.audio is not None
        np.testing.assert_array_equal(clip.audio, base_pro.audio)


def test_the_distilled_lora_is_what_stage2_runs(tiny_engine: Engine, tiny_profile: Profile) -> None:
    """Without the distilled LoRA (a profile whose stage 2 names none), stage 2 makes another video."""
    spec = tiny_profile.mode("professional")
    bare = replace(spec, stages=(spec.stages[0], replace(spec.stages[1], loras=())))
    no_lora = replace(tiny_profile, modes={**tiny_profile.modes, Mode.PROFESSIONAL: bare})
    a = plan(GenerateInput(prompt="a fox", duration=3, mode="professional"), tiny_profile, seed=4)  # type: ignore[arg-type]
    b = plan(GenerateInput(prompt="a fox", duration=3, mode="professional"), no_lora, seed=4)  # type: ignore[arg-type]
    assert a.segments[0].stages[1].loras == (("distilled", 1.0),) and b.segments[0].stages[1].loras == ()
    x, y = tiny_engine.generate(a, a.segments[0]), tiny_engine.generate(b, b.segments[0])
    assert not np.array_equal(x.frames, y.frames)


@pytest.mark.parametrize(
    ("lora", "message"),
    [
        ("missing", "does not exist"),
        ("wrong-shape", "features"),
        ("wrong-module", "does not have"),
        ("not-safetensors", "not a safetensors file"),
    ],
)
def test_bad_lora_files_are_refused_before_serving(tmp_path: Path, lora: str, message: str) -> None:
    import torch
    from safetensors.torch import save_file

    path = tmp_path / f"{lora}.safetensors"
    if lora == "wrong-shape":  # a LoRA made for a wider model
        save_file(
            {
                "diffusion_model.transformer_blocks.0.attn1.to_q.lora_A.weight": torch.zeros(4, 4096),
                "diffusion_model.transformer_blocks.0.attn1.to_q.lora_B.weight": torch.zeros(4096, 4),
            },
            path,
        )
    elif lora == "wrong-module":  # another architecture's module names
        save_file({"diffusion_model.double_blocks.0.img_attn.qkv.lora_A.weight": torch.zeros(4, 16)}, path)
    elif lora == "not-safetensors":
        path.write_bytes(b"not a safetensors file at all")
    f = operator_profile(tmp_path, f'[bad]\nextends = "ltx-2-tiny"\nloras.distilled.path = "{path}"\n')
    profile = get_profile("bad", f)
    with pytest.raises(ReelgenError) as err:
        check_profile(profile)
    assert err.value.code == ErrorCode.INVALID_PROFILE and message in err.value.message
    with pytest.raises(ReelgenError) as err:  # the worker's engine load refuses it the same way
        load_engine(profile, device="cpu")
    assert err.value.code == ErrorCode.INVALID_PROFILE


def test_serve_refuses_a_bad_profile_at_start(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = operator_profile(tmp_path, '[bad]\nextends = "ltx-2-tiny"\nmodes.professional.stage1.stg_blocks = [5]\n')
    code = cli_main(["serve", "--profile", "bad", "--profiles-file", str(f), "--data-dir", str(tmp_path / "d")])
    err = capsys.readouterr().err
    assert code != 0 and "INVALID_PROFILE" in err and "stg_blocks [5]" in err


@pytest.mark.parametrize("profile_name", ["ltx-2.3-tiny", "ltx-2.5-tiny"])
def test_every_generation_runs_tiny(profile_name: str) -> None:
    profile = get_profile(profile_name)
    engine = load_engine(profile, device="cpu")
    assert engine.sample_rate == 48000  # the 2.3/2.5 vocoder with bandwidth extension
    for mode in ("standard", "professional"):
        job = plan(GenerateInput(prompt="a fox", duration=3, mode=mode), profile, seed=1)  # type: ignore[arg-type]
        clip = engine.generate(job, job.segments[0])
        assert clip.frames.shape == (72, job.height, job.width, 3)
        assert clip.audio is not None and clip.audio.shape == (2, 3 * 48000)
    job = keyframe_job(profile)
    assert job.segments[0].stages[0].conditions[0].crf == profile.image_crf
    assert engine.generate(job, job.segments[0]).frames.shape == (72, job.height, job.width, 3)


@pytest.mark.parametrize(
    ("generation", "transformer", "connectors"),
    [("2.0", 18.876e9, 1.431e9), ("2.3", 18.989e9, 3.172e9), ("2.5", 18.988e9, 3.172e9)],
)
def test_full_size_architectures_per_generation(generation: str, transformer: float, connectors: float) -> None:
    """``--load-format dummy`` builds each generation's released architecture (meta device: shapes only)."""
    import torch

    from reelgen.engines.architectures import build_dummy_components

    comps = build_dummy_components("meta", torch.bfloat16, generation=generation, text_encoder=False)
    count = {k: sum(p.numel() for p in v.parameters()) for k, v in comps.items() if isinstance(v, torch.nn.Module)}
    assert count["transformer"] == pytest.approx(transformer, rel=1e-3)
    assert count["connectors"] == pytest.approx(connectors, rel=1e-3)
    config = comps["transformer"].config
    assert config.rope_type == "split" and config.num_layers == 48
    assert config.gated_attn is (generation != "2.0") and config.cross_attn_mod is (generation != "2.0")
    assert comps["vocoder"].config.output_sampling_rate == (24000 if generation == "2.0" else 48000)
    assert ("duration_head" in comps) is (generation == "2.5")
    assert (comps["vae"].spatial_compression_ratio, comps["vae"].temporal_compression_ratio) == (32, 8)


def test_multi_shot_text_is_never_truncated_away(tiny_engine: Engine, tiny_profile: Profile) -> None:
    """A shared prompt longer than the token budget cuts only itself: the shot's words come first."""
    shared = "a very long shared description of the scene " * 10
    shots = [{"prompt": "the fox jumps", "duration": 1}, {"prompt": "the owl lands", "duration": 2}]
    inp = GenerateInput.model_validate({"prompt": shared, "duration": 3, "multi_shots": True, "multi_prompt": shots})
    job = plan(inp, tiny_profile, seed=1)
    tokenizer = tiny_engine._components["tokenizer"]  # type: ignore[attr-defined]
    for segment, shot in zip(job.segments, shots, strict=True):
        ids = tokenizer(segment.prompt, truncation=True, max_length=job.max_sequence_length)["input_ids"]
        kept = tokenizer.decode(ids, skip_special_tokens=True)
        assert len(tokenizer(shared)["input_ids"]) > job.max_sequence_length
        assert kept.startswith(shot["prompt"])


def test_generate_plan_prints_what_the_engine_runs(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    image = tmp_path / "start.png"
    picture(640, 360, 1).save(image)
    args = ["generate", "a fox", "--local", "--plan", "--profile", "ltx-2.5", "--mode", "professional"]
    code = cli_main([*args, "--duration", "5", "--image", str(image), "--image", str(image), "--seed", "9"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["profile"], out["generation"], out["width"], out["height"], out["fps"], out["frames"]) == (
        "ltx-2.5",
        "2.5",
        1920,
        1080,
        24,
        120,
    )
    (segment,) = out["segments"]
    assert segment["seed"] == 9 and segment["frames"] == 121
    one, two = segment["stages"]
    assert one["pipeline"] == two["pipeline"] == "LTX2ConditionPipeline"
    assert (one["width"], one["height"], two["width"], two["height"]) == (960, 544, 1920, 1088)
    assert one["conditions"] == [
        {"image": "start", "pixel_frame": 0, "strength": 1.0, "crf": 18, "frames": 1, "guide": False},
        {"image": "end", "pixel_frame": 119, "strength": 1.0, "crf": 18, "frames": 1, "guide": False},
    ]
    assert len(one["sigmas"]) == 30 and one["guidance"]["spatio_temporal_guidance_blocks"] == [28]
    assert two["sigmas"] == [0.909375, 0.725, 0.421875] and two["loras"] == [{"name": "distilled", "strength": 1.0}]
    # the same plan as the API would make: planned from the request, not from a second code path
    request = GenerateInput(prompt="a fox", duration=5, mode="professional", image_urls=["https://a", "https://b"])
    job = plan(request, get_profile("ltx-2.5"), seed=9, start_image_size=(640, 360))
    assert out["segments"] == job.as_dict()["segments"]


def rows_per_step(guidance: dict[str, Any]) -> int:
    """Transformer rows one step of diffusers' LTX-2 pipelines runs for this guidance."""
    cfg = 2 if guidance["guidance_scale"] > 1 or guidance["audio_guidance_scale"] > 1 else 1
    stg = 1 if guidance["stg_scale"] > 0 or guidance["audio_stg_scale"] > 0 else 0
    modality = 1 if guidance["modality_scale"] > 1 or guidance["audio_modality_scale"] > 1 else 0
    return cfg + stg + modality


@pytest.mark.parametrize(("mode", "expected"), [("standard", {"stage1": 8, "stage2": 3}), ("professional", None)])
def test_counted_transformer_rows_match_the_schedule(
    tiny_engine: Engine, tiny_profile: Profile, mode: str, expected: dict[str, int] | None
) -> None:
    job = plan(GenerateInput(prompt="a fox", duration=3, mode=mode), tiny_profile, seed=1)  # type: ignore[arg-type]
    clip = tiny_engine.generate(job, job.segments[0])
    planned = {s.name: s.steps * rows_per_step(s.guidance) for s in job.segments[0].stages}
    assert clip.rows == planned
    if expected is not None:  # the distilled mode: one row per step, 11 forwards in all
        assert clip.rows == expected
    else:  # the guided stage 1: CFG (2 rows) + STG + modality isolation = 4 rows a step
        assert clip.rows == {"stage1": 40 * 4, "stage2": 3}


@pytest.mark.parametrize("mode", ["standard", "professional"])
@pytest.mark.parametrize("model", ["text-to-video", "image-to-video"])
def test_every_aspect_ratio_of_both_modes_and_both_models_has_the_asked_shape(
    tiny_engine: Engine, tiny_profile: Profile, mode: str, model: str
) -> None:
    shapes = {"16:9": (1280, 720), "9:16": (720, 1280), "1:1": (960, 960)}
    for aspect, (w, h) in shapes.items():
        fields: dict[str, Any] = {"prompt": "a fox", "duration": 3, "mode": mode}
        size = None
        if model == "image-to-video":
            fields["image_urls"] = ["https://a/1.png"]
            size = (w, h)  # the start image's own shape picks the aspect ratio
        else:
            fields["aspect_ratio"] = aspect
        job = plan(GenerateInput.model_validate(fields), tiny_profile, seed=3, start_image_size=size)
        if size:
            job = replace(job, start_image=picture(job.width, job.height, 5))
        clip = tiny_engine.generate(job, job.segments[0])
        assert clip.frames.shape == (72, job.height, job.width, 3)
        assert (job.width, job.height) == tiny_profile.mode(mode).size(aspect)  # type: ignore[arg-type]
        assert abs(job.width / job.height / (w / h) - 1) <= 0.02


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('attention_backend = "flash"', "flash"),  # flash-attn is not installed here (nor is a GPU)
        ('attention_backend = "warp"', "must be one of"),
    ],
)
def test_an_attention_backend_that_cannot_run_here_is_refused_before_serving(
    tmp_path: Path, table: str, message: str
) -> None:
    f = operator_profile(tmp_path, f'[fast]\nextends = "ltx-2-tiny"\n[fast.acceleration]\n{table}\n')
    profile = get_profile("fast", f)
    for attempt in (lambda: check_profile(profile), lambda: load_engine(profile, device="cpu")):
        with pytest.raises(ReelgenError) as err:
            attempt()
        assert err.value.code == ErrorCode.INVALID_PROFILE and "attention_backend" in err.value.message
        assert message in err.value.message


def test_unknown_acceleration_values_are_refused(tmp_path: Path) -> None:
    for table, message in (('compile = "max"', "compile 'max'"), ("fp9 = true", "unknown key")):
        f = operator_profile(tmp_path, f'[fast]\nextends = "ltx-2-tiny"\n[fast.acceleration]\n{table}\n')
        with pytest.raises(ReelgenError) as err:
            get_profile("fast", f)
        assert err.value.code == ErrorCode.INVALID_PROFILE and message in err.value.message


def test_regional_compile_agrees_with_eager(tmp_path: Path, tiny_engine: Engine) -> None:
    """``compile = "regional"``: the repeated blocks compiled (and warmed at load), the output within a
    pixel level of eager on the same plan; the switch off is the eager engine every other test uses."""
    # Inductor compiles each graph to C++ on the CPU: about 45 s a graph on 2 cores, and the shipped tiny
    # modes make five or more (two stage sizes, guidance rows of several batch sizes, LoRA on and off).
    # Here both modes are one unguided stage of one size with the distilled LoRA on, so the warm-up at
    # load compiles the block once and every later call (the other mode, the test's job) reuses it:
    # the same blocks, wrapping and warm-up path, without four more graphs of the same code.
    body = """[compiled]
extends = "ltx-2-tiny"
acceleration.compile = "regional"
modes.standard.stage2 = false
modes.professional.stage2 = false
modes.professional.sizes = { "16:9" = [128, 72], "9:16" = [72, 128], "1:1" = [96, 96] }
modes.professional.stage1.steps = 3
modes.professional.stage1.guidance = false
modes.professional.stage1.loras = { distilled = 1.0 }
"""
    f = operator_profile(tmp_path, body)
    profile = get_profile("compiled", f)
    engine = load_engine(profile, device="cpu")  # compiles and runs one warm-up generation per mode
    job = plan(GenerateInput(prompt="a fox", duration=3), profile, seed=8)
    compiled, eager = engine.generate(job, job.segments[0]), tiny_engine.generate(job, job.segments[0])
    diff = np.abs(compiled.frames.astype(np.int16) - eager.frames.astype(np.int16))
    assert diff.max() <= 2 and (diff > 0).mean() < 0.01
    assert compiled.audio is not None and eager.audio is not None
    np.testing.assert_allclose(compiled.audio, eager.audio, atol=1e-4)


def test_audio_off_drops_the_guidance_rows_that_only_serve_audio(tiny_engine: Engine, tmp_path: Path) -> None:
    """A profile whose STG and modality rows are asked for by the audio knobs only: with audio off those
    rows go (and their blocks), the CFG row the video uses stays; with audio on they run."""
    f = operator_profile(
        tmp_path,
        '[audio-stg]\nextends = "ltx-2-tiny"\n'
        "modes.professional.stage1.guidance = { guidance_scale = 3.0, audio_guidance_scale = 7.0, "
        "stg_scale = 0.0, audio_stg_scale = 1.0, modality_scale = 1.0, audio_modality_scale = 3.0 }\n",
    )
    profile = get_profile("audio-stg", f)
    on = plan(GenerateInput(prompt="a fox", duration=3, mode="professional"), profile, seed=1)  # type: ignore[arg-type]
    off = plan(GenerateInput(prompt="a fox", duration=3, mode="professional", audio=False), profile, seed=1)  # type: ignore[arg-type]
    g_on, g_off = on.segments[0].stages[0].guidance, off.segments[0].stages[0].guidance
    assert rows_per_step(g_on) == 4 and rows_per_step(g_off) == 2  # CFG (2 rows) stays: the video uses it
    assert g_off["audio_stg_scale"] == 0.0 and g_off["spatio_temporal_guidance_blocks"] is None
    assert g_off["audio_guidance_scale"] == 7.0  # the video's CFG row serves the audio too: unchanged
    clip = tiny_engine.generate(off, off.segments[0])
    assert clip.rows == {"stage1": 40 * 2, "stage2": 3} and clip.audio is None
    # the shipped profiles' rows all serve the video: audio off changes nothing there
    tiny = get_profile("ltx-2-tiny")
    a = plan(GenerateInput(prompt="x", mode="professional", audio=False), tiny, seed=1)  # type: ignore[arg-type]
    b = plan(GenerateInput(prompt="x", mode="professional"), tiny, seed=1)  # type: ignore[arg-type]
    assert a.segments[0].stages == b.segments[0].stages


def test_the_engine_guide_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/engine.md's Python example, as written (it renders fox.mp4 in the working directory)."""
    import re

    from reelgen.media import probe

    text = (Path(__file__).parents[1] / "docs" / "engine.md").read_text()
    example = re.search(r"```python\n(.*?)```", text, re.S)
    assert example is not None
    monkeypatch.chdir(tmp_path)
    exec(compile(example.group(1), "docs/engine.md", "exec"), {})
    info = probe(tmp_path / "fox.mp4")
    assert (info.width, info.height, info.duration, info.has_audio) == (128, 72, 5.0, True)
