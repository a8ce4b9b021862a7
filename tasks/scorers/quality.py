"""What the embedded p-MOS regressor learns: recorded quality levels, or known degradations of
the dataset's own clips (label-free).

Paper 003 §4.1 bins p-MOS into quality levels; the embedded regressor stands in for p-MOS by
regressing the centre of each level's bin on the reference code's p-MOS scale
(tasks/common/quality_levels.py). It needs clips of known level:

- `recorded`: the embedded corpus records each track's degradation level. The train split
  as recorded, `quality_augment_per_track` degraded copies of each clean train track, and
  the CLAP's generated pretraining pool (tasks/scorers/pairs.py) with its levels plus one
  degraded copy of each clean clip, so every genre is seen clean.
- `synthetic_degradations`: a real dataset records no level. Every train clip is taken as
  the reference (level 5: "as good as this dataset gets"; recorded levels, if any, are
  ignored) and `quality_augment_per_track` copies of it are degraded by the corpus's own
  degradation model (`data.degradation`: the same kinds and severities, level i = severity
  i) at a random kind and level 1..4. The levels are then known by construction: paper
  003's quality levels made label-free. What it learns is how far a clip sits below the
  dataset's own sound, not an absolute MOS; a dataset of uniformly poor recordings reads
  as level 5. The generated pool is left out, so the regressor sees only this dataset's
  music (its figures on the embedded corpus are then what a real dataset would get).
- `auto`: `recorded` when every train track has a level, else `synthetic_degradations`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from models.scorers import MelConfig, QualityRegressor, QualityRegressorConfig
from tasks.common.quality_levels import level_centre
from tasks.params import Params
from tasks.scorers.pairs import Pairs
from tasks.scorers.training import track_log_mels, train_quality
from tasks.synthesis.degradation import CLEAN_LEVEL, degraded_copies, make_degrader

RECORDED = "recorded"
SYNTHETIC = "synthetic_degradations"
LogFn = Callable[[str, float, int], None]


@dataclass
class QualitySet:
    """Training clips of known quality level, and where the levels come from."""

    waveforms: list[np.ndarray]
    levels: list[int]
    targets: str  # RECORDED or SYNTHETIC


def resolve_targets(train_levels: pd.Series, setting: str) -> str:
    """`scorers.quality_targets` on this train split: `auto` picks `recorded` only when every
    train track has a recorded level (the embedded corpus), else the synthetic targets."""
    if setting != "auto":
        return setting
    return RECORDED if len(train_levels) and train_levels.notna().all() else SYNTHETIC


def recorded_set(
    waveforms: list[np.ndarray], recorded: pd.Series, pairs: Pairs, params: Params
) -> QualitySet:
    """The embedded corpus's recorded levels + degraded copies of its clean tracks, and the
    pretraining pool with its levels + one degraded copy of each clean clip."""
    clean = [w for w, level in zip(waveforms, recorded, strict=True) if level == CLEAN_LEVEL]
    kinds = params.data.degradation.kinds
    degrader = make_degrader(params.data.degradation, params.scorers.sample_rate)
    copies = params.scorers.quality_augment_per_track
    extra, extra_levels = degraded_copies(clean, copies, kinds, degrader, params.seed + 1)
    pristine = [w for w, level in zip(pairs.waveforms, pairs.levels, strict=True) if level == 5]
    pool, pool_levels = degraded_copies(pristine, 1, kinds, degrader, params.seed + 2)
    audio = waveforms + extra + pairs.waveforms + pool
    levels = [int(v) for v in recorded] + extra_levels + pairs.levels + pool_levels
    return QualitySet(audio, levels, RECORDED)


def synthetic_set(waveforms: list[np.ndarray], params: Params) -> QualitySet:
    """Every train clip at level 5 + `quality_augment_per_track` copies of each at known
    degradation levels (the module docstring says what that measures)."""
    degrader = make_degrader(params.data.degradation, params.scorers.sample_rate)
    copies = params.scorers.quality_augment_per_track
    kinds = params.data.degradation.kinds
    extra, extra_levels = degraded_copies(waveforms, copies, kinds, degrader, params.seed + 1)
    return QualitySet(
        list(waveforms) + extra, [CLEAN_LEVEL] * len(waveforms) + extra_levels, SYNTHETIC
    )


def level_targets(levels: list[int], params: Params) -> np.ndarray:
    """Bin centres on the p-MOS scale; the scorers' pre-flight checked that the scale is set."""
    q = params.quality
    assert q.pmos_mean is not None and q.pmos_std is not None
    return np.array([level_centre(v, q.pmos_mean, q.pmos_std, q.level_edges_std) for v in levels])


def train_embedded_quality(
    params: Params, quality_set: QualitySet, crop_frames: int, mel: MelConfig, log: LogFn
) -> QualityRegressor:
    """The p-MOS regressor on `quality_set`, trained on `crop_frames`-frame windows."""
    config = QualityRegressorConfig(mel, params.scorers.quality_channels)
    torch.manual_seed(params.seed)
    model = QualityRegressor(config)
    mels = track_log_mels(quality_set.waveforms, model.log_mel)
    targets = level_targets(quality_set.levels, params)
    train_quality(model, mels, targets, params.scorers.quality, crop_frames, params.seed, log)
    return model.eval()
