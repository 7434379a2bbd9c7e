"""Issue 17's continuous multi-shot on the tiny profile (``input.multi_shot_continuity``): what the
plan says, what reaches diffusers' condition pipeline for each later shot (the previous shot's last
frames, or shot 1's reference), what stays exactly as before with ``cut``, the MP4's durations,
shapes and audio, the refusals, and the credits through the API and a worker."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
from diffusers import LTX2ConditionPipeline
from PIL import Image

from reelgen.cli import main as cli_main
from reelgen.continuity import CONTINUE_FRAMES, SAME_SUBJECT_STRENGTH, Carry
from reelgen.domain import Job, TaskStatus, plan
from reelgen.engines import Engine
from reelgen.engines.conditions import pad_to
from reelgen.errors import ErrorCode, ReelgenError
from reelgen.generation import render
from reelgen.media import MediaInfo, crossfade_into
from reelgen.planning import model_frames
from reelgen.profiles import Profile
from reelgen.schemas import IMAGE_TO_VIDEO, TEXT_TO_VIDEO, GenerateInput, parse_generate
from tests.test_generation import check_file

SHOTS = [{"prompt": "a fox runs", "duration": 1}, {"prompt": "the fox jumps a fence", "duration": 2}]
PRICE = 126  # ltx-2-tiny standard with audio: 42 credits/s x 3 s, whatever the continuity


def shots_input(continuity: str | None = None, **extra: Any) -> GenerateInput:
    fields: dict[str, Any] = {"prompt": "snow, dusk", "duration": 3, "multi_shots": True, "multi_prompt": SHOTS}
    if continuity is not None:
        fields["multi_shot_continuity"] = continuity
    return GenerateInput.model_validate(fields | extra)


def shots_job(profile: Profile, continuity: str | None = None, **extra: Any) -> Job:
    return plan(shots_input(continuity, **extra), profile, seed=5)


# -- validation ---------------------------------------------------------------------------------
@pytest.mark.parametrize("model", [TEXT_TO_VIDEO, IMAGE_TO_VIDEO])
@pytest.mark.parametrize(
    ("inp", "message"),
    [
        ({"multi_shot_continuity": "continue"}, "'continue' needs multi_shots: true"),
        ({"multi_shot_continuity": "same_subject", "multi_shots": False}, "'same_subject' needs multi_shots: true"),
        ({"multi_shots": True, "multi_prompt": SHOTS, "multi_shot_continuity": "fade"}, "Input should be 'cut'"),
        ({"multi_shots": True, "multi_prompt": SHOTS, "multi_shot_continuity": True}, "Input should be 'cut'"),
    ],
)
def test_bad_continuity_is_invalid_input(model: str, inp: dict[str, Any], message: str) -> None:
    images = {"image_urls": ["https://example.com/a.png"]} if model == IMAGE_TO_VIDEO else {}
    with pytest.raises(ReelgenError) as err:
        parse_generate({"model": model, "input": {"prompt": "a fox", "duration": 3, **images, **inp}})
    assert err.value.code == ErrorCode.INVALID_INPUT
    assert err.value.details is not None
    assert {"field": "input.multi_shot_continuity", "message": err.value.details[0]["message"]} in err.value.details
    assert message in str(err.value)


def test_cut_is_accepted_alone_and_plans_exactly_as_before(tiny_profile: Profile) -> None:
    alone = parse_generate({"model": TEXT_TO_VIDEO, "input": {"prompt": "a fox", "multi_shot_continuity": "cut"}})
    assert alone.input.multi_shot_continuity == "cut"
    before = shots_job(tiny_profile)  # no continuity given: today's request
    cut = shots_job(tiny_profile, "cut")
    assert cut == before and cut.as_dict() == before.as_dict() and cut.continuity == "cut"
    for i, segment in enumerate(cut.segments):
        assert segment.lead_frames == 0 and segment.num_frames == model_frames(segment.seconds, 24)
        assert all(not stage.conditions and stage.pipeline == "LTX2Pipeline" for stage in segment.stages)
        assert Carry(cut).job_for(i) is cut  # the engine is handed the planned job itself


# -- the plan -----------------------------------------------------------------------------------
def test_continue_plans_later_shots_on_the_previous_last_frames(tiny_profile: Profile) -> None:
    job = shots_job(tiny_profile, "continue", mode="professional")
    first, second = job.segments
    assert first.lead_frames == 0 and all(not st.conditions for st in first.stages)
    # 2 s keep 48 frames after the 9 lead frames: 57 = 8k+1 generated (today's 2 s shot: 49)
    assert (second.lead_frames, second.num_frames) == (CONTINUE_FRAMES, 57)
    for stage in second.stages:  # both stages, as the start image is re-conditioned in stage 2
        assert stage.pipeline == "LTX2ConditionPipeline"
        (c,) = stage.conditions
        assert (c.image, c.pixel_frame, c.strength, c.frames, c.guide, c.crf) == ("previous", 0, 1.0, 9, False, 0)
    seg = job.as_dict()["segments"][1]
    assert job.as_dict()["continuity"] == "continue" and seg["lead_frames"] == 9
    assert seg["stages"][0]["conditions"] == [
        {"image": "previous", "pixel_frame": 0, "strength": 1.0, "crf": 0, "frames": 9, "guide": False}
    ]


def test_an_end_image_stays_on_the_last_frame_kept_after_the_lead(tiny_profile: Profile) -> None:
    inp = shots_input("continue", image_urls=["https://a/1.png", "https://a/2.png"])
    job = plan(inp, tiny_profile, seed=5, start_image_size=(1280, 720))
    first, second = job.segments
    assert [c.image for c in first.stages[0].conditions] == ["start"]
    previous, end = second.stages[0].conditions
    assert previous.image == "previous" and (end.image, end.pixel_frame) == ("end", 9 + 48 - 1)


def test_same_subject_guides_later_shots_with_shot_ones_reference(tiny_profile: Profile) -> None:
    job = shots_job(tiny_profile, "same_subject")
    first, second = job.segments
    assert all(not st.conditions for st in first.stages)
    assert second.lead_frames == 0 and second.num_frames == model_frames(2, 24)  # the shot still cuts
    for stage in second.stages:
        (c,) = stage.conditions
        assert (c.image, c.pixel_frame, c.strength, c.guide, c.frames) == (
            "reference",
            0,
            SAME_SUBJECT_STRENGTH,
            True,
            1,
        )
        assert c.crf == tiny_profile.image_crf


def test_a_shot_without_what_it_is_conditioned_on_is_refused(tiny_engine: Engine, tiny_profile: Profile) -> None:
    job = shots_job(tiny_profile, "continue")
    with pytest.raises(ReelgenError, match="conditions on a previous image; none given") as err:
        tiny_engine.generate(job, job.segments[1])  # not through render: no previous shot was made
    assert err.value.code == ErrorCode.INVALID_INPUT


def test_the_plan_command_shows_the_continuity(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["generate", "snow", "--local", "--plan", "--duration", "3", "--shot", "a=1", "--shot", "b=2"]
    assert cli_main([*args, "--continuity", "continue"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["continuity"] == "continue" and [s["lead_frames"] for s in out["segments"]] == [0, 9]
    assert cli_main(["generate", "snow", "--local", "--plan", "--continuity", "same_subject"]) == 2
    assert "needs multi_shots: true" in capsys.readouterr().err


# -- the audio join -----------------------------------------------------------------------------
def test_the_crossfade_keeps_the_length_and_ends_on_the_lead_in() -> None:
    rng = np.random.default_rng(1)
    audio, lead = rng.uniform(-0.5, 0.5, (2, 1000)), rng.uniform(-0.5, 0.5, (2, 300))
    out = crossfade_into(audio, lead)
    assert out.shape == audio.shape and out.dtype == np.float32
    assert np.array_equal(out[:, :700], audio[:, :700].astype(np.float32))  # untouched before the overlap
    assert np.array_equal(out[:, -1], lead[:, -1].astype(np.float32))  # flows into the next clip's first sample
    assert not np.allclose(out[:, 700:], audio[:, 700:])
    # a lead-in longer than the clip crossfades over the whole clip
    assert crossfade_into(audio[:, :100], lead).shape == (2, 100)


# -- through the engine -------------------------------------------------------------------------
def render_recorded(engine: Engine, job: Job, path: Path) -> tuple[MediaInfo, list[dict[str, Any]]]:
    """``render`` with what diffusers' condition pipeline receives per call (its own code runs unchanged)."""
    calls: list[dict[str, Any]] = []
    preprocess = LTX2ConditionPipeline.preprocess_conditions
    coords = LTX2ConditionPipeline._prepare_keyframe_coords

    def record(self: Any, conditions: Any, height: int, width: int, *args: Any, **kw: Any) -> Any:
        calls.append({"conditions": list(conditions or []), "size": (width, height), "keyframes": []})
        return preprocess(self, conditions, height, width, *args, **kw)

    def record_coords(self: Any, **kw: Any) -> Any:
        calls[-1]["keyframes"].append(kw["pixel_frame_idx"])
        return coords(self, **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(LTX2ConditionPipeline, "preprocess_conditions", record)
        mp.setattr(LTX2ConditionPipeline, "_prepare_keyframe_coords", record_coords)
        info = render(job, engine, path)
    return info, calls


@pytest.fixture(scope="module")
def rendered(tiny_engine: Engine, tiny_profile: Profile, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Each continuity rendered once (shots of 1 s and 2 s), with what reached diffusers."""
    out: dict[str, Any] = {}
    base = tmp_path_factory.mktemp("continuity")
    for continuity in ("cut", "continue", "same_subject"):
        job = shots_job(tiny_profile, continuity)
        path = base / f"{continuity}.mp4"
        info, calls = render_recorded(tiny_engine, job, path)
        out[continuity] = {"job": job, "calls": calls, "path": path, "info": info}
    job = out["cut"]["job"]
    out["shot1"] = tiny_engine.generate(job, job.segments[0])  # shot 1 is the same under every continuity
    return out


def decoded(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with av.open(str(path)) as c:
        frames = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
    with av.open(str(path)) as c:
        audio = np.concatenate([f.to_ndarray() for f in c.decode(audio=0)], axis=-1)
    return frames, audio


def padded(frame: np.ndarray, job: Job) -> np.ndarray:
    stage = job.segments[1].stages[-1]
    return np.asarray(pad_to(Image.fromarray(frame), stage.width, stage.height))


def test_cut_hands_diffusers_no_condition(rendered: dict[str, Any]) -> None:
    assert rendered["cut"]["calls"] == []  # text-only pipelines, as before


def test_continue_conditions_the_next_shot_on_the_last_frames(rendered: dict[str, Any]) -> None:
    run, shot1 = rendered["continue"], rendered["shot1"]
    job: Job = run["job"]
    calls = run["calls"]
    stage1, stage2 = job.segments[1].stages
    assert [c["size"] for c in calls] == [(stage1.width, stage1.height), (stage2.width, stage2.height)]
    last = [padded(f, job) for f in shot1.frames[-CONTINUE_FRAMES:]]
    for call in calls:
        (cond,) = call["conditions"]
        # the first shot's last 9 frames, in order, replacing the first latent frames at full strength
        assert cond.index == 0 and cond.strength == 1.0 and call["keyframes"] == []
        assert len(cond.frames) == CONTINUE_FRAMES
        assert all(np.array_equal(np.asarray(got), want) for got, want in zip(cond.frames, last, strict=True))
    assert np.array_equal(np.asarray(calls[0]["conditions"][0].frames[-1]), padded(shot1.frames[-1], job))


def test_same_subject_guides_the_next_shot_with_shot_ones_middle_frame(rendered: dict[str, Any]) -> None:
    run, shot1 = rendered["same_subject"], rendered["shot1"]
    for call in run["calls"]:
        (cond,) = call["conditions"]
        # appended keyframe tokens at pixel frame 0 (they replace nothing), at the low strength
        assert cond.index != 0 and call["keyframes"] == [0] and cond.strength == SAME_SUBJECT_STRENGTH
        assert np.array_equal(np.asarray(cond.frames), padded(shot1.frames[12], run["job"]))
    assert len(run["calls"]) == 2  # both stages of shot 2; shot 1 has none


@pytest.mark.parametrize("continuity", ["cut", "continue", "same_subject"])
def test_the_file_has_the_asked_durations_shape_and_audio(rendered: dict[str, Any], continuity: str) -> None:
    run = rendered[continuity]
    info: MediaInfo = run["info"]
    check_file(run["path"], info, size=(128, 72), seconds=3, audio=True)
    _, audio = decoded(run["path"])
    assert info.sample_rate == 24000 and abs(audio.shape[-1] / 24000 - 3.0) <= 0.05


def test_continuity_changes_the_later_shot_only(rendered: dict[str, Any]) -> None:
    cut, cont, same = (decoded(rendered[c]["path"]) for c in ("cut", "continue", "same_subject"))
    for other in (cont, same):
        assert not np.array_equal(other[0][24:], cut[0][24:])  # shot 2's picture differs from the cut's
        assert not np.array_equal(other[1], cut[1])
    # shot 1 is the same generation in all three (within the encoder's rounding of later frames)
    for other in (cont, same):
        assert np.abs(other[0][:20].astype(int) - cut[0][:20].astype(int)).mean() < 2.0


# -- the API and a worker: price and capture ------------------------------------------------------
@pytest.fixture
def api(ctx: Any) -> Iterator[Any]:
    from fastapi.testclient import TestClient

    from reelgen.api.app import create_app

    with TestClient(create_app(ctx.settings, start_executor=False, ctx=ctx)) as c:
        yield c


def test_the_api_prices_it_as_usual_runs_it_and_captures_exactly(api: Any, ctx: Any, tiny_engine: Engine) -> None:
    from reelgen.attempt import Worker
    from reelgen.schemas import VIDEO_EXTEND
    from reelgen.store import tasks
    from tests.factories import generate_body, make_account

    acc = make_account(ctx, credits=1000)
    models = api.get("/api/v1/models").json()["data"]
    # every model with shots takes it; the extend model continues one video and has none
    shots = [m for m in models if "multi_shots" in m["inputs"]]
    assert len(shots) == len(models) - 1 and all("multi_shot_continuity" in m["inputs"] for m in shots)
    assert not any("multi_shot_continuity" in m["inputs"] for m in models if m["id"] == VIDEO_EXTEND)
    variants = api.get("/openapi.json").json()["components"]["schemas"]["GenerateRequest"]["oneOf"]
    props = [v["properties"]["input"]["properties"] for v in variants]
    props = [p for p in props if "multi_shots" in p]
    assert len(props) == len(variants) - 1
    assert all(p["multi_shot_continuity"]["enum"] == ["cut", "continue", "same_subject", None] for p in props)
    refused = api.post("/api/v1/generate", json=generate_body(multi_shot_continuity="continue"), headers=acc.headers)
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "INVALID_INPUT"
    assert refused.json()["error"]["details"][0]["field"] == "input.multi_shot_continuity"
    body = generate_body(multi_shots=True, multi_prompt=SHOTS, multi_shot_continuity="continue")
    assert api.post("/api/v1/estimate", json=body, headers=acc.headers).json()["data"]["credits"] == PRICE
    r = api.post("/api/v1/generate", json=body, headers=acc.headers)
    assert r.status_code == 200, r.text
    assert r.json()["data"]["creditsUsed"] == PRICE and r.json()["data"]["creditsRemaining"] == 1000 - PRICE
    task_id = r.json()["data"]["id"]
    assert (
        api.get(f"/api/v1/tasks/{task_id}", headers=acc.headers).json()["data"]["input"]["multi_shot_continuity"]
        == "continue"
    )
    worker = Worker(ctx.settings, device="cpu", worker_id="w-continuity")
    worker.load(engine=tiny_engine)
    try:
        from datetime import UTC, datetime

        row = ctx.db.run(
            lambda conn: tasks.claim(conn, worker_id="w-continuity", lease_seconds=60, now=datetime.now(UTC)),
            immediate=True,
        )
        assert row is not None and row.id == task_id
        worker.run_attempt(row)
    finally:
        worker.db.dispose()
    task = api.get(f"/api/v1/tasks/{task_id}", headers=acc.headers).json()["data"]
    assert task["status"] == TaskStatus.COMPLETED.value, task
    assert abs(task["output"]["duration"] - 3.0) <= 1 / 24 + 1e-6 and task["output"]["hasAudio"] is True
    assert api.get("/api/v1/credits", headers=acc.headers).json()["data"] == {"credits": 1000 - PRICE, "reserved": 0}


@pytest.mark.parametrize(
    ("inp", "valid"),
    [
        ({"multi_shot_continuity": "cut"}, True),
        ({"multi_shot_continuity": None}, True),
        ({"multi_shot_continuity": "continue"}, False),
        ({"multi_shots": False, "multi_shot_continuity": "same_subject"}, False),
        ({"multi_shots": True, "multi_prompt": SHOTS, "multi_shot_continuity": "same_subject"}, True),
        ({"multi_shots": True, "multi_prompt": SHOTS, "multi_shot_continuity": "fade"}, False),
    ],
)
def test_the_document_and_the_parser_agree(api: Any, inp: dict[str, Any], valid: bool) -> None:
    import jsonschema

    spec = api.get("/openapi.json").json()
    schema = {**spec["components"]["schemas"]["GenerateRequest"], "components": spec["components"]}
    body = {"model": TEXT_TO_VIDEO, "input": {"prompt": "a fox", "duration": 3, **inp}}
    assert (list(jsonschema.Draft202012Validator(schema).iter_errors(body)) == []) is valid
    if valid:
        parse_generate(body)
    else:
        with pytest.raises(ReelgenError) as err:
            parse_generate(body)
        assert err.value.code == ErrorCode.INVALID_INPUT


def test_the_mcp_door_takes_it_with_the_same_rules(live_api: Any, ctx: Any) -> None:
    from mcp import Client

    from tests.factories import make_account
    from tests.test_mcp import http_client, run

    owner = make_account(ctx, credits=1000, name="agent")
    shots = {"prompt": "snow", "duration": 3, "multi_shots": True, "multi_prompt": SHOTS}

    async def body(c: Client) -> tuple[Any, Any]:
        alone = await c.call_tool("estimate", {"prompt": "x", "duration": 3, "multi_shot_continuity": "continue"})
        priced = await c.call_tool("estimate", {**shots, "multi_shot_continuity": "same_subject"})
        assert alone.is_error and not priced.is_error, priced
        return alone.content[0].text, priced.structured_content  # type: ignore[union-attr]

    refused, priced = run(http_client(live_api.url, owner.key), body)
    assert "INVALID_INPUT:" in refused and "multi_shot_continuity" in refused
    assert priced["credits"] == PRICE


def test_a_device_group_carries_the_frames_on_every_rank(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Two processes (cfg=2): rank 1 carries its own shot-1 frames into shot 2 (``devicegroup.follow``),
    so the group completes and makes the video one process makes."""
    common = ["generate", "snow", "--local", "--duration", "3", "--seed", "7", "--json", "--continuity", "continue"]
    common += ["--shot", "a fox runs=1", "--shot", "the fox jumps=2"]
    assert cli_main([*common, "-o", str(tmp_path / "one.mp4")]) == 0
    one = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert cli_main([*common, "--devices", "cpu,cpu", "--parallel", "cfg=2", "-o", str(tmp_path / "two.mp4")]) == 0
    two = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in ["duration", "width", "height", "fps", "frames", "has_audio", "sample_rate"]:
        assert two[key] == one[key], key
    a, b = decoded(tmp_path / "one.mp4")[0], decoded(tmp_path / "two.mp4")[0]
    assert np.abs(a.astype(int) - b.astype(int)).mean() < 2.0


def test_the_memory_estimate_counts_the_lead_frames_and_the_guide_tokens() -> None:
    from reelgen.memory import estimate
    from reelgen.profiles import get_profile

    ltx2 = get_profile("ltx-2")
    cut, cont, same = (estimate(shots_input(c), ltx2) for c in ("cut", "continue", "same_subject"))
    assert cont.activations > cut.activations and same.activations > cut.activations
    assert cont.decode >= cut.decode and cont.weights == cut.weights and cont.loras == cut.loras
    # one shot has no later shot: nothing more to hold
    alone = GenerateInput.model_validate(
        {"prompt": "snow", "duration": 3, "multi_shots": True, "multi_prompt": [{"prompt": "a", "duration": 3}]}
    )
    assert estimate(alone.model_copy(update={"multi_shot_continuity": "continue"}), ltx2) == estimate(alone, ltx2)
