"""media.py: MP4 writing (exact durations, audio stream on/off, faststart, atomic), joins, probe."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from reelgen.engines.base import Clip
from reelgen.errors import ErrorCode, ReelgenError
from reelgen.media import JOIN_FADE_SECONDS, Mp4Writer, fade_edges, join_audio, probe, write_mp4

FPS, RATE = 24, 24000


def clip(seconds: int, *, shade: int = 128, width: int = 96, height: int = 64, tone: float = 0.3) -> Clip:
    frames = np.full((seconds * FPS, height, width, 3), shade, dtype=np.uint8)
    t = np.arange(seconds * RATE, dtype=np.float32) / RATE
    audio = np.stack([tone * np.sin(2 * np.pi * 440 * t)] * 2).astype(np.float32)
    return Clip(frames=frames, fps=FPS, audio=audio, sample_rate=RATE)


def decoded(path: Path) -> tuple[list[np.ndarray], int]:
    """Decoded RGB frames and the number of decoded audio samples."""
    with av.open(str(path)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    with av.open(str(path)) as c:
        samples = sum(f.samples for f in c.decode(audio=0)) if c.streams.audio else 0
    return frames, samples


@pytest.mark.parametrize("seconds", [3, 15])
def test_exact_duration_with_audio(tmp_path: Path, seconds: int) -> None:
    out = tmp_path / "a.mp4"
    info = write_mp4(out, [clip(seconds)], audio=True)
    assert info == probe(out)
    assert (info.width, info.height, info.fps, info.frames) == (96, 64, 24.0, seconds * FPS)
    assert abs(info.duration - seconds) <= 1 / FPS
    assert info.has_audio and info.sample_rate == RATE
    assert info.audio_duration is not None and abs(info.audio_duration - info.duration) <= 0.05
    frames, samples = decoded(out)
    assert len(frames) == seconds * FPS
    # What a decoder hands out (AAC frames of 1024 samples) stays within one AAC frame of the request.
    assert abs(samples / RATE - seconds) <= 1024 / RATE + 1e-9
    with av.open(str(out)) as c:
        assert c.streams.video[0].codec_context.name == "h264"
        assert c.streams.video[0].codec_context.pix_fmt == "yuv420p"
        assert c.streams.audio[0].codec_context.name == "aac"


def test_no_audio_stream_when_audio_is_off(tmp_path: Path) -> None:
    out = tmp_path / "silent.mp4"
    info = write_mp4(out, [clip(3)], audio=False)
    assert not info.has_audio and info.audio_duration is None and info.sample_rate is None
    with av.open(str(out)) as c:
        assert len(c.streams.audio) == 0 and len(c.streams.video) == 1


def test_faststart_puts_the_index_first(tmp_path: Path) -> None:
    out = tmp_path / "fs.mp4"
    write_mp4(out, [clip(3)], audio=True)
    data = out.read_bytes()
    assert 0 < data.index(b"moov") < data.index(b"mdat")


def test_join_keeps_cut_times_and_total_length(tmp_path: Path) -> None:
    shots = [clip(1, shade=20), clip(2, shade=120), clip(3, shade=230)]
    out = tmp_path / "joined.mp4"
    info = write_mp4(out, shots, audio=True)
    assert info.frames == 6 * FPS and abs(info.duration - 6) <= 1 / FPS
    assert info.audio_duration is not None and abs(info.audio_duration - 6) <= 0.05
    frames, _ = decoded(out)
    shade_of = [int(f.mean().round()) for f in frames]
    # every frame sits in its own shot: cuts at exactly 1 s and 3 s
    expected = [20] * 24 + [120] * 48 + [230] * 72
    assert all(abs(a - b) <= 4 for a, b in zip(shade_of, expected, strict=True))


def test_join_audio_has_no_click_at_the_joint() -> None:
    a = np.full((2, RATE), 0.5, dtype=np.float32)
    b = np.full((2, RATE), -0.5, dtype=np.float32)
    joined = join_audio([a, b], RATE)
    assert joined.shape == (2, 2 * RATE)  # fades keep every sample: the cut stays at 1 s
    naive_jump = np.abs(np.diff(np.concatenate([a, b], axis=-1))).max()
    smooth_jump = np.abs(np.diff(joined)).max()
    assert naive_jump == pytest.approx(1.0)
    n = round(JOIN_FADE_SECONDS * RATE)
    assert smooth_jump < 0.5 * np.pi / n  # a raised-cosine ramp of n samples, no step
    assert joined[0, RATE - 1] == pytest.approx(0.0, abs=1e-6) and joined[0, RATE] == pytest.approx(0.0, abs=1e-6)
    # away from the joint the audio is untouched
    np.testing.assert_array_equal(joined[:, : RATE - n], a[:, : RATE - n])
    np.testing.assert_array_equal(joined[:, RATE + n :], b[:, n:])


def test_fade_edges_only_where_asked() -> None:
    a = np.ones((2, 1000), dtype=np.float32)
    out = fade_edges(a, RATE, fade_in=True, fade_out=False)
    assert out[0, 0] == 0.0 and out[0, -1] == 1.0
    assert a[0, 0] == 1.0  # the input is not modified


def test_the_writer_leaves_no_file_when_it_fails(tmp_path: Path) -> None:
    out = tmp_path / "broken.mp4"
    with pytest.raises(ReelgenError) as err, Mp4Writer(out, width=96, height=64, fps=FPS, sample_rate=RATE) as w:
        w.add(clip(1).frames, clip(1).audio)
        w.add(np.zeros((3, 32, 32, 3), dtype=np.uint8), clip(1).audio)  # wrong size
    assert err.value.code == ErrorCode.GENERATION_FAILED and "expected uint8(64, 96, 3)" in err.value.message
    assert list(tmp_path.iterdir()) == []


def test_the_file_appears_only_when_complete(tmp_path: Path) -> None:
    out = tmp_path / "late.mp4"
    w = Mp4Writer(out, width=96, height=64, fps=FPS, sample_rate=None)
    w.open()
    w.add(clip(3).frames)  # past the encoder's lookahead: packets are on disk by now
    assert not out.exists()
    assert [p.name.endswith(".part") for p in tmp_path.iterdir()] == [True]
    info = w.close()
    assert out.exists() and info.frames == 3 * FPS and [p.name for p in tmp_path.iterdir()] == ["late.mp4"]


def test_audio_is_required_when_the_file_has_an_audio_stream(tmp_path: Path) -> None:
    with (
        pytest.raises(ReelgenError) as err,
        Mp4Writer(tmp_path / "x.mp4", width=96, height=64, fps=FPS, sample_rate=RATE) as w,
    ):
        w.add(clip(1).frames, None)
    assert err.value.code == ErrorCode.GENERATION_FAILED


def test_odd_sizes_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ReelgenError):
        Mp4Writer(tmp_path / "x.mp4", width=95, height=64, fps=FPS, sample_rate=None)


def test_probe_of_a_non_video_file(tmp_path: Path) -> None:
    bad = tmp_path / "not.mp4"
    bad.write_bytes(b"this is not a video")
    with pytest.raises(ReelgenError) as err:
        probe(bad)
    assert err.value.code == ErrorCode.GENERATION_FAILED
