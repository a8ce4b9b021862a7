"""tasks/common/score_cache.py's CachedScorer: what a cached value depends on. A backend whose
output depends on the batch it was computed in (as CPU kernels' blocking does, at float
round-off) must still give every window the same value whatever run filled the cache."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tasks.common.score_cache import CachedScorer, ScoreCache

RATE = 100


class BatchSensitive:
    """Each window's mean, plus a term that depends on the batch's size only (as a kernel's
    blocking does); records the batch sizes it was called with."""

    def __init__(self) -> None:
        self.sizes: list[int] = []

    def __call__(self, windows: Sequence[np.ndarray], sample_rate: int) -> np.ndarray:
        self.sizes.append(len(windows))
        return np.array([[w.mean() + 1e-3 * len(windows)] for w in windows])


def _windows(count: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(RATE).astype(np.float32) for _ in range(count)]


def _score(cache_dir: Path, windows: list[np.ndarray], batch_size: int) -> list[np.ndarray]:
    backend = BatchSensitive()
    with ScoreCache(cache_dir) as cache:
        scorer = CachedScorer(cache, "clap_audio", "fake", backend, batch_size)
        values = scorer.run(windows, RATE)
    assert set(backend.sizes) <= {batch_size}, "every call at the full batch size"
    return values


def test_a_value_does_not_depend_on_what_filled_the_cache(tmp_path) -> None:
    windows = _windows(6, seed=0)
    cold = _score(tmp_path / "cold", windows[:2], batch_size=4)  # a short batch, padded
    warm = tmp_path / "warm"
    _score(warm, windows[2:] + windows[:1], batch_size=4)  # window 0 first filled in a full batch
    assert np.array_equal(np.stack(_score(warm, windows[:2], 4)), np.stack(cold))


def test_another_batch_size_is_another_entry(tmp_path) -> None:
    windows = _windows(3, seed=1)
    at_two = np.stack(_score(tmp_path, windows, batch_size=2))
    at_four = np.stack(_score(tmp_path, windows, batch_size=4))  # misses: computed again
    assert np.allclose(at_four - at_two, 2e-3)
