"""Uploads: store an input image after the same checks as a fetched one, then record who owns it.

The object is stored before its row (a row must never name a missing object); if the row cannot be
written, the object is deleted again, so nothing is orphaned.
"""

from __future__ import annotations

import io
import uuid
from typing import Any

from sqlalchemy import Connection

from reelgen.errors import ErrorCode, ReelgenError
from reelgen.service.context import Context
from reelgen.storage.base import room_to_write
from reelgen.store import uploads

__all__ = ["check_quota", "upload"]


def upload(ctx: Context, account_id: str, data: bytes) -> dict[str, Any]:
    """Store an input image after the same checks as a fetched one (size, type, pixels, ratio);
    returns ``{id, url, format, width, height, size}`` where ``url`` (``reelgen-upload://<id>``)
    is usable in this account's ``image_urls``."""
    from reelgen.inputs import decode_image

    limit = ctx.settings.max_image_bytes
    if len(data) > limit:
        raise ReelgenError(ErrorCode.PAYLOAD_TOO_LARGE, f"The image is larger than {limit} bytes.")
    if not data:
        raise _invalid_upload("the request body is empty: send the image bytes, or a multipart field 'file'")
    ctx.db.run(lambda conn: check_quota(ctx, conn, account_id, len(data)))  # before any byte is stored
    try:
        image = decode_image(data)
    except ReelgenError as exc:  # the task-failure codes become a request error here
        raise _invalid_upload(exc.message) from None
    fmt = _image_format(data)
    upload_id = uuid.uuid4().hex
    key = uploads.storage_key(upload_id)
    with room_to_write():  # a full or read-only disk: 503 with Retry-After
        scratch = ctx.storage.temp_path(f"upload-{upload_id}")
        try:
            scratch.write_bytes(data)
            ctx.storage.put(key, scratch)
        finally:
            scratch.unlink(missing_ok=True)
    row = uploads.Upload(
        id=upload_id,
        account_id=account_id,
        key=key,
        format=fmt,
        size=len(data),
        width=image.width,
        height=image.height,
        created_at=ctx.clock(),
    )

    def record(conn: Connection) -> None:
        check_quota(ctx, conn, account_id, len(data))
        uploads.create(conn, row)

    try:
        ctx.db.run(record, immediate=True)
    except BaseException:
        # no row will ever name the object: remove it now, or it is orphaned for good
        ctx.storage.delete(key)
        raise
    return {
        "id": upload_id,
        "url": uploads.url_for(upload_id),
        "format": fmt.lower(),
        "width": image.width,
        "height": image.height,
        "size": len(data),
    }


def check_quota(ctx: Context, conn: Connection, account_id: str, size: int) -> None:
    """``UPLOAD_QUOTA_EXCEEDED`` (413) if ``size`` more bytes would take the account's uploads past
    ``settings.upload_quota_bytes`` (0: no quota). Every upload flow calls it: once before storing
    the bytes (a refused upload costs no disk), and again in the transaction that records the row,
    under the account's lock, so concurrent uploads cannot pass it together."""
    quota = ctx.settings.upload_quota_bytes
    if not quota:
        return
    used = uploads.bytes_of(conn, account_id, lock=True)
    if used + size > quota:
        raise ReelgenError(
            ErrorCode.UPLOAD_QUOTA_EXCEEDED,
            f"Upload quota exceeded: this account keeps {used} bytes of uploads, and {size} more would pass "
            f"its quota of {quota} bytes.",
        )


def _invalid_upload(message: str) -> ReelgenError:
    return ReelgenError(
        ErrorCode.INVALID_INPUT, f"Invalid image: {message}", details=[{"field": "file", "message": message}]
    )


def _image_format(data: bytes) -> str:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        return str(img.format)
