"""Input images: decode safely and fit to the output size.

Decoding refuses anything but JPEG, PNG and WEBP, checks dimensions before decoding pixels,
applies the EXIF orientation, and turns PIL's decompression-bomb warnings into errors.
"""

from __future__ import annotations

import io
import warnings
from typing import TYPE_CHECKING

from reelgen.errors import ErrorCode, ReelgenError

if TYPE_CHECKING:
    from PIL import Image

#: The contract's limit (36 MP); PIL's own bomb guard is set a little above it.
MAX_IMAGE_PIXELS = 36_000_000
MIN_SIDE_RATIO, MAX_SIDE_RATIO = 0.4, 2.5
FORMATS = ("JPEG", "PNG", "WEBP")


def decode_image(data: bytes) -> Image.Image:
    """Decode JPEG/PNG/WEBP bytes into an RGB image, or raise ``INVALID_IMAGE`` / ``IMAGE_TOO_LARGE``."""
    from PIL import Image, ImageOps

    Image.MAX_IMAGE_PIXELS = 40_000_000
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=list(FORMATS))
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
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        kind = type(exc).__name__
        raise ReelgenError(
            ErrorCode.INVALID_IMAGE, f"The file is not a readable JPEG, PNG or WEBP image ({kind})."
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
