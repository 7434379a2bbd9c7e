"""Continuous multi-shot: how the shots of a ``multi_shots`` request relate (``multi_shot_continuity``).

* ``cut`` (the default): every shot is an independent generation; nothing here changes the plan.
* ``continue``: each later shot starts from the previous shot's last ``CONTINUE_FRAMES`` frames. They
  condition the shot's first frames (a video condition at pixel frame 0: its first two latent frames
  are the previous frames, re-encoded, kept clean at strength 1), the shot generates that many more
  frames, and the file keeps the frames after them: the picture flows on across the join and no
  frame is shown twice. diffusers' condition pipeline masks video tokens only, and a continue shot's
  soundtrack is not conditioned on the previous shot's (the extend model holds its first audio
  tokens on the original's sound, ``engines/audio_condition``; continue shots do not), so the audio
  the shot made over those overlap frames crossfades (equal power) with the end of the previous
  shot's soundtrack instead of a cut. The extend model (``reelgen.extension``) continues a stored
  video with this same lead: ``lead_condition``, ``Job.previous_frames``, the crossfade.
* ``same_subject``: each later shot gets a reference of shot 1 as a guide keyframe (appended tokens
  at its first frame, the reference's ``VideoConditionByKeyframeIndex``) at ``SAME_SUBJECT_STRENGTH``:
  the reference is the start image when the request has one, else shot 1's middle frame. The
  shot still cuts (nothing of it is replaced), while its picture is drawn towards that subject.

The plan (``reelgen.planning``) names what each shot is conditioned on; the frames themselves exist
only once the earlier shot is made, so ``Carry`` hands them to each later shot's ``Job`` while
``reelgen.generation.render`` (and a device group's followers) generate the shots in order.
No torch here; numpy and PIL are imported when frames are carried.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from PIL import Image

    from reelgen.engines.base import Clip
    from reelgen.planning import Condition, Job
    from reelgen.profiles import Profile

#: frames of the previous shot a ``continue`` shot starts from: 8k+1 (the causal first latent frame
#: and one more latent frame of 8), so they fill whole latent frames and carry motion, not a still
CONTINUE_FRAMES = 9
#: how strongly a ``same_subject`` shot is guided towards shot 1's reference (1.0 would pin the frame)
SAME_SUBJECT_STRENGTH = 0.5
#: the sources a condition may name beyond the request's images
PREVIOUS, REFERENCE = "previous", "reference"


def lead_frames(continuity: str | None, index: int) -> int:
    """Frames shot ``index`` generates before the ones the file keeps (the previous shot's last)."""
    return CONTINUE_FRAMES if continuity == "continue" and index > 0 else 0


def shot_conditions(continuity: str | None, index: int, profile: Profile) -> list[Condition]:
    """What shot ``index`` is conditioned on by ``continuity``, beyond the request's images."""
    from reelgen.planning import Condition

    if index == 0 or continuity in (None, "cut"):
        return []
    if continuity == "continue":
        return [lead_condition(CONTINUE_FRAMES)]
    return [Condition(REFERENCE, 0, SAME_SUBJECT_STRENGTH, profile.image_crf, guide=True)]


def lead_condition(frames: int) -> Condition:
    """The condition of a segment that continues the ``frames`` before it (``Job.previous_frames``:
    a ``continue`` shot's previous shot, or the video the extend model extends): at pixel frame 0,
    kept clean at strength 1, filling the first latent frames; those frames are the segment's
    ``lead_frames``."""
    from reelgen.planning import Condition

    # video conditions are not re-compressed (diffusers applies the image CRF to single frames only)
    return Condition(PREVIOUS, 0, 1.0, 0, frames=frames)


class Carry:
    """Hands each shot of ``job`` what its conditions need from the shots before it.

    ``job_for(i)`` is the job to generate segment ``i`` with (``job`` itself when nothing is carried,
    so a ``cut`` job runs exactly as planned); ``keep(i, clip)`` records what later shots need of
    segment ``i``'s clip: its last frames (``continue``) or, for shot 1, the reference frame.
    """

    def __init__(self, job: Job) -> None:
        self.job = job
        self._previous: tuple[Image.Image, ...] = ()
        self._reference = job.start_image

    def job_for(self, index: int) -> Job:
        needs = {c.image for st in self.job.segments[index].stages for c in st.conditions}
        if PREVIOUS not in needs and REFERENCE not in needs:
            return self.job
        return replace(
            self.job,
            previous_frames=self._previous if PREVIOUS in needs else (),
            reference_image=self._reference if REFERENCE in needs else None,
        )

    def keep(self, index: int, clip: Clip) -> None:
        continuity = self.job.continuity
        if continuity in (None, "cut") or index == len(self.job.segments) - 1:
            return
        from PIL import Image

        if continuity == "continue":
            self._previous = tuple(Image.fromarray(f) for f in clip.frames[-CONTINUE_FRAMES:])
        elif index == 0 and self._reference is None:
            self._reference = Image.fromarray(clip.frames[len(clip.frames) // 2])
