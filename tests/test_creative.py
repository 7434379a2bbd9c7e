"""Issue 17's creative controls on the tiny profile: per-request LoRAs (operators' names, strengths,
trigger words, an LRU of loaded adapters, a failed load failing only its task) and camera control
(the profile's camera LoRAs): what the plan says, what reaches diffusers, what changes the output
and what leaves it bit for bit as it was, and the credits."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from diffusers import LTX2Pipeline

from reelgen.cli import main as cli_main
from reelgen.domain import Job, TaskStatus, plan
from reelgen.engines import Engine, load_engine
from reelgen.engines.base import Clip
from reelgen.errors import ErrorCode, ReelgenError
from reelgen.profiles import Profile, get_profile, load_profiles
from reelgen.schemas import CAMERA_MOVES, GenerateInput, parse_generate
from tests.test_worker import GRANT, PRICE, Rig, _claim, _make_rig

T2V = "kling-3-0-text-to-video"


def _lora_file(path: Path, seed: int) -> Path:
    from safetensors.torch import save_file

    from reelgen.engines.lora import build_tiny_lora
    from reelgen.engines.tiny import build_tiny_components

    save_file(build_tiny_lora(build_tiny_components()["transformer"], seed=seed), path)
    return path


@pytest.fixture(scope="module")
def req_profiles(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An operator's profile offering three LoRAs by name (two files, one tiny), two kept loaded."""
    d = tmp_path_factory.mktemp("req-loras")
    style, broken = _lora_file(d / "style.safetensors", 11), _lora_file(d / "broken.safetensors", 12)
    f = d / "profiles.toml"
    f.write_text(
        f"""
[tiny-req]
extends = "ltx-2-tiny"
max_request_loras = 2
max_loaded_loras = 2
loras.style = {{ path = "{style}", requestable = true, strength = 0.8 }}
loras.broken = {{ path = "{broken}", requestable = true }}
loras.ink = {{ path = "tiny", requestable = true, trigger_words = ["inkwash", "sumi-e"] }}
"""
    )
    return f


@pytest.fixture(scope="module")
def req_profile(req_profiles: Path) -> Profile:
    return get_profile("tiny-req", req_profiles)


@pytest.fixture(scope="module")
def req_engine(req_profile: Profile) -> Engine:
    return load_engine(req_profile, device="cpu")


def job(profile: Profile, **inp: Any) -> Job:
    return plan(GenerateInput.model_validate({"prompt": "a fox", "duration": 3, **inp}), profile, seed=4)


def run(engine: Engine, j: Job) -> Clip:
    return engine.generate(j, j.segments[0])


def same(a: Clip, b: Clip) -> bool:
    assert a.audio is not None and b.audio is not None
    return bool(np.array_equal(a.frames, b.frames) and np.array_equal(a.audio, b.audio))


@pytest.fixture
def adapters_set(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[list[str], list[float]]]]:
    """What diffusers' ``set_adapters`` receives (the pipeline's own code runs unchanged)."""
    seen: list[tuple[list[str], list[float]]] = []
    original = LTX2Pipeline.set_adapters

    def record(self: Any, names: Any, adapter_weights: Any = None) -> Any:
        seen.append((list(names), list(adapter_weights)))
        return original(self, names, adapter_weights=adapter_weights)

    monkeypatch.setattr(LTX2Pipeline, "set_adapters", record)
    yield seen


# -- profiles ---------------------------------------------------------------------------------
def test_the_real_profiles_name_the_official_camera_loras_and_later_generations_have_none() -> None:
    profiles = load_profiles()
    ltx2 = profiles["ltx-2"]
    assert set(ltx2.camera) == {"dolly_in", "dolly_out", "dolly_left", "dolly_right", "jib_up", "jib_down", "static"}
    dolly = ltx2.loras[ltx2.camera["dolly_in"]]
    assert dolly.repo == "Lightricks/LTX-2-19b-LoRA-Camera-Control-Dolly-In"
    assert dolly.path == "ltx-2-19b-lora-camera-control-dolly-in.safetensors" and dolly.generation == "2.0"
    assert not dolly.requestable  # reached through camera_control, not by name
    tiny = profiles["ltx-2-tiny"]
    assert tiny.camera == ltx2.camera and all(tiny.loras[n].is_tiny for n in tiny.camera.values())
    for name in ("ltx-2.3", "ltx-2.5", "ltx-2.3-tiny", "ltx-2.5-tiny"):
        assert profiles[name].camera == {} and set(profiles[name].loras) == {"distilled"}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('loras.x = { path = "tiny", requestable = "yes" }', "requestable must be true or false"),
        ('loras.x = { path = "tiny", trigger_words = "ink" }', "trigger_words must be a list"),
        ('camera.zoom_in = "distilled"', "unknown camera move"),
        ('camera.dolly_in = "nope"', "is not declared"),
        ("max_request_loras = 17", "max_request_loras must be 0-16"),
        ("max_loaded_loras = 0", "max_loaded_loras at least 1"),
        ("max_memory_gib = -1", "max_memory_gib must be a positive"),
    ],
)
def test_bad_lora_settings_are_refused(tmp_path: Path, body: str, message: str) -> None:
    f = tmp_path / "p.toml"
    f.write_text(f'[bad]\nextends = "ltx-2-tiny"\n{body}\n')
    with pytest.raises(ReelgenError) as err:
        get_profile("bad", f)
    assert err.value.code == ErrorCode.INVALID_PROFILE and message in err.value.message


