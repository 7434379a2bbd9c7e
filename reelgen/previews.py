"""Still images made from a finished video: a WebP thumbnail and a JPEG sprite sheet
(``GET /v1/videos/{id}/content?variant=thumbnail|spritesheet``). Decoded with PyAV, drawn with Pillow."""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import BinaryIO

import av
from PIL import Image

__all__ = [
    "SPRITE_COLUMNS",
    "SPRITE_FRAMES",
    "SPRITE_TILE_WIDTH",
    "sample_frames",
    "spritesheet_jpeg",
    "thumbnail_webp",
]

#: The sprite sheet: this many frames, evenly spaced, in rows of ``SPRITE_COLUMNS`` tiles this wide.
SPRITE_FRAMES = 12
SPRITE_COLUMNS = 4
SPRITE_TILE_WIDTH = 256


def sample_frames(src: str | Path | BinaryIO, count: int) -> list[Image.Image]:
    """``count`` frames spread evenly over the video (fewer if it has fewer), as RGB images."""
    with av.open(src, "r") as container:
        stream = container.streams.video[0]
        total = stream.frames
        if not total:
            frames = [_image(frame) for frame in container.decode(stream)]
            return _spread(frames, count)
        wanted = sorted({min(total - 1, int((i + 0.5) * total / count)) for i in range(count)})
        picked: list[Image.Image] = []
        for index, frame in enumerate(container.decode(stream)):
            if index in wanted:
                picked.append(_image(frame))
                if len(picked) == len(wanted):
                    break
        return picked


def _image(frame: av.VideoFrame) -> Image.Image:
    return Image.fromarray(frame.to_ndarray(format="rgb24"))


def _spread(frames: list[Image.Image], count: int) -> list[Image.Image]:
    if len(frames) <= count:
        return frames
    return [frames[min(len(frames) - 1, int((i + 0.5) * len(frames) / count))] for i in range(count)]


def thumbnail_webp(src: str | Path | BinaryIO) -> bytes:
    """The frame in the middle of the video, full size, as WebP."""
    frames = sample_frames(src, 1)
    if not frames:
        raise ValueError("the video has no frames")
    out = io.BytesIO()
    frames[0].convert("RGB").save(out, format="WEBP", quality=85)
    return out.getvalue()


def spritesheet_jpeg(src: str | Path | BinaryIO) -> bytes:
    """``SPRITE_FRAMES`` frames as a grid of tiles ``SPRITE_TILE_WIDTH`` wide, as JPEG."""
    frames = sample_frames(src, SPRITE_FRAMES)
    if not frames:
        raise ValueError("the video has no frames")
    width = min(SPRITE_TILE_WIDTH, frames[0].width)
    height = max(1, round(frames[0].height * width / frames[0].width))
    columns = min(SPRITE_COLUMNS, len(frames))
    rows = math.ceil(len(frames) / columns)
    sheet = Image.new("RGB", (columns * width, rows * height))
    for i, frame in enumerate(frames):
        tile = frame.convert("RGB").resize((width, height), Image.Resampling.BILINEAR)
        sheet.paste(tile, ((i % columns) * width, (i // columns) * height))
    out = io.BytesIO()
    sheet.save(out, format="JPEG", quality=85)
    return out.getvalue()
