from __future__ import annotations

import pytest

from reelgen.domain import TaskStatus, derive_seed, model_frames, nearest_aspect, plan
from reelgen.errors import ErrorCode, ReelgenError
from reelgen.profiles import get_profile, load_profiles
from reelgen.schemas import GenerateInput, Shot


@pytest.mark.parametrize(("seconds", "frames"), [(3, 73), (5, 121), (10, 241), (15, 361), (1, 25)])
def test_model_frames_are_8k_plus_1_covering_the_duration(seconds: int, frames: int) -> None:
    assert model_frames(seconds, 24) == frames
    assert (frames - 1) % 8 == 0 and frames - 1 >= seconds * 24


def test_model_frames_other_fps() -> None:
    f = model_frames(3, 25)
    assert (f - 1) % 8 == 0 and f - 1 >= 75 and f - 1 - 75 < 8


@pytest.mark.parametrize(
    ("w", "h", "aspect"),
    [(1920, 1080, "16:9"), (1080, 1920, "9:16"), (500, 500, "1:1"), (1200, 800, "16:9"), (800, 1000, "1:1")],
)
def test_nearest_aspect(w: int, h: int, aspect: str) -> None:
    assert nearest_aspect(w, h) == aspect


def test_plan_sizes_follow_profile() -> None:
    p = get_profile("ltx-2")
    job = plan(GenerateInput(prompt="x", aspect_ratio="9:16"), p, seed=3)  # type: ignore[arg-type]
    # the output is exactly 720x1280; the model generates 768x1280 (two stages: multiples of 64) and crops
    assert (job.width, job.height) == (720, 1280) and (job.generation_width, job.generation_height) == (768, 1280)
    one, two = job.segments[0].stages
    assert (one.width, one.height, two.width, two.height) == (384, 640, 768, 1280)
    assert job.segments[0].num_frames == 121 and one.frames == two.frames == 121
    pro = plan(GenerateInput(prompt="x", mode="professional"), p, seed=3)  # type: ignore[arg-type]
    assert (pro.width, pro.height) == (1920, 1080) and (pro.generation_width, pro.generation_height) == (1920, 1088)
    i2v = plan(GenerateInput(prompt="x"), p, seed=3, start_image_size=(600, 600))
    assert (i2v.width, i2v.height) == (960, 960)


EXACT_SIZES = {
    ("ltx-2", "standard"): {"16:9": (1280, 720), "9:16": (720, 1280), "1:1": (960, 960)},
    ("ltx-2", "professional"): {"16:9": (1920, 1080), "9:16": (1080, 1920), "1:1": (1440, 1440)},
}


@pytest.mark.parametrize("profile_name", ["ltx-2", "ltx-2-tiny"])
@pytest.mark.parametrize("mode", ["standard", "professional"])
@pytest.mark.parametrize("aspect", ["16:9", "9:16", "1:1"])
def test_every_output_size_keeps_the_aspect_and_is_a_crop_of_what_the_model_takes(
    profile_name: str, mode: str, aspect: str
) -> None:
    p = get_profile(profile_name)
    job = plan(GenerateInput(prompt="x", mode=mode, aspect_ratio=aspect), p, seed=1)  # type: ignore[arg-type]
    if (profile_name, mode) in EXACT_SIZES:
        assert (job.width, job.height) == EXACT_SIZES[(profile_name, mode)][aspect]
    ratio = {"16:9": 16 / 9, "9:16": 9 / 16, "1:1": 1.0}[aspect]
    assert abs(job.width / job.height / ratio - 1) <= 0.02
    assert job.width % 2 == 0 and job.height % 2 == 0  # H.264 4:2:0
    multiple = 64 if len(job.segments[0].stages) == 2 else 32
    gw, gh = job.generation_width, job.generation_height
    assert gw % multiple == 0 and gh % multiple == 0
    assert 0 <= gw - job.width < multiple and 0 <= gh - job.height < multiple