# -- requests and plans --------------------------------------------------------------------------
def test_request_loras_and_the_camera_run_in_every_stage_at_their_strengths(req_profile: Profile) -> None:
    j = job(req_profile, mode="professional", loras=[{"name": "style"}, {"name": "ink", "strength": -0.5}])
    for stage in j.segments[0].stages:
        assert stage.loras[-2:] == (("style", 0.8), ("ink", -0.5))  # style at the profile's default
    assert j.segments[0].stages[1].loras[0] == ("distilled", 1.0)
    # the trigger words lead the prompt (each once; one the prompt already has is not repeated)
    assert j.segments[0].prompt == "inkwash sumi-e a fox"
    again = job(req_profile, prompt="a Sumi-E fox", loras=[{"name": "ink"}])
    assert again.segments[0].prompt == "inkwash a Sumi-E fox"
    cam = job(req_profile, camera_control={"type": "jib_up", "strength": 0.5}, loras=[{"name": "style"}])
    assert cam.segments[0].stages[0].loras == (("distilled", 1.0), ("style", 0.8), ("camera-jib-up", 0.5))
    assert job(req_profile).segments[0].stages[0].loras == (("distilled", 1.0),)


@pytest.mark.parametrize(
    ("profile", "inp", "field", "message"),
    [
        ("tiny-req", {"loras": [{"name": "sepia"}]}, "input.loras.0.name", "allowed: broken, ink, style"),
        ("tiny-req", {"loras": [{"name": "distilled"}]}, "input.loras.0.name", "unknown LoRA 'distilled'"),
        ("tiny-req", {"loras": [{"name": n} for n in ("style", "ink", "broken")]}, "input.loras", "at most 2"),
        ("ltx-2-tiny", {"loras": [{"name": "style"}]}, "input.loras.0.name", "offers no LoRAs"),
        ("ltx-2.3-tiny", {"camera_control": {"type": "dolly_in"}}, "input.camera_control.type", "offered: none"),
    ],
)
def test_what_the_profile_does_not_offer_is_invalid_input(
    req_profiles: Path, profile: str, inp: dict[str, Any], field: str, message: str
) -> None:
    p = get_profile(profile, req_profiles if profile == "tiny-req" else None)
    with pytest.raises(ReelgenError) as err:
        job(p, **inp)
    assert err.value.code == ErrorCode.INVALID_INPUT and message in err.value.message
    assert err.value.details == [{"field": field, "message": err.value.details[0]["message"]}]


@pytest.mark.parametrize(
    ("inp", "field"),
    [
        ({"loras": [{"name": "style", "strength": True}]}, "input.loras.0.strength"),
        ({"loras": [{"name": "style", "strength": 2.5}]}, "input.loras.0.strength"),
        ({"loras": [{"name": "style"}, {"name": "style"}]}, "input.loras"),
        ({"loras": [{"name": ""}]}, "input.loras.0.name"),
        ({"loras": [{"name": "style", "weight": 1}]}, "input.loras.0.weight"),
        ({"camera_control": {"type": "zoom"}}, "input.camera_control.type"),
        ({"camera_control": {"type": "static", "strength": "1"}}, "input.camera_control.strength"),
    ],
)
def test_malformed_loras_and_camera_are_refused(inp: dict[str, Any], field: str) -> None:
    with pytest.raises(ReelgenError) as err:
        parse_generate({"model": T2V, "input": {"prompt": "a fox", **inp}})
    assert err.value.code == ErrorCode.INVALID_INPUT and err.value.details is not None
    assert [d["field"] for d in err.value.details] == [field]


