"""Sound continuity for the extend model: the original's audio tail as a condition of the new soundtrack.

diffusers 0.42.1's ``LTX2ConditionPipeline`` conditions video tokens only: any ``audio_latents`` it is
given are noised as a whole, and every audio token shares one timestep. The reference pipelines
(``ltx-pipelines``' retake) keep known audio tokens clean with a per-token denoise mask; the diffusers
transformer has no per-token audio timestep, so reelgen keeps them *on the known trajectory* instead
(replacement, as RePaint and the LTX-Video reference's latent conditioning do): after every step the
first ``k`` audio tokens are set to the original's tail latents noised to the next sigma,
``(1 - sigma) * known + sigma * noise``, and at the last step (sigma 0) to the latents themselves. The
model sees the original's sound under the lead at every step's noise level and generates what follows
it; the soundtrack under the lead decodes to (the audio VAE's rendering of) the original's tail.

The tail is encoded as the reference encodes audio (``ltx_core.model.audio_vae.encode_audio``): the
waveform is resampled to the audio VAE's rate (band-limited, by FFT), turned into a log-mel spectrogram
(``torchaudio.transforms.MelSpectrogram`` with the reference's settings, computed here with
``torch.stft`` and a Slaney mel filterbank, because torchaudio is not a dependency) and encoded to the
posterior mean.

This module imports torch and diffusers at import time: only the engine imports it, lazily.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

#: the reference audio VAE's STFT size (``AudioEncoder.n_fft``)
N_FFT = 1024
#: audio latents per second: the VAE's rate / mel hop / the latent's 4x time compression
LATENT_DOWNSAMPLE = 4


def resample(wave: torch.Tensor, src: int, dst: int) -> torch.Tensor:
    """``(channels, n)`` resampled from ``src`` Hz to ``dst`` Hz by truncating (or zero-padding) its
    spectrum: band-limited, no aliasing above the new Nyquist."""
    if src == dst:
        return wave
    n = wave.shape[-1]
    m = max(1, round(n * dst / src))
    spectrum = torch.fft.rfft(wave.double(), n=n)
    keep = min(spectrum.shape[-1], m // 2 + 1)
    out = torch.zeros((*wave.shape[:-1], m // 2 + 1), dtype=spectrum.dtype, device=wave.device)
    out[..., :keep] = spectrum[..., :keep]
    resampled: torch.Tensor = (torch.fft.irfft(out, n=m) * (m / n)).to(wave.dtype)
    return resampled


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """The Slaney mel scale: linear below 1 kHz, logarithmic above."""
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, math.log(6.4) / 27.0
    mel = hz / f_sp
    return np.where(hz >= min_log_hz, min_log_mel + np.log(np.maximum(hz, 1e-10) / min_log_hz) / logstep, mel)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, math.log(6.4) / 27.0
    return np.where(mel >= min_log_mel, min_log_hz * np.exp(logstep * (mel - min_log_mel)), f_sp * mel)


def mel_filterbank(rate: int, n_fft: int, n_mels: int) -> np.ndarray:
    """``(n_mels, n_fft // 2 + 1)`` triangular filters on the Slaney scale, Slaney-normalised (equal
    area), 0 Hz to Nyquist: torchaudio's ``melscale_fbanks(norm="slaney", mel_scale="slaney")``."""
    freqs = np.linspace(0, rate / 2, n_fft // 2 + 1)
    points = _mel_to_hz(np.linspace(_hz_to_mel(np.array(0.0)), _hz_to_mel(np.array(rate / 2)), n_mels + 2))
    diff = np.diff(points)
    slopes = points[None, :] - freqs[:, None]
    down = -slopes[:, :-2] / diff[:-1]
    up = slopes[:, 2:] / diff[1:]
    fb = np.maximum(0.0, np.minimum(down, up))  # (freqs, mels)
    fb *= 2.0 / (points[2 : n_mels + 2] - points[:n_mels])
    return fb.T.astype(np.float32)


def log_mel(wave: torch.Tensor, rate: int, hop: int, n_mels: int) -> torch.Tensor:
    """``(channels, n)`` at ``rate`` → ``(1, channels, frames, n_mels)`` log-mel, as the reference's
    ``AudioProcessor.waveform_to_mel`` (magnitude, centre-padded reflect, Hann window)."""
    spec = torch.stft(
        wave.float(),
        n_fft=N_FFT,
        hop_length=hop,
        win_length=N_FFT,
        window=torch.hann_window(N_FFT, device=wave.device),
        center=True,
        pad_mode="reflect",
        return_complex=True,
    ).abs()  # (channels, freqs, frames)
    fb = torch.from_numpy(mel_filterbank(rate, N_FFT, n_mels)).to(spec.device)
    mel = torch.log(torch.clamp(torch.matmul(fb, spec), min=1e-5))  # (channels, mels, frames)
    return mel.transpose(1, 2).unsqueeze(0)


def encode_tail(audio_vae: Any, wave: np.ndarray, rate: int, tokens: int, device: torch.device) -> torch.Tensor:
    """The last ``tokens`` audio latent frames of ``wave`` (``(channels, n)`` at ``rate``):
    ``(1, channels, tokens, mel bins)``, the space the pipeline's ``audio_latents`` live in."""
    cfg = audio_vae.config
    x = torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32)).to(device)
    if x.shape[0] == 1:
        x = x.repeat(2, 1)
    x = resample(x, rate, int(cfg.sample_rate))
    mel = log_mel(x[: int(cfg.in_channels)], int(cfg.sample_rate), int(cfg.mel_hop_length), int(cfg.mel_bins))
    latents = audio_vae.encode(mel.to(audio_vae.dtype)).latent_dist.mode().float()
    if latents.shape[2] < tokens:
        raise ValueError(f"the audio tail encodes to {latents.shape[2]} latent frames; {tokens} needed")
    tail: torch.Tensor = latents[:, :, latents.shape[2] - tokens :]
    return tail


