"""Sending a stored MP4: a local file through ``FileResponse``, anything else streamed from storage.

Both answer single-range ``Range`` requests (206 with ``Content-Range``, 416 when unsatisfiable)
and set ``Content-Length``, so players can seek in a video kept in a bucket just as in a local one.
A request with several ranges gets the whole file (200), which HTTP allows.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import BinaryIO

from fastapi.responses import FileResponse, Response, StreamingResponse

from reelgen.service import ResultFile
from reelgen.storage.base import Storage

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


def mp4_response(storage: Storage, result: ResultFile, range_header: str | None) -> Response:
    if result.path is not None:
        # FileResponse answers Range requests (206 / 416) and sets Content-Length itself.
        return FileResponse(
            result.path, media_type="video/mp4", filename=result.filename, content_disposition_type="inline"
        )
    size = result.size
    headers = {"Accept-Ranges": "bytes", "Content-Disposition": f'inline; filename="{result.filename}"'}
    try:
        span = parse_range(range_header, size)
    except Unsatisfiable:
        return Response(status_code=416, headers={**headers, "Content-Range": f"bytes */{size}"})
    start, end = span if span is not None else (0, size - 1)
    length = max(0, end - start + 1)
    headers["Content-Length"] = str(length)
    if span is not None:
        headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    f = storage.open(result.key)  # opened before answering: a vanished object is an error, not a cut stream
    return StreamingResponse(
        _chunks(f, start, length), status_code=206 if span is not None else 200, media_type="video/mp4", headers=headers
    )
