"""Issue 17's prompt enhancement (``input.enhance_prompt``) on the tiny profiles: the profile setting,
validation and price, the plan (system prompt per generation, t2v or i2v, per shot), what reaches
diffusers' ``enhance_prompt`` and what the transformer is then conditioned on, determinism for a
fixed seed, outputs bit for bit as before without it, ``enhancedPrompt`` on the task after a real
worker ran it, and a failing enhancer failing its task with its code and its credits released."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from diffusers import LTX2Pipeline
from diffusers.pipelines.ltx2 import utils as ltx2_utils
from PIL import Image

from reelgen import pricing, progress
from reelgen.cli import main as cli_main
from reelgen.client import Task
from reelgen.domain import Job, TaskStatus, plan
from reelgen.engines import Engine, load_engine
from reelgen.engines.base import Clip
from reelgen.engines.enhancer import clean_text
from reelgen.errors import ErrorCode, ReelgenError
from reelgen.generation import enhance
from reelgen.profiles import Profile, get_profile, load_profiles
from reelgen.schemas import GenerateInput, parse_generate
from reelgen.views import MAX_TASK_JSON_BYTES, task_object
from tests.test_worker import GRANT, PRICE, Rig, _claim, _make_rig

T2V, I2V = "kling-3-0-text-to-video", "kling-3-0-image-to-video"


def job(profile: Profile, seed: int = 4, **inp: Any) -> Job:
    return plan(GenerateInput.model_validate({"prompt": "a fox", "duration": 3, **inp}), profile, seed=seed)


def same(a: Clip, b: Clip) -> bool:
    assert a.audio is not None and b.audio is not None
    return bool(np.array_equal(a.frames, b.frames) and np.array_equal(a.audio, b.audio))


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, list[dict[str, Any]]]]:
    """What diffusers' ``enhance_prompt`` and ``encode_prompt`` receive (their own code runs unchanged)."""
    seen: dict[str, list[dict[str, Any]]] = {"enhance": [], "encode": []}
    enhance_prompt, encode_prompt = LTX2Pipeline.enhance_prompt, LTX2Pipeline.encode_prompt

    def record_enhance(self: Any, **kwargs: Any) -> Any:
        out = enhance_prompt(self, **kwargs)
        seen["enhance"].append({**kwargs, "result": out, "dedicated": self.prompt_enhancer is not None})
        return out

    def record_encode(self: Any, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("prompt") is not None:  # the engine's own encoding (the pipeline passes embeds on)
            seen["encode"].append(dict(kwargs))
        return encode_prompt(self, *args, **kwargs)

    monkeypatch.setattr(LTX2Pipeline, "enhance_prompt", record_enhance)
    monkeypatch.setattr(LTX2Pipeline, "encode_prompt", record_encode)
    yield seen


# -- profiles -----------------------------------------------------------------------------------
def test_the_shipped_profiles_name_each_generations_enhancer() -> None:
    profiles = load_profiles()
    for name in ("ltx-2", "ltx-2.3"):
        spec = profiles[name].prompt_enhancement
        assert spec is not None and spec.enhancer == "text_encoder" and spec.sampling == "seeded"
        assert spec.max_new_tokens == 512 and spec.processor == "google/gemma-3-12b-it"
    spec = profiles["ltx-2.5"].prompt_enhancement
    assert spec is not None and spec.enhancer == "google/gemma-4-E2B-it" and spec.dedicated
    assert spec.sampling == "greedy" and spec.max_new_tokens == 600
    for name in ("ltx-2-tiny", "ltx-2.3-tiny", "ltx-2.5-tiny"):
        tiny = profiles[name].prompt_enhancement
        assert tiny is not None and tiny.processor == "tiny" and tiny.max_new_tokens == 16 and tiny.credits == 42
    assert profiles["ltx-2.5-tiny"].prompt_enhancement.enhancer == "tiny"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('prompt_enhancement = "yes"', "prompt_enhancement must be a table"),
        ("prompt_enhancement = { mode = 1 }", "unknown key(s) ['mode']"),
        ('prompt_enhancement = { enhancer = "google/gemma-4-E2B-it" }', "a dedicated enhancer is LTX-2.5's"),
        ("prompt_enhancement = { max_new_tokens = 0 }", "max_new_tokens must be a whole number 1-2048"),
        ("prompt_enhancement = { max_new_tokens = 4096 }", "max_new_tokens must be a whole number 1-2048"),
        ("prompt_enhancement = { credits = -1 }", "credits must be a whole number"),
        ("prompt_enhancement = { credits = 1.5 }", "credits must be a whole number"),
        ('prompt_enhancement = { processor = "" }', "processor must be a hub id or a directory"),
    ],
)
def test_a_bad_enhancer_setting_is_refused_with_the_reason(tmp_path: Path, body: str, message: str) -> None:
    f = tmp_path / "profiles.toml"
    f.write_text(f'[p]\nextends = "ltx-2-tiny"\n{body}\n')
    with pytest.raises(ReelgenError) as err:
        load_profiles(f)
    assert err.value.code == ErrorCode.INVALID_PROFILE and message in err.value.message


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('extends = "ltx-2.5"\nprompt_enhancement.enhancer = "text_encoder"', "not trained to enhance"),
        ('extends = "ltx-2.5"\nprompt_enhancement.enhancer = "tiny"', "needs tiny weights"),
        ('extends = "ltx-2"\nprompt_enhancement.processor = "tiny"', "needs tiny weights"),
    ],
)
def test_the_enhancer_must_fit_the_generation_and_the_weights(tmp_path: Path, body: str, message: str) -> None:
    f = tmp_path / "profiles.toml"
    f.write_text(f"[p]\n{body}\n")
    with pytest.raises(ReelgenError) as err:
        load_profiles(f)
    assert err.value.code == ErrorCode.INVALID_PROFILE and message in err.value.message


