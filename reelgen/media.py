"""MP4 files with PyAV: H.264 (yuv420p) + AAC, exact durations, shot joins, and a probe.

``Mp4Writer`` streams clips into one file: every clip's frames are encoded as they arrive (so a
multi-shot job never holds all its frames at once), the soundtrack of consecutive clips is joined
with a short fade at each joint (no click where two independently generated waveforms meet), and
the file appears at its final path only when it is complete: it is written under a temporary name
in the same directory and renamed (atomic on POSIX), with ``movflags=+faststart`` so players can
start before the download ends. A job without audio gets a file with no audio stream at all.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from reelgen.errors import ErrorCode, ReelgenError

if TYPE_CHECKING:
    import numpy as np

    from reelgen.engines.base import Clip

#: Length of the fade on each side of a joint between two clips' soundtracks.
JOIN_FADE_SECONDS = 0.005
AUDIO_BITRATE = 192_000


@dataclass(frozen=True)
class MediaInfo:
    """What a written MP4 holds (``audio_duration`` / ``sample_rate`` are None without audio)."""

    duration: float
    width: int
    height: int
    fps: float
    frames: int
    has_audio: bool
    audio_duration: float | None
    sample_rate: int | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "duration": round(self.duration, 4),
            "width": self.width,
            "height": self.height,
            "fps": self.fps,
            "frames": self.frames,
            "has_audio": self.has_audio,
            "audio_duration": None if self.audio_duration is None else round(self.audio_duration, 4),
            "sample_rate": self.sample_rate,
        }


def fade_edges(audio: np.ndarray, sample_rate: int, *, fade_in: bool, fade_out: bool) -> np.ndarray:
    """A copy of ``audio`` (channels, samples) with raised-cosine fades of ``JOIN_FADE_SECONDS`` at its ends.

    Used where two clips meet: the first fades out and the second fades in, so the joined waveform
    is continuous at the cut while each clip keeps its exact length (and the cut its exact time).
    """
    import numpy as np

    out = np.array(audio, dtype=np.float32, copy=True)
    n = min(max(1, round(JOIN_FADE_SECONDS * sample_rate)), out.shape[-1])
    ramp = (0.5 - 0.5 * np.cos(np.linspace(0.0, np.pi, n, dtype=np.float64))).astype(np.float32)
    if fade_in:
        out[:, :n] *= ramp
    if fade_out:
        out[:, out.shape[-1] - n :] *= ramp[::-1]
    return out


def crossfade_into(audio: np.ndarray, lead_in: np.ndarray) -> np.ndarray:
    """A copy of ``audio`` (channels, samples) whose end crossfades, with equal power (the two sounds
    are separate waveforms, not one signal), into ``lead_in``: the sound that runs on after ``audio``'s last
    sample. Over the last ``min`` of both lengths, ``audio`` fades out as ``lead_in``'s tail fades in,
    so the result ends on ``lead_in``'s last sample; its length is ``audio``'s."""
    import numpy as np

    out = np.array(audio, dtype=np.float32, copy=True)
    n = min(out.shape[-1], lead_in.shape[-1])
    if n == 0:
        return out
    t = np.linspace(0.0, np.pi / 2, n, dtype=np.float64)
    fade_in, fade_out = np.sin(t).astype(np.float32), np.cos(t).astype(np.float32)
    fade_in[-1], fade_out[-1] = 1.0, 0.0  # exactly the lead-in's last sample, next to the clip's first
    out[:, -n:] = out[:, -n:] * fade_out + lead_in[:, -n:].astype(np.float32) * fade_in
    return np.clip(out, -1.0, 1.0)


def join_audio(parts: Sequence[np.ndarray], sample_rate: int) -> np.ndarray:
    """Concatenate soundtracks (each ``(channels, samples)``) with a fade at every joint."""
    import numpy as np

    if not parts:
        raise ValueError("join_audio needs at least one part")
    last = len(parts) - 1
    faded = [fade_edges(p, sample_rate, fade_in=i > 0, fade_out=i < last) for i, p in enumerate(parts)]
    return np.concatenate(faded, axis=-1)


def fit_samples(audio: np.ndarray, samples: int) -> np.ndarray:
    """``float32`` ``audio`` ``(channels, n)`` trimmed to exactly ``samples``, or padded with silence."""
    import numpy as np

    if audio.shape[-1] >= samples:
        return np.ascontiguousarray(audio[..., :samples], dtype=np.float32)
    pad = np.zeros((*audio.shape[:-1], samples - audio.shape[-1]), dtype=np.float32)
    return np.concatenate([audio.astype(np.float32), pad], axis=-1)


def stereo(audio: np.ndarray) -> np.ndarray:
    """``audio`` as two channels (mono doubled, extra channels dropped), clipped to [-1, 1]."""
    import numpy as np

    a = np.asarray(audio, dtype=np.float32)
    if a.ndim == 1:
        a = a[None, :]
    if a.ndim != 2:
        raise ReelgenError(ErrorCode.GENERATION_FAILED, f"audio must be (channels, samples), got shape {a.shape}")
    if a.shape[0] == 1:
        a = np.repeat(a, 2, axis=0)
    elif a.shape[0] > 2:
        a = a[:2]
    return np.ascontiguousarray(np.clip(a, -1.0, 1.0))


class Mp4Writer:
    """Write clips into one MP4 at ``path``; use as a context manager (the file appears on success only)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        width: int,
        height: int,
        fps: int,
        sample_rate: int | None,
        crf: int = 18,
        preset: str = "fast",
        codec: str = "libx264",
    ) -> None:
        if width % 2 or height % 2 or width <= 0 or height <= 0:
            raise ReelgenError(ErrorCode.GENERATION_FAILED, f"H.264 yuv420p needs even sizes, got {width}x{height}")
        if fps <= 0:
            raise ReelgenError(ErrorCode.GENERATION_FAILED, f"fps must be positive, got {fps}")
        self.path = Path(path)
        self.width, self.height, self.fps = width, height, fps
        self.sample_rate = sample_rate
        self._crf, self._preset, self.codec = crf, preset, codec
        self._tmp = self.path.with_name(f".{self.path.name}.{secrets.token_hex(4)}.part")
        self._container: Any = None
        self._video: Any = None
        self._audio: Any = None
        self._fifo: Any = None
        self._frames = 0
        self._samples = 0
        self._pending_audio: np.ndarray | None = None  # the last clip's soundtrack, held back for the next fade

    # -- lifecycle --------------------------------------------------------------------------
    def __enter__(self) -> Mp4Writer:
        self.open()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def open(self) -> None:
        import av

        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._container = av.open(str(self._tmp), mode="w", format="mp4", options={"movflags": "+faststart"})
        video = self._container.add_stream(self.codec, rate=self.fps)
        video.width, video.height, video.pix_fmt = self.width, self.height, "yuv420p"
        video.time_base = Fraction(1, self.fps)
        if self.codec == "h264_nvenc":  # constant quality on the GPU's encoder, the nearest to x264's CRF
            video.options = {"rc": "vbr", "cq": str(self._crf), "preset": "p4"}
        else:
            video.options = {"crf": str(self._crf), "preset": self._preset}
        self._video = video
        if self.sample_rate is not None:
            audio = self._container.add_stream("aac", rate=self.sample_rate, layout="stereo")
            audio.bit_rate = AUDIO_BITRATE
            audio.time_base = Fraction(1, self.sample_rate)
            self._audio = audio
            self._fifo = av.AudioFifo()

    def abort(self) -> None:
        """Drop the partial file (after an error or a cancellation)."""
        if self._container is not None:
            with contextlib.suppress(Exception):
                self._container.close()
            self._container = None
        self._tmp.unlink(missing_ok=True)

    def close(self) -> MediaInfo:
        """Flush the encoders, finish the file and move it to ``path``; returns its probe."""
        if self._container is None:
            raise ReelgenError(ErrorCode.GENERATION_FAILED, "the writer is not open")
        try:
            if self._pending_audio is not None:
                self._encode_audio(self._pending_audio)
                self._pending_audio = None
            if self._audio is not None:
                self._drain_fifo(final=True)
                for packet in self._audio.encode(None):
                    self._container.mux(packet)
            for packet in self._video.encode(None):
                self._container.mux(packet)
            self._container.close()
            self._container = None
            os.replace(self._tmp, self.path)
        except BaseException:
            self.abort()
            raise
        return probe(self.path)

    # -- content ----------------------------------------------------------------------------
    def add(
        self,
        frames: np.ndarray | Iterable[np.ndarray],
        audio: np.ndarray | None = None,
        *,
        lead_in: np.ndarray | None = None,
    ) -> None:
        """Append frames (``uint8`` ``(n, height, width, 3)``, or any iterable of ``(height, width,
        3)`` frames: a long video need not be held whole) and, with audio on, their soundtrack.

        ``lead_in``: sound that runs on into ``audio`` from before it (the sound a segment made over
        its lead frames: a ``continue`` shot's over the previous shot's last frames, an extension's
        over the original's): the previous clip's end crossfades into it instead of the short fade
        out and in, so the joined soundtrack flows on; every length stays as it was."""
        import av
        import numpy as np

        if self._container is None:
            raise ReelgenError(ErrorCode.GENERATION_FAILED, "the writer is not open")
        for frame in frames:
            arr = np.asarray(frame)
            if arr.shape != (self.height, self.width, 3) or arr.dtype != np.uint8:
                raise ReelgenError(
                    ErrorCode.GENERATION_FAILED,
                    f"frame {self._frames} is {arr.dtype}{arr.shape}, expected uint8({self.height}, {self.width}, 3)",
                )
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(arr), format="rgb24")
            vf.pts = self._frames
            self._frames += 1
            for packet in self._video.encode(vf):
                self._container.mux(packet)
        if self._audio is None:
            return
        if audio is None:
            raise ReelgenError(ErrorCode.GENERATION_FAILED, "this file has an audio stream: every clip needs audio")
        clip_audio = stereo(audio)
        if self._pending_audio is not None and lead_in is not None and lead_in.shape[-1]:
            # A continuous joint: the previous clip's end crossfades into the sound that leads into this one.
            self._encode_audio(crossfade_into(self._pending_audio, stereo(lead_in)))
        elif self._pending_audio is not None:
            # A joint: the previous clip fades out, this one fades in.
            self._encode_audio(fade_edges(self._pending_audio, self.sample_rate or 1, fade_in=False, fade_out=True))
            clip_audio = fade_edges(clip_audio, self.sample_rate or 1, fade_in=True, fade_out=False)
        self._pending_audio = clip_audio

    def _encode_audio(self, audio: np.ndarray) -> None:
        import av

        frame = av.AudioFrame.from_ndarray(audio, format="fltp", layout="stereo")
        rate = self.sample_rate or 1  # only called when the file has audio, i.e. a sample rate
        frame.sample_rate = rate
        frame.pts = self._samples
        frame.time_base = Fraction(1, rate)
        self._samples += audio.shape[-1]
        self._fifo.write(frame)
        self._drain_fifo(final=False)

    def _drain_fifo(self, *, final: bool) -> None:
        size = self._audio.codec_context.frame_size or 1024
        while self._fifo.samples >= size or (final and self._fifo.samples > 0):
            frame = self._fifo.read(min(size, self._fifo.samples))
            for packet in self._audio.encode(frame):
                self._container.mux(packet)