def test_the_plan_shows_the_requested_loras_and_camera(req_profiles: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["generate", "a fox", "--plan", "--profile", "tiny-req", "--profiles-file", str(req_profiles)]
    assert cli_main([*args, "--duration", "3", "--lora", "style:0.5", "--lora", "ink", "--camera", "dolly_left"]) == 0
    stages = json.loads(capsys.readouterr().out)["segments"][0]["stages"]
    assert stages[0]["loras"] == [
        {"name": "distilled", "strength": 1.0},
        {"name": "style", "strength": 0.5},
        {"name": "ink", "strength": 1.0},
        {"name": "camera-dolly-left", "strength": 1.0},
    ]
    assert cli_main([*args, "--lora", "style:x"]) != 0
    assert "--lora 'style:x'" in capsys.readouterr().err


# -- the engine ----------------------------------------------------------------------------------
def test_request_loras_change_the_output_and_never_leak_into_the_next_task(
    req_profile: Profile, req_engine: Engine, adapters_set: list[tuple[list[str], list[float]]]
) -> None:
    adapters = req_engine.adapters  # type: ignore[attr-defined]
    plain = run(req_engine, job(req_profile))
    styled = run(req_engine, job(req_profile, loras=[{"name": "style"}]))
    assert ["distilled", "style"] in [names for names, _ in adapters_set]
    assert (["distilled", "style"], [1.0, 0.8]) in adapters_set
    assert not np.array_equal(styled.frames, plain.frames)
    assert same(run(req_engine, job(req_profile)), plain)  # loaded, inactive: the base model bit for bit
    half = run(req_engine, job(req_profile, loras=[{"name": "style", "strength": 0.4}]))
    assert not np.array_equal(half.frames, styled.frames)
    # the camera LoRA and the style fill the LRU of two; a third request LoRA evicts the least recent
    cam = run(req_engine, job(req_profile, camera_control={"type": "dolly_in"}, loras=[{"name": "style"}]))
    assert not np.array_equal(cam.frames, styled.frames)
    assert adapters.names == ("distilled", "style", "camera-dolly-in")
    evicted = adapters.evictions
    run(req_engine, job(req_profile, prompt="inkwash sumi-e a fox", loras=[{"name": "ink"}]))
    assert adapters.names == ("distilled", "camera-dolly-in", "ink") and adapters.evictions == evicted + 1
    # the style, loaded again from its file, makes the same video as before
    assert same(run(req_engine, job(req_profile, loras=[{"name": "style"}])), styled)
    assert same(run(req_engine, job(req_profile)), plain)


def test_a_lora_that_fails_to_load_fails_its_task_and_the_next_runs_clean(
    req_profiles: Path, req_profile: Profile, req_engine: Engine, tmp_path: Path
) -> None:
    """The broken LoRA's file is damaged after the worker started: its task fails with LORA_FAILED,
    its credits come back, nothing of it stays loaded and the next task is the base model's video."""
    broken = Path(req_profile.loras["broken"].path)
    good = broken.read_bytes()
    rig: Rig = _make_rig(tmp_path, None, profile="tiny-req", profiles_file=req_profiles)
    from reelgen.attempt import Worker
    from reelgen.store import ledger

    worker = Worker(rig.settings, device="cpu", worker_id="w1")
    worker.load(engine=req_engine)
    try:
        broken.write_bytes(b"no longer a safetensors file")
        failing = rig.submit("a fox", loras=[{"name": "broken"}])
        worker.run_attempt(_claim(rig, "w1"))
        row = rig.task(failing)
        assert row.status == TaskStatus.FAILED and row.error_code == ErrorCode.LORA_FAILED
        assert "cannot load LoRA 'broken'" in (row.error_message or "")
        assert rig.movement_kinds(failing) == {"reserve": 1, "release": 1}
        balance = rig.db.run(lambda conn: ledger.balance(conn, rig.account))
        assert (balance.available, balance.reserved, balance.captured) == (GRANT, 0, 0)
        assert "broken" not in req_engine.adapters.names  # type: ignore[attr-defined]
        clean = rig.submit("a fox")
        worker.run_attempt(_claim(rig, "w1"))
        rig.assert_completed_once(clean, attempt=1)
        balance = rig.db.run(lambda conn: ledger.balance(conn, rig.account))
        assert (balance.available, balance.reserved, balance.captured) == (GRANT - PRICE, 0, PRICE)
        rig.assert_invariants()
        # and the engine's next plain generation is the base model's, bit for bit
        plain = job(req_profile)
        assert same(run(req_engine, plain), run(load_engine(get_profile("ltx-2-tiny"), device="cpu"), plain))
    finally:
        broken.write_bytes(good)
        worker.db.dispose()
        rig.db.dispose()


# -- the API ------------------------------------------------------------------------------------
@pytest.fixture
def req_client(ctx: Any, req_profile: Profile) -> Iterator[Any]:
    """The app on a server whose profile offers LoRAs by name (and the tiny camera LoRAs)."""
    from dataclasses import replace

    from fastapi.testclient import TestClient

    from reelgen.api.app import create_app

    offering = replace(ctx, profile=req_profile)
    with TestClient(create_app(offering.settings, start_executor=False, ctx=offering)) as c:
        yield c


def test_the_api_lists_the_offer_prices_as_usual_and_refuses_what_is_not_offered(req_client: Any, ctx: Any) -> None:
    from tests.factories import generate_body, make_account

    acc = make_account(ctx, credits=1000)
    models = [m for m in req_client.get("/api/v1/models").json()["data"] if m["id"] != "kling-3-0-video-extend"]
    assert len(models) == 2
    for m in models:
        assert m["inputs"][-2:] == ["loras", "camera_control"] and m["maxLoras"] == 2
        assert m["cameraMoves"] == [
            "dolly_in",
            "dolly_out",
            "dolly_left",
            "dolly_right",
            "jib_up",
            "jib_down",
            "static",
        ]
        assert {"name": "ink", "defaultStrength": 1.0, "triggerWords": ["inkwash", "sumi-e"]} in m["loras"]
    body = generate_body(loras=[{"name": "style", "strength": 0.3}], camera_control={"type": "jib_down"})
    r = req_client.post("/api/v1/generate", json=body, headers=acc.headers)
    assert r.status_code == 200, r.text
    assert r.json()["data"]["creditsUsed"] == PRICE  # 3 s standard with audio: LoRAs cost nothing extra
    task = req_client.get(f"/api/v1/tasks/{r.json()['data']['id']}", headers=acc.headers).json()["data"]
    assert task["input"]["loras"] == [{"name": "style", "strength": 0.3}]
    assert task["input"]["camera_control"] == {"type": "jib_down"}
    r = req_client.post("/api/v1/generate", json=generate_body(loras=[{"name": "sepia"}]), headers=acc.headers)
    assert r.status_code == 400 and r.json()["error"]["code"] == "INVALID_INPUT"
    assert "allowed: broken, ink, style" in r.json()["error"]["message"]
    assert r.json()["error"]["details"][0]["field"] == "input.loras.0.name"
    assert req_client.get("/api/v1/credits", headers=acc.headers).json()["data"] == {
        "credits": 1000 - PRICE,
        "reserved": PRICE,
    }


def test_a_server_without_camera_loras_refuses_camera_control(client: Any, ctx: Any) -> None:
    from dataclasses import replace

    from reelgen.api.app import create_app
    from tests.factories import generate_body, make_account

    acc = make_account(ctx, credits=1000)
    no_camera = replace(ctx, profile=get_profile("ltx-2.3-tiny"))
    from fastapi.testclient import TestClient

    with TestClient(create_app(no_camera.settings, start_executor=False, ctx=no_camera)) as c:
        assert all(
            m["cameraMoves"] == [] and "camera_control" not in m["inputs"]
            for m in c.get("/api/v1/models").json()["data"]
        )
        r = c.post("/api/v1/generate", json=generate_body(camera_control={"type": "static"}), headers=acc.headers)
        assert r.status_code == 400 and r.json()["error"]["code"] == "INVALID_INPUT"
        assert "no camera LoRA for 'static'" in r.json()["error"]["message"]
        assert c.get("/api/v1/credits", headers=acc.headers).json()["data"] == {"credits": 1000, "reserved": 0}


# -- memory-aware admission ----------------------------------------------------------------------
def test_the_memory_model_counts_weights_loras_activations_and_the_decode(tmp_path: Path) -> None:
    from reelgen.memory import GIB, check_fits, estimate

    f = tmp_path / "p.toml"
    f.write_text(
        '[h100]\nextends = "ltx-2"\nmax_memory_gib = 80\n\n'
        '[h100-offload]\nextends = "h100"\noffload_text_encoder = true\n'
    )
    h100 = get_profile("h100", f)
    std = GenerateInput(prompt="a fox", duration=5)
    pro = GenerateInput.model_validate({"prompt": "a fox", "duration": 15, "mode": "professional"})
    e = estimate(std, h100)
    # the docs' parameter counts in bf16: transformer, Gemma, connectors, VAE, upsampler, audio
    assert e.weights == int((18.88 + 12.19 + 1.43 + 1.22 + 0.50 + 0.11) * 2e9)
    assert e.loras == int(3.70 * 2e9)  # the distilled LoRA
    assert estimate(pro, h100).activations > e.activations  # 4 guidance rows over 3x the frames
    assert check_fits(pro, h100).total < 80 * GIB
    # a camera LoRA (no memory_gib stated: counted as large as the distilled one) tips it over
    with_camera = GenerateInput.model_validate(
        {"prompt": "a fox", "duration": 15, "mode": "professional", "camera_control": {"type": "dolly_in"}}
    )
    with pytest.raises(ReelgenError) as err:
        check_fits(with_camera, h100)
    assert err.value.code == ErrorCode.INVALID_INPUT and "80 GiB" in err.value.message
    # ...and fits once the text encoder waits in host memory
    assert check_fits(with_camera, get_profile("h100-offload", f)).weights < e.weights
    # tiny profiles: the weights are kilobytes, activations and decode follow the real geometry
    tiny = estimate(pro, get_profile("ltx-2-tiny"))
    assert tiny.weights == 0 and tiny.loras == 0 and 0 < tiny.total < GIB


def test_a_request_that_can_never_fit_is_refused_at_submit(ctx: Any, tmp_path: Path) -> None:
    from dataclasses import replace

    from fastapi.testclient import TestClient

    from reelgen.api.app import create_app
    from tests.factories import generate_body, make_account

    f = tmp_path / "p.toml"
    f.write_text('[small-gpu]\nextends = "ltx-2-tiny"\nmax_memory_gib = 0.1\n')
    small = replace(ctx, profile=get_profile("small-gpu", f))
    acc = make_account(ctx, credits=10_000)
    with TestClient(create_app(small.settings, start_executor=False, ctx=small)) as c:
        assert c.post("/api/v1/generate", json=generate_body(), headers=acc.headers).status_code == 200
        r = c.post("/api/v1/generate", json=generate_body(duration=15, mode="professional"), headers=acc.headers)
        assert r.status_code == 400 and r.json()["error"]["code"] == "INVALID_INPUT"
        assert "GiB of GPU memory" in r.json()["error"]["message"] and "0.1 GiB" in r.json()["error"]["message"]
        assert c.get("/api/v1/credits", headers=acc.headers).json()["data"] == {
            "credits": 10_000 - PRICE,
            "reserved": PRICE,
        }


def test_the_openapi_document_states_this_servers_offer(req_client: Any, client: Any) -> None:
    def inputs(c: Any) -> list[dict[str, Any]]:
        doc = c.get("/openapi.json").json()
        variants = doc["components"]["schemas"]["GenerateRequest"]["oneOf"]
        kling = [v for v in variants if v["properties"]["model"]["const"] != "kling-3-0-video-extend"]
        assert len(kling) == 2  # the extend model takes neither field
        return [v["properties"]["input"]["properties"] for v in kling]

    for props in inputs(req_client):
        assert props["loras"]["maxItems"] == 2
        assert props["loras"]["items"]["properties"]["name"] == {"enum": ["broken", "ink", "style"]}
        assert props["camera_control"]["properties"]["type"] == {"enum": list(CAMERA_MOVES)}
    for props in inputs(client):  # ltx-2-tiny: camera LoRAs, no LoRAs by name
        assert props["loras"]["maxItems"] == 0
        assert props["camera_control"]["properties"]["type"] == {"enum": list(CAMERA_MOVES)}


def test_run_times_of_requests_with_adapters_are_learned_apart() -> None:
    """Adapters load on first use and switch per task: their run times do not predict plain ones'."""
    from reelgen.progress import request_class

    plain = GenerateInput(prompt="a fox", duration=4)
    styled = GenerateInput(prompt="a fox", duration=4, loras=[{"name": "ink", "strength": 0.5}])  # type: ignore[list-item]
    moved = GenerateInput(prompt="a fox", duration=4, camera_control={"type": "dolly_in"})  # type: ignore[arg-type]
    model = "kling-3-0-text-to-video"
    assert request_class("p", model, plain) == "p|kling-3-0-text-to-video|standard|3-5|audio"
    assert (
        request_class("p", model, styled)
        == request_class("p", model, moved)
        == f"{request_class('p', model, plain)}|adapters"
    )
