"""Fréchet Audio Distance and its extrapolation to infinite sample size, FAD∞ (Gui et al.
2024, cited by paper 003), over any embedding (docs/reference.md pitfall 14)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from scipy import linalg

from tasks.evaluate.metrics.checks import as_float_array, as_matrix, check_same_shape

# The diagonal offset the reference implementations add when sqrtm(sigma1 @ sigma2) is not
# finite (pytorch-fid, copied by audioldm_eval metrics/fad.py and fadtk fad.py).
SQRTM_OFFSET = 1e-6
# Their tolerance on the imaginary part of the diagonal of sqrtm before giving up.
SQRTM_IMAG_ATOL = 1e-3

# --------------------------------------------------------------------------------------------
# Frechet distance, FAD


def gaussian_stats(embeddings: object) -> tuple[np.ndarray, np.ndarray]:
    """Mean [D] and unbiased covariance [D, D] (ddof=1) of embeddings [N, D], N >= 2.

    ddof=1 as `np.cov` in audioldm_eval metrics/fad.py and fadtk `calc_embd_statistics`.
    """
    matrix = as_matrix(embeddings, "embeddings", min_rows=2)
    return matrix.mean(axis=0), np.atleast_2d(np.cov(matrix, rowvar=False))


def _sqrtm_product(sigma1: np.ndarray, sigma2: np.ndarray) -> np.ndarray:
    """sqrtm(sigma1 @ sigma2), retried with an offset on the diagonals if not finite.

    As pytorch-fid / audioldm_eval / fadtk do: a singular product (N < D, collinear
    embeddings) can make the Schur square root blow up; eps * I regularises both factors.
    """
    covmean = linalg.sqrtm(sigma1 @ sigma2)
    if not np.all(np.isfinite(covmean)):
        warnings.warn(
            f"Frechet distance: singular covariance product; adding {SQRTM_OFFSET} to the "
            "diagonal of both covariances",
            RuntimeWarning,
            stacklevel=3,
        )
        offset = np.eye(sigma1.shape[0]) * SQRTM_OFFSET
        covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    return covmean


def _real_part(covmean: np.ndarray) -> np.ndarray:
    """Drop round-off imaginary parts; a large one means the inputs were not covariances."""
    if not np.iscomplexobj(covmean):
        return covmean
    if not np.allclose(np.diagonal(covmean).imag, 0.0, atol=SQRTM_IMAG_ATOL):
        largest = float(np.max(np.abs(covmean.imag)))
        raise ValueError(f"Frechet distance: sqrtm has imaginary component {largest:.3g}")
    return covmean.real


def frechet_distance(mu1: object, sigma1: object, mu2: object, sigma2: object) -> float:
    """Squared Frechet (2-Wasserstein) distance between N(mu1, sigma1) and N(mu2, sigma2).

    d^2 = ||mu1 - mu2||^2 + Tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^(1/2))  (Dowson & Landau
    1982; Heusel et al. 2017 FID; Kilgour et al. 2019 FAD). The square root, the offset retry
    and the imaginary-part check are those of audioldm_eval metrics/fad.py and fadtk fad.py
    (both from pytorch-fid), so values agree with theirs to round-off. Not clipped at 0: a
    tiny negative value is round-off on (near-)identical statistics.
    """
    m1 = np.atleast_1d(as_float_array(mu1, "mu1"))
    m2 = np.atleast_1d(as_float_array(mu2, "mu2"))
    s1 = np.atleast_2d(as_float_array(sigma1, "sigma1"))
    s2 = np.atleast_2d(as_float_array(sigma2, "sigma2"))
    check_same_shape(m1, m2, "mean")
    check_same_shape(s1, s2, "covariance")
    if s1.shape != (m1.size, m1.size):
        raise ValueError(f"covariance {s1.shape} does not match mean dimension {m1.size}")
    diff = m1 - m2
    tr_covmean = np.trace(_real_part(_sqrtm_product(s1, s2)))
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)


def _reference_stats(reference: object) -> tuple[np.ndarray, np.ndarray]:
    """Reference embeddings [M, D] or precomputed (mean, covariance)."""
    if isinstance(reference, tuple):
        mean, cov = reference
        return as_float_array(mean, "reference mean"), as_float_array(cov, "reference cov")
    return gaussian_stats(reference)


def fad(generated: object, reference: object) -> float:
    """Frechet Audio Distance between generated [N, D] and reference [M, D] embeddings.

    `reference` may also be a precomputed (mean, covariance) pair (e.g. from
    `GaussianStatsAccumulator`). Plain FAD is biased upward at finite N: the sampling noise of
    the estimated mean and covariance adds roughly c/N (Chong & Forsyth 2020; Gui et al. 2024),
    so FADs computed with different N are not comparable and a report must print N (and M)
    next to every FAD. `fad_infinity_fit` removes the generated-side term.
    """
    mu_gen, sigma_gen = gaussian_stats(generated)
    mu_ref, sigma_ref = _reference_stats(reference)
    return frechet_distance(mu_gen, sigma_gen, mu_ref, sigma_ref)


class FrechetToReference:
    """FAD of many generated sets against one fixed reference (bootstrap, FAD-infinity).

    Tr((S_g S_r)^(1/2)) = sum_i sqrt(lambda_i(A S_g A)) with A = S_r^(1/2): S_g S_r and
    A S_g A are similar, and the latter is symmetric PSD, so one symmetric eigensolve replaces
    the Schur sqrtm of `frechet_distance` (same value to round-off, about 10x faster at
    D = 128), and A is computed once. With fewer generated rows N than dimensions D (the
    embedded evaluation: 48 clips of 128-d CLAP embeddings, and every bootstrap or FAD-inf
    subset of them), S_g = X'X / (N - 1) for the centred rows X, and the non-zero eigenvalues
    of A X'X A are those of the N x N Gram matrix X A A X' = X S_r X': an N x N eigensolve
    instead of a D x D one. Eigenvalues below 0 (round-off) count as 0.
    """

    def __init__(self, reference: object) -> None:
        self.mean, self.cov = _reference_stats(reference)
        eigenvalues, vectors = np.linalg.eigh(self.cov)
        self.root = (vectors * np.sqrt(np.clip(eigenvalues, 0.0, None))) @ vectors.T
        self.trace = float(np.trace(self.cov))

    def __call__(self, generated: object) -> float:
        matrix = as_matrix(generated, "generated", min_rows=2)
        if matrix.shape[1] != self.mean.size:
            raise ValueError(
                f"dimension {matrix.shape[1]} differs from the reference's {self.mean.size}"
            )
        mean = matrix.mean(axis=0)
        centred = matrix - mean
        scale = 1.0 / (matrix.shape[0] - 1)
        if matrix.shape[0] < matrix.shape[1]:
            product = np.linalg.eigvalsh(centred @ self.cov @ centred.T * scale)
            trace = float(np.sum(centred * centred) * scale)
        else:
            cov = centred.T @ centred * scale
            product = np.linalg.eigvalsh(self.root @ cov @ self.root)
            trace = float(np.trace(cov))
        diff = mean - self.mean
        tr_covmean = float(np.sum(np.sqrt(np.clip(product, 0.0, None))))
        return float(diff @ diff + trace + self.trace - 2.0 * tr_covmean)


class GaussianStatsAccumulator:
    """Streaming mean and covariance of embedding batches (torchmetrics-style update/compute).

    Merges batches with the pairwise update of Chan, Golub & LeVeque (1979), which keeps
    precision when the mean is large against the spread (a running sum of outer products
    loses it). `compute()` equals `gaussian_stats` on the concatenated batches.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.n = 0
        self._mean: np.ndarray | None = None
        self._m2: np.ndarray | None = None  # sum of outer products of deviations

    def update(self, embeddings: object) -> None:
        batch = as_matrix(embeddings, "embeddings")
        batch_mean = batch.mean(axis=0)
        centred = batch - batch_mean
        batch_m2 = centred.T @ centred
        if self._mean is None or self._m2 is None:
            self.n, self._mean, self._m2 = batch.shape[0], batch_mean, batch_m2
            return
        if batch.shape[1] != self._mean.size:
            raise ValueError(f"batch dim {batch.shape[1]} != accumulated dim {self._mean.size}")
        total = self.n + batch.shape[0]
        delta = batch_mean - self._mean
        self._mean = self._mean + delta * (batch.shape[0] / total)
        self._m2 = self._m2 + batch_m2 + np.outer(delta, delta) * (self.n * batch.shape[0] / total)
        self.n = total

    def compute(self) -> tuple[np.ndarray, np.ndarray]:
        if self._mean is None or self._m2 is None or self.n < 2:
            raise ValueError("need at least 2 embeddings for a covariance")
        return self._mean.copy(), self._m2 / (self.n - 1)