def write_mp4(
    path: str | os.PathLike[str],
    clips: Sequence[Clip],
    *,
    audio: bool,
    width: int | None = None,
    height: int | None = None,
) -> MediaInfo:
    """Join ``clips`` into one MP4 at ``path`` (atomically); ``audio=False`` writes no audio stream."""
    if not clips:
        raise ReelgenError(ErrorCode.GENERATION_FAILED, "no clips to write")
    first = clips[0]
    h, w = (height, width) if width and height else first.frames.shape[1:3]
    rate = first.sample_rate if audio else None
    if audio and rate is None:
        raise ReelgenError(ErrorCode.GENERATION_FAILED, "audio is on but the clips have no soundtrack")
    with Mp4Writer(path, width=int(w), height=int(h), fps=first.fps, sample_rate=rate) as writer:
        for clip in clips:
            if clip.fps != first.fps or (audio and clip.sample_rate != rate):
                raise ReelgenError(ErrorCode.GENERATION_FAILED, "all clips must share fps and sample rate")
            writer.add(clip.frames, clip.audio if audio else None)
    return probe(path)


def read_frames(path: str | os.PathLike[str], chunk: int = 24) -> Iterator[np.ndarray]:
    """The frames of an MP4's video stream, decoded in order, ``chunk`` at a time (``uint8``
    ``(n, height, width, 3)``): a long video is never held whole."""
    import av
    import numpy as np

    try:
        with av.open(str(path)) as container:
            buf: list[np.ndarray] = []
            for frame in container.decode(video=0):
                buf.append(frame.to_ndarray(format="rgb24"))
                if len(buf) == chunk:
                    yield np.stack(buf)
                    buf = []
            if buf:
                yield np.stack(buf)
    except (av.error.FFmpegError, OSError) as exc:
        raise ReelgenError(ErrorCode.GENERATION_FAILED, f"cannot decode {Path(path).name}: {exc}") from None


