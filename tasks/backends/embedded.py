"""The embedded scorers as backends: checkpoints written by the `scorers` stage.

A checkpoint is a directory with `model.safetensors` (weights, no pickle) and `config.json`
(`kind`, the architecture config, and what the stage recorded about training). The
embedded CLAP, quality and frame-teacher backends load these through `load_checkpoint`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal, overload

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from models.scorers import (
    MelConfig,
    QualityRegressor,
    QualityRegressorConfig,
    TinyClap,
    TinyClapConfig,
)
from tasks.backends.base import require_path, stack_clips
from tasks.backends.text_encoder import HfTextEncoder, load_minilm
from tasks.common.atomic import atomic_directory

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
_KINDS = {
    "tiny_clap": (TinyClap, TinyClapConfig),
    "quality": (QualityRegressor, QualityRegressorConfig),
}


def save_checkpoint(model: TinyClap | QualityRegressor, directory: Path, meta: dict) -> None:
    """Write weights + config atomically (the directory appears whole or not at all)."""
    kind = "tiny_clap" if isinstance(model, TinyClap) else "quality"
    with atomic_directory(directory) as temporary:
        state = {name: tensor.detach().contiguous() for name, tensor in model.state_dict().items()}
        save_file(state, temporary / WEIGHTS_FILE)
        config = {"kind": kind, "config": asdict(model.config), **meta}
        (temporary / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def _config_from_dict(kind: str, raw: dict[str, Any]) -> TinyClapConfig | QualityRegressorConfig:
    config_class = _KINDS[kind][1]
    values = dict(raw)
    values["mel"] = MelConfig(**values["mel"])
    values["dilations"] = tuple(values["dilations"])
    return config_class(**values)


@overload
def load_checkpoint(
    path: str | Path | None, key: str, kind: Literal["tiny_clap"]
) -> tuple[TinyClap, dict]: ...
@overload
def load_checkpoint(
    path: str | Path | None, key: str, kind: Literal["quality"]
) -> tuple[QualityRegressor, dict]: ...
@overload
def load_checkpoint(
    path: str | Path | None, key: str, kind: str
) -> tuple[torch.nn.Module, dict]: ...
def load_checkpoint(path: str | Path | None, key: str, kind: str) -> tuple[torch.nn.Module, dict]:
    """(model in eval mode, its config.json) from a `scorers` stage checkpoint directory."""
    what = f"embedded {kind} checkpoint directory written by the scorers stage (dvc repro scorers)"
    directory = require_path(path, key, what)
    for name in (WEIGHTS_FILE, CONFIG_FILE):
        require_path(directory / name, key, what)
    meta = json.loads((directory / CONFIG_FILE).read_text())
    if meta.get("kind") != kind:
        raise ValueError(f"params `{key}`: {directory} holds a {meta.get('kind')!r}, not {kind!r}")
    model_class = _KINDS[kind][0]
    model = model_class(_config_from_dict(kind, meta["config"]))
    model.load_state_dict(load_file(directory / WEIGHTS_FILE), strict=True)
    return model.eval(), meta


class EmbeddedClap:
    """TinyClap + frozen MiniLM sentence embeddings."""

    def __init__(self, model: TinyClap, text_encoder: HfTextEncoder) -> None:
        self.model = model.eval()
        self.text_encoder = text_encoder
        self.sample_rate = model.config.mel.sample_rate
        self.embedding_dim = model.config.embed_dim

    @torch.inference_mode()
    def embed_audio(self, waveforms: Sequence[np.ndarray], sample_rate: int) -> np.ndarray:
        clips = torch.from_numpy(stack_clips(waveforms, sample_rate, self.sample_rate))
        return self.model.embed_audio(clips).numpy()

    @torch.inference_mode()
    def embed_text(self, captions: Sequence[str]) -> np.ndarray:
        sentences = torch.from_numpy(self.text_encoder.sentence_embedding(captions))
        return self.model.embed_text(sentences).numpy()


class EmbeddedQuality:
    """The quality regressor: p-MOS on the reference code's scale (see
    tasks/backends/quality.py)."""

    def __init__(self, model: QualityRegressor) -> None:
        self.model = model.eval()
        self.sample_rate = model.config.mel.sample_rate

    @torch.inference_mode()
    def predict(self, waveforms: Sequence[np.ndarray], sample_rate: int) -> np.ndarray:
        clips = torch.from_numpy(stack_clips(waveforms, sample_rate, self.sample_rate))
        return self.model(clips).numpy().astype(np.float32)


class EmbeddedFrameTeacher:
    """The tiny CLAP audio tower's frames: one feature vector per codec frame (25 Hz)."""

    def __init__(self, model: TinyClap) -> None:
        self.model = model.eval()
        self.sample_rate = model.config.mel.sample_rate
        self.frame_rate = float(model.config.mel.frame_rate)
        self.dim = model.config.channels

    @torch.inference_mode()
    def features(self, waveforms: Sequence[np.ndarray], sample_rate: int) -> np.ndarray:
        clips = torch.from_numpy(stack_clips(waveforms, sample_rate, self.sample_rate))
        frames = self.model.frame_features(self.model.log_mel(clips))
        # A centred STFT yields T // hop + 1 frames; keep T // hop, the codec's grid
        # (10 s at 25 Hz = 250 frames, paper 000's latent length).
        return frames[:, : clips.shape[-1] // self.model.config.mel.hop_length].numpy()


def load_embedded_clap(path: str | None, key: str) -> EmbeddedClap:
    model, meta = load_checkpoint(path, key, "tiny_clap")
    return EmbeddedClap(model, load_minilm(meta.get("text_encoder_path"), key))
