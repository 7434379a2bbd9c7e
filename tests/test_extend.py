"""The extend model (issue 17): ``kling-3-0-video-extend`` continues a completed task of the same account.

The refusals run on both databases through the service (nothing is reserved for any of them); the
generations run on the tiny profile in a real worker (``reelgen.attempt.Worker`` in this process, on
the session's tiny engine): one continuous MP4 whose duration is the sum (video and audio), whose
first part is the original, credits exact, extending an extension, and a failed extension that
releases its hold. The SDK and the CLI are driven against a live server.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import select

from reelgen import service
from reelgen.attempt import Worker
from reelgen.cli import main as cli_main
from reelgen.client import Client
from reelgen.continuity import lead_condition
from reelgen.domain import TaskStatus
from reelgen.engines import Engine
from reelgen.errors import ErrorCode, ReelgenError
from reelgen.extension import LEAD_FRAMES, plan_extension, read_original
from reelgen.media import probe, read_audio, read_frames
from reelgen.schemas import MAX_EXTENDED_SECONDS, VIDEO_EXTEND
from reelgen.store import ledger, tasks
from reelgen.store.db import Database
from reelgen.store.tables import movements
from tests.api_fixtures import LiveServer, make_ctx, make_settings
from tests.factories import Account, generate_body, make_account

GRANT = 5000


def extend_body(task_id: str, **inp: Any) -> dict[str, Any]:
    return {"model": VIDEO_EXTEND, "input": {"task_id": task_id, "prompt": "the fox jumps", "duration": 3, **inp}}


def balance(ctx: service.Context, account: Account) -> ledger.Balance:
    return ctx.db.run(lambda conn: ledger.balance(conn, account.id))


def refused(ctx: service.Context, account: Account, body: dict[str, Any]) -> ReelgenError:
    """Submit ``body`` expecting a refusal; nothing may be reserved or created by it."""
    before = balance(ctx, account)
    count = ctx.db.run(lambda conn: len(tasks.list_for_account(conn, account.id, limit=100)))
    with pytest.raises(ReelgenError) as err:
        service.submit(ctx, account.id, body)
    assert balance(ctx, account) == before
    assert ctx.db.run(lambda conn: len(tasks.list_for_account(conn, account.id, limit=100))) == count
    with pytest.raises(ReelgenError) as estimated:  # the estimate refuses alike
        service.estimate(ctx, account.id, body)
    assert estimated.value.code == err.value.code
    return err.value


def completed(
    ctx: service.Context, account: Account, *, body: dict[str, Any] | None = None, seconds: float = 3.0
) -> str:
    """A task of ``account`` completed with a stored (placeholder) result: the refusals never read it."""
    task_id = service.submit(ctx, account.id, body or generate_body(mode="professional"))["id"]
    src = ctx.storage.temp_path("placeholder.mp4")
    src.write_bytes(b"not decoded at submit")
    key = f"{task_id}/1.mp4"
    ctx.storage.put(key, src)

    def finish(conn: Any) -> None:
        now = datetime.now(UTC)
        row = tasks.claim(conn, worker_id="w", lease_seconds=60, now=now)
        assert row is not None and row.id == task_id
        assert tasks.complete(conn, task_id, 1, result_key=key, duration=seconds, has_audio=True, now=now)

    ctx.db.run(finish, immediate=True)
    return task_id


def test_refusals_reserve_nothing_and_answer_like_get(ctx: service.Context) -> None:
    owner = make_account(ctx, credits=GRANT, name="owner")
    other = make_account(ctx, credits=GRANT, name="other")
    done = completed(ctx, owner)

    # unknown and foreign ids: the very answer GET /tasks/{id} gives
    for task_id in ("0" * 32, completed(ctx, other), "not-an-id"):
        err = refused(ctx, owner, extend_body(task_id))
        assert (err.code, err.message) == (ErrorCode.TASK_NOT_FOUND, "Task not found.")
        with pytest.raises(ReelgenError) as got:
            service.get_task(ctx, owner.id, task_id, "http://test")
        assert (got.value.code, got.value.message) == (err.code, err.message)

    # a task that is not completed (pending, failed)
    pending = service.submit(ctx, owner.id, generate_body())["id"]
    err = refused(ctx, owner, extend_body(pending))
    assert err.code == ErrorCode.INVALID_INPUT and "the task is pending" in err.message
    ctx.db.run(lambda conn: tasks.cancel(conn, pending, datetime.now(UTC)), immediate=True)
    err = refused(ctx, owner, extend_body(pending))
    assert err.code == ErrorCode.INVALID_INPUT and "the task is cancelled" in err.message
    assert err.details == [{"field": "input.task_id", "message": err.message.split(": ", 2)[2]}]

    # a result that expired (gone from storage) or was deleted
    expired = completed(ctx, owner)
    assert ctx.storage.delete(f"{expired}/1.mp4")
    assert "has expired" in refused(ctx, owner, extend_body(expired)).message
    from reelgen.store import videos

    ctx.db.run(lambda conn: videos.delete_result(conn, done, datetime.now(UTC)), immediate=True)
    assert "was deleted" in refused(ctx, owner, extend_body(done)).message

    # the input's own rules
    ok = completed(ctx, owner)
    for bad, field in (
        ({"duration": 2}, "input.duration"),
        ({"duration": 16}, "input.duration"),
        ({"mode": "standard"}, "input.mode"),  # the original is professional
        ({"aspect_ratio": "16:9"}, "input.aspect_ratio"),  # not an input of the extend model
        ({"audio": "yes"}, "input.audio"),
    ):
        err = refused(ctx, owner, extend_body(ok, **bad))
        assert err.code == ErrorCode.INVALID_INPUT and [d["field"] for d in err.details or []] == [field], bad
    err = refused(ctx, owner, {"model": VIDEO_EXTEND, "input": {"task_id": ok, "duration": 3}})
    assert err.code == ErrorCode.MISSING_PROMPT

    # the total: an extended video lasts at most MAX_EXTENDED_SECONDS
    long = completed(ctx, owner, seconds=MAX_EXTENDED_SECONDS - 2.0)
    err = refused(ctx, owner, extend_body(long))
    assert err.code == ErrorCode.INVALID_INPUT and f"{MAX_EXTENDED_SECONDS} s" in err.message


def test_price_is_added_seconds_at_the_original_mode_rate(ctx: service.Context) -> None:
    owner = make_account(ctx, credits=GRANT)
    pro = completed(ctx, owner)  # professional, with sound
    before = balance(ctx, owner)
    assert service.estimate(ctx, owner.id, extend_body(pro, duration=4))["credits"] == 56 * 4
    sub = service.submit(ctx, owner.id, extend_body(pro, duration=4))
    assert sub["creditsUsed"] == 56 * 4 and sub["creditsRemaining"] == before.available - 224
    row = ctx.db.run(lambda conn: tasks.get(conn, sub["id"]))
    assert row is not None and row.model == VIDEO_EXTEND and row.price == 224
    # the mode is inherited and shown; audio defaults to the original's
    assert row.input == {
        "task_id": pro,
        "prompt": "the fox jumps",
        "duration": 4,
        "audio": True,
        "mode": "professional",
    }
    silent = service.submit(ctx, owner.id, extend_body(pro, audio=False, mode="professional"))
    assert silent["creditsUsed"] == 38 * 3


def test_catalogue_lists_the_extend_model(client: Any) -> None:
    data = client.get("/api/v1/models", params={"type": "video"}).json()["data"]
    (ext,) = [m for m in data if m["id"] == VIDEO_EXTEND]
    assert ext["inputs"][:4] == ["task_id", "prompt", "duration", "audio"]
    assert ext["pricing"]["professional"] == {"audio": 56, "noAudio": 38}
    assert ext["extends"] == {"inheritsMode": True, "maxTotalSeconds": MAX_EXTENDED_SECONDS}
    assert client.get("/api/v1/models", params={"type": "image"}).json()["data"] == []
    doc = client.get("/openapi.json").json()
    variants = doc["components"]["schemas"]["GenerateRequest"]["oneOf"]
    (schema,) = [v for v in variants if v["properties"]["model"] == {"const": VIDEO_EXTEND}]
    assert schema["properties"]["input"]["required"] == ["task_id", "prompt"]
    assert "404" in doc["paths"]["/api/v1/generate"]["post"]["responses"]


# --------------------------------------------------------------------------------------------
# Generations in a real worker (SQLite; the tiny engine of the session)
# --------------------------------------------------------------------------------------------
@contextmanager
def worker_rig(tmp_path: Path, engine: Engine, **settings: Any) -> Iterator[tuple[service.Context, Worker]]:
    """A SQLite store, the service over it and a worker in this process (``settings``: overrides)."""
    db = Database(f"sqlite:///{tmp_path / 'reelgen.db'}")
    db.upgrade()
    ctx = make_ctx(make_settings(tmp_path, db, **settings), db)
    worker = Worker(ctx.settings, device="cpu", worker_id="extend-worker")
    worker.load(engine=engine)
    try:
        yield ctx, worker
    finally:
        worker.db.dispose()
        db.dispose()


@pytest.fixture
def rig(tmp_path: Path, tiny_engine: Engine) -> Iterator[tuple[service.Context, Worker]]:
    with worker_rig(tmp_path, tiny_engine) as made:
        yield made


def run_next(ctx: service.Context, worker: Worker) -> tasks.TaskRow:
    """Claim the next task and run it to its outcome in ``worker``; the task as it ended."""
    row = ctx.db.run(worker._claim, immediate=True)
    assert row is not None
    worker.run_attempt(row)
    done = ctx.db.run(lambda conn: tasks.get(conn, row.id))
    assert done is not None
    return done


def frames_of(path: Path) -> np.ndarray:
    return np.concatenate(list(read_frames(path)))


def test_extend_makes_one_continuous_file_and_charges_the_added_seconds(
    rig: tuple[service.Context, Worker],
) -> None:
    ctx, worker = rig
    owner = make_account(ctx, credits=GRANT)
    first = service.submit(ctx, owner.id, generate_body(duration=3, audio=True))["id"]
    original = run_next(ctx, worker)
    assert original.status == TaskStatus.COMPLETED and original.result_key
    orig_path = ctx.storage.local_path(original.result_key)
    assert orig_path is not None

    sub = service.submit(ctx, owner.id, extend_body(first, duration=3))
    assert sub["creditsUsed"] == 42 * 3
    ext = run_next(ctx, worker)
    assert ext.id == sub["id"] and ext.status == TaskStatus.COMPLETED, ext.error_message
    assert ext.result_key is not None
    path = ctx.storage.local_path(ext.result_key)
    assert path is not None
    info = probe(path)
    fps = ctx.profile.fps
    # one file: the sum of the durations, video and audio, within one frame
    assert info.frames == 6 * fps and abs(info.duration - 6.0) <= 1 / fps
    assert info.has_audio and info.audio_duration is not None and abs(info.audio_duration - 6.0) <= 1 / fps
    assert ext.result_duration is not None and abs(ext.result_duration - 6.0) <= 1 / fps
    assert (info.width, info.height) == (probe(orig_path).width, probe(orig_path).height)

    # the first part is the original (re-encoded: near, not bit-equal), the rest is new
    before, after = frames_of(orig_path).astype(np.int16), frames_of(path).astype(np.int16)
    head = np.abs(after[: len(before)] - before).mean()
    new = np.abs(after[len(before) :] - before[-1]).mean()
    assert head < 8.0 and new > 3 * head, (head, new)  # tiny output is noise: the hardest case for H.264
    # the soundtrack's first part is the original's, up to the cross-fade over the lead
    orig_sound, sound = read_audio(orig_path), read_audio(path)
    assert orig_sound is not None and sound is not None and sound[1] == orig_sound[1]
    rate = sound[1]
    keep = 3 * rate - round(LEAD_FRAMES * rate / fps) - 2048  # stay clear of the AAC frames around the fade
    a, b = orig_sound[0][:, 1024:keep], sound[0][:, 1024:keep]
    assert np.abs(a - b).mean() < 0.25 * np.abs(a).mean() + 1e-4

    # credits: exactly the two prices captured, nothing held
    assert balance(ctx, owner) == ledger.Balance(available=GRANT - 2 * 126, reserved=0, captured=2 * 126, granted=GRANT)

    # an extension is a completed task too: extend it, silent this time (no audio stream at all)
    again = service.submit(ctx, owner.id, extend_body(ext.id, duration=3, audio=False))
    assert again["creditsUsed"] == 28 * 3
    twice = run_next(ctx, worker)
    assert twice.status == TaskStatus.COMPLETED, twice.error_message
    assert twice.result_key is not None
    path2 = ctx.storage.local_path(twice.result_key)
    assert path2 is not None
    info2 = probe(path2)
    assert info2.frames == 9 * fps and not info2.has_audio and twice.result_has_audio is False
    assert balance(ctx, owner).captured == 2 * 126 + 84


def test_a_failed_extension_releases_its_credits(rig: tuple[service.Context, Worker]) -> None:
    ctx, worker = rig
    owner = make_account(ctx, credits=GRANT)
    first = service.submit(ctx, owner.id, generate_body(duration=3, audio=False))["id"]
    original = run_next(ctx, worker)
    assert original.status == TaskStatus.COMPLETED and original.result_key

    sub = service.submit(ctx, owner.id, extend_body(first))
    assert balance(ctx, owner).reserved == 28 * 3  # silent original: audio defaults to off
    ctx.storage.delete(original.result_key)  # the original's file is gone before the worker runs
    failed = run_next(ctx, worker)
    assert failed.id == sub["id"] and failed.status == TaskStatus.FAILED
    assert failed.error_code == ErrorCode.INVALID_INPUT and "no longer available" in (failed.error_message or "")
    assert balance(ctx, owner) == ledger.Balance(available=GRANT - 84, reserved=0, captured=84, granted=GRANT)
    stmt = select(movements.c.kind).where(movements.c.task_id == sub["id"])
    assert sorted(ctx.db.run(lambda conn: conn.execute(stmt).scalars().all())) == ["release", "reserve"]
    assert ctx.db.run(ledger.check) == []


def test_extend_reads_the_original_from_an_s3_bucket(tmp_path: Path, tiny_engine: Engine) -> None:
    """With outputs in a bucket (moto stand-in) the worker copies the original out of it, and the
    joined video goes back into it."""
    from tests.s3_fixtures import s3_server
    from tests.test_s3_e2e import _S3_FIELDS
    from tests.test_storage_s3 import bucket_settings

    with s3_server("moto", tmp_path / "s3") as server:
        base = bucket_settings(tmp_path, server, "extend-bucket")
        with worker_rig(tmp_path, tiny_engine, **{k: getattr(base, k) for k in _S3_FIELDS}) as (ctx, worker):
            assert ctx.storage.local_path("x/1.mp4") is None  # a bucket, not files
            owner = make_account(ctx, credits=GRANT)
            first = service.submit(ctx, owner.id, generate_body(duration=3, audio=True))["id"]
            assert run_next(ctx, worker).status == TaskStatus.COMPLETED
            service.submit(ctx, owner.id, extend_body(first, duration=3))
            ext = run_next(ctx, worker)
            assert ext.status == TaskStatus.COMPLETED, ext.error_message
            assert ext.result_key is not None and ctx.storage.exists(ext.result_key)
            out = tmp_path / "joined.mp4"
            with ctx.storage.open(ext.result_key) as f:
                out.write_bytes(f.read())
            info = probe(out)
            assert info.frames == 6 * ctx.profile.fps and info.has_audio
            assert list(ctx.storage.temp_path("x").parent.glob("*.original.mp4")) == []  # the copy is gone


def test_plan_leads_with_the_original_last_frames(tmp_path: Path, tiny_engine: Engine) -> None:
    """The plan: one segment in the original's mode and size that continues the original's last
    ``LEAD_FRAMES`` frames as a ``continue`` shot does (the one ``previous`` condition at frame 0,
    the frames in ``Job.previous_frames``), 8k+1 frames covering the lead and the added seconds."""
    from reelgen.domain import plan
    from reelgen.generation import render
    from reelgen.profiles import get_profile
    from reelgen.schemas import GenerateInput

    profile = get_profile("ltx-2-tiny")
    job = plan(GenerateInput(prompt="a fox", duration=3, aspect_ratio="9:16", audio=False), profile, seed=3)
    src = tmp_path / "orig.mp4"
    render(job, tiny_engine, src)
    original = read_original(src)
    assert original.frames == 3 * profile.fps and original.tail.shape == (LEAD_FRAMES, job.height, job.width, 3)
    assert original.audio is None
    ext = plan_extension(
        {"task_id": "t", "prompt": "on", "duration": 4, "mode": "standard", "audio": True},
        profile,
        seed=5,
        original=original,
    )
    (segment,) = ext.segments
    assert (ext.width, ext.height, ext.audio) == (job.width, job.height, True)
    assert segment.lead_frames == LEAD_FRAMES and segment.num_frames % 8 == 1
    assert segment.num_frames >= LEAD_FRAMES + 4 * profile.fps
    assert all(c == lead_condition(LEAD_FRAMES) for st in segment.stages for c in st.conditions)
    assert len(ext.previous_frames) == LEAD_FRAMES and ext.previous_frames[-1].size == (job.width, job.height)
    assert np.array_equal(np.asarray(ext.previous_frames[0]), original.tail[0])
    assert ext.as_dict()["segments"][0]["lead_frames"] == LEAD_FRAMES


# --------------------------------------------------------------------------------------------
# The SDK and the CLI against a live server (no worker: the task stays pending)
# --------------------------------------------------------------------------------------------
def test_sdk_and_cli_submit_an_extension(
    live_api: LiveServer, ctx: service.Context, capsys: pytest.CaptureFixture[str]
) -> None:
    owner = make_account(ctx, credits=GRANT)
    done = completed(ctx, owner)
    with Client(owner.key, base_url=live_api.url) as api:
        task = api.extend(done, "the fox jumps", duration=3)
        assert task.model == VIDEO_EXTEND and task.creditsUsed == 56 * 3
        with pytest.raises(ReelgenError) as err:
            api.extend("0" * 32, "x", duration=3)
        assert err.value.code == ErrorCode.TASK_NOT_FOUND and err.value.status == 404
    server = ["--server", live_api.url, "--api-key", owner.key]
    code = cli_main(
        ["extend", done, "--prompt", "more", "--duration", "4", "--no-audio", "--no-wait", "--json", *server]
    )
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["model"] == VIDEO_EXTEND and out["creditsUsed"] == 38 * 4
    assert cli_main(["extend", "0" * 32, "--prompt", "x", *server]) == 8


def test_the_original_sound_conditions_the_first_audio_tokens(tmp_path: Path, tiny_engine: Engine) -> None:
    """The original's audio tail reaches the pipeline: the first audio latents of the extension are
    the tail's (held on its trajectory to the last step), and without the tail the sound differs."""
    import dataclasses

    import torch

    from reelgen.domain import plan
    from reelgen.engines.clock import StepClock
    from reelgen.generation import render
    from reelgen.profiles import get_profile
    from reelgen.schemas import GenerateInput

    profile = get_profile("ltx-2-tiny")
    src = tmp_path / "orig.mp4"
    render(plan(GenerateInput(prompt="a fox", duration=3, aspect_ratio="16:9"), profile, seed=3), tiny_engine, src)
    original = read_original(src)
    job = plan_extension(
        {"task_id": "t", "prompt": "on", "duration": 3, "mode": "standard", "audio": True},
        profile,
        seed=5,
        original=original,
    )
    assert job.previous_audio is not None and job.previous_audio_rate == original.sample_rate
    (segment,) = job.segments
    engine: Any = tiny_engine
    tail = engine._audio_tail(job, segment)
    assert tail is not None and tail.shape[2] == int(LEAD_FRAMES / profile.fps * 25)  # 25 latents/s

    def sound_latents(j: Any) -> torch.Tensor:
        with torch.no_grad():
            return engine._denoise(j, segment, StepClock(total=segment.steps, on_step=None, timings=[], cuda=False))[1]

    held = sound_latents(job)
    k = tail.shape[2]
    assert torch.allclose(held[:, :, :k], tail, atol=1e-5)
    free = sound_latents(dataclasses.replace(job, previous_audio=None, previous_audio_rate=0))
    assert not torch.allclose(free[:, :, :k], tail, atol=1e-2)


def test_resampling_and_the_mel_filterbank() -> None:
    import torch

    from reelgen.engines.audio_condition import mel_filterbank, resample

    t = torch.arange(24000) / 24000
    wave = torch.sin(2 * torch.pi * 440 * t)[None]
    out = resample(wave, 24000, 16000)
    assert out.shape == (1, 16000)
    expected = torch.sin(2 * torch.pi * 440 * torch.arange(16000) / 16000)
    assert torch.allclose(out[0], expected, atol=1e-3)
    fb = mel_filterbank(16000, 1024, 64)
    assert fb.shape == (64, 513) and (fb >= 0).all()
    peaks = fb.argmax(axis=1)
    assert (np.diff(peaks) >= 0).all() and peaks[-1] > 400  # ascending, up to Nyquist