def read_audio(path: str | os.PathLike[str]) -> tuple[np.ndarray, int] | None:
    """An MP4's whole soundtrack as ``float32`` ``(channels, samples)`` and its sample rate (None
    without an audio stream); the encoder's priming samples are dropped by the decoder."""
    import av
    import numpy as np

    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                return None
            stream = container.streams.audio[0]
            rate = stream.codec_context.sample_rate
            parts = [frame.to_ndarray().astype(np.float32) for frame in container.decode(stream)]
    except (av.error.FFmpegError, OSError) as exc:
        raise ReelgenError(ErrorCode.GENERATION_FAILED, f"cannot decode {Path(path).name}: {exc}") from None
    if not parts:
        return np.zeros((2, 0), dtype=np.float32), rate
    return np.concatenate(parts, axis=-1), rate


def probe(path: str | os.PathLike[str]) -> MediaInfo:
    """Read an MP4's streams: duration, size, frame rate and count, and whether it has audio."""
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ReelgenError(ErrorCode.GENERATION_FAILED, f"{Path(path).name} has no video stream")
            v = container.streams.video[0]
            width, height = v.codec_context.width, v.codec_context.height
            fps = float(v.average_rate) if v.average_rate else 0.0
            a = container.streams.audio[0] if container.streams.audio else None
            sample_rate = a.codec_context.sample_rate if a is not None else None
            audio_duration = float(a.duration * a.time_base) if a is not None and a.duration and a.time_base else None
            frames = v.frames or sum(1 for p in container.demux(v) if p.size)
            by_count = frames / fps if fps else 0.0
            duration = float(v.duration * v.time_base) if v.duration and v.time_base else by_count
    except (av.error.FFmpegError, OSError) as exc:
        raise ReelgenError(ErrorCode.GENERATION_FAILED, f"cannot read {Path(path).name}: {exc}") from None
    return MediaInfo(
        duration=duration,
        width=width,
        height=height,
        fps=fps,
        frames=frames,
        has_audio=a is not None,
        audio_duration=audio_duration,
        sample_rate=sample_rate,
    )
