"""``Range`` header parsing for results streamed from remote storage (``reelgen/api/streaming.py``)."""

from __future__ import annotations

import pytest

from reelgen.api.streaming import Unsatisfiable, parse_range


@pytest.mark.parametrize(
    ("header", "size", "span"),
    [
        (None, 100, None),
        ("", 100, None),
        ("bytes=0-9", 100, (0, 9)),
        ("bytes=10-", 100, (10, 99)),
        ("bytes=90-200", 100, (90, 99)),  # an end past the file is clipped
        ("bytes=-7", 100, (93, 99)),  # the last 7 bytes
        ("bytes=-500", 100, (0, 99)),
        ("BYTES = 5 - 6", 100, (5, 6)),
        ("bytes=0-1,5-6", 100, None),  # several ranges: the whole file
        ("items=0-9", 100, None),  # another unit: ignored
        ("bytes=x-y", 100, None),  # malformed: ignored
        ("bytes=-", 100, None),
    ],
)
def test_parse_range(header: str | None, size: int, span: tuple[int, int] | None) -> None:
    assert parse_range(header, size) == span


@pytest.mark.parametrize(
    ("header", "size"), [("bytes=100-", 100), ("bytes=5-4", 100), ("bytes=-0", 100), ("bytes=-5", 0)]
)
def test_unsatisfiable_ranges(header: str, size: int) -> None:
    with pytest.raises(Unsatisfiable):
        parse_range(header, size)
