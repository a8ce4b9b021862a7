"""Log-mel front ends and the embedded `mel25` codec (params `latents.mel25`).

One front end, two framings:

* `mel25` (docs/architecture.md "Two profiles": the analytic stand-in for ACE-Step 1.5): 64 mel
  bands at 25 frames/s at 16 kHz, the shape of ACE-Step 1.5 latents (paper 000 §III-A: 25 Hz;
  Table II: x 64; docs/reference.md §F.1). Frames are centred like the embedded frame teacher's
  (`EmbeddedFrameTeacher`: frame k centred on sample k * hop), so REPA's frame-wise
  targets (paper 000 eq. (5)) line up with the latents.
* AudioLDM's (paper 003's mel VAE input, docs/reference.md §C.1): QA-MDT's
  `mel_spectrogram_train` pads (n_fft - hop) / 2 on each side and runs a non-centred STFT,
  frame k centred on sample (k + 1/2) * hop.

Both give exactly `samples // hop` frames (10 s at 25 Hz -> 250) and take the natural log
of a clamped mel spectrogram, but not of the same quantity:

* AudioLDM: ln(clamp(mel-weighted STFT *magnitude*, 1e-5)), `dynamic_range_compression`,
  which its VAE and HiFi-GAN vocoder were trained on; nothing else would decode.
* `mel25`: ln(clamp(mel-weighted *power*, 1e-10)), the same floor in dB. Mel bands then
  sum energy, like the embedded scorers' log-mel (`models/scorers.LogMel`), and the
  non-negative least-squares mel inversion keeps the loudness: on corpus audio the
  decoded level is within 0.3 dB of the original, where log-magnitude mels come back
  ~2.6 dB quiet (spreading a harmonic's magnitude over a band's bins keeps the weighted
  sum but loses energy).

`mel25` decodes in two steps, both in torch, in float32 / complex64, a batch of clips at
a time, deterministic without a seed:

1. mel power -> linear power spectrum by non-negative least squares, solved with the
   multiplicative updates of Lee & Seung (2001) for a fixed dictionary (the filterbank),
   started from the clamped pseudo-inverse;
2. phase by fast Griffin-Lim (Perraudin et al. 2013: momentum 0.99, librosa's
   `griffinlim` algorithm) from zero phase, `latents.mel25.griffin_lim_iters` iterations.

Griffin-Lim is chaotic in the last bits: a different rounding anywhere gives a different
waveform with the same spectrogram error. Batched kernels (torch's bmm and batched FFT)
round the same way for every batch size >= 2 and every thread count, unlike the
single-matrix kernels (tests/backends/test_codecs.py checks both), so a lone clip is
decoded beside a copy of itself and a clip's audio never depends on its batch or on the
machine's thread count. Float64 changed nothing measurable: on four 10 s corpus windows
the re-encoding error in bins within 60 dB of each clip's peak is 0.829 dB in both, and
batched float32 takes ~0.4 s per clip against ~0.9 s clip by clip in float64 (2 threads).
The embedded profile runs 32 Griffin-Lim iterations: on 16 test-split windows, 64 / 32 / 16
iterations give 1.08 / 1.14 / 1.22 dB re-encoding error and a CLAP score (tiny CLAP, true
captions) of 0.5755 / 0.5748 / 0.5741 (the original audio: 0.605), at 0.40 / 0.24 / 0.18 s
per clip. Against librosa's `mel_to_stft` (L-BFGS-B NNLS) + `griffinlim` at 64 iterations
(three windows): re-encoding error 1.1 dB vs 1.75 dB, level within 0.1 dB, ~1.6 s per
segment for librosa.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import librosa
import numpy as np
import torch

from tasks.backends.base import stack_clips
from tasks.params import Mel25Params

# AudioLDM's magnitude floor squared: ~115 dB below the loudest mel bins of peak-normalised
# music, so it binds only where a band holds no signal at all (silence, empty bands).
MEL25_POWER_FLOOR = 1e-10
MEL25_F_MIN = 0.0  # AudioLDM's mel_fmin; `latents.mel25` sets the upper edge (`fmax`)
# Multiplicative NNLS updates per decode: re-encoding error in loud bins 1.4 / 1.25 / 1.1 /
# 1.0 dB after 50 / 100 / 200 / 400 (corpus windows); 200 costs ~0.2 s per 10 s segment.
MEL_INVERSION_ITERS = 200
DECODE_BATCH = 16  # clips per batched inversion (~2 MB of complex64 spectrum per clip)
NNLS_POWER_MIN = 1e-20  # 100 dB below MEL25_POWER_FLOOR: inaudible, and never subnormal


@dataclass(frozen=True)
class MelFrontEnd:
    """A log-mel spectrogram: |STFT| ** power -> slaney mel filterbank -> ln(clamp(., floor))."""

    sample_rate: int
    n_fft: int
    hop_length: int
    win_length: int
    n_mels: int
    f_min: float
    f_max: float
    centred: bool  # frame k centred on k * hop (True) or on (k + 1/2) * hop (AudioLDM)
    power: float  # 1: magnitude (AudioLDM), 2: power (mel25)
    floor: float  # clamp before the log, in units of the mel-weighted |STFT| ** power

    def __post_init__(self) -> None:
        if self.f_max > self.sample_rate / 2:
            raise ValueError(f"mel f_max {self.f_max} Hz is above Nyquist ({self.sample_rate} Hz)")
        if not self.hop_length <= self.win_length <= self.n_fft:
            raise ValueError("need hop_length <= win_length <= n_fft")

    @property
    def frame_rate(self) -> float:
        return self.sample_rate / self.hop_length

    @property
    def padding(self) -> int:
        """Reflect padding on each side before a non-centred STFT."""
        return self.n_fft // 2 if self.centred else (self.n_fft - self.hop_length) // 2

    def frame_count(self, samples: int) -> int:
        return samples // self.hop_length

    @cached_property
    def filterbank(self) -> torch.Tensor:
        """[n_mels, n_fft // 2 + 1], librosa's slaney mel (keyword args: docs/reference.md pitfall
        12)."""
        basis = librosa.filters.mel(
            sr=self.sample_rate,
            n_fft=self.n_fft,
            n_mels=self.n_mels,
            fmin=self.f_min,
            fmax=self.f_max,
        )
        return torch.from_numpy(basis)

    @cached_property
    def window(self) -> torch.Tensor:
        return torch.hann_window(self.win_length)


def mel25_front_end(params: Mel25Params) -> MelFrontEnd:
    """The 25 Hz x 64 front end; n_fft is the power of two >= 2 hops (as the embedded scorers)."""
    if params.sample_rate % params.frame_rate:
        raise ValueError(
            f"params `latents.mel25`: sample_rate {params.sample_rate} is not a whole number "
            f"of frame_rate {params.frame_rate} hops"
        )
    hop = params.sample_rate // params.frame_rate
    n_fft = 1 << math.ceil(math.log2(2 * hop))  # 16 kHz / 25 Hz: hop 640, n_fft 2048
    return MelFrontEnd(
        sample_rate=params.sample_rate,
        n_fft=n_fft,
        hop_length=hop,
        win_length=n_fft,
        n_mels=params.n_mels,
        f_min=MEL25_F_MIN,
        f_max=params.fmax,
        centred=True,
        power=2.0,
        floor=MEL25_POWER_FLOOR,
    )


def log_mel(clips: torch.Tensor, front_end: MelFrontEnd) -> torch.Tensor:
    """[N, samples] at `front_end.sample_rate` -> [N, samples // hop, n_mels] float32."""
    frames = front_end.frame_count(clips.shape[-1])
    if frames < 1 or clips.shape[-1] <= front_end.padding:
        raise ValueError(
            f"clips of {clips.shape[-1]} samples are too short for a {front_end.n_fft}-point "
            f"STFT with hop {front_end.hop_length}"
        )
    padded = torch.nn.functional.pad(
        clips.float().unsqueeze(1), (front_end.padding, front_end.padding), mode="reflect"
    ).squeeze(1)
    spectrum = torch.stft(
        padded,
        n_fft=front_end.n_fft,
        hop_length=front_end.hop_length,
        win_length=front_end.win_length,
        window=front_end.window,
        center=False,
        return_complex=True,
    ).abs()  # [N, n_fft // 2 + 1, frames (+1 when centred)]
    mel = torch.matmul(front_end.filterbank, spectrum.pow(front_end.power))
    # A centred STFT yields samples // hop + 1 frames: keep samples // hop, the codec grid.
    log_mel_frames = torch.log(torch.clamp(mel[..., :frames], min=front_end.floor))
    return log_mel_frames.transpose(1, 2).contiguous()  # [N, frames, n_mels]


def nnls_mel_inverse(mel: torch.Tensor, filterbank: torch.Tensor, iters: int) -> torch.Tensor:
    """[..., n_mels, frames] mel power -> [..., bins, frames] power >= 0 minimising
    |filterbank @ S - mel|.

    Multiplicative updates keep S non-negative without a step size; each one lowers the
    squared error (Lee & Seung 2001). A tiny positive start lets every bin move.
    """
    numerator = filterbank.T @ mel
    spectrum = torch.clamp(torch.linalg.pinv(filterbank) @ mel, min=MEL25_POWER_FLOOR)
    for _ in range(iters):
        denominator = filterbank.T @ (filterbank @ spectrum)
        # Clamped far below the mel floor: values decaying towards 0 would turn subnormal
        # and slow every float operation by orders of magnitude (a 10 s decode took 13 s).
        ratio = numerator / torch.clamp(denominator, min=torch.finfo(mel.dtype).tiny)
        spectrum = torch.clamp(spectrum * ratio, min=NNLS_POWER_MIN)
    return spectrum


def griffin_lim(magnitude: torch.Tensor, front_end: MelFrontEnd, iters: int) -> torch.Tensor:
    """[N, bins, frames + 1] STFT magnitude -> [N, frames * hop] audio, fast Griffin-Lim, zero
    phase, in the magnitude's precision (float32 -> complex64 phases)."""
    window = front_end.window.to(magnitude.dtype)
    length = (magnitude.shape[-1] - 1) * front_end.hop_length
    stft: dict[str, Any] = {
        "n_fft": front_end.n_fft,
        "hop_length": front_end.hop_length,
        "win_length": front_end.win_length,
        "window": window,
        "center": True,
    }
    momentum = 0.99  # librosa's default: the fast Griffin-Lim of Perraudin et al.
    phase = torch.ones_like(magnitude, dtype=magnitude.dtype.to_complex())
    rebuilt = torch.zeros_like(phase)
    for _ in range(iters):
        previous = rebuilt
        audio = torch.istft(magnitude * phase, length=length, **stft)
        rebuilt = torch.stft(audio, pad_mode="reflect", return_complex=True, **stft)
        phase = rebuilt - (momentum / (1 + momentum)) * previous
        phase = phase / (phase.abs() + 1e-16)
    return torch.istft(magnitude * phase, length=length, **stft)


def invert_log_mel(log_mels: np.ndarray, front_end: MelFrontEnd, iters: int) -> np.ndarray:
    """[N, frames, n_mels] centred log-mel power -> [N, frames * hop] float32 audio."""
    if not (front_end.centred and front_end.power == 2.0):
        raise ValueError("the mel inversion here takes centred log-power mels (mel25)")
    lone = log_mels.shape[0] == 1
    if lone:  # the batched kernels' rounding (module docstring): decode beside a copy
        log_mels = np.concatenate([log_mels, log_mels])
    mel = torch.exp(torch.from_numpy(log_mels).float().transpose(1, 2))  # [N, n_mels, frames]
    power = nnls_mel_inverse(mel, front_end.filterbank.float(), MEL_INVERSION_ITERS)
    # The encoder dropped the centred STFT's last frame; a repeat of the final frame
    # stands in for it so that the STFT of frames * hop samples has the frames it needs.
    magnitude = torch.sqrt(torch.cat([power, power[..., -1:]], dim=-1))
    audio = griffin_lim(magnitude, front_end, iters).numpy()
    return audio[:1] if lone else audio


class Mel25Codec:
    """`backends.codec = mel25`: raw log-mel latents [N, T, n_mels], grid (1, n_mels).

    The latents are not normalised here: the `latents` stage fits per-channel mean/std on
    the train split and stores them with the cache.
    """

    def __init__(self, params: Mel25Params) -> None:
        self.front_end = mel25_front_end(params)
        self.sample_rate = params.sample_rate
        self.frame_rate = float(self.front_end.frame_rate)
        self.latent_dim = params.n_mels
        # One channel x n_mels frequency bins: a real time-frequency image, so paper 003's
        # patchify over time x frequency sees the mel axis as its frequency axis.
        self.grid = (1, params.n_mels)
        self.griffin_lim_iters = params.griffin_lim_iters

    @torch.inference_mode()
    def encode(self, waveforms: Sequence[np.ndarray], sample_rate: int) -> np.ndarray:
        """[N, samples // hop, n_mels] float32 from mono clips of one length."""
        clips = torch.from_numpy(stack_clips(waveforms, sample_rate, self.sample_rate))
        return log_mel(clips, self.front_end).numpy()

    @torch.inference_mode()
    def decode(self, latents: np.ndarray) -> np.ndarray:
        """[N, T * hop] float32 mono audio at `sample_rate`, `DECODE_BATCH` clips at a time."""
        latents = np.asarray(latents, dtype=np.float32)
        if latents.ndim != 3 or latents.shape[-1] != self.latent_dim:
            raise ValueError(f"expected latents [N, T, {self.latent_dim}], got {latents.shape}")
        return np.concatenate(
            [
                invert_log_mel(
                    latents[start : start + DECODE_BATCH], self.front_end, self.griffin_lim_iters
                )
                for start in range(0, len(latents), DECODE_BATCH)
            ]
        )
