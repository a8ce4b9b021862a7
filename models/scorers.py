"""The embedded stand-ins for the pretrained scorers: a tiny CLAP and a p-MOS regressor.

docs/architecture.md "Two profiles": where LAION-CLAP and the wav2vec2 p-MOS model cannot be
downloaded, the pipeline trains these on its own corpus. Both read a log-mel spectrogram
at the codec frame rate (25 Hz), so the CLAP audio tower's per-frame features serve as the
embedded frame teacher for REPA (paper 000 eq. (5)) on the latent grid.

The text tower is a frozen sentence encoder (all-MiniLM-L6-v2, outside this module) whose
pooled embedding enters `TinyClap.embed_text`; only the projection here trains.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class MelConfig:
    sample_rate: int
    n_mels: int
    frame_rate: int
    f_min: float = 30.0

    @property
    def hop_length(self) -> int:
        return self.sample_rate // self.frame_rate

    @property
    def n_fft(self) -> int:
        return 1 << math.ceil(math.log2(2 * self.hop_length))


def mel_filterbank(config: MelConfig) -> torch.Tensor:
    """[n_fft // 2 + 1, n_mels] triangular filters on the HTK mel scale, area-normalised."""

    def hz_to_mel(hz: torch.Tensor) -> torch.Tensor:
        return 2595.0 * torch.log10(1.0 + hz / 700.0)

    def mel_to_hz(mel: torch.Tensor) -> torch.Tensor:
        return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)

    f_max = config.sample_rate / 2
    bins = torch.linspace(0, f_max, config.n_fft // 2 + 1, dtype=torch.float64)
    edges = mel_to_hz(
        torch.linspace(
            hz_to_mel(torch.tensor(config.f_min, dtype=torch.float64)),
            hz_to_mel(torch.tensor(f_max, dtype=torch.float64)),
            config.n_mels + 2,
            dtype=torch.float64,
        )
    )
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bins[None] - lower) / (centre - lower)
    falling = (upper - bins[None]) / (upper - centre)
    filters = torch.clamp(torch.minimum(rising, falling), min=0.0)
    filters = filters * (2.0 / (upper - lower))  # slaney-style equal area
    return filters.T.to(torch.float32)


class LogMel(nn.Module):
    """waveform [B, T] -> log-mel [B, n_mels, frames], frames = T // hop + 1 (centred STFT)."""

    # buffers registered in __init__
    window: torch.Tensor
    filters: torch.Tensor

    def __init__(self, config: MelConfig) -> None:
        super().__init__()
        self.config = config
        self.register_buffer("window", torch.hann_window(config.n_fft), persistent=False)
        self.register_buffer("filters", mel_filterbank(config), persistent=False)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        spectrum = torch.stft(
            waveform,
            n_fft=self.config.n_fft,
            hop_length=self.config.hop_length,
            window=self.window,
            center=True,
            return_complex=True,
        )
        power = spectrum.real.square() + spectrum.imag.square()  # [B, freq, frames]
        mel = torch.einsum("bft,fm->bmt", power, self.filters)
        return torch.log(mel + 1e-6)