def latents_per_second(audio_vae: Any) -> float:
    cfg = audio_vae.config
    return float(cfg.sample_rate) / float(cfg.mel_hop_length) / LATENT_DOWNSAMPLE


class TailConditionedScheduler(FlowMatchEulerDiscreteScheduler):  # type: ignore[misc,unused-ignore]
    """The pipeline's audio scheduler with the first tokens kept on the known trajectory (see the
    module docstring). ``known``: packed, normalised ``(batch, k, dim)`` latents of the original's tail;
    ``noise``: a fixed draw of the same shape."""

    known: torch.Tensor
    noise: torch.Tensor

    def condition(self, known: torch.Tensor, noise: torch.Tensor) -> TailConditionedScheduler:
        self.known, self.noise = known, noise
        return self

    def step(self, model_output: torch.Tensor, timestep: Any, sample: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        out = super().step(model_output, timestep, sample, *args, **kwargs)  # type: ignore[misc,unused-ignore]
        prev = out[0] if isinstance(out, tuple) else out.prev_sample
        sigma = float(self.sigmas[self.step_index])  # type: ignore[attr-defined,unused-ignore]  # the level reached
        k = self.known.shape[1]
        prev = prev.clone()
        known = self.known.to(prev.device, prev.dtype)
        prev[:, :k] = (1.0 - sigma) * known + sigma * self.noise.to(prev.device, prev.dtype)
        if isinstance(out, tuple):
            return (prev, *out[1:])
        out.prev_sample = prev
        return out


def tail_scheduler(
    pipe: Any, tail: torch.Tensor, generator: torch.Generator, device: torch.device
) -> TailConditionedScheduler:
    """A ``TailConditionedScheduler`` for ``pipe`` (its scheduler's configuration) holding ``tail``
    (``encode_tail``'s latents) packed and normalised as the pipeline's audio tokens are."""
    packed = pipe._pack_audio_latents(tail.to(device))
    known = pipe._normalize_audio_latents(packed, pipe.audio_vae.latents_mean, pipe.audio_vae.latents_std).float()
    noise = torch.randn(known.shape, generator=generator, device=device, dtype=known.dtype)
    sched = TailConditionedScheduler.from_config(pipe.scheduler.config)  # type: ignore[no-untyped-call,unused-ignore]
    return sched.condition(known, noise)  # type: ignore[no-any-return]
