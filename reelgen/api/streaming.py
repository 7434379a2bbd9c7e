"""Sending a stored MP4, the same way for every storage: the service opens the object (a local
file or a bucket's object) and this module streams the bytes a request asks for.

``Range`` (RFC 9110): one ``bytes`` range gets 206 with ``Content-Range``; an unsatisfiable one gets
416 with ``Content-Range: bytes */<size>`` and the JSON error envelope (``RANGE_NOT_SATISFIABLE``).
A header that is not one byte range (malformed, another unit, or several ranges) is ignored and
the whole file is sent (200), as the RFC allows: one rule for every storage, documented in
docs/api.md. ``HEAD`` gets the same status and headers with no body.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import BinaryIO

from fastapi.responses import Response, StreamingResponse

from reelgen.api.errors import error_response
from reelgen.errors import ErrorCode, ReelgenError
from reelgen.service import ResultFile

CHUNK_BYTES = 256 * 1024
_RANGE = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$", re.IGNORECASE)


class Unsatisfiable(Exception):
    pass


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The inclusive byte span one ``Range`` header asks for; None for the whole file."""
    if not header or "," in header:
        return None
    m = _RANGE.match(header)
    if m is None or (not m.group(1) and not m.group(2)):
        return None  # a malformed header is ignored, as RFC 9110 allows
    first, last = m.group(1), m.group(2)
    if not first:  # a suffix: the last N bytes
        n = int(last)
        if n == 0 or size == 0:
            raise Unsatisfiable
        return max(0, size - n), size - 1
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if start >= size or (last and int(last) < start):
        raise Unsatisfiable
    return start, end


def _chunks(f: BinaryIO, start: int, length: int) -> Iterator[bytes]:
    try:
        f.seek(start)
        left = length
        while left > 0:
            data = f.read(min(CHUNK_BYTES, left))
            if not data:
                return
            left -= len(data)
            yield data
    finally:
        f.close()


def mp4_response(result: ResultFile, range_header: str | None, *, head: bool = False) -> Response:
    """The response sending ``result`` (which it closes): 200, 206 or 416 as ``range_header`` asks."""
    size = result.size
    headers = {"Accept-Ranges": "bytes", "Content-Disposition": f'inline; filename="{result.filename}"'}
    try:
        span = parse_range(range_header, size)
    except Unsatisfiable:
        result.file.close()
        return error_response(
            ReelgenError(
                ErrorCode.RANGE_NOT_SATISFIABLE,
                f"The requested range is outside the file ({size} bytes).",
                headers={**headers, "Content-Range": f"bytes */{size}"},
            )
        )
    start, end = span if span is not None else (0, size - 1)
    length = max(0, end - start + 1)
    headers["Content-Length"] = str(length)
    if span is not None:
        headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    status = 206 if span is not None else 200
    if head:
        result.file.close()
        return Response(status_code=status, media_type="video/mp4", headers=headers)
    return StreamingResponse(
        _chunks(result.file, start, length), status_code=status, media_type="video/mp4", headers=headers
    )