class ResidualConvBlock(nn.Module):
    """Dilated temporal conv, pre-norm, residual: keeps the frame rate (no striding)."""

    def __init__(self, channels: int, dilation: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(1, channels)
        self.conv = nn.Conv1d(channels, channels, 5, padding=2 * dilation, dilation=dilation)
        self.mix = nn.Conv1d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mix(F.gelu(self.conv(self.norm(x))))


class FrameEncoder(nn.Module):
    """log-mel [B, n_mels, frames] -> frame features [B, frames, channels] at the mel rate."""

    def __init__(self, n_mels: int, channels: int, dilations: tuple[int, ...]) -> None:
        super().__init__()
        self.input_norm = nn.BatchNorm1d(n_mels)  # per-band statistics of the training audio
        self.stem = nn.Conv1d(n_mels, channels, 3, padding=1)
        self.blocks = nn.Sequential(*(ResidualConvBlock(channels, d) for d in dilations))
        self.out_norm = nn.GroupNorm(1, channels)

    def forward(self, log_mel: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(self.input_norm(log_mel)))
        return self.out_norm(x).transpose(1, 2)


def mean_std_pool(frames: torch.Tensor) -> torch.Tensor:
    """[B, frames, C] -> [B, 2C]: statistics pooling over time."""
    return torch.cat([frames.mean(dim=1), frames.std(dim=1)], dim=-1)


@dataclass(frozen=True)
class TinyClapConfig:
    mel: MelConfig
    channels: int
    embed_dim: int
    text_input_dim: int  # the frozen sentence encoder's size (384 for MiniLM-L6)
    dilations: tuple[int, ...] = (1, 2, 4, 8)


class TinyClap(nn.Module):
    """Audio tower on log-mel + projection of frozen sentence embeddings, shared space."""

    def __init__(self, config: TinyClapConfig) -> None:
        super().__init__()
        self.config = config
        self.log_mel = LogMel(config.mel)
        self.frames = FrameEncoder(config.mel.n_mels, config.channels, config.dilations)
        self.audio_projection = nn.Sequential(
            nn.Linear(2 * config.channels, config.channels),
            nn.GELU(),
            nn.Linear(config.channels, config.embed_dim),
        )
        self.text_projection = nn.Sequential(
            nn.Linear(config.text_input_dim, 2 * config.embed_dim),
            nn.GELU(),
            nn.Linear(2 * config.embed_dim, config.embed_dim),
        )
        # CLIP's learnable temperature, initialised at 1 / 0.07 and capped at 100.
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def frame_features(self, log_mel: torch.Tensor) -> torch.Tensor:
        """[B, n_mels, frames] -> [B, frames, channels]: the embedded frame teacher."""
        return self.frames(log_mel)

    def embed_log_mel(self, log_mel: torch.Tensor) -> torch.Tensor:
        pooled = mean_std_pool(self.frame_features(log_mel))
        return F.normalize(self.audio_projection(pooled), dim=-1)

    def embed_audio(self, waveform: torch.Tensor) -> torch.Tensor:
        """[B, T] at `config.mel.sample_rate` -> [B, embed_dim], L2-normalised."""
        return self.embed_log_mel(self.log_mel(waveform))

    def embed_text(self, sentence_embedding: torch.Tensor) -> torch.Tensor:
        """[B, text_input_dim] frozen sentence embeddings -> [B, embed_dim], L2-normalised."""
        return F.normalize(self.text_projection(sentence_embedding), dim=-1)

    def contrastive_loss(self, audio: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Symmetric InfoNCE (CLIP / CLAP) over a batch of matching pairs."""
        scale = self.logit_scale.clamp(max=math.log(100.0)).exp()
        logits = scale * audio @ text.T
        targets = torch.arange(len(audio), device=audio.device)
        return 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets))


@dataclass(frozen=True)
class QualityRegressorConfig:
    mel: MelConfig
    channels: int
    dilations: tuple[int, ...] = (1, 2, 4)


class QualityRegressor(nn.Module):
    """log-mel -> one p-MOS number per clip (statistics pooling + MLP)."""

    def __init__(self, config: QualityRegressorConfig) -> None:
        super().__init__()
        self.config = config
        self.log_mel = LogMel(config.mel)
        self.frames = FrameEncoder(config.mel.n_mels, config.channels, config.dilations)
        # Spectral statistics the degradations move (noise floor, band limit, clipping
        # harmonics) live per band: pool the normalised mel per band as well as the frames.
        self.head = nn.Sequential(
            nn.Linear(2 * config.channels + 2 * config.mel.n_mels, config.channels),
            nn.GELU(),
            nn.Linear(config.channels, 1),
        )

    def predict_log_mel(self, log_mel: torch.Tensor) -> torch.Tensor:
        frames = self.frames(log_mel)
        bands = self.frames.input_norm(log_mel).transpose(1, 2)
        features = torch.cat([mean_std_pool(frames), mean_std_pool(bands)], dim=-1)
        return self.head(features).squeeze(-1)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        """[B, T] at `config.mel.sample_rate` -> [B] p-MOS."""
        return self.predict_log_mel(self.log_mel(waveform))
