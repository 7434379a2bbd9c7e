"""Input images: decode them safely, fit them to the output size, unpack data: URIs.

Fetching goes through ``reelgen.safehttp`` (URL and address rules, pinned connections, limits);
this module adds what is particular to images: only JPEG, PNG and WEBP are decoded, dimensions
are checked before any pixel is, the EXIF orientation is applied, and PIL's decompression-bomb
warnings are errors.
"""

from __future__ import annotations

import base64
import io
import re
import socket
import ssl
import warnings
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from reelgen import safehttp
from reelgen.errors import ErrorCode, ReelgenError
from reelgen.safehttp import ConnectOverride, FetchPolicy, Resolver
from reelgen.schemas import UPLOAD_URL_PREFIX

if TYPE_CHECKING:
    from PIL import Image

__all__ = [
    "MAX_IMAGES",
    "FetchPolicy",  # re-exported: the policy image loading takes (defined in safehttp)
    "decode_data_uri",
    "decode_image",
    "fetch_image_bytes",
    "fit_image",
    "load_images",
]

#: The contract's limit (36 MP), checked from the header before any pixel is decoded.
MAX_IMAGE_PIXELS = 36_000_000
MIN_SIDE_RATIO, MAX_SIDE_RATIO = 0.4, 2.5
FORMATS = ("JPEG", "PNG", "WEBP")


def decode_image(data: bytes) -> Image.Image:
    """Decode JPEG/PNG/WEBP bytes into an RGB image, or raise ``INVALID_IMAGE`` / ``IMAGE_TOO_LARGE``."""
    from PIL import Image, ImageOps

    # PIL's own bomb guard (``Image.MAX_IMAGE_PIXELS``) is process-wide state that other code may
    # rely on: it is left as it is; the 36 MP limit below is checked from the header, before decoding
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img: Image.Image = Image.open(io.BytesIO(data), formats=list(FORMATS))
            w, h = img.size
            if w * h > MAX_IMAGE_PIXELS:
                raise ReelgenError(
                    ErrorCode.IMAGE_TOO_LARGE, f"The image is {w}x{h} ({w * h / 1e6:.1f} MP); the limit is 36 MP."
                )
            if w < 1 or h < 1 or not MIN_SIDE_RATIO <= w / h <= MAX_SIDE_RATIO:
                raise ReelgenError(
                    ErrorCode.INVALID_IMAGE,
                    f"The image is {w}x{h}; its width/height ratio must be between 0.4 and 2.5.",
                )
            img.load()
            img = ImageOps.exif_transpose(img) or img
            return img.convert("RGB")
    except ReelgenError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ReelgenError(ErrorCode.IMAGE_TOO_LARGE, "The image has too many pixels (limit 36 MP).") from None
    except (OSError, ValueError, SyntaxError, EOFError):
        # PIL's exception names (UnidentifiedImageError, ...) mean nothing to a caller: plain words only
        raise ReelgenError(
            ErrorCode.INVALID_IMAGE, "The file is not a readable JPEG, PNG or WEBP image (unknown format or damaged)."
        ) from None


def fit_image(img: Image.Image, width: int, height: int) -> Image.Image:
    """Centre-crop ``img`` to the ``width:height`` ratio, then resize it to exactly that size."""
    from PIL import Image

    src_w, src_h = img.size
    target = width / height
    if src_w / src_h > target:  # too wide: crop the sides
        new_w = max(1, round(src_h * target))
        left = (src_w - new_w) // 2
        box = (left, 0, left + new_w, src_h)
    else:  # too tall: crop top and bottom
        new_h = max(1, round(src_w / target))
        top = (src_h - new_h) // 2
        box = (0, top, src_w, top + new_h)
    return img.crop(box).resize((width, height), Image.Resampling.LANCZOS)


MAX_IMAGES = 2
_ACCEPT = b"image/png, image/jpeg, image/webp"


def fetch_image_bytes(
    url: str,
    policy: FetchPolicy,
    *,
    resolver: Resolver = socket.getaddrinfo,
    connect_override: ConnectOverride | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> bytes:
    """GET an http(s) image URL under ``policy`` (``safehttp.get``), or raise ``IMAGE_FETCH_FAILED``."""
    return safehttp.get(
        url,
        policy,
        safehttp.IMAGE,
        accept=_ACCEPT,
        resolver=resolver,
        connect_override=connect_override,
        ssl_context=ssl_context,
    )


_DATA_URI = re.compile(r"data:image/(?:png|jpeg|jpg|webp);base64,", re.IGNORECASE)


def decode_data_uri(uri: str, max_bytes: int) -> bytes:
    """The bytes of a ``data:image/{png,jpeg,webp};base64,`` URI, size-checked before decoding."""
    m = _DATA_URI.match(uri)
    if m is None:
        raise ReelgenError(
            ErrorCode.INVALID_IMAGE, "data: URIs must be data:image/png, image/jpeg or image/webp with ;base64,"
        )
    limit = 4 * -(-max_bytes // 3)
    too_large = ReelgenError(ErrorCode.IMAGE_FETCH_FAILED, f"The data: URI is larger than {max_bytes} bytes.")
    if len(uri) - m.end() > 2 * limit:  # hopeless even after stripping whitespace
        raise too_large
    payload = "".join(uri[m.end() :].split())
    if len(payload) > limit:
        raise too_large
    try:
        data = base64.b64decode(payload, validate=True)
    except ValueError:  # binascii.Error, or non-ASCII text
        raise ReelgenError(ErrorCode.INVALID_IMAGE, "The data: URI is not valid base64.") from None
    if len(data) > max_bytes:
        raise too_large
    return data


def load_images(
    urls: Sequence[str],
    policy: FetchPolicy,
    *,
    resolver: Resolver = socket.getaddrinfo,
    connect_override: ConnectOverride | None = None,
    ssl_context: ssl.SSLContext | None = None,
    read_upload: Callable[[str], bytes] | None = None,
) -> list[Image.Image]:
    """Fetch (or unpack) and decode at most two input images, in order.

    Errors keep their code and name the failing entry, e.g. ``image_urls[1]: ...``.
    ``resolver``, ``connect_override`` and ``ssl_context`` pass through to
    :func:`fetch_image_bytes`. ``read_upload`` returns the bytes of a ``reelgen-upload://`` URL
    (an image uploaded to this server, read from its storage, never over the network).
    """
    if isinstance(urls, str) or len(urls) > MAX_IMAGES:
        raise ReelgenError(ErrorCode.INVALID_INPUT, f"Give at most {MAX_IMAGES} image URLs.")
    images: list[Image.Image] = []
    for i, url in enumerate(urls):
        try:
            if url[:5].lower() == "data:":
                data = decode_data_uri(url, policy.max_bytes)
            elif url.startswith(UPLOAD_URL_PREFIX):
                if read_upload is None:
                    raise ReelgenError(ErrorCode.IMAGE_FETCH_FAILED, "Uploaded images cannot be read here.")
                data = read_upload(url)
            else:
                data = fetch_image_bytes(
                    url, policy, resolver=resolver, connect_override=connect_override, ssl_context=ssl_context
                )
            images.append(decode_image(data))
        except ReelgenError as exc:
            raise ReelgenError(exc.code, f"image_urls[{i}]: {exc.message}") from None
    return images
