"""Training the embedded scorers on the corpus train split (pure functions, no files).

- Tiny CLAP: symmetric InfoNCE between random `crop_seconds` windows of a track and one of
  its captions (holistic, dense or concise, drawn per sample, so the space serves both the
  pretraining captions and the concise prompts); the MiniLM sentence embeddings are frozen
  and computed once.
- Quality regressor: MSE to the centre of a quality level's p-MOS bin
  (tasks/common/quality_levels.py); which clips at which levels is tasks/scorers/quality.py's
  choice (recorded levels, or known degradations of the dataset's own clips).

Windows are cropped from a track's log-mel, computed once per track, rather than from the
waveform: a centred STFT frame only sees its own 2 hops, so the crop equals the window's
own log-mel except at its two edge frames.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import numpy as np
import torch

from models.scorers import LogMel, QualityRegressor, TinyClap
from tasks.params import ScorerOptim

CAPTION_COLUMNS = ("caption_holistic", "caption_dense", "prompt_concise")
LogFn = Callable[[str, float, int], None]


@dataclass
class TrackMels:
    """Full-track log-mels [n_mels, frames] of one split, in track order."""

    track_ids: list[str]
    mels: list[torch.Tensor]


@torch.inference_mode()
def track_log_mels(waveforms: list[np.ndarray], log_mel: LogMel) -> list[torch.Tensor]:
    return [log_mel(torch.from_numpy(w)[None])[0] for w in waveforms]


def random_crops(
    mels: list[torch.Tensor], indices: np.ndarray, frames: int, rng: np.random.Generator
) -> torch.Tensor:
    """[B, n_mels, frames] windows at random offsets (tracks shorter than `frames` excluded)."""
    crops = []
    for index in indices:
        mel = mels[index]
        start = int(rng.integers(0, mel.shape[-1] - frames + 1))
        crops.append(mel[:, start : start + frames])
    return torch.stack(crops)


def _optimizer(model: torch.nn.Module, optim: ScorerOptim) -> tuple[torch.optim.Optimizer, object]:
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=optim.learning_rate, weight_decay=optim.weight_decay
    )
    warmup = max(1, optim.steps // 20)

    def factor(step: int) -> float:  # linear warm-up, then cosine decay to 5 %
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, optim.steps - warmup)
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _usable(mels: list[torch.Tensor], crop_frames: int) -> np.ndarray:
    """Indices of the tracks long enough for one training window."""
    return np.array([i for i, m in enumerate(mels) if m.shape[-1] >= crop_frames])


def _step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    schedule,
    loss: torch.Tensor,
    step: int,
) -> None:
    """One clipped AdamW step; a non-finite loss stops training instead of poisoning it."""
    if not torch.isfinite(loss):
        raise FloatingPointError(f"{type(model).__name__} loss is {loss.item()} at step {step}")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    schedule.step()


def train_clap(
    model: TinyClap,
    mels: list[torch.Tensor],
    caption_embeddings: np.ndarray,
    optim: ScorerOptim,
    crop_frames: int,
    seed: int,
    log: LogFn,
) -> list[float]:
    """InfoNCE training; `caption_embeddings` is [tracks, styles, dim] frozen MiniLM output."""
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    usable = _usable(mels, crop_frames)
    if len(usable) < 2:
        raise ValueError(f"need >= 2 train tracks of at least {crop_frames} frames")
    batch = min(optim.batch_size, len(usable))
    captions = torch.from_numpy(caption_embeddings)
    optimizer, schedule = _optimizer(model, optim)
    model.train()
    losses = []
    for step in range(optim.steps):
        indices = rng.choice(usable, size=batch, replace=False)
        styles = rng.integers(0, captions.shape[1], size=batch)
        audio = model.embed_log_mel(random_crops(mels, indices, crop_frames, rng))
        text = model.embed_text(captions[indices, styles])
        loss = model.contrastive_loss(audio, text)
        _step(model, optimizer, schedule, loss, step)
        losses.append(loss.item())
        log("clap_train_loss", loss.item(), step)
    return losses


def train_quality(
    model: QualityRegressor,
    mels: list[torch.Tensor],
    targets: np.ndarray,
    optim: ScorerOptim,
    crop_frames: int,
    seed: int,
    log: LogFn,
) -> list[float]:
    """MSE regression of p-MOS targets from random windows (balanced over target values)."""
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    usable = _usable(mels, crop_frames)
    values = torch.from_numpy(np.asarray(targets, dtype=np.float32))
    # Clean tracks dominate the corpus; sample each target value equally often.
    groups = [usable[values[usable].numpy() == v] for v in np.unique(values[usable].numpy())]
    scale = float(values[usable].std()) or 1.0
    with torch.no_grad():
        output = cast(torch.nn.Linear, model.head[-1])  # nn.Sequential indexes to Module
        output.bias.fill_(float(values[usable].mean()))
    optimizer, schedule = _optimizer(model, optim)
    model.train()
    losses = []
    for step in range(optim.steps):
        chosen = rng.integers(0, len(groups), size=optim.batch_size)
        indices = np.array([rng.choice(groups[g]) for g in chosen])
        prediction = model.predict_log_mel(random_crops(mels, indices, crop_frames, rng))
        loss = torch.mean(((prediction - values[indices]) / scale) ** 2)
        _step(model, optimizer, schedule, loss, step)
        losses.append(loss.item())
        log("quality_train_loss", loss.item(), step)
    return losses
