"""`scorers.quality_targets`: the embedded p-MOS regressor on recorded levels or, label-free,
on known degradations of the dataset's own clips (tasks/scorers/quality.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from tasks.common.preflight import quality_backend_problems
from tasks.common.rank_metrics import spearman
from tasks.scorers.quality import (
    RECORDED,
    SYNTHETIC,
    resolve_targets,
    synthetic_set,
    train_embedded_quality,
)
from tasks.scorers.stage import mel_config
from tasks.synthesis.degradation import level_grid, make_degrader
from tests.conftest import TINY_DATA, TINY_SCORERS, params_with

RATE = 16000


def melody(index: int, seconds: float) -> np.ndarray:
    """A distinct chord-like figure per clip: a few partials, changing every half second."""
    rng = np.random.default_rng(index)
    t = np.arange(round(seconds * RATE)) / RATE
    base = 196.0 * 2 ** (rng.integers(0, 12) / 12) * np.where((t * 2).astype(int) % 2, 1.25, 1.0)
    tone = sum(0.3 / k * np.sin(2 * np.pi * k * base * t) for k in (1, 2, 3))
    return (tone + 0.005 * rng.standard_normal(t.size)).astype(np.float32)


def tracks(levels: list) -> pd.DataFrame:
    return pd.DataFrame(
        {"split": ["train"] * len(levels) + ["val"], "quality_level": [*levels, pd.NA]},
    ).astype({"quality_level": "Int64"})


@pytest.fixture
def params(shipped_params):
    return params_with(shipped_params, {"data": TINY_DATA, "scorers": TINY_SCORERS})


def test_auto_is_recorded_only_when_every_train_track_has_a_level() -> None:
    assert resolve_targets(pd.Series([5, 3, 5], dtype="Int64"), "auto") == RECORDED
    assert resolve_targets(pd.Series([5, pd.NA, 5], dtype="Int64"), "auto") == SYNTHETIC
    assert resolve_targets(pd.Series([pd.NA, pd.NA], dtype="Int64"), "auto") == SYNTHETIC
    assert resolve_targets(pd.Series([5, 3], dtype="Int64"), SYNTHETIC) == SYNTHETIC
    assert resolve_targets(pd.Series([pd.NA], dtype="Int64"), RECORDED) == RECORDED


def test_preflight_refuses_only_recorded_targets_without_levels(params) -> None:
    unlabelled = tracks([pd.NA, pd.NA, pd.NA])
    assert quality_backend_problems(unlabelled, params) == []  # auto: synthetic targets
    recorded = params.model_copy(
        update={"scorers": params.scorers.model_copy(update={"quality_targets": "recorded"})}
    )
    (problem,) = quality_backend_problems(unlabelled, recorded)
    assert problem.startswith("scorers.quality_targets = recorded")
    assert "3 of 3 train tracks" in problem
    assert "scorers.quality_targets: synthetic_degradations" in problem
    assert "backends.quality.name: pmos" in problem
    assert quality_backend_problems(tracks([5, 2, 5]), recorded) == []
    no_copies = params.model_copy(
        update={"scorers": params.scorers.model_copy(update={"quality_augment_per_track": 0})}
    )
    (problem,) = quality_backend_problems(unlabelled, no_copies)
    assert "scorers.quality_augment_per_track = 0" in problem
    assert quality_backend_problems(tracks([5, 5]), no_copies) == []  # recorded: no copies needed


def test_synthetic_set_is_every_clip_at_level_5_plus_known_degradations(params) -> None:
    clips = [melody(i, 2.0) for i in range(3)]
    copies = params.scorers.quality_augment_per_track + 1
    params = params.model_copy(
        update={"scorers": params.scorers.model_copy(update={"quality_augment_per_track": copies})}
    )
    made = synthetic_set(clips, params)
    assert made.targets == SYNTHETIC
    assert len(made.waveforms) == len(made.levels) == 3 * (1 + copies)
    assert made.levels[:3] == [5, 5, 5]
    assert all(1 <= level <= 4 for level in made.levels[3:])
    for original, clip in zip(clips, made.waveforms[:3], strict=True):
        assert clip is original
    for index, degraded in enumerate(made.waveforms[3:]):
        source = clips[index // copies]
        assert degraded.shape == source.shape and not np.allclose(degraded, source)
    again = synthetic_set(clips, params)  # seeded: the same copies
    assert all(np.array_equal(a, b) for a, b in zip(made.waveforms, again.waveforms, strict=True))


def test_level_grid_degrades_one_clip_at_every_kind_and_level(params) -> None:
    clip = melody(0, 2.0)
    degrader = make_degrader(params.data.degradation, RATE)
    grid = level_grid(clip, params.data.degradation.kinds, degrader, np.random.default_rng(0))
    kinds = params.data.degradation.kinds
    assert [(kind, level) for kind, level, _ in grid] == [
        (kind, level) for kind in kinds for level in (1, 2, 3, 4)
    ]
    noise = [audio for kind, _, audio in grid if kind == "noise"]
    errors = [float(np.mean((audio - clip) ** 2)) for audio in noise]
    assert errors == sorted(errors, reverse=True)  # level 1 is the worst


def held_out_rho(model, params, seeds: tuple[int, ...]) -> float:
    """Mean Spearman ρ of predictions vs level over the level grids of held-out clips."""
    degrader = make_degrader(params.data.degradation, RATE)
    rhos = []
    for seed in seeds:
        clip = melody(seed, 4.0)
        grid = level_grid(clip, params.data.degradation.kinds, degrader, np.random.default_rng(1))
        clips = [clip, *(audio for _, _, audio in grid)]
        levels = np.array([5, *(level for _, level, _ in grid)], dtype=float)
        with torch.no_grad():
            predicted = model(torch.from_numpy(np.stack(clips))).numpy()
        rhos.append(spearman(predicted, levels))
    return float(np.mean(rhos))


@pytest.fixture
def one_thread():
    """The same float32 sums on every machine (docs/architecture.md "Reproducibility")."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_regressor_on_synthetic_targets_ranks_held_out_degradations(params, one_thread) -> None:
    """Trained only on degraded copies of 6 clips, it orders other clips' level grids (ρ
    ~0.89 at 120 steps), well above the same network after 2 steps (~0.67: louder noise
    alone moves an untrained network)."""
    rho = {}
    for steps in (2, 120):
        scorers = params.scorers.model_copy(
            update={
                "quality_augment_per_track": 8,
                "quality_channels": 16,
                "quality": params.scorers.quality.model_copy(
                    update={"steps": steps, "batch_size": 16, "learning_rate": 3.0e-3}
                ),
            }
        )
        trained = params.model_copy(update={"scorers": scorers})
        made = synthetic_set([melody(i, 4.0) for i in range(6)], trained)
        model = train_embedded_quality(trained, made, 50, mel_config(trained), lambda *a: None)
        rho[steps] = held_out_rho(model, trained, (98, 99))
    assert rho[120] >= 0.8
    assert rho[120] >= rho[2] + 0.1
