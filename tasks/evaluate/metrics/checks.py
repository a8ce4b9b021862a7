"""Input validation shared by the metric modules: finite float64 arrays of the right shape."""

from __future__ import annotations

import numpy as np


def as_float_array(values: object, name: str) -> np.ndarray:
    """float64 NumPy copy of an array-like or CPU torch tensor, rejecting NaN/inf."""
    if hasattr(values, "detach"):  # torch.Tensor, without importing torch here
        values = values.detach().cpu().numpy()
    array = np.asarray(values, dtype=np.float64)
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains NaN or inf")
    return array


def as_matrix(values: object, name: str, min_rows: int = 1) -> np.ndarray:
    """[N, D] float64 matrix with at least `min_rows` rows."""
    matrix = as_float_array(values, name)
    if matrix.ndim != 2:
        raise ValueError(f"{name} must be 2-D [items, dims], got shape {matrix.shape}")
    if matrix.shape[0] < min_rows:
        raise ValueError(f"{name} needs at least {min_rows} rows, got {matrix.shape[0]}")
    return matrix


def as_distributions(values: object, name: str) -> np.ndarray:
    """Rows that are categorical distributions (non-negative, summing to 1 within 1e-3).

    The check catches sigmoid (multi-label) scores passed where softmax distributions are
    meant; those belong in `audioldm_kl(..., activation="sigmoid")`.
    """
    probs = as_float_array(values, name)
    if probs.ndim == 0:
        raise ValueError(f"{name} must have a class axis")
    if np.any(probs < 0):
        raise ValueError(f"{name} has negative probabilities")
    if not np.allclose(probs.sum(axis=-1), 1.0, atol=1e-3):
        raise ValueError(f"{name} rows must sum to 1 (softmax probabilities)")
    return probs


def check_same_shape(a: np.ndarray, b: np.ndarray, what: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{what} shapes differ: {a.shape} vs {b.shape}")
