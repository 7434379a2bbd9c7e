"""Fuzzing the request body parser and the image URL validator (RELIABILITY 20), bounded for CI.

The properties live in ``tests/fuzz/targets.py``: ``parse_generate`` accepts a body with every
contract rule holding (and text that can be stored and encoded) or refuses it with one of the
contract's codes and an envelope that renders; ``validate_url`` accepts only fetchable URLs, in a
canonical form, or refuses with ``IMAGE_FETCH_FAILED``. Hypothesis drives them here
(derandomized, so CI is stable); ``tests/fuzz/atheris_parsers.py`` runs the same targets under
coverage-guided fuzzing by hand or nightly, and every crash it found is a file under
``tests/fuzz/regressions/``, replayed below.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reelgen.schemas import IMAGE_TO_VIDEO, TEXT_TO_VIDEO
from tests.fuzz.targets import check_generate_body, check_generate_bytes, check_url, check_url_bytes

REGRESSIONS = Path(__file__).parent / "fuzz" / "regressions"
FUZZ = settings(max_examples=400, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])

# text with the characters parsers trip on: NUL, controls, lone surrogates, odd whitespace, non-ASCII
_nasty = st.sampled_from(["\x00", "\x1c", "\x85", "\ufeff", "\u3000", "\ud800", "\udfff", "\\", "%", "@", "\n", " "])
text = st.lists(st.one_of(st.characters(codec=None), _nasty), max_size=24).map("".join)
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True, allow_infinity=True), text
)
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4), max_leaves=12
)

INPUT_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "prompt": st.one_of(st.just("a red fox"), text, st.text(min_size=2400, max_size=2600), json_values),
    "duration": st.one_of(st.integers(0, 20), st.floats(2.5, 16.0), st.sampled_from([5.0, "5", True]), json_values),
    "mode": st.one_of(st.sampled_from(["standard", "professional", "STANDARD"]), json_values),
    "audio": st.one_of(st.booleans(), json_values),
    "aspect_ratio": st.one_of(st.sampled_from(["16:9", "9:16", "1:1", "4:3"]), json_values),
    "image_urls": st.one_of(
        st.lists(st.sampled_from(["https://example.com/a.png", "data:image/png;base64,AAAA", "ftp://x"]), max_size=3),
        st.lists(text.map(lambda t: "https://" + t), max_size=3),
        json_values,
    ),
    "multi_shots": st.one_of(st.booleans(), json_values),
    "multi_prompt": st.one_of(
        st.lists(
            st.fixed_dictionaries({"prompt": st.one_of(st.just("a shot"), text), "duration": st.integers(0, 16)}),
            max_size=4,
        ),
        json_values,
    ),
}


@st.composite
def generate_bodies(draw: st.DrawFn) -> Any:
    """Mostly well-shaped bodies with some fields wrong or missing, plus a few stray fields."""
    fields = draw(st.lists(st.sampled_from(sorted(INPUT_FIELDS)), unique=True))
    inp: dict[str, Any] = {name: draw(INPUT_FIELDS[name]) for name in fields}
    inp.update(draw(st.dictionaries(text, json_values, max_size=2)))
    body: dict[str, Any] = {
        "model": draw(st.one_of(st.sampled_from([TEXT_TO_VIDEO, IMAGE_TO_VIDEO]), json_values)),
        "input": draw(st.one_of(st.just(inp), json_values)) if draw(st.integers(0, 9)) == 0 else inp,
    }
    body.update(draw(st.dictionaries(text, json_values, max_size=2)))
    return body


@st.composite
def valid_bodies_with_odd_text(draw: st.DrawFn) -> Any:
    """A body the parser accepts but for the text of its prompts, which carries the odd characters."""
    duration = draw(st.integers(3, 15))
    inp: dict[str, Any] = {"prompt": draw(text), "duration": duration}
    if draw(st.booleans()):
        inp.update(multi_shots=True, multi_prompt=[{"prompt": draw(text), "duration": duration}])
    model = draw(st.sampled_from([TEXT_TO_VIDEO, IMAGE_TO_VIDEO]))
    if model == IMAGE_TO_VIDEO:
        inp["image_urls"] = ["https://example.com/" + draw(text)]
    return {"model": model, "input": inp}


@FUZZ
@given(generate_bodies() | valid_bodies_with_odd_text())
def test_generate_parser_on_shaped_bodies(body: Any) -> None:
    check_generate_body(body)


@FUZZ
@given(json_values)
def test_generate_parser_on_any_json_value(body: Any) -> None:
    check_generate_body(body)


@FUZZ
@given(st.binary(max_size=200) | json_values.map(lambda v: json.dumps(v).encode()))
def test_generate_route_path_on_raw_bytes(raw: bytes) -> None:
    check_generate_bytes(raw)


ipv4_spellings = st.integers(0, 2**32 - 1).flatmap(
    lambda n: st.sampled_from(
        [
            ".".join(str((n >> s) & 255) for s in (24, 16, 8, 0)),
            str(n),
            hex(n),
            ".".join("0" + oct((n >> s) & 255)[2:] for s in (24, 16, 8, 0)),
            f"{n >> 24}.{n & 0xFFFFFF}",
        ]
    )
)
hosts = st.one_of(
    ipv4_spellings,
    st.ip_addresses(v=6).map(lambda ip: f"[{ip}]"),
    st.ip_addresses(v=4).map(lambda ip: f"[::ffff:{ip}]"),
    st.sampled_from(["example.com", "localhost", "xn--bcher-kva.example", "bücher.example", "EXAMPLE.com."]),
    text,
)
ports = st.one_of(
    st.just(""), st.sampled_from([":80", ":443", ":0", ":8080", ":65536", ":-1", ":"]), text.map(":".__add__)
)


@st.composite
def urls(draw: st.DrawFn) -> str:
    scheme = draw(st.sampled_from(["http://", "https://", "HTTP://", "ftp://", "data:", "//", ""]))
    userinfo = draw(st.sampled_from(["", "", "", "user:pw@", "@"]))
    path = draw(st.one_of(st.just("/"), text.map("/".__add__), st.just("")))
    query = draw(st.one_of(st.just(""), text.map("?".__add__)))
    fragment = draw(st.one_of(st.just(""), text.map("#".__add__)))
    return f"{scheme}{userinfo}{draw(hosts)}{draw(ports)}{path}{query}{fragment}"


@st.composite
def fetchable_urls_with_odd_tails(draw: st.DrawFn) -> str:
    """A URL the validator accepts up to its path, query or fragment, which carry the odd text."""
    host = draw(st.sampled_from(["example.com", "93.184.216.34", "[2606:4700::1111]", "bücher.example"]))
    tail = draw(st.sampled_from(["/", "/a/", "/?q=", "/#"]))
    return f"https://{host}{tail}{draw(text)}"


@FUZZ
@given(urls() | fetchable_urls_with_odd_tails())
def test_url_validator_on_shaped_urls(url: str) -> None:
    check_url(url)


@FUZZ
@given(text | st.binary(max_size=120).map(lambda b: b.decode("utf-8", "surrogateescape")))
def test_url_validator_on_any_text(url: str) -> None:
    check_url(url)


def _files(target: str) -> list[Path]:
    return sorted((REGRESSIONS / target).iterdir())


@pytest.mark.parametrize("path", _files("generate"), ids=lambda p: p.name)
def test_generate_regressions_and_seeds(path: Path) -> None:
    check_generate_bytes(path.read_bytes())


@pytest.mark.parametrize("path", _files("url"), ids=lambda p: p.name)
def test_url_regressions_and_seeds(path: Path) -> None:
    check_url_bytes(path.read_bytes())