# --------------------------------------------------------------------------------------------
# FAD-infinity


@dataclass(frozen=True)
class FadInfinityFit:
    """FAD_n at subset sizes n and the least-squares line FAD_n = intercept + slope / n.

    `intercept` is FAD-infinity; `r2` (as fadtk reports) says how well 1/n explains the points.
    """

    sizes: np.ndarray
    values: np.ndarray
    slope: float
    intercept: float
    r2: float


def _subset_sizes(n_items: int, num_points: int, min_size: int | None) -> np.ndarray:
    """num_points sizes spread evenly over [min_size, N], as np.linspace in fadtk/FID-inf."""
    low = max(2, n_items // 4) if min_size is None else min_size
    if not 2 <= low < n_items:
        raise ValueError(f"min_size must be in [2, N={n_items}), got {low}")
    if num_points < 2:
        raise ValueError("num_points must be >= 2 to fit a line")
    return np.linspace(low, n_items, num_points).astype(np.int64)


def _fit_inverse_n(sizes: np.ndarray, values: np.ndarray) -> tuple[float, float, float]:
    """Least-squares slope, intercept and R^2 of values against 1/sizes."""
    x = 1.0 / sizes
    slope, intercept = np.polyfit(x, values, 1)
    residual = np.sum((values - (slope * x + intercept)) ** 2)
    total = np.sum((values - values.mean()) ** 2)
    r2 = 1.0 - residual / total if total > 0 else 1.0
    return float(slope), float(intercept), float(r2)


def fad_infinity_fit(
    generated: object,
    reference: object,
    *,
    num_points: int = 15,
    min_size: int | None = None,
    seed: int = 0,
    replace: bool = False,
) -> FadInfinityFit:
    """FAD on random subsets of the generated set, extrapolated to infinitely many samples.

    Gui et al. 2024, "Adapting Frechet Audio Distance for generative music evaluation" (ICASSP;
    microsoft/fadtk `score_inf`, cited by paper 003), after Chong & Forsyth 2020 FID-infinity:
    FAD_n ~ FAD_inf + b/n, so fit a line in 1/n and return its intercept. Sizes are
    `num_points` values evenly spaced in [min_size, N] (default min_size = N // 4; keep it
    well above the embedding dimension, where the 1/n law holds).

    Subsets are drawn WITHOUT replacement by default, as FID-infinity's code does (shuffle and
    take the first n). fadtk draws WITH replacement (`replace=True` reproduces it), but then
    the subsets scatter around the full-sample statistics and the intercept recovers the
    biased FAD_N instead of removing the bias (tests/evaluate/test_eval_metrics.py shows it).
    Only the generated side is extrapolated; the reference set's own finite-M bias stays, so use
    a large reference set and report M. `reference` may be a `FrechetToReference` already
    built (a bootstrap fits many times against one reference).
    """
    gen = as_matrix(generated, "generated", min_rows=3)
    distance = (
        reference if isinstance(reference, FrechetToReference) else FrechetToReference(reference)
    )
    sizes = _subset_sizes(gen.shape[0], num_points, min_size)
    rng = np.random.default_rng(seed)
    values = np.empty(sizes.size)
    for i, size in enumerate(sizes):
        subset = gen[rng.choice(gen.shape[0], size=int(size), replace=replace)]
        values[i] = distance(subset)
    slope, intercept, r2 = _fit_inverse_n(sizes.astype(np.float64), values)
    return FadInfinityFit(sizes=sizes, values=values, slope=slope, intercept=intercept, r2=r2)