def test_the_tiny_profile_mirrors_the_real_one() -> None:
    real, tiny = get_profile("ltx-2"), get_profile("ltx-2-tiny")
    inp = GenerateInput(prompt="x", mode="professional", duration=5)  # type: ignore[arg-type]
    a, b = plan(inp, real, seed=9).segments[0], plan(inp, tiny, seed=9).segments[0]
    assert [s.sigmas for s in a.stages] == [s.sigmas for s in b.stages]
    assert [s.loras for s in a.stages] == [s.loras for s in b.stages]
    assert (a.negative_prompt, a.num_frames, a.seed) == (b.negative_prompt, b.num_frames, b.seed)
    ga, gb = a.stages[0].guidance, b.stages[0].guidance
    assert {k: v for k, v in ga.items() if k != "spatio_temporal_guidance_blocks"} == {
        k: v for k, v in gb.items() if k != "spatio_temporal_guidance_blocks"
    }
    assert ga["spatio_temporal_guidance_blocks"] == [29] and gb["spatio_temporal_guidance_blocks"] == [1]


def test_plan_conditions_by_pixel_frame() -> None:
    p = get_profile("ltx-2")
    two = GenerateInput(prompt="x", duration=5, image_urls=["https://a/1.png", "https://a/2.png"])
    job = plan(two, p, seed=1, start_image_size=(1280, 720))
    for stage in job.segments[0].stages:
        assert stage.pipeline == "LTX2ConditionPipeline"
        # the end image conditions the last frame the clip keeps: frame 119 of 0-119 (5 s at 24 fps)
        assert [(c.image, c.pixel_frame, c.strength, c.crf) for c in stage.conditions] == [
            ("start", 0, 1.0, 33),
            ("end", 119, 1.0, 33),
        ]
    t2v = plan(GenerateInput(prompt="x"), p, seed=1)
    assert {s.pipeline for s in t2v.segments[0].stages} == {"LTX2Pipeline"}
    assert all(not s.conditions for s in t2v.segments[0].stages)


def test_plan_as_json_is_what_the_engine_runs() -> None:
    job = plan(GenerateInput(prompt="a fox", mode="professional", duration=3), get_profile("ltx-2"), seed=5)  # type: ignore[arg-type]
    d = job.as_dict()
    assert (d["width"], d["height"], d["fps"], d["frames"]) == (1920, 1080, 24, 72)
    (seg,) = d["segments"]
    assert seg["seed"] == 5 and seg["frames"] == 73 and seg["prompt"] == "a fox"
    assert seg["negative_prompt"] == get_profile("ltx-2").negative_prompt
    one, two = seg["stages"]
    assert one["sigmas"] == list(job.segments[0].stages[0].sigmas) and len(one["sigmas"]) == 40
    assert one["guidance"]["guidance_scale"] == 3.0 and one["guidance"]["spatio_temporal_guidance_blocks"] == [29]
    assert one["loras"] == [] and two["loras"] == [{"name": "distilled", "strength": 1.0}]
    assert two["guidance"]["guidance_scale"] == 1.0 and two["guidance"]["spatio_temporal_guidance_blocks"] is None
    assert two["upsample"] and not one["upsample"]
    # the distilled standard mode is never guided, so it has no negative prompt
    std = plan(GenerateInput(prompt="a fox"), get_profile("ltx-2"), seed=5).as_dict()
    assert std["segments"][0]["negative_prompt"] is None


def test_plan_multi_shot_segments_and_seeds() -> None:
    shots = (
        Shot(prompt="wide", duration=2),
        Shot(prompt="close", duration=3),
        Shot(prompt="end", duration=1),
    )
    inp = GenerateInput(prompt="a fox", duration=6, multi_shots=True, multi_prompt=shots)
    job = plan(inp, get_profile("ltx-2-tiny"), seed=42)
    assert [s.seconds for s in job.segments] == [2, 3, 1]
    assert job.seconds == 6
    assert job.segments[0].seed == 42
    assert len({s.seed for s in job.segments}) == 3
    # the shot's own text first: the tokenizer truncates on the right, so only the shared part can be cut
    assert [s.prompt for s in job.segments] == ["wide\na fox", "close\na fox", "end\na fox"]
    assert derive_seed(42, 1) == derive_seed(42, 1)


