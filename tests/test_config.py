"""Settings: cross-field rules are checked when the settings are built, before anything starts."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from reelgen.cli import main
from reelgen.config import Settings


@pytest.mark.parametrize(("heartbeat", "lease"), [(30.0, 30.0), (60.0, 30.0), (5.0, 4.0)])
def test_heartbeat_must_be_shorter_than_the_lease(heartbeat: float, lease: float) -> None:
    with pytest.raises(ValidationError, match=r"heartbeat_seconds .* must be shorter than lease_seconds"):
        Settings(heartbeat_seconds=heartbeat, lease_seconds=lease)


def test_heartbeat_shorter_than_the_lease_is_accepted() -> None:
    settings = Settings(heartbeat_seconds=0.5, lease_seconds=4.0)
    assert (settings.heartbeat_seconds, settings.lease_seconds) == (0.5, 4.0)


@pytest.mark.parametrize("field", ["heartbeat_seconds", "lease_seconds"])
def test_lease_timings_must_be_positive(field: str) -> None:
    with pytest.raises(ValidationError):
        Settings(**{field: 0})


def test_the_cli_refuses_crossed_settings_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("REELGEN_HEARTBEAT_SECONDS", "60")
    code = main(["db", "upgrade", "--data-dir", str(tmp_path / "data")])
    err = capsys.readouterr().err
    assert code == 2
    assert "INVALID_SETTINGS" in err and "heartbeat_seconds" in err and "Traceback" not in err
    assert not (tmp_path / "data" / "reelgen.db").exists()
