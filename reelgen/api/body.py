"""Request bodies: JSON with a nesting limit.

Python's JSON parser recurses once per level: a body of a thousand ``[`` (2 KB) exhausts the
interpreter's recursion limit in the parser or, a little shallower, in whatever walks the value
next (validation, the idempotency hash). No request of the contract nests deeper than a few
levels, so a body nesting deeper than ``MAX_DEPTH`` is refused as invalid JSON before it is parsed.
"""

from __future__ import annotations

import json
import re
from typing import Any

from reelgen.errors import ErrorCode, ReelgenError

__all__ = ["MAX_DEPTH", "loads"]

#: The deepest nesting of arrays and objects a JSON body may have.
MAX_DEPTH = 32
#: A string literal (its escapes included) or one bracket: what the depth scan looks at.
_TOKENS = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{}]', re.DOTALL)


def depth(raw: bytes) -> int:
    """The deepest nesting of ``[``/``{`` in ``raw``, brackets inside strings not counted. Scans
    without recursion, so any input of any depth is measured."""
    level = deepest = 0
    for m in _TOKENS.finditer(raw):
        token = m.group()
        if token in (b"[", b"{"):
            level += 1
            deepest = max(deepest, level)
        elif token in (b"]", b"}"):
            level -= 1
    return deepest


def loads(raw: bytes) -> Any:
    """The JSON value of a request body, or ``INVALID_JSON`` (not JSON, not UTF-8, or nested
    deeper than ``MAX_DEPTH``)."""
    if depth(raw) > MAX_DEPTH:
        raise ReelgenError(
            ErrorCode.INVALID_JSON, f"The request body nests arrays and objects deeper than {MAX_DEPTH} levels."
        )
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ReelgenError(ErrorCode.INVALID_JSON, "The request body is not valid JSON.") from None
