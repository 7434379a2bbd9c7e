"""generation.py: every class of input rendered with the tiny engine to an MP4 and checked with PyAV,
progress and cancellation over a whole job, and ``reelgen generate --local``."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from reelgen import cli
from reelgen.domain import Job, Segment, plan
from reelgen.engines import Cancelled, Clip, Engine, StepCallback
from reelgen.errors import ErrorCode
from reelgen.generation import render
from reelgen.media import MediaInfo, probe
from reelgen.profiles import Profile
from reelgen.schemas import AspectRatio, GenerateInput, Mode


def job_for(profile: Profile, *, seed: int = 1, **inp: object) -> Job:
    fields: dict[str, object] = {"prompt": "a red fox runs through snow", "duration": 3} | inp
    return plan(GenerateInput.model_validate(fields), profile, seed=seed)


def check_file(path: Path, info: MediaInfo, *, size: tuple[int, int], seconds: int, audio: bool) -> None:
    """What every acceptance case checks, read back from the file with PyAV."""
    assert info == probe(path)
    assert (info.width, info.height) == size
    assert abs(info.duration - seconds) <= 1 / 24 + 1e-9 and info.frames == seconds * 24
    with av.open(str(path)) as c:
        assert len(c.streams.video) == 1 and len(c.streams.audio) == (1 if audio else 0)
        decoded = sum(1 for _ in c.decode(video=0))
    assert decoded == seconds * 24
    assert info.has_audio is audio
    if audio:
        assert info.audio_duration is not None and abs(info.audio_duration - info.duration) <= 0.05


@pytest.mark.parametrize("aspect", list(AspectRatio))
def test_each_aspect_ratio_with_audio(
    tmp_path: Path, tiny_engine: Engine, tiny_profile: Profile, aspect: AspectRatio
) -> None:
    job = job_for(tiny_profile, aspect_ratio=aspect.value)
    out = tmp_path / "v.mp4"
    info = render(job, tiny_engine, out)
    check_file(out, info, size=tiny_profile.mode(Mode.STANDARD).size(aspect), seconds=3, audio=True)


def test_audio_off_has_no_audio_stream(tmp_path: Path, tiny_engine: Engine, tiny_profile: Profile) -> None:
    job = job_for(tiny_profile, audio=False)
    out = tmp_path / "silent.mp4"
    info = render(job, tiny_engine, out)
    check_file(out, info, size=(128, 72), seconds=3, audio=False)


def test_professional_two_stage(tmp_path: Path, tiny_engine: Engine, tiny_profile: Profile) -> None:
    job = job_for(tiny_profile, mode="professional", aspect_ratio="1:1")
    out = tmp_path / "pro.mp4"
    info = render(job, tiny_engine, out)
    check_file(out, info, size=tiny_profile.mode(Mode.PROFESSIONAL).size(AspectRatio.SQUARE), seconds=3, audio=True)


@pytest.mark.parametrize("seconds", [3, 15])
def test_durations(tmp_path: Path, tiny_engine: Engine, tiny_profile: Profile, seconds: int) -> None:
    job = job_for(tiny_profile, duration=seconds)
    out = tmp_path / f"{seconds}.mp4"
    info = render(job, tiny_engine, out)
    check_file(out, info, size=(128, 72), seconds=seconds, audio=True)


def test_multi_shot_three_shots(tmp_path: Path, tiny_engine: Engine, tiny_profile: Profile) -> None:
    shots = [
        {"prompt": "the fox sleeps", "duration": 1},
        {"prompt": "it wakes", "duration": 2},
        {"prompt": "it runs", "duration": 2},
    ]
    job = job_for(tiny_profile, duration=5, multi_shots=True, multi_prompt=shots)
    assert [s.seconds for s in job.segments] == [1, 2, 2] and len({s.seed for s in job.segments}) == 3
    progress: list[tuple[int, int]] = []
    out = tmp_path / "shots.mp4"
    info = render(job, tiny_engine, out, lambda d, t: progress.append((d, t)) is None)
    check_file(out, info, size=(128, 72), seconds=5, audio=True)
    # progress runs once over the whole job, across the three generations
    assert progress == [(i, job.total_steps) for i in range(1, job.total_steps + 1)]
    assert job.total_steps == sum(s.steps for s in job.segments) == 3 * job.segments[0].steps


def test_render_reports_stage_timings_and_muxing(tmp_path: Path, tiny_engine: Engine, tiny_profile: Profile) -> None:
    job = job_for(tiny_profile)
    timings: list[tuple[str, float]] = []
    render(job, tiny_engine, tmp_path / "t.mp4", timings=timings)
    names = {name for name, _ in timings}
    assert {"text_encoding", "stage1_step", "vae_decode", "audio_decode", "muxing"} <= names


def test_cancel_mid_job_leaves_no_file(tmp_path: Path, tiny_engine: Engine, tiny_profile: Profile) -> None:
    shots = [{"prompt": "a", "duration": 1}, {"prompt": "b", "duration": 2}]
    job = job_for(tiny_profile, multi_shots=True, multi_prompt=shots)
    seen: list[int] = []

    def stop_in_second_shot(done: int, total: int) -> bool:
        seen.append(done)
        return done < first + 1

    first = job.segments[0].steps
    with pytest.raises(Cancelled):
        render(job, tiny_engine, tmp_path / "never.mp4", stop_in_second_shot)
    assert seen == list(range(1, first + 2))
    assert list(tmp_path.iterdir()) == []  # neither the file nor its temporary


class ShotShadeEngine:
    """A one-behaviour engine (the protocol, not a mock of ours): shot i is a flat grey of 40*(i+1)
    with a tone, so the joined file shows exactly where each shot begins and ends."""

    random_weights = False

    def generate(self, job: Job, segment: Segment, on_step: StepCallback | None = None) -> Clip:
        index = job.segments.index(segment)
        n = segment.seconds * job.fps
        frames = np.full((n, job.height, job.width, 3), 40 * (index + 1), dtype=np.uint8)
        t = np.arange(segment.seconds * 24000, dtype=np.float32) / 24000
        audio = np.stack([0.3 * np.sin(2 * np.pi * 220 * (index + 1) * t)] * 2).astype(np.float32)
        for step in range(1, segment.steps + 1):
            if on_step is not None and on_step(step, segment.steps) is False:
                raise Cancelled()
        return Clip(
            frames=frames, fps=job.fps, audio=audio if job.audio else None, sample_rate=24000 if job.audio else None
        )


def test_cuts_land_at_the_requested_times(tmp_path: Path, tiny_profile: Profile) -> None:
    shots = [{"prompt": "a", "duration": 2}, {"prompt": "b", "duration": 3}, {"prompt": "c", "duration": 1}]
    job = job_for(tiny_profile, duration=6, multi_shots=True, multi_prompt=shots)
    out = tmp_path / "cuts.mp4"
    info = render(job, ShotShadeEngine(), out)
    check_file(out, info, size=(128, 72), seconds=6, audio=True)
    with av.open(str(out)) as c:
        shades = [int(f.to_ndarray(format="rgb24").mean().round()) for f in c.decode(video=0)]
    expected = [40] * 48 + [80] * 72 + [120] * 24
    assert all(abs(a - b) <= 4 for a, b in zip(shades, expected, strict=True))


class WrongShapeEngine(ShotShadeEngine):
    def generate(self, job: Job, segment: Segment, on_step: StepCallback | None = None) -> Clip:
        clip = super().generate(job, segment, on_step)
        return replace(clip, frames=clip.frames[:-1])


def test_an_engine_returning_the_wrong_length_fails_the_job(tmp_path: Path, tiny_profile: Profile) -> None:
    from reelgen.errors import ReelgenError

    with pytest.raises(ReelgenError) as err:
        render(job_for(tiny_profile), WrongShapeEngine(), tmp_path / "x.mp4")
    assert err.value.code == ErrorCode.GENERATION_FAILED and list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# reelgen generate --local
# ---------------------------------------------------------------------------------------------
def save_picture(path: Path, width: int, height: int, color: tuple[int, int, int]) -> Path:
    arr = np.zeros((height, width, 3), dtype=np.uint8)
    arr[...] = color
    arr[height // 4 : 3 * height // 4, width // 4 : 3 * width // 4] = [255 - c for c in color]
    Image.fromarray(arr).save(path)
    return path


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = cli.main(["generate", *argv, "--local", "--profile", "ltx-2-tiny", "--device", "cpu"])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def test_cli_text_to_video(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "fox.mp4"
    rc, stdout, stderr = run_cli(
        capsys, "a red fox runs through snow", "--duration", "3", "-o", str(out), "--aspect-ratio", "9:16"
    )
    assert rc == 0, stderr
    assert f"wrote {out}" in stdout and "noise" in stderr and "random weights" in stderr
    check_file(out, probe(out), size=(72, 128), seconds=3, audio=True)


def test_cli_image_to_video_with_one_png(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    start = save_picture(tmp_path / "start.png", 300, 480, (200, 30, 30))  # portrait → 9:16
    out = tmp_path / "i2v.mp4"
    rc, stdout, stderr = run_cli(
        capsys, "the fox turns", "--image", str(start), "--duration", "3", "--json", "-o", str(out)
    )
    assert rc == 0, stderr
    summary = json.loads(stdout)
    assert summary["model"] == "kling-3-0-image-to-video" and summary["random_weights"] is True
    assert (summary["width"], summary["height"]) == (72, 128)
    check_file(out, probe(out), size=(72, 128), seconds=3, audio=True)


def test_cli_start_and_end_frames_png_and_jpeg(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    start = save_picture(tmp_path / "start.png", 640, 360, (30, 200, 30))  # landscape → 16:9
    end = save_picture(tmp_path / "end.jpg", 500, 500, (30, 30, 200))
    out = tmp_path / "keyframes.mp4"
    rc, _, stderr = run_cli(
        capsys, "the fox crosses", "--image", str(start), "--image", str(end), "--mode", "professional",
        "--no-audio", "--duration", "3", "-o", str(out),
    )  # fmt: skip
    assert rc == 0, stderr
    check_file(out, probe(out), size=(256, 144), seconds=3, audio=False)


def test_cli_multi_shot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "shots.mp4"
    rc, _, stderr = run_cli(
        capsys,
        "a fox",
        "--shot",
        "it sleeps=1",
        "--shot",
        "it wakes=1",
        "--shot",
        "it runs=1",
        "--duration",
        "3",
        "-o",
        str(out),
    )
    assert rc == 0, stderr
    check_file(out, probe(out), size=(128, 72), seconds=3, audio=True)


@pytest.mark.parametrize(
    ("extra", "code"),
    [
        (["--shot", "a=1", "--shot", "b=0", "--shot", "c=2", "--duration", "3"], "INVALID_INPUT"),
        (["--shot", "a=1", "--shot", "b=1", "--duration", "3"], "INVALID_INPUT"),
        (["--shot", "no seconds here"], "INVALID_INPUT"),
        (["--duration", "16"], "INVALID_INPUT"),
        (["--image", "/no/such/file.png"], "INVALID_IMAGE"),
    ],
)
def test_cli_bad_inputs_exit_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], code: str
) -> None:
    rc, stdout, stderr = run_cli(capsys, "a fox", "-o", str(tmp_path / "x.mp4"), *extra)
    assert rc != 0 and stdout == ""
    assert stderr.startswith(f"error: {code}: ") and stderr.count("\n") == 1
    assert not (tmp_path / "x.mp4").exists()


def test_cli_not_an_image(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fake = tmp_path / "fake.png"
    fake.write_bytes(b"GIF89a definitely not a png")
    rc, _, stderr = run_cli(capsys, "a fox", "--image", str(fake), "-o", str(tmp_path / "x.mp4"))
    assert rc != 0 and stderr.startswith("error: INVALID_IMAGE: ")


def test_cli_image_beyond_the_pixel_limit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    big = tmp_path / "big.png"
    Image.new("L", (6001, 6001)).save(big)  # 36.01 MP > 36 MP; compresses to a few kB
    rc, _, stderr = run_cli(capsys, "a fox", "--image", str(big), "-o", str(tmp_path / "x.mp4"))
    assert rc != 0 and stderr.startswith("error: IMAGE_TOO_LARGE: ")
