"""Codec backends (`backends.codec`): `mel25` (embedded), `ace-step` and `audioldm2`.

Every codec maps mono clips of one length to time-major latents [N, T, latent_dim] with
T = samples // hop (10 s -> 250 frames at 25 Hz) and back to mono audio; `grid` =
(channels, frequency) is the 2-D view paper 003's patchify takes
(`latents.reshape(N, T, *grid)`). Latents are raw: per-channel normalisation statistics
belong to the `latents` stage, which fits them on the train split.

* `mel25` (`tasks/backends/mel_codec.py`): analytic log-mel at 25 Hz x 64, no checkpoint;
  `backends.codec.path` is unused.
* `ace-step` (paper 000): ACE-Step 1.5's audio VAE, diffusers `AutoencoderOobleck`, 48 kHz
  stereo, 25 Hz x 64, no scaling factor (docs/reference.md §F.1). `path` is the VAE directory
  (or an ACE-Step checkpoint directory holding it as `vae/`).
* `audioldm2` (paper 003): the AudioLDM2-style mel VAE + HiFi-GAN that QA-MDT uses
  (docs/reference.md §C.1, §C.4): `path` is a diffusers AudioLDM2 pipeline directory with
  `vae/` (`AutoencoderKL`) and `vocoder/` (transformers `SpeechT5HifiGan`).

`load_codec(choice, mel25)` is the entry point. The registry's loaders return a factory
taking `latents.mel25`, which only the embedded codec reads.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tasks.backends.base import (
    CodecBackend,
    Registry,
    checkpoint_identity,
    require_path,
    stack_clips,
)
from tasks.backends.mel_codec import (
    Mel25Codec,
    MelFrontEnd,
    log_mel,
    mel25_front_end,
)
from tasks.params import BackendChoice, Mel25Params

CodecFactory = Callable[[Mel25Params], CodecBackend]
CODEC_BACKENDS: Registry[CodecFactory] = Registry("codec")

# QA-MDT's mel front end (qa_mdt.yaml preprocessing, docs/reference.md §C.1): 16 kHz, STFT
# filter and window 1024, mel 0-8000 Hz. Hop and band count come from the vocoder's config
# (160 = product of its upsample rates, 64 = model_in_dim): they must match the vocoder
# the VAE's mels are decoded with.
AUDIOLDM_SAMPLE_RATE = 16000
AUDIOLDM_N_FFT = 1024
AUDIOLDM_WIN_LENGTH = 1024
AUDIOLDM_F_MIN = 0.0
AUDIOLDM_F_MAX = 8000.0
AUDIOLDM_LOG_FLOOR = 1e-5  # dynamic_range_compression's clip_val, on the mel magnitude


def _model_device_dtype(model: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    """Where the caller put the model (CPU float32 as loaded; bf16 on GPU in ACE-Step)."""
    parameter = next(model.parameters())
    return parameter.device, parameter.dtype


def _check_latents(latents: np.ndarray, latent_dim: int) -> torch.Tensor:
    array = np.asarray(latents, dtype=np.float32)
    if array.ndim != 3 or array.shape[-1] != latent_dim or array.shape[1] < 1:
        raise ValueError(f"expected latents [N, T, {latent_dim}], got {array.shape}")
    return torch.from_numpy(array)


# --------------------------------------------------------------------------- ace-step
class OobleckCodec:
    """ACE-Step 1.5's VAE: mono -> stereo 48 kHz -> posterior mean [N, T, 64] at 25 Hz."""

    def __init__(self, vae: torch.nn.Module) -> None:
        # A diffusers model: its config and encode/decode are not nn.Module's, so untyped.
        config: Any = vae.config
        self.vae: Any = vae.eval()
        self.sample_rate = int(config.sampling_rate)
        # One latent frame per product of the encoder's strides (1920 at 48 kHz = 25 Hz).
        self.hop_length = math.prod(int(r) for r in config.downsampling_ratios)
        self.frame_rate = self.sample_rate / self.hop_length
        self.latent_dim = int(config.decoder_input_channels)
        self.audio_channels = int(config.audio_channels)
        self.grid = (1, self.latent_dim)

    @torch.inference_mode()
    def encode(self, waveforms: Sequence[np.ndarray], sample_rate: int) -> np.ndarray:
        """[N, samples // hop, latent_dim] float32; the tail shorter than one hop is dropped."""
        clips = stack_clips(waveforms, sample_rate, self.sample_rate)
        frames = clips.shape[-1] // self.hop_length
        if frames < 1:
            raise ValueError(f"clips shorter than one latent frame ({self.hop_length} samples)")
        device, dtype = _model_device_dtype(self.vae)
        audio = torch.from_numpy(clips[:, : frames * self.hop_length]).to(device, dtype)
        # The VAE takes stereo: a mono clip is duplicated to every channel (docs/reference.md
        # docs/reference.md pitfall 15), one call per 10 s clip, never tiled.
        stereo = audio.unsqueeze(1).expand(-1, self.audio_channels, -1)  # [N, 2, samples]
        posterior = self.vae.encode(stereo).latent_dist
        # ACE-Step samples the posterior (docs/reference.md pitfall 5); the cache stores its mean so
        # that encoding is deterministic and a rerun of the stage reproduces it bit for bit.
        mean = posterior.mean  # [N, latent_dim, frames]
        if mean.shape[-1] != frames:
            raise ValueError(f"the VAE gave {mean.shape[-1]} frames for {frames} hops")
        return mean.transpose(1, 2).float().cpu().numpy()  # [N, frames, latent_dim]

    @torch.inference_mode()
    def decode(self, latents: np.ndarray) -> np.ndarray:
        """[N, T * hop] float32 mono at 48 kHz: the decoded stereo's channel mean."""
        frames = _check_latents(latents, self.latent_dim)
        device, dtype = _model_device_dtype(self.vae)
        # No scaling factor on either side (docs/reference.md §F.1).
        stereo = self.vae.decode(frames.transpose(1, 2).to(device, dtype)).sample
        return stereo.mean(dim=1).float().cpu().numpy()  # [N, samples]


