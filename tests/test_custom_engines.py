"""Custom engines named by import path (``engine = "package.module:Class"``): read, refused with a
clear ``INVALID_PROFILE`` at ``reelgen serve`` start when they cannot be used, and loaded by workers.

The engine used is the test engine of ``tests/engines/faulty.py`` (the tiny LTX-2 engine plus
faults by prompt), which the reliability tests select through ``tests/engines/profiles.toml``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from reelgen.cli import main as cli_main
from reelgen.domain import plan
from reelgen.engines import Cancelled, Engine, check_profile, load_engine
from reelgen.errors import ErrorCode, ReelgenError
from reelgen.profiles import get_profile, load_profiles
from reelgen.schemas import GenerateInput
from tests.engines import PROFILES
from tests.engines.faulty import Faults, FaultyEngine


def _profiles(tmp_path: Path, engine: str) -> Path:
    f = tmp_path / "profiles.toml"
    f.write_text(f'[custom]\nextends = "ltx-2-tiny"\nengine = "{engine}"\n')
    return f


def test_the_test_profiles_select_the_test_engine() -> None:
    profiles = load_profiles(PROFILES)
    faults = profiles["ltx-2-tiny-faults"]
    assert faults.engine == "tests.engines.faulty:FaultyEngine"
    assert Faults.from_profile(faults) == Faults(crash_on_prompt="poison", slow_on_prompt="slow", step_delay=30.0)
    # extends merges the faults table key by key
    brief = Faults.from_profile(profiles["ltx-2-tiny-faults-brief"])
    assert brief == Faults(crash_on_prompt="poison", slow_on_prompt="slow-fox", step_delay=1.5)


@pytest.mark.parametrize("engine", ["sora", "tests.engines.faulty", "a b:C", ":Engine", "pkg.:Engine"])
def test_an_engine_that_is_neither_known_nor_an_import_path_is_refused_when_read(tmp_path: Path, engine: str) -> None:
    with pytest.raises(ReelgenError) as err:
        load_profiles(_profiles(tmp_path, engine))
    assert err.value.code == ErrorCode.INVALID_PROFILE
    assert "unknown engine" in err.value.message and "package.module:Class" in err.value.message


@pytest.mark.parametrize(
    ("engine", "message"),
    [
        ("tests.engines.nowhere:Engine", "cannot be imported (ModuleNotFoundError"),
        ("tests.engines.faulty:Missing", "names nothing: module 'tests.engines.faulty' has no 'Missing'"),
        ("tests.engines:importable_env", "is not an engine: it has no from_profile"),
    ],
)
def test_serve_refuses_a_custom_engine_it_cannot_use(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], engine: str, message: str
) -> None:
    f = _profiles(tmp_path, engine)
    code = cli_main(["serve", "--profile", "custom", "--profiles-file", str(f), "--data-dir", str(tmp_path / "d")])
    err = capsys.readouterr().err
    assert code != 0 and "INVALID_PROFILE" in err and message in err, err
    assert "Traceback" not in err
    with pytest.raises(ReelgenError) as ei:  # a worker loading it is refused the same way
        load_engine(get_profile("custom", f), device="cpu")
    assert ei.value.code == ErrorCode.INVALID_PROFILE and message in ei.value.message


def test_a_custom_engine_runs_its_own_profile_check(tmp_path: Path) -> None:
    """The test engine's ``check_profile`` is the LTX-2 check: a bad STG block is refused before serving."""
    f = tmp_path / "profiles.toml"
    f.write_text(
        '[custom]\nextends = "ltx-2-tiny"\nengine = "tests.engines.faulty:FaultyEngine"\n'
        "modes.professional.stage1.stg_blocks = [5]\n"
    )
    with pytest.raises(ReelgenError) as err:
        check_profile(get_profile("custom", f))
    assert err.value.code == ErrorCode.INVALID_PROFILE and "stg_blocks [5]" in err.value.message


def test_the_test_engine_renders_like_the_tiny_one_and_its_pause_ends_on_a_stop(tiny_engine: Engine) -> None:
    profile = get_profile("ltx-2-tiny-faults", PROFILES)
    engine = load_engine(profile, device="cpu")
    assert isinstance(engine, FaultyEngine) and engine.random_weights
    job = plan(GenerateInput(prompt="a fox", duration=3), profile, seed=3)
    clip = engine.generate(job, job.segments[0])
    assert np.array_equal(clip.frames, tiny_engine.generate(job, job.segments[0]).frames)

    # a "slow" prompt pauses 30 s after each step, but only until the step callback says stop
    slow = plan(GenerateInput(prompt="a slow fox", duration=3), profile, seed=3)
    asked: list[int] = []

    def on_step(done: int, total: int) -> bool:
        asked.append(done)
        return len(asked) < 5  # the fifth question is answered "stop" (a cancel arriving mid-pause)

    with pytest.raises(Cancelled):
        engine.generate(slow, slow.segments[0], on_step)
    assert asked == [1, 1, 1, 1, 1]  # the pause kept asking after step 1, and the render stopped there