# -- validation and price -----------------------------------------------------------------------
@pytest.mark.parametrize("value", ["yes", "true", 1, 0, [True], {"on": True}])
def test_enhance_prompt_takes_only_a_boolean(value: Any) -> None:
    with pytest.raises(ReelgenError) as err:
        parse_generate({"model": T2V, "input": {"prompt": "a fox", "enhance_prompt": value}})
    assert err.value.code == ErrorCode.INVALID_INPUT
    assert [d["field"] for d in err.value.details or []] == ["input.enhance_prompt"]


def test_the_price_adds_the_profiles_credits_per_enhanced_prompt(tiny_profile: Profile) -> None:
    base = GenerateInput(prompt="a fox", duration=5)
    assert pricing.credits_for(base, tiny_profile) == 210
    assert pricing.credits_for(base.model_copy(update={"enhance_prompt": False}), tiny_profile) == 210
    assert pricing.credits_for(base.model_copy(update={"enhance_prompt": True}), tiny_profile) == 210 + 42
    shots = GenerateInput.model_validate(
        {
            "prompt": "a fox",
            "duration": 5,
            "enhance_prompt": True,
            "multi_shots": True,
            "multi_prompt": [{"prompt": "runs", "duration": 2}, {"prompt": "sleeps", "duration": 3}],
        }
    )
    assert pricing.credits_for(shots, tiny_profile) == 210 + 2 * 42  # one enhanced prompt per shot
    # ETAs and the fair queue learn the run time of enhanced requests apart from the rest
    assert progress.request_class("p", T2V, base) == "p|kling-3-0-text-to-video|standard|3-5|audio"
    assert progress.request_class("p", T2V, shots) == "p|kling-3-0-text-to-video|standard|3-5|audio|enhanced"


@pytest.fixture
def no_enhancer_client(ctx: Any, tmp_path: Path) -> Iterator[Any]:
    """The app on a server whose profile has no prompt enhancer."""
    from fastapi.testclient import TestClient

    from reelgen.api.app import create_app

    f = tmp_path / "profiles.toml"
    f.write_text('[plain]\nextends = "ltx-2-tiny"\nprompt_enhancement = false\n')
    plain = replace(ctx, profile=get_profile("plain", f))
    with TestClient(create_app(plain.settings, start_executor=False, ctx=plain)) as c:
        yield c


