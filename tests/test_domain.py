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
    assert (job.width, job.height) == (704, 1280)
    assert not job.two_stage and job.segments[0].num_frames == 121
    pro = plan(GenerateInput(prompt="x", mode="professional"), p, seed=3)  # type: ignore[arg-type]
    assert (pro.width, pro.height) == (1920, 1088) and pro.two_stage and pro.stage2_sigmas
    i2v = plan(GenerateInput(prompt="x"), p, seed=3, start_image_size=(600, 600))
    assert (i2v.width, i2v.height) == (960, 960)


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
    assert all(s.prompt.startswith("a fox\n") for s in job.segments)
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
    custom.write_text(src.replace("[ltx-2-tiny.rates.standard]\naudio = 42", "[ltx-2-tiny.rates.standard]\naudio = 50"))
    assert get_profile("ltx-2-tiny", custom).rate("standard", True) == 50
    assert get_profile("ltx-2", weights="/models/ltx2").weights == "/models/ltx2"


@pytest.mark.parametrize(
    ("bad", "needle"),
    [
        ('engine = "ltx2"', 'engine = "sora"'),
        ('"16:9" = [96, 64]', '"16:9" = [100, 64]'),
        ("steps = 2\n", "steps = 0\n"),
    ],
)
def test_broken_profiles_are_refused(tmp_path: object, bad: str, needle: str) -> None:
    from pathlib import Path

    src = (Path(__file__).parents[1] / "reelgen" / "profiles.toml").read_text()
    f = Path(str(tmp_path)) / "p.toml"
    f.write_text(src.replace(bad, needle, 1) if bad in src else src)
    assert bad in src
    with pytest.raises(ReelgenError) as ei:
        load_profiles(f)
    assert ei.value.code == ErrorCode.INVALID_PROFILE


def test_missing_profile_file() -> None:
    with pytest.raises(ReelgenError) as ei:
        load_profiles("/nonexistent/profiles.toml")
    assert ei.value.code == ErrorCode.INVALID_PROFILE
