"""Rectified-flow convention, loss and timestep samplers (paper 000 §II-C, §II-D)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from scipy.integrate import trapezoid
from scipy.special import logit
from scipy.stats import kstest, norm

from models.flow_matching import (
    beta_alpha,
    beta_cdf,
    beta_density,
    flow_matching_loss,
    interpolate,
    repa_time_weight,
    sample_logit_normal,
    sample_score_aware,
    sample_timesteps,
    sample_uniform,
    target_velocity,
)

N_SAMPLES = 20_000
KS_ACCEPT = 0.01
KS_REJECT = 1e-6


def _generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _data_and_noise(shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    gen = _generator(1)
    return torch.randn(shape, generator=gen), torch.randn(shape, generator=gen)


def _beta_draws(score_value: float, beta_lambda: float, seed: int = 0) -> np.ndarray:
    score = torch.full((N_SAMPLES,), score_value)
    return sample_score_aware(score, beta_lambda, _generator(seed)).numpy()


# --- interpolation, velocity, loss ---------------------------------------------------------


@pytest.mark.parametrize("shape", [(4, 7, 3), (4, 5), (4, 2, 3, 5)])
def test_interpolate_is_data_at_zero_and_noise_at_one(shape: tuple[int, ...]) -> None:
    data, noise = _data_and_noise(shape)
    assert torch.equal(interpolate(data, noise, torch.zeros(shape[0])), data)
    assert torch.equal(interpolate(data, noise, torch.ones(shape[0])), noise)


def test_interpolate_uses_each_samples_own_time() -> None:
    data, noise = _data_and_noise((3, 4, 2))
    t = torch.tensor([0.0, 0.25, 1.0])
    x_t = interpolate(data, noise, t)
    assert torch.equal(x_t[0], data[0])
    assert torch.allclose(x_t[1], 0.75 * data[1] + 0.25 * noise[1])
    assert torch.equal(x_t[2], noise[2])


def test_velocity_is_time_derivative_of_interpolation() -> None:
    data, noise = _data_and_noise((3, 6, 2))
    data, noise = data.double(), noise.double()
    t = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    step = 1e-4
    # Central difference: exact up to rounding because x_t is linear in t.
    forward = interpolate(data, noise, t + step)
    backward = interpolate(data, noise, t - step)
    dx_dt = (forward - backward) / (2 * step)
    assert torch.allclose(dx_dt, target_velocity(data, noise), atol=1e-9)
    assert not torch.allclose(dx_dt, data - noise, atol=1e-3)


def test_interpolate_rejects_mismatched_time_shape() -> None:
    data, noise = _data_and_noise((3, 4))
    with pytest.raises(ValueError, match="shape"):
        interpolate(data, noise, torch.zeros(2))


def test_loss_is_zero_only_where_prediction_matches() -> None:
    _, target = _data_and_noise((4, 5, 3))
    assert torch.equal(flow_matching_loss(target, target), torch.zeros(4))
    predicted = target.clone()
    predicted[2] += 0.5
    loss = flow_matching_loss(predicted, target)
    assert loss.shape == (4,)
    assert torch.allclose(loss, torch.tensor([0.0, 0.0, 0.25, 0.0]))


def test_loss_rejects_broadcastable_shape_mismatch() -> None:
    with pytest.raises(ValueError, match="differ"):
        flow_matching_loss(torch.zeros(4, 1, 3), torch.zeros(4, 5, 3))


# --- score-aware Beta law: distribution -----------------------------------------------------


@pytest.mark.parametrize("beta_lambda", [1.0, 2.0])
@pytest.mark.parametrize("score_value", [0.0, 0.3, 0.7, 1.0])
def test_beta_sampler_matches_analytic_cdf(score_value: float, beta_lambda: float) -> None:
    alpha = 1 + beta_lambda * (1 - score_value)
    draws = _beta_draws(score_value, beta_lambda)
    assert kstest(draws, lambda x: beta_cdf(x, alpha)).pvalue > KS_ACCEPT
    # Power check: the same draws must reject a nearby wrong exponent.
    assert kstest(draws, lambda x: beta_cdf(x, alpha + 0.5)).pvalue < KS_REJECT


def test_zero_lambda_is_exactly_uniform() -> None:
    draws = _beta_draws(0.2, 0.0)
    assert kstest(draws, "uniform").pvalue > KS_ACCEPT
    assert np.array_equal(draws, sample_uniform(N_SAMPLES, _generator(0)).numpy())


def test_uniform_sampler_passes_ks_and_rejects_beta() -> None:
    draws = sample_uniform(N_SAMPLES, _generator(3)).numpy()
    assert kstest(draws, "uniform").pvalue > KS_ACCEPT
    assert kstest(draws, lambda x: beta_cdf(x, 1.5)).pvalue < KS_REJECT


@pytest.mark.parametrize(("mean", "scale"), [(0.0, 1.0), (-0.5, 1.5)])
def test_logit_normal_sampler_matches_analytic_cdf(mean: float, scale: float) -> None:
    draws = sample_logit_normal(N_SAMPLES, mean, scale, _generator(4)).numpy().astype(np.float64)
    assert kstest(draws, lambda x: norm.cdf(logit(x), loc=mean, scale=scale)).pvalue > KS_ACCEPT
    wrong = kstest(draws, lambda x: norm.cdf(logit(x), loc=mean + 0.2, scale=scale))
    assert wrong.pvalue < KS_REJECT


def test_mean_time_rises_as_score_falls() -> None:
    beta_lambda = 2.0
    scores = [1.0, 0.7, 0.3, 0.0]
    means = [float(_beta_draws(s, beta_lambda).mean()) for s in scores]
    assert all(lo < hi for lo, hi in itertools.pairwise(means))
    for score_value, mean in zip(scores, means, strict=True):
        alpha = 1 + beta_lambda * (1 - score_value)
        # 0.01 is about five standard errors of a 20k-sample mean of a [0, 1] variable.
        assert mean == pytest.approx(alpha / (alpha + 1), abs=0.01)


def test_mixed_batch_gets_per_sample_alpha() -> None:
    score = torch.tensor([0.0, 1.0]).repeat(N_SAMPLES // 2)
    draws = sample_score_aware(score, 1.0, _generator(5)).numpy()
    assert kstest(draws[0::2], lambda x: beta_cdf(x, 2.0)).pvalue > KS_ACCEPT
    assert kstest(draws[1::2], "uniform").pvalue > KS_ACCEPT


def test_beta_alpha_formula() -> None:
    alpha = beta_alpha(torch.tensor([0.0, 0.25, 1.0]), 2.0)
    assert torch.allclose(alpha, torch.tensor([3.0, 2.5, 1.0]))


# --- samplers: contract ---------------------------------------------------------------------


def test_samplers_return_float32_unit_interval_of_batch_shape() -> None:
    score = torch.linspace(0, 1, 64)
    draws = [
        sample_uniform(64, _generator()),
        sample_logit_normal(64, 0.0, 1.0, _generator()),
        sample_score_aware(score, 3.0, _generator()),
    ]
    for t in draws:
        assert t.shape == (64,)
        assert t.dtype == torch.float32
        assert t.device == score.device
        assert bool(((t >= 0) & (t <= 1)).all())


def test_same_seed_reproduces_and_other_seed_differs() -> None:
    score = torch.rand(32, generator=_generator(9))
    first = sample_score_aware(score, 1.0, _generator(7))
    assert torch.equal(first, sample_score_aware(score, 1.0, _generator(7)))
    assert not torch.equal(first, sample_score_aware(score, 1.0, _generator(8)))
    logit_normal = sample_logit_normal(32, 0.0, 1.0, _generator(7))
    assert torch.equal(logit_normal, sample_logit_normal(32, 0.0, 1.0, _generator(7)))


@pytest.mark.parametrize("bad_score", [1.2, -0.1, math.nan])
def test_out_of_range_or_nan_score_raises(bad_score: float) -> None:
    score = torch.tensor([0.5, bad_score])
    with pytest.raises(ValueError, match="score"):
        sample_score_aware(score, 1.0, _generator())


def test_negative_lambda_raises() -> None:
    score = torch.full((4,), 0.5)
    with pytest.raises(ValueError, match="beta_lambda"):
        beta_alpha(score, -0.1)
    with pytest.raises(ValueError, match="beta_lambda"):
        sample_timesteps(score, "uniform", -0.1, 0.0, 1.0, _generator())


# --- dispatcher -----------------------------------------------------------------------------


def test_dispatcher_uses_beta_when_lambda_positive() -> None:
    score = torch.rand(16, generator=_generator(2))
    for law in ("uniform", "logit_normal"):
        t = sample_timesteps(score, law, 1.5, 0.0, 1.0, _generator(11))
        assert torch.equal(t, sample_score_aware(score, 1.5, _generator(11)))


def test_dispatcher_uses_law_when_lambda_zero() -> None:
    score = torch.rand(16, generator=_generator(2))
    uniform = sample_timesteps(score, "uniform", 0.0, 0.0, 1.0, _generator(11))
    assert torch.equal(uniform, sample_uniform(16, _generator(11)))
    logit_normal = sample_timesteps(score, "logit_normal", 0.0, 0.3, 0.8, _generator(11))
    assert torch.equal(logit_normal, sample_logit_normal(16, 0.3, 0.8, _generator(11)))
    assert not torch.equal(uniform, logit_normal)


def test_dispatcher_names_unknown_law() -> None:
    score = torch.full((4,), 0.5)
    for beta_lambda in (0.0, 1.0):
        with pytest.raises(ValueError, match="gaussian"):
            sample_timesteps(score, "gaussian", beta_lambda, 0.0, 1.0, _generator())  # type: ignore[arg-type]


# --- Beta density / CDF helpers and REPA weight ----------------------------------------------


@pytest.mark.parametrize("alpha", [1.0, 1.6, 3.0])
def test_beta_density_is_derivative_of_cdf_and_integrates_to_one(alpha: float) -> None:
    t = np.linspace(0.0, 1.0, 20_001)
    density = beta_density(t, alpha)
    assert trapezoid(density, t) == pytest.approx(1.0, abs=1e-6)
    assert np.allclose(np.gradient(beta_cdf(t, alpha), t)[1:-1], density[1:-1], atol=1e-3)
    t_torch = torch.from_numpy(t)
    assert torch.allclose(beta_density(t_torch, alpha), torch.from_numpy(density))


@pytest.mark.parametrize("exponent", [0.5, 1.0, 2.0])
def test_repa_weight_is_one_at_data_and_zero_at_noise(exponent: float) -> None:
    t = torch.linspace(0, 1, 11)
    weight = repa_time_weight(t, exponent)
    assert weight[0] == 1.0
    assert weight[-1] == 0.0
    assert bool((weight[1:] < weight[:-1]).all())
    assert weight[5] == pytest.approx(0.5**exponent)


def test_repa_weight_rejects_negative_exponent() -> None:
    with pytest.raises(ValueError, match="exponent"):
        repa_time_weight(torch.zeros(2), -1.0)
