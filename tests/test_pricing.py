from __future__ import annotations

import pytest

from reelgen.pricing import credits_for
from reelgen.profiles import get_profile
from reelgen.schemas import GenerateInput


@pytest.mark.parametrize(
    ("mode", "audio", "duration", "price"),
    [
        ("standard", False, 3, 84),
        ("standard", True, 3, 126),
        ("standard", True, 5, 210),
        ("standard", False, 15, 420),
        ("standard", True, 15, 630),
        ("professional", False, 3, 114),
        ("professional", True, 3, 168),
        ("professional", False, 15, 570),
        ("professional", True, 15, 840),
        ("professional", True, 10, 560),
    ],
)
@pytest.mark.parametrize("profile", ["ltx-2", "ltx-2-tiny"])
def test_seed_price_table(profile: str, mode: str, audio: bool, duration: int, price: int) -> None:
    inp = GenerateInput(prompt="a fox", duration=duration, mode=mode, audio=audio)  # type: ignore[arg-type]
    assert credits_for(inp, get_profile(profile)) == price


def test_defaults_cost_210() -> None:
    assert credits_for(GenerateInput(prompt="a fox"), get_profile("ltx-2")) == 210
