"""Attribute checks of generations against their prompts: top-1, set precision/recall,
MIREX tempo accuracy."""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence, Sized
from dataclasses import dataclass

import numpy as np

from tasks.evaluate.metrics.checks import as_float_array

# MIREX audio tempo extraction / Gouyon et al. 2006: a tempo is right within +-4 %.
TEMPO_TOLERANCE = 0.04
# Gouyon et al. 2006 "Acc2" also accepts these metrical-level errors.
TEMPO_OCTAVE_FACTORS = (1.0, 2.0, 0.5, 3.0, 1.0 / 3.0)

# --------------------------------------------------------------------------------------------
# Attribute checks


def _check_lengths(predicted: Sized, truth: Sized) -> None:
    if len(predicted) != len(truth):
        raise ValueError(f"lengths differ: {len(predicted)} predicted vs {len(truth)} true")
    if len(truth) == 0:
        raise ValueError("no items")


def top1_hits(predicted_labels: Sequence[Hashable], true_labels: Sequence[Hashable]) -> np.ndarray:
    """Per-item booleans: predicted label == true label (for `bootstrap_mean`)."""
    _check_lengths(predicted_labels, true_labels)
    return np.array([p == t for p, t in zip(predicted_labels, true_labels, strict=True)])


def top1_accuracy(predicted_labels: Sequence[Hashable], true_labels: Sequence[Hashable]) -> float:
    """Fraction of items whose predicted label equals the true label."""
    return float(np.mean(top1_hits(predicted_labels, true_labels)))


@dataclass(frozen=True)
class SetPrecisionRecall:
    """Micro-averaged over items: counts are summed before dividing; NaN where 0/0."""

    precision: float
    recall: float
    f1: float
    true_positives: int
    predicted: int  # total predicted labels
    relevant: int  # total true labels


def _ratio(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else float("nan")


def set_precision_recall(
    predicted_sets: Sequence[Iterable[Hashable]], true_sets: Sequence[Iterable[Hashable]]
) -> SetPrecisionRecall:
    """Micro-averaged precision, recall and F1 of predicted label sets (e.g. instruments).

    precision = sum_i |P_i & T_i| / sum_i |P_i|, recall = sum_i |P_i & T_i| / sum_i |T_i|,
    F1 = 2 TP / (sum |P_i| + sum |T_i|). Micro-averaging weights every label, so items with
    many labels count more; an undefined ratio (no predictions at all) is NaN, not 0.
    """
    _check_lengths(predicted_sets, true_sets)
    predicted = [set(p) for p in predicted_sets]
    truth = [set(t) for t in true_sets]
    tp = sum(len(p & t) for p, t in zip(predicted, truth, strict=True))
    n_predicted = sum(len(p) for p in predicted)
    n_relevant = sum(len(t) for t in truth)
    return SetPrecisionRecall(
        precision=_ratio(tp, n_predicted),
        recall=_ratio(tp, n_relevant),
        f1=_ratio(2 * tp, n_predicted + n_relevant),
        true_positives=tp,
        predicted=n_predicted,
        relevant=n_relevant,
    )


def tempo_hits(
    estimated_bpm: object,
    true_bpm: object,
    tolerance: float = TEMPO_TOLERANCE,
    allow_octave: bool = True,
) -> np.ndarray:
    """Per-item booleans of the MIREX tempo accuracy (Gouyon et al. 2006, IEEE TASLP 14(5)).

    Acc1 (allow_octave=False): |est - true| <= tolerance * true. Acc2 (allow_octave=True): the
    same against any of true * {1, 2, 1/2, 3, 1/3}, the window scaling with the candidate
    (as madmom's tempo evaluation). A NaN estimate (tempo tracker gave up) is a miss.
    """
    if hasattr(estimated_bpm, "detach"):
        estimated_bpm = estimated_bpm.detach().cpu().numpy()
    estimated = np.asarray(estimated_bpm, dtype=np.float64).ravel()
    truth = as_float_array(true_bpm, "true_bpm").ravel()
    _check_lengths(estimated, truth)
    if np.any(truth <= 0):
        raise ValueError("true_bpm must be positive")
    factors = np.array(TEMPO_OCTAVE_FACTORS if allow_octave else TEMPO_OCTAVE_FACTORS[:1])
    candidates = truth[:, None] * factors[None, :]
    within = np.abs(estimated[:, None] - candidates) <= tolerance * candidates
    return within.any(axis=1)


def tempo_accuracy(
    estimated_bpm: object,
    true_bpm: object,
    tolerance: float = TEMPO_TOLERANCE,
    allow_octave: bool = True,
) -> float:
    """MIREX Acc2 (allow_octave=True) or Acc1 (False): the mean of `tempo_hits`."""
    return float(np.mean(tempo_hits(estimated_bpm, true_bpm, tolerance, allow_octave)))
