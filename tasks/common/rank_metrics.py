"""Small, tested metric functions shared by the stages (no I/O)."""

from __future__ import annotations

import numpy as np
from scipy import stats


def roc_auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """Area under the ROC curve = P(score of a positive > score of a negative), ties 1/2.

    The Mann-Whitney U statistic divided by n_pos * n_neg.
    """
    positive = np.asarray(positive, dtype=np.float64).ravel()
    negative = np.asarray(negative, dtype=np.float64).ravel()
    if positive.size == 0 or negative.size == 0:
        raise ValueError("roc_auc needs at least one positive and one negative")
    ranks = stats.rankdata(np.concatenate([positive, negative]))
    u = ranks[: positive.size].sum() - positive.size * (positive.size + 1) / 2
    return float(u / (positive.size * negative.size))


def recall_at_k(similarity: np.ndarray, k: int) -> float:
    """Query i's match is gallery item i; fraction of queries ranking it in the top k."""
    similarity = np.asarray(similarity, dtype=np.float64)
    if similarity.ndim != 2 or similarity.shape[0] != similarity.shape[1]:
        raise ValueError("similarity must be square [queries, gallery]")
    own = np.diag(similarity)[:, None]
    rank = (similarity > own).sum(axis=1)  # items strictly better than the match
    return float(np.mean(rank < k))


def spearman(predicted: np.ndarray, truth: np.ndarray) -> float:
    value = stats.spearmanr(np.asarray(predicted), np.asarray(truth)).statistic
    return float(value)
