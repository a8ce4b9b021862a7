"""p-MOS -> quality text prefix and quantised quality level (paper 003 §4.1).

The paper maps a p-MOS score to a level by its distance from the data set's mean in units
of its standard deviation (eq. (1), the Empirical Rule), and to a text prefix by two
thresholds around the mean. The reference code (docs/reference.md §C.3, `hhhh.py`) fixes
μ = 3.80, σ = 0.20 and the bins

    level 1: p < μ-2σ    2: [μ-2σ, μ-σ)    3: [μ-σ, μ+σ)    4: [μ+σ, μ+2σ)    5: p >= μ+2σ

i.e. `quality.level_edges_std = [-2, -1, 1, 2]`: level 3 is the central 68 % band of a
normal p-MOS distribution, 4/5 the upper 13.6 % / 2.3 % tails. We keep exactly these bins
(they are the ones the released QA-MDT was trained with, and the quality token's meaning
at inference, level 5, depends on them). Prefix edges ±1.25σ give the reference's 3.55 /
4.05 ("low" is p <= 3.55, "high" p >= 4.05, as in `hhhh.py`).

The embedded quality regressor has no human ratings to learn from, only the corpus's
degradation levels, so the `scorers` stage trains it to output the centre of each level's
bin on this very scale (`level_centre`): its p-MOS is then quantised back to the level it
was trained on, and the same (μ, σ) serve both profiles.
"""

from __future__ import annotations

import numpy as np

from tasks.params import QualityParams


def fitted_moments(pmos: np.ndarray) -> tuple[float, float]:
    """Mean and standard deviation of a p-MOS set (paper 003 §4.1, "we analyze this set")."""
    values = np.asarray(pmos, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size < 2:
        raise ValueError("need at least two finite p-MOS values to fit mean and std")
    return float(values.mean()), float(values.std(ddof=1))


def moments(quality: QualityParams, train_pmos: np.ndarray | None = None) -> tuple[float, float]:
    """(μ, σ): the params' numbers, or fitted on the train split's p-MOS when they are null."""
    if quality.pmos_mean is not None and quality.pmos_std is not None:
        return quality.pmos_mean, quality.pmos_std
    if train_pmos is None:
        raise ValueError("quality.pmos_mean/pmos_std are null: pass the train split's p-MOS")
    return fitted_moments(train_pmos)


def quality_level(pmos: np.ndarray, mean: float, std: float, edges_std: list[float]) -> np.ndarray:
    """Levels 1..len(edges)+1; a value on an edge goes up (the reference's `>=`)."""
    edges = mean + std * np.asarray(edges_std, dtype=np.float64)
    return np.searchsorted(edges, np.asarray(pmos, dtype=np.float64), side="right") + 1


def quality_prefix(
    pmos: np.ndarray, mean: float, std: float, edges_std: list[float], prefixes: list[str]
) -> np.ndarray:
    """low if p <= μ+e0·σ, high if p >= μ+e1·σ, else medium (docs/reference.md §C.3)."""
    low_edge, high_edge = (mean + std * e for e in edges_std)
    values = np.asarray(pmos, dtype=np.float64)
    index = np.where(values <= low_edge, 0, np.where(values >= high_edge, 2, 1))
    return np.asarray(prefixes, dtype=object)[index]


def level_centre(level: int, mean: float, std: float, edges_std: list[float]) -> float:
    """The p-MOS at the middle of `level`'s bin; outer bins extend by half their neighbour."""
    edges = list(edges_std)
    if not 1 <= level <= len(edges) + 1:
        raise ValueError(f"level must be in 1..{len(edges) + 1}, got {level}")
    if len(edges) == 1:
        z = edges[0] + (0.5 if level == 2 else -0.5)
    elif level == 1:
        z = edges[0] - (edges[1] - edges[0]) / 2
    elif level == len(edges) + 1:
        z = edges[-1] + (edges[-1] - edges[-2]) / 2
    else:
        z = (edges[level - 2] + edges[level - 1]) / 2
    return mean + std * z
