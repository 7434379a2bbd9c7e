"""Uploads: input images stored on this server for later ``image_urls``, in two forms.

* The bytes in the request (``upload``): checked like a fetched image, stored, recorded.
* VicSee's presign flow: ``presign`` answers ``{uploadUrl, publicUrl, key, expiresAt}`` for a
  declared type and size; ``put_presigned`` takes the bytes the client ``PUT``s to ``uploadUrl``
  (signed, single use, expiring, no API key) after the same checks plus the declared type and size.

``publicUrl`` (``<base>/api/v1/uploads/<id>``) is an http(s) URL that ``/generate`` recognises
(``upload_id_of``) and turns into the ``reelgen-upload://<id>`` form the worker reads from storage,
so it is never fetched over the network; over HTTP it serves the image to its owner only.

Every stored upload goes through ``_store`` (one place for storage and quota rules). The object is
stored before its row (a row must never name a missing object); if the row cannot be written, the
object is deleted again. ``sweeper.purge_uploads`` removes never-used uploads after
``upload_retention_seconds`` and presigned slots that expired without their bytes.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import re
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import Connection

from reelgen.errors import ErrorCode, ReelgenError
from reelgen.schemas import PresignRequest
from reelgen.service.context import Context
from reelgen.storage.base import room_to_write
from reelgen.store import uploads
from reelgen.views import iso

__all__ = [
    "PRESIGN_TTL_SECONDS",
    "StoredImage",
    "check_quota",
    "presign",
    "public_url",
    "put_presigned",
    "read_upload",
    "upload",
    "upload_id_of",
]

#: How long an ``uploadUrl`` accepts its ``PUT``.
PRESIGN_TTL_SECONDS = 900
_PUBLIC_PATH = re.compile(r"/api/v1/uploads/([0-9a-f]{32})")
_FORMAT_TYPES = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp"}


def _base(ctx: Context, base_url: str) -> str:
    return (ctx.settings.public_base_url or base_url).rstrip("/")


def public_url(ctx: Context, upload_id: str, base_url: str) -> str:
    """The upload's ``publicUrl``: an http(s) URL on this server, usable in the owner's ``image_urls``."""
    return f"{_base(ctx, base_url)}/api/v1/uploads/{upload_id}"


def upload_id_of(ctx: Context, url: str, base_url: str) -> str | None:
    """The upload id of a ``publicUrl`` of this server (its host as the request or
    ``public_base_url`` names it, path ``/api/v1/uploads/<id>``); None for any other URL."""
    try:
        parts = urlsplit(url)
    except ValueError:  # "Invalid IPv6 URL" (an unbalanced bracket): not one of ours
        return None
    match = _PUBLIC_PATH.fullmatch(parts.path)
    if match is None or parts.query or parts.fragment or parts.scheme.lower() not in ("http", "https"):
        return None
    hosts = {urlsplit(base_url).netloc.lower()}
    if ctx.settings.public_base_url:
        hosts.add(urlsplit(ctx.settings.public_base_url).netloc.lower())
    return match.group(1) if parts.netloc.lower() in hosts else None


# --------------------------------------------------------------------------------------------
# Storing an image (both forms)
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StoredImage:
    """What the checks learned of an image: its format (JPEG, PNG, WEBP) and size."""

    format: str
    width: int
    height: int


def _invalid_upload(message: str, field: str = "file") -> ReelgenError:
    return ReelgenError(
        ErrorCode.INVALID_INPUT, f"Invalid image: {message}", details=[{"field": field, "message": message}]
    )


def _max_bytes(ctx: Context) -> int:
    """The largest upload: the image limit, and what one request body may carry."""
    return min(ctx.settings.max_image_bytes, ctx.settings.max_body_bytes)


def _check_image(ctx: Context, data: bytes, field: str = "file") -> StoredImage:
    """The same checks as a fetched image (size, type, pixels, ratio)."""
    from PIL import Image

    from reelgen.inputs import decode_image

    limit = ctx.settings.max_image_bytes
    if len(data) > limit:
        raise ReelgenError(ErrorCode.PAYLOAD_TOO_LARGE, f"The image is larger than {limit} bytes.")
    if not data:
        raise _invalid_upload("the request body is empty: send the image bytes, or a multipart field 'file'", field)
    try:
        image = decode_image(data)
    except ReelgenError as exc:  # the task-failure codes become a request error here
        raise _invalid_upload(exc.message, field) from None
    with Image.open(io.BytesIO(data)) as img:
        fmt = str(img.format)
    return StoredImage(fmt, image.width, image.height)


def _store(ctx: Context, account_id: str, upload_id: str, data: bytes, image: StoredImage, *, slot: bool) -> None:
    """Store the bytes, then the row (replacing the presigned slot when ``slot``)."""
    key = uploads.storage_key(upload_id)
    ctx.db.run(lambda conn: check_quota(ctx, conn, account_id, len(data)))  # before any byte is stored
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
        format=image.format,
        size=len(data),
        width=image.width,
        height=image.height,
        created_at=ctx.clock(),
    )
    write = uploads.finish_slot if slot else uploads.create

    def record(conn: Connection) -> None:
        check_quota(ctx, conn, account_id, len(data))  # again, under the account's lock
        write(conn, row)

    try:
        ctx.db.run(record, immediate=True)
    except BaseException:
        # no row will ever name the object: remove it now, or it is orphaned for good
        ctx.storage.delete(key)
        raise


def _described(upload_id: str, image: StoredImage, size: int, url: str) -> dict[str, Any]:
    return {
        "id": upload_id,
        "url": url,
        "key": uploads.storage_key(upload_id),
        "format": image.format.lower(),
        "width": image.width,
        "height": image.height,
        "size": size,
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


def upload(ctx: Context, account_id: str, data: bytes, base_url: str | None = None) -> dict[str, Any]:
    """Store an input image after the same checks as a fetched one (size, type, pixels, ratio);
    returns ``{id, url, key, format, width, height, size}`` (and ``publicUrl`` when ``base_url`` is
    given) where ``url`` (``reelgen-upload://<id>``) is usable in this account's ``image_urls``."""
    image = _check_image(ctx, data)
    upload_id = uuid.uuid4().hex
    _store(ctx, account_id, upload_id, data, image, slot=False)
    out = _described(upload_id, image, len(data), uploads.url_for(upload_id))
    if base_url is not None:
        out["publicUrl"] = public_url(ctx, upload_id, base_url)
    return out


# --------------------------------------------------------------------------------------------
# The presign flow
# --------------------------------------------------------------------------------------------
def _sign(ctx: Context, upload_id: str, expires: int) -> str:
    mac = hmac.new(ctx.secret.encode(), f"upload:{upload_id}:{expires}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac[:24]).decode().rstrip("=")


def presign(ctx: Context, account_id: str, body: Any, base_url: str) -> dict[str, Any]:
    """``{contentType, sizeBytes}`` → ``{uploadUrl, publicUrl, key, expiresAt}``: a slot for one
    image of that type and size, to be ``PUT`` to ``uploadUrl`` within ``PRESIGN_TTL_SECONDS``."""
    request = PresignRequest.parse(body)
    limit = _max_bytes(ctx)
    if request.sizeBytes > limit:  # a declaration, not a body: a validation error like the others
        message = f"must be at most {limit} (this server's limit)"
        raise ReelgenError(
            ErrorCode.INVALID_INPUT,
            f"Invalid upload: sizeBytes: {message}",
            details=[{"field": "sizeBytes", "message": message}],
        )
    now = ctx.clock()
    # whole seconds: the expiry is signed as an integer and must be the one the slot keeps
    expires = int(max(now.timestamp(), time.time())) + PRESIGN_TTL_SECONDS
    expires_at = datetime.fromtimestamp(expires, UTC)
    slot = uploads.Slot(
        id=uuid.uuid4().hex,
        account_id=account_id,
        content_type=request.media_type,
        size=request.sizeBytes,
        created_at=now,
        expires_at=expires_at,
    )

    def reserve(conn: Connection) -> None:
        check_quota(ctx, conn, account_id, slot.size)  # the declared size counts against the quota
        uploads.create_slot(conn, slot)

    ctx.db.run(reserve, immediate=True)
    base = _base(ctx, base_url)
    return {
        "uploadUrl": f"{base}/api/v1/uploads/{slot.id}?expires={expires}&token={_sign(ctx, slot.id, expires)}",
        "publicUrl": public_url(ctx, slot.id, base_url),
        "key": uploads.storage_key(slot.id),
        "expiresAt": iso(expires_at),
    }


def _bad_link() -> ReelgenError:
    return ReelgenError(ErrorCode.INVALID_TOKEN, "This upload link is invalid, expired or already used.")


def put_presigned(
    ctx: Context,
    upload_id: str,
    expires: str | None,
    token: str | None,
    content_type: str | None,
    data: bytes,
    base_url: str,
) -> dict[str, Any]:
    """Store the bytes ``PUT`` to a presigned ``uploadUrl``: the link must be live and unused, the
    body exactly the declared size and type and a valid image; anything else stores nothing."""
    if not expires or not token or not expires.isdigit() or len(expires) > 12 or int(expires) < time.time():
        raise _bad_link()
    if not hmac.compare_digest(_sign(ctx, upload_id, int(expires)), token):
        raise _bad_link()
    slot = ctx.db.run(lambda conn: uploads.get_slot(conn, upload_id))
    if slot is None or slot.claimed_at is not None:
        raise _bad_link()
    declared = (content_type or "").split(";", 1)[0].strip().lower()
    if declared and declared != slot.content_type:
        raise _invalid_upload(f"Content-Type {declared[:100]} is not the declared {slot.content_type}", "body")
    if len(data) != slot.size:
        raise _invalid_upload(f"the body is {len(data)} bytes; the upload declared {slot.size}", "body")
    image = _check_image(ctx, data, "body")
    if _FORMAT_TYPES[image.format] != slot.content_type:
        raise _invalid_upload(f"the image is {_FORMAT_TYPES[image.format]}, not the declared {slot.content_type}")
    claimed = ctx.db.run(lambda conn: uploads.claim_slot(conn, upload_id, ctx.clock()), immediate=True)
    if claimed is None:  # another PUT of this link won, or it expired meanwhile
        raise _bad_link()
    _store(ctx, slot.account_id, upload_id, data, image, slot=True)
    return _described(upload_id, image, len(data), public_url(ctx, upload_id, base_url))


def read_upload(ctx: Context, account_id: str, upload_id: str) -> tuple[bytes, str]:
    """The bytes and media type of the caller's own upload (``GET publicUrl``); anyone else's, or
    an unknown id, is ``NOT_FOUND``; the caller's presigned upload whose bytes have not come yet is
    ``NO_RESULT`` (409)."""
    found, slot = ctx.db.run(lambda conn: (uploads.get(conn, upload_id), uploads.get_slot(conn, upload_id)))
    missing = ReelgenError(ErrorCode.NOT_FOUND, "Upload not found.")
    if found is None and slot is not None and slot.account_id == account_id:
        raise ReelgenError(ErrorCode.NO_RESULT, "The image has not been uploaded yet: PUT it to its uploadUrl.")
    if found is None or found.account_id != account_id:
        raise missing
    try:
        with ctx.storage.open(found.key) as f:
            data = f.read()
    except (OSError, ReelgenError):
        raise missing from None
    return data, _FORMAT_TYPES.get(found.format, "application/octet-stream")