def test_plan_refuses_duration_beyond_profile() -> None:
    p = get_profile("ltx-2-tiny")
    from dataclasses import replace

    short = replace(p, max_duration=10)
    with pytest.raises(ReelgenError) as ei:
        plan(GenerateInput(prompt="x", duration=12), short, seed=0)
    assert ei.value.code == ErrorCode.INVALID_INPUT


def test_status_moves() -> None:
    assert TaskStatus.COMPLETED.is_terminal and not TaskStatus.PROCESSING.is_terminal
    assert TaskStatus.PENDING.can_move_to(TaskStatus.PROCESSING)
    assert not TaskStatus.COMPLETED.can_move_to(TaskStatus.PENDING)


def test_shipped_profiles_are_valid_and_operator_file_works(tmp_path: object) -> None:
    from pathlib import Path

    profiles = load_profiles()
    assert {"ltx-2", "ltx-2-tiny"} <= set(profiles)
    assert profiles["ltx-2-tiny"].is_tiny
    custom = Path(str(tmp_path)) / "p.toml"
    src = (Path(__file__).parents[1] / "reelgen" / "profiles.toml").read_text()
    custom.write_text(src + "\n[ltx-2-tiny.rates.standard]\naudio = 50\nno_audio = 28\n")
    assert get_profile("ltx-2-tiny", custom).rate("standard", True) == 50
    assert get_profile("ltx-2", weights="/models/ltx2").weights == "/models/ltx2"


@pytest.mark.parametrize(
    ("bad", "needle", "message"),
    [
        ('engine = "ltx2"', 'engine = "sora"', "unknown engine"),
        ('generation = "2.0"', 'generation = "1.9"', "unknown generation"),
        ('"16:9" = [128, 72]', '"16:9" = [127, 72]', "even"),
        ("steps = 40\n", "steps = 0\n", "at least 1"),
        ("steps = 40\n", "steps = 40\nsigmas = [0.5]\n", "exactly one of"),
        ("sigmas = [0.909375, 0.725, 0.421875], loras", "sigmas = [0.725, 0.909375], loras", "decreasing"),
        ("guidance = { guidance_scale = 3.0,", "guidance = { cfg_scale = 3.0,", "cfg_scale"),
        ("loras = { distilled = 1.0 } }", "loras = { fast = 1.0 } }", "not declared"),
        ('path = "ltx-2-19b-distilled-lora-384.safetensors"', 'path = "x.safetensors"\ngeneration = "2.3"', "LTX-2.3"),
        ('extends = "ltx-2"', 'extends = "ltx-9"', "unknown profile"),
        ("stg_blocks = [29]\n", "", "needs stg_blocks"),
    ],
)
def test_broken_profiles_are_refused(tmp_path: object, bad: str, needle: str, message: str) -> None:
    from pathlib import Path

    src = (Path(__file__).parents[1] / "reelgen" / "profiles.toml").read_text()
    assert bad in src
    f = Path(str(tmp_path)) / "p.toml"
    f.write_text(src.replace(bad, needle, 1))
    with pytest.raises(ReelgenError) as ei:
        load_profiles(f)
    assert ei.value.code == ErrorCode.INVALID_PROFILE and message in ei.value.message


def test_extends_loop_is_refused(tmp_path: object) -> None:
    from pathlib import Path

    f = Path(str(tmp_path)) / "p.toml"
    f.write_text('[a]\nextends = "b"\n[b]\nextends = "a"\n')
    with pytest.raises(ReelgenError) as ei:
        load_profiles(f)
    assert ei.value.code == ErrorCode.INVALID_PROFILE and "loop" in ei.value.message


def test_missing_profile_file() -> None:
    with pytest.raises(ReelgenError) as ei:
        load_profiles("/nonexistent/profiles.toml")
    assert ei.value.code == ErrorCode.INVALID_PROFILE