def test_the_api_prices_enhancement_and_a_server_without_an_enhancer_refuses_it(
    client: Any, ctx: Any, no_enhancer_client: Any
) -> None:
    from reelgen.schemas import VIDEO_EXTEND
    from tests.factories import generate_body, make_account

    acc = make_account(ctx, credits=1000)
    models = client.get("/api/v1/models").json()["data"]
    # the generation models; the extend model's prompt is not enhanced
    assert all(m["enhancePromptCredits"] == 42 and "enhance_prompt" in m["inputs"] for m in models[:-1])
    assert models[-1]["id"] == VIDEO_EXTEND and models[-1]["enhancePromptCredits"] is None
    r = client.post("/api/v1/generate", json=generate_body(duration=3, enhance_prompt=True), headers=acc.headers)
    assert r.status_code == 200, r.text
    assert r.json()["data"]["creditsUsed"] == PRICE + 42
    estimate = client.post("/api/v1/estimate", json=generate_body(duration=3, enhance_prompt=True), headers=acc.headers)
    assert estimate.json()["data"]["credits"] == PRICE + 42
    bad = client.post("/api/v1/generate", json=generate_body(enhance_prompt="yes"), headers=acc.headers)
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "INVALID_INPUT"
    assert bad.json()["error"]["details"][0]["field"] == "input.enhance_prompt"
    schema = client.get("/openapi.json").json()
    assert "enhancedPrompt" in schema["components"]["schemas"]["TaskView"]["properties"]

    assert all(m["enhancePromptCredits"] is None for m in no_enhancer_client.get("/api/v1/models").json()["data"])
    before = client.get("/api/v1/credits", headers=acc.headers).json()["data"]
    refused = no_enhancer_client.post(
        "/api/v1/generate", json=generate_body(enhance_prompt=True), headers=acc.headers
    ).json()
    assert refused["error"]["code"] == "INVALID_INPUT"
    assert refused["error"]["details"] == [
        {"field": "input.enhance_prompt", "message": "this server has no prompt enhancer (its profile offers none)"}
    ]
    assert client.get("/api/v1/credits", headers=acc.headers).json()["data"] == before  # nothing held
    ok = no_enhancer_client.post("/api/v1/generate", json=generate_body(enhance_prompt=False), headers=acc.headers)
    assert ok.status_code == 200 and ok.json()["data"]["creditsUsed"] == PRICE


# -- the plan -----------------------------------------------------------------------------------
def test_the_plan_enhances_each_shot_with_its_generations_system_prompt(tiny_profile: Profile) -> None:
    assert all(s.enhancement is None for s in job(tiny_profile).segments)
    assert job(tiny_profile) == job(tiny_profile, enhance_prompt=False)
    one = job(tiny_profile, enhance_prompt=True).segments[0]
    assert one.enhancement is not None and one.enhancement.source == "a fox" and one.enhancement.image is None
    assert one.enhancement.system_prompt == "T2V_DEFAULT_SYSTEM_PROMPT" and one.enhancement.max_new_tokens == 16
    assert one.enhancement.sampling == "seeded"
    shots = job(
        tiny_profile,
        enhance_prompt=True,
        image_urls=["https://example.com/a.png"],
        multi_shots=True,
        multi_prompt=[{"prompt": "runs", "duration": 1}, {"prompt": "sleeps", "duration": 2}],
    )
    first, second = (s.enhancement for s in shots.segments)
    assert first is not None and second is not None
    # the start image conditions shot 1 only: its enhancer sees it, with the image-to-video prompt
    assert (first.source, first.image, first.system_prompt) == ("runs\na fox", "start", "I2V_DEFAULT_SYSTEM_PROMPT")
    assert (second.source, second.image, second.system_prompt) == ("sleeps\na fox", None, "T2V_DEFAULT_SYSTEM_PROMPT")
    assert shots.as_dict()["segments"][0]["enhancement"]["image"] == "start"
    later = job(get_profile("ltx-2.5-tiny"), enhance_prompt=True, image_urls=["https://example.com/a.png"])
    e = later.segments[0].enhancement
    assert e is not None and e.system_prompt == "LTX2_5_I2V_DEFAULT_SYSTEM_PROMPT" and e.sampling == "greedy"
    for generation, name in (("2.0", "T2V_DEFAULT_SYSTEM_PROMPT"), ("2.5", "LTX2_5_T2V_DEFAULT_SYSTEM_PROMPT")):
        assert isinstance(getattr(ltx2_utils, name), str), generation  # diffusers' copies of the reference's


