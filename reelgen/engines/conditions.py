"""Image conditions by pixel frame, as Lightricks' reference pipelines place them.

diffusers 0.42.1's ``LTX2ConditionPipeline`` reads ``LTX2VideoCondition.index`` as a *latent* index and
puts a keyframe at pixel frame ``8 * (index - 1) + 1`` (1, 9, ..., 113 for a 121-frame clip). The
reference (``VideoConditionByKeyframeIndex``) takes the pixel frame itself. A 5 s clip keeps frames
0-119, so the nearest latent slot (113) would make the end image appear 0.3 s early and the last
frames run past it. ``PixelFrameConditionPipeline`` keeps everything diffusers does (encoding, CRF,
token appending, masks) and only places each keyframe at its ``Condition.pixel_frame``; a condition at
pixel frame 0 replaces the first latent frame, as in the reference (a video condition there, the
frames a segment continues, the first latent frames it fills), unless it is a guide keyframe.

This module imports diffusers at import time: only the engine imports it, lazily.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from diffusers import LTX2ConditionPipeline
from diffusers.pipelines.ltx2.pipeline_ltx2_condition import LTX2VideoCondition

if TYPE_CHECKING:
    from PIL import Image


@dataclass
class PixelFrameCondition(LTX2VideoCondition):
    """``LTX2VideoCondition`` plus the pixel frame the image stands for."""

    pixel_frame: int = 0


def condition_for(
    image: Image.Image | list[Image.Image],
    pixel_frame: int,
    strength: float,
    crf: int,
    frames: int,
    *,
    guide: bool = False,
) -> PixelFrameCondition:
    """A condition at ``pixel_frame`` of a ``frames``-frame generation: at 0 it replaces the first
    latent frame(s) (a list of frames: as many latent frames as they fill), unless it is a ``guide``:
    a keyframe of appended tokens that replaces nothing, at any pixel frame."""
    latent_frames = (frames - 1) // 8 + 1
    # Any keyframe slot makes diffusers treat it as an appended keyframe; its position is set below.
    replaces = pixel_frame == 0 and not guide
    index = 0 if replaces else min(latent_frames - 1, max(1, (pixel_frame - 1) // 8 + 1))
    return PixelFrameCondition(frames=image, index=index, strength=strength, crf=crf, pixel_frame=pixel_frame)


class PixelFrameConditionPipeline(LTX2ConditionPipeline):  # type: ignore[misc,unused-ignore]
    """``LTX2ConditionPipeline`` whose keyframes sit at ``PixelFrameCondition.pixel_frame``."""

    def preprocess_conditions(self, conditions: Any = None, *args: Any, **kwargs: Any) -> Any:
        out = super().preprocess_conditions(conditions, *args, **kwargs)  # type: ignore[misc,unused-ignore]
        listed = conditions if isinstance(conditions, list) else [conditions] if conditions is not None else []
        # prepare_latents asks for keyframe coordinates in condition order, skipping first-frame ones
        self._keyframe_pixels = iter([c.pixel_frame for c in listed if c.index != 0])
        return out

    def _prepare_keyframe_coords(self, *, pixel_frame_idx: int, **kwargs: Any) -> Any:
        return super()._prepare_keyframe_coords(pixel_frame_idx=next(self._keyframe_pixels), **kwargs)  # type: ignore[misc,unused-ignore]


def pad_to(image: Image.Image, width: int, height: int) -> Image.Image:
    """Reflect-pad ``image`` (already the output size) to the generation size around its centre.

    The model generates a little more than the output on the sides it must round up; the frames are
    centre-cropped back, so the visible part of the first frame is exactly the user's image.
    """
    from PIL import Image as PILImage

    w, h = image.size
    if (w, h) == (width, height):
        return image
    return PILImage.fromarray(pad_frames_to(np.asarray(image.convert("RGB"))[None], width, height)[0])


def pad_frames_to(frames: np.ndarray, width: int, height: int) -> np.ndarray:
    """``pad_to`` for ``uint8`` frames ``(n, h, w, 3)``: each reflect-padded to ``width`` x ``height``."""
    h, w = frames.shape[1:3]
    if (w, h) == (width, height):
        return frames
    top, left = (height - h) // 2, (width - w) // 2
    pad = ((0, 0), (top, height - h - top), (left, width - w - left), (0, 0))
    return np.pad(frames, pad, mode="reflect" if max(pad[1] + pad[2]) < min(w, h) else "edge")