def _oobleck_directory(path: str | None, key: str) -> Path:
    """The VAE directory itself, or the `vae/` subfolder of an ACE-Step checkpoint directory."""
    what = "ACE-Step 1.5 VAE directory (diffusers AutoencoderOobleck: config.json + safetensors)"
    directory = require_path(path, key, what)
    if not (directory / "config.json").exists() and (directory / "vae" / "config.json").exists():
        directory = directory / "vae"
    require_path(directory / "config.json", key, what)
    return directory


def load_ace_step(path: str | None, key: str) -> OobleckCodec:
    from diffusers import AutoencoderOobleck

    vae = AutoencoderOobleck.from_pretrained(
        _oobleck_directory(path, key), local_files_only=True, use_safetensors=True
    )
    return OobleckCodec(vae)


# --------------------------------------------------------------------------- audioldm2
class AudioLdm2Codec:
    """AudioLDM2's mel VAE + HiFi-GAN: [N, T', C * F'] time-major latents, grid (C, F').

    Encoding follows QA-MDT's data path: log-mel [N, 1, frames, 64] (time x mel, the VAE's
    image layout), posterior mean times the VAE's scaling factor (the diffusers pipelines'
    convention). Decoding follows diffusers' AudioLDM2 pipeline: unscale, VAE decode to a
    mel, vocoder to a 16 kHz waveform.
    """

    def __init__(self, vae: torch.nn.Module, vocoder: torch.nn.Module) -> None:
        # diffusers / transformers models: configs and encode/decode are not nn.Module's.
        self.vae: Any = vae.eval()
        self.vocoder = vocoder.eval()
        vae_config: Any = vae.config
        vocoder_config: Any = vocoder.config
        if int(vae_config.in_channels) != 1:
            raise ValueError(f"an AudioLDM VAE takes 1-channel mels, not {vae_config.in_channels}")
        if int(vocoder_config.sampling_rate) != AUDIOLDM_SAMPLE_RATE:
            raise ValueError(
                f"the vocoder runs at {vocoder_config.sampling_rate} Hz; this backend implements "
                f"QA-MDT's {AUDIOLDM_SAMPLE_RATE} Hz mel front end (n_fft 1024, 0-8000 Hz)"
            )
        self.front_end = MelFrontEnd(
            sample_rate=AUDIOLDM_SAMPLE_RATE,
            n_fft=AUDIOLDM_N_FFT,
            hop_length=math.prod(int(r) for r in vocoder_config.upsample_rates),
            win_length=AUDIOLDM_WIN_LENGTH,
            n_mels=int(vocoder_config.model_in_dim),
            f_min=AUDIOLDM_F_MIN,
            f_max=AUDIOLDM_F_MAX,
            centred=False,
            power=1.0,
            floor=AUDIOLDM_LOG_FLOOR,
        )
        # The encoder halves time and frequency in every block but the last (diffusers'
        # AudioLDM2Pipeline.vae_scale_factor): 4x for the real VAE, 100 Hz mels -> 25 Hz.
        self.downsampling = 2 ** (len(vae_config.block_out_channels) - 1)
        if self.front_end.n_mels % self.downsampling:
            raise ValueError(
                f"{self.front_end.n_mels} mel bins do not divide by the VAE's {self.downsampling}"
            )
        self.sample_rate = self.front_end.sample_rate
        self.frame_rate = self.front_end.frame_rate / self.downsampling
        self.grid = (int(vae_config.latent_channels), self.front_end.n_mels // self.downsampling)
        self.latent_dim = self.grid[0] * self.grid[1]
        self.scaling_factor = float(vae_config.scaling_factor)
        shift = getattr(vae_config, "shift_factor", None)
        self.shift_factor = 0.0 if shift is None else float(shift)

    @torch.inference_mode()
    def encode(self, waveforms: Sequence[np.ndarray], sample_rate: int) -> np.ndarray:
        """[N, T', C * F'] float32, T' = mel frames // downsampling (AudioLDM cuts, as pad_spec)."""
        clips = torch.from_numpy(stack_clips(waveforms, sample_rate, self.sample_rate))
        mel = log_mel(clips, self.front_end)  # [N, frames, n_mels]
        frames = mel.shape[1] // self.downsampling * self.downsampling
        if frames < 1:
            raise ValueError(f"clips shorter than one latent frame ({1 / self.frame_rate:g} s)")
        device, dtype = _model_device_dtype(self.vae)
        image = mel[:, None, :frames].to(device, dtype)  # [N, 1, frames, n_mels]
        mean = self.vae.encode(image).latent_dist.mean  # [N, C, T', F']
        scaled = (mean - self.shift_factor) * self.scaling_factor
        # Time-major storage: [N, T', C, F'] flattened, so reshape(N, T', *grid) is a view.
        return scaled.permute(0, 2, 1, 3).flatten(2).float().cpu().numpy()

    @torch.inference_mode()
    def decode(self, latents: np.ndarray) -> np.ndarray:
        """[N, T' * downsampling * hop] float32 mono audio at 16 kHz."""
        flat = _check_latents(latents, self.latent_dim)
        device, dtype = _model_device_dtype(self.vae)
        image = flat.reshape(*flat.shape[:2], *self.grid).permute(0, 2, 1, 3)  # [N, C, T', F']
        unscaled = image.to(device, dtype) / self.scaling_factor + self.shift_factor
        mel = self.vae.decode(unscaled).sample  # [N, 1, frames, n_mels]
        vocoder_device, vocoder_dtype = _model_device_dtype(self.vocoder)
        waveform = self.vocoder(mel.squeeze(1).to(vocoder_device, vocoder_dtype))
        # HiFi-GAN's transposed convolutions overshoot when (kernel - rate) is odd (the
        # real AudioLDM vocoder's first layer): keep frames * hop samples, as diffusers'
        # AudioLDM2Pipeline cuts to the requested length.
        samples = mel.shape[2] * self.front_end.hop_length
        if waveform.shape[-1] < samples:
            raise ValueError(f"the vocoder gave {waveform.shape[-1]} samples for {samples}")
        return waveform[:, :samples].float().cpu().numpy()  # [N, samples]


def load_audioldm2(path: str | None, key: str) -> AudioLdm2Codec:
    from diffusers import AutoencoderKL
    from transformers import SpeechT5HifiGan

    what = "AudioLDM2 pipeline directory (diffusers layout with vae/ and vocoder/ subfolders)"
    directory = require_path(path, key, what)
    for part in ("vae", "vocoder"):
        require_path(directory / part / "config.json", key, what)
    vae = AutoencoderKL.from_pretrained(
        directory / "vae", local_files_only=True, use_safetensors=True
    )
    vocoder = SpeechT5HifiGan.from_pretrained(
        directory / "vocoder", local_files_only=True, use_safetensors=True
    )
    return AudioLdm2Codec(vae, vocoder)


# --------------------------------------------------------------------------- registry
@CODEC_BACKENDS.register("mel25")
def _mel25(choice: BackendChoice, key: str) -> CodecFactory:
    return Mel25Codec


def _loaded(codec: CodecBackend) -> CodecFactory:
    def factory(mel25: Mel25Params) -> CodecBackend:
        return codec  # a checkpoint codec reads nothing from `latents.mel25`

    return factory


@CODEC_BACKENDS.register("ace-step")
def _ace_step(choice: BackendChoice, key: str) -> CodecFactory:
    return _loaded(load_ace_step(choice.path, key))


@CODEC_BACKENDS.register("audioldm2")
def _audioldm2(choice: BackendChoice, key: str) -> CodecFactory:
    return _loaded(load_audioldm2(choice.path, key))


def load_codec(choice: BackendChoice, mel25: Mel25Params) -> CodecBackend:
    """The codec `backends.codec` selects; `mel25` configures the embedded one."""
    return CODEC_BACKENDS.load(choice)(mel25)


def codec_identity(choice: BackendChoice, mel25: Mel25Params) -> dict[str, Any]:
    """What a latent cache records about its codec: the mel front end, or checkpoint hashes.

    For `mel25` that includes the constants fixed in code (n_fft, f_min, power, floor), so
    a cache never relies on a number copied between files. For the real codecs only the
    directories actually loaded are hashed (not a whole ACE-Step or AudioLDM2 checkpoint).
    """
    key = "backends.codec.path"
    if choice.name == "mel25":
        return {"name": "mel25", **asdict(mel25_front_end(mel25))}
    if choice.name == "ace-step":
        return {
            "name": choice.name,
            "vae": checkpoint_identity(_oobleck_directory(choice.path, key)),
        }
    if choice.name == "audioldm2":
        directory = require_path(choice.path, key, "AudioLDM2 pipeline directory")
        parts = ("vae", "vocoder")
        return {"name": choice.name, **{p: checkpoint_identity(directory / p) for p in parts}}
    CODEC_BACKENDS.load(choice)  # raises the registry's unknown-name error
    raise AssertionError(f"codec {choice.name!r} is registered but has no identity")
