from __future__ import annotations

from typing import Any

import pytest

from reelgen.errors import ErrorCode, ReelgenError
from reelgen.schemas import IMAGE_TO_VIDEO, TEXT_TO_VIDEO, parse_generate

PNG = "data:image/png;base64,iVBORw0KGgo="


def body(model: str = TEXT_TO_VIDEO, **inp: Any) -> dict[str, Any]:
    return {"model": model, "input": {"prompt": "a red fox", **inp}}


def code_of(b: Any) -> ErrorCode | str:
    with pytest.raises(ReelgenError) as ei:
        parse_generate(b)
    return ei.value.code


def test_defaults() -> None:
    req = parse_generate(body())
    assert (req.input.duration, req.input.mode, req.input.audio, req.input.aspect_ratio) == (
        5,
        "standard",
        True,
        "16:9",
    )
    assert req.input.multi_shots is False


@pytest.mark.parametrize(
    ("b", "code"),
    [
        ([], ErrorCode.INVALID_JSON),
        ("x", ErrorCode.INVALID_JSON),
        ({"input": {"prompt": "x"}}, ErrorCode.MISSING_MODEL),
        ({"model": "", "input": {"prompt": "x"}}, ErrorCode.MISSING_MODEL),
        ({"model": "kling-9", "input": {"prompt": "x"}}, ErrorCode.INVALID_MODEL),
        ({"model": 5, "input": {"prompt": "x"}}, ErrorCode.INVALID_MODEL),
        ({"model": TEXT_TO_VIDEO}, ErrorCode.MISSING_PROMPT),
        ({"model": TEXT_TO_VIDEO, "input": {}}, ErrorCode.MISSING_PROMPT),
        ({"model": TEXT_TO_VIDEO, "input": {"prompt": "   "}}, ErrorCode.MISSING_PROMPT),
        ({"model": TEXT_TO_VIDEO, "input": "prompt"}, ErrorCode.MISSING_PROMPT),
    ],
)
def test_envelope_level_codes(b: Any, code: ErrorCode) -> None:
    assert code_of(b) == code


@pytest.mark.parametrize(
    "inp",
    [
        {"duration": 2},
        {"duration": 16},
        {"duration": 5.5},
        {"duration": True},
        {"duration": "5"},
        {"mode": "turbo"},
        {"audio": "yes"},
        {"aspect_ratio": "4:3"},
        {"prompt": "x" * 2501},
        {"prompt": 7},
        {"colour": "red"},
        {"multi_shots": True},
        {"multi_shots": True, "multi_prompt": []},
        {"multi_shots": True, "duration": 5, "multi_prompt": [{"prompt": "a", "duration": 2}]},
        {
            "multi_shots": True,
            "duration": 5,
            "multi_prompt": [{"prompt": "a", "duration": 5}, {"prompt": "b", "duration": 0}],
        },
        {"multi_shots": True, "duration": 5, "multi_prompt": [{"prompt": " ", "duration": 5}]},
        {"multi_prompt": [{"prompt": "a", "duration": 5}]},
        {"image_urls": [PNG]},
    ],
)
def test_invalid_text_to_video_inputs(inp: dict[str, Any]) -> None:
    with pytest.raises(ReelgenError) as ei:
        parse_generate(body(**inp))
    assert ei.value.code == ErrorCode.INVALID_INPUT
    assert ei.value.details and all(d["field"].startswith("input") for d in ei.value.details)


@pytest.mark.parametrize(
    "inp",
    [
        {},
        {"image_urls": []},
        {"image_urls": [PNG, PNG, PNG]},
        {"image_urls": ["ftp://example.com/a.png"]},
        {"image_urls": ["file:///etc/passwd"]},
        {"image_urls": [PNG], "aspect_ratio": "16:9"},
    ],
)
def test_invalid_image_to_video_inputs(inp: dict[str, Any]) -> None:
    assert code_of(body(IMAGE_TO_VIDEO, **inp)) == ErrorCode.INVALID_INPUT


def test_unknown_top_level_field_is_rejected() -> None:
    b = body()
    b["colour"] = "red"
    assert code_of(b) == ErrorCode.INVALID_INPUT


def test_whole_float_duration_and_multi_shot_accepted() -> None:
    req = parse_generate(
        body(
            duration=6.0,
            multi_shots=True,
            multi_prompt=[{"prompt": "a", "duration": 2}, {"prompt": "b", "duration": 4.0}],
        )
    )
    assert req.input.duration == 6
    assert req.input.multi_prompt is not None
    assert [s.duration for s in req.input.multi_prompt] == [2, 4]


def test_image_to_video_has_no_aspect_ratio() -> None:
    req = parse_generate(body(IMAGE_TO_VIDEO, image_urls=[PNG, "https://example.com/end.jpg"]))
    assert req.input.aspect_ratio is None
    assert req.is_image_to_video