def test_lora_trigger_words_lead_the_enhanced_text_not_the_enhancers_input(tmp_path: Path) -> None:
    f = tmp_path / "profiles.toml"
    f.write_text(
        '[p]\nextends = "ltx-2-tiny"\nloras.ink = { path = "tiny", requestable = true, trigger_words = ["inkwash"] }\n'
    )
    j = job(get_profile("p", f), enhance_prompt=True, loras=[{"name": "ink"}])
    seg = j.segments[0]
    assert seg.prompt == "inkwash a fox" and seg.enhancement is not None and seg.enhancement.source == "a fox"
    assert seg.enhanced("A red fox trots through snow.").prompt == "inkwash A red fox trots through snow."
    assert seg.enhanced("An inkwash fox.").prompt == "An inkwash fox."


def test_the_cli_asks_for_it_and_the_plan_shows_it(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["generate", "a fox", "--profile", "ltx-2-tiny", "--duration", "3", "--enhance-prompt"]
    assert cli_main([*args, "--plan"]) == 0
    enhancement = json.loads(capsys.readouterr().out)["segments"][0]["enhancement"]
    assert enhancement["system_prompt"] == "T2V_DEFAULT_SYSTEM_PROMPT" and enhancement["max_new_tokens"] == 16
    assert cli_main([*args, "--local", "--devices", "cpu,cpu"]) != 0  # refused before any process starts
    assert "--enhance-prompt runs on one device here" in capsys.readouterr().err


# -- the engine ---------------------------------------------------------------------------------
def test_the_enhancer_gets_the_plans_inputs_and_the_transformer_its_text(
    tiny_engine: Engine, tiny_profile: Profile, calls: dict[str, list[dict[str, Any]]]
) -> None:
    planned = job(tiny_profile, enhance_prompt=True)
    enhanced, texts = enhance(planned, tiny_engine)
    (call,) = calls["enhance"]
    assert call["prompt"] == "a fox" and call["system_prompt"] == ltx2_utils.T2V_DEFAULT_SYSTEM_PROMPT
    assert call["seed"] == planned.segments[0].seed and call["max_new_tokens"] == 16 and call["image"] is None
    assert call["generation_kwargs"]["do_sample"] is True and call["generation_kwargs"]["temperature"] == 0.7
    assert not call["dedicated"]  # LTX-2.0: the text encoder enhances
    assert texts == (clean_text(call["result"][0]),) and texts[0] and "\x00" not in texts[0]
    assert enhanced.segments[0].prompt == texts[0] and enhanced.segments[0].enhancement is not None
    clip = tiny_engine.generate(enhanced, enhanced.segments[0])
    assert calls["encode"][-1]["prompt"] == texts[0]  # the transformer is conditioned on the enhanced text
    # ... exactly as a plain request whose prompt is that text
    plain = replace(job(tiny_profile), segments=(replace(job(tiny_profile).segments[0], prompt=texts[0]),))
    assert same(tiny_engine.generate(plain, plain.segments[0]), clip)
    assert not same(tiny_engine.generate(job(tiny_profile), job(tiny_profile).segments[0]), clip)


def test_enhancement_is_deterministic_for_a_seed_and_the_seed_drives_sampling(
    tiny_engine: Engine, tiny_profile: Profile
) -> None:
    first = enhance(job(tiny_profile, seed=4, enhance_prompt=True), tiny_engine)[1]
    assert enhance(job(tiny_profile, seed=4, enhance_prompt=True), tiny_engine)[1] == first
    assert enhance(job(tiny_profile, seed=5, enhance_prompt=True), tiny_engine)[1] != first


def test_without_enhance_prompt_the_output_is_bit_for_bit_as_before(tiny_engine: Engine, tiny_profile: Profile) -> None:
    plain = job(tiny_profile)
    before = tiny_engine.generate(plain, plain.segments[0])
    enhance(job(tiny_profile, enhance_prompt=True), tiny_engine)  # the enhancer has run in this engine
    assert same(tiny_engine.generate(plain, plain.segments[0]), before)
    assert enhance(plain, tiny_engine) == (plain, ())


def test_image_to_video_shows_the_start_image_and_each_shot_is_enhanced(
    tiny_engine: Engine, tiny_profile: Profile, calls: dict[str, list[dict[str, Any]]]
) -> None:
    planned = job(
        tiny_profile,
        enhance_prompt=True,
        image_urls=["https://example.com/a.png"],
        multi_shots=True,
        multi_prompt=[{"prompt": "runs", "duration": 1}, {"prompt": "sleeps", "duration": 2}],
    )
    start = Image.new("RGB", (planned.width, planned.height), (200, 40, 40))
    planned = replace(planned, start_image=start)
    enhanced, texts = enhance(planned, tiny_engine)
    first, second = calls["enhance"]
    assert first["image"] is start and first["system_prompt"] == ltx2_utils.I2V_DEFAULT_SYSTEM_PROMPT
    assert second["image"] is None and second["system_prompt"] == ltx2_utils.T2V_DEFAULT_SYSTEM_PROMPT
    assert [first["prompt"], second["prompt"]] == ["runs\na fox", "sleeps\na fox"]
    assert [first["seed"], second["seed"]] == [s.seed for s in planned.segments]  # each shot its own seed
    assert texts == tuple(s.prompt for s in enhanced.segments) and len(texts) == 2


def test_ltx_2_5_enhances_greedily_with_its_dedicated_enhancer(calls: dict[str, list[dict[str, Any]]]) -> None:
    profile = get_profile("ltx-2.5-tiny")
    engine = load_engine(profile, device="cpu")
    texts = enhance(job(profile, seed=4, enhance_prompt=True), engine)[1]
    (call,) = calls["enhance"]
    assert call["dedicated"] and call["system_prompt"] == ltx2_utils.LTX2_5_T2V_DEFAULT_SYSTEM_PROMPT
    assert call["generation_kwargs"]["do_sample"] is False and call["generation_kwargs"]["no_repeat_ngram_size"] == 5
    assert enhance(job(profile, seed=9, enhance_prompt=True), engine)[1] == texts  # greedy: no seed involved


# -- a real worker ------------------------------------------------------------------------------
def test_a_worker_shows_the_enhanced_prompt_on_the_completed_task(
    tiny_engine: Engine, tmp_path: Path, calls: dict[str, list[dict[str, Any]]]
) -> None:
    """Submitted through the API, run by a worker, read back through the API: the task shows the
    prompt the transformer was conditioned on, and the enhanced price is captured exactly."""
    from fastapi.testclient import TestClient

    from reelgen.api.app import create_app
    from reelgen.attempt import Worker
    from reelgen.store import ledger
    from tests.api_fixtures import make_ctx
    from tests.factories import generate_body, make_account

    rig: Rig = _make_rig(tmp_path, None, profile="ltx-2-tiny", profiles_file=None)
    ctx = make_ctx(rig.settings, rig.db)
    acc = make_account(ctx, credits=1000)
    worker = Worker(rig.settings, device="cpu", worker_id="w1")
    worker.load(engine=tiny_engine)
    try:
        with TestClient(create_app(ctx.settings, start_executor=False, ctx=ctx)) as c:
            body = generate_body(enhance_prompt=True)
            sub = c.post("/api/v1/generate", json=body, headers=acc.headers).json()["data"]
            assert sub["creditsUsed"] == PRICE + 42
            pending = c.get(f"/api/v1/tasks/{sub['id']}", headers=acc.headers).json()["data"]
            assert pending["enhancedPrompt"] is None and pending["input"]["enhance_prompt"] is True
            worker.run_attempt(_claim(rig, "w1"))
            done = c.get(f"/api/v1/tasks/{sub['id']}", headers=acc.headers).json()["data"]
            assert done["status"] == "completed", done["error"]
            row = rig.task(sub["id"])
            assert row.enhanced_prompts is not None and len(row.enhanced_prompts) == 1
            # what the model was conditioned on, shown as the task's enhancedPrompt
            assert done["enhancedPrompt"] == row.enhanced_prompts[0] == calls["encode"][-1]["prompt"]
            assert done["enhancedMultiPrompt"] is None and done["creditsUsed"] == PRICE + 42
            assert Task.from_api(done).enhancedPrompt == done["enhancedPrompt"]  # the SDK's task reads it
        balance = rig.db.run(lambda conn: ledger.balance(conn, acc.id))
        assert (balance.available, balance.reserved, balance.captured) == (1000 - PRICE - 42, 0, PRICE + 42)
        shots = rig.submit(
            "a fox",
            enhance_prompt=True,
            multi_shots=True,
            multi_prompt=[{"prompt": "runs", "duration": 1}, {"prompt": "sleeps", "duration": 2}],
        )
        worker.run_attempt(_claim(rig, "w1"))
        row = rig.task(shots)
        assert row.status == TaskStatus.COMPLETED and row.enhanced_prompts is not None
        view = task_object(row, result_url="https://example.com/r.mp4")
        assert view["enhancedPrompt"] is None
        assert view["enhancedMultiPrompt"] == [
            {"prompt": row.enhanced_prompts[0], "duration": 1},
            {"prompt": row.enhanced_prompts[1], "duration": 2},
        ]
        plain = rig.submit("a fox")
        worker.run_attempt(_claim(rig, "w1"))
        row = rig.task(plain)
        assert row.enhanced_prompts is None and task_object(row, result_url="x")["enhancedPrompt"] is None
        rig.assert_invariants()
    finally:
        worker.db.dispose()
        rig.db.dispose()


def test_the_task_object_stays_under_its_limit_with_long_enhanced_prompts(tiny_engine: Engine, tmp_path: Path) -> None:
    from reelgen.views import _json_bytes

    rig: Rig = _make_rig(tmp_path, None, profile="ltx-2-tiny", profiles_file=None)
    try:
        long_prompt = 'é"' * 1250
        task_id = rig.submit(long_prompt, negative_prompt="x" * 2500, enhance_prompt=True)
        row = replace(rig.task(task_id), status=TaskStatus.COMPLETED, result_key="k", enhanced_prompts=("ü" * 9000,))
        view = task_object(row, result_url="https://example.com/" + "r" * 300)
        assert _json_bytes({"success": True, "data": view}) < MAX_TASK_JSON_BYTES
        assert view["enhancedPrompt"].startswith("ü" * 100) and "chars)" in view["enhancedPrompt"]
        short = replace(row, enhanced_prompts=("A fox in the snow.",))
        assert task_object(short, result_url="x")["enhancedPrompt"] == "A fox in the snow."
    finally:
        rig.db.dispose()


def test_a_failing_enhancer_fails_its_task_with_its_code_and_releases_the_credits(tmp_path: Path) -> None:
    """The dedicated enhancer's directory holds no model: the task fails with PROMPT_ENHANCEMENT_FAILED
    (a message naming no file), its hold is released, and the next task without enhancement runs."""
    broken = tmp_path / "enhancer"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    profiles = tmp_path / "profiles.toml"
    profiles.write_text(f'[tiny-broken]\nextends = "ltx-2.5-tiny"\nprompt_enhancement.enhancer = "{broken}"\n')
    rig: Rig = _make_rig(tmp_path, None, profile="tiny-broken", profiles_file=profiles)
    from reelgen.attempt import Worker
    from reelgen.store import ledger

    worker = Worker(rig.settings, device="cpu", worker_id="w1")
    worker.load()
    try:
        failing = rig.submit("a fox", enhance_prompt=True)
        worker.run_attempt(_claim(rig, "w1"))
        row = rig.task(failing)
        assert row.status == TaskStatus.FAILED and row.error_code == ErrorCode.PROMPT_ENHANCEMENT_FAILED
        assert row.error_message == "The prompt enhancer could not be loaded."
        assert str(tmp_path) not in (row.error_message or "") and row.enhanced_prompts is None
        view = task_object(row)
        assert view["error"]["key"] == "prompt_enhancement_failed" and view["creditsUsed"] == 0
        assert rig.movement_kinds(failing) == {"reserve": 1, "release": 1}
        balance = rig.db.run(lambda conn: ledger.balance(conn, rig.account))
        assert (balance.available, balance.reserved, balance.captured) == (GRANT, 0, 0)
        clean = rig.submit("a fox")
        worker.run_attempt(_claim(rig, "w1"))
        rig.assert_completed_once(clean, attempt=1)
        balance = rig.db.run(lambda conn: ledger.balance(conn, rig.account))
        assert (balance.available, balance.reserved, balance.captured) == (GRANT - PRICE, 0, PRICE)
        rig.assert_invariants()
    finally:
        worker.db.dispose()
        rig.db.dispose()
