"""Rectified-flow interpolation, loss and timestep samplers for score-aware training.

Convention (paper 000 §II-D, eq. (3)), used by every function here:

* t = 1 is pure noise and t = 0 is data.
* x_t = (1 - t) * x1 + t * x0, with x1 the data latent and x0 ~ N(0, I) the noise.
* The network regresses the constant velocity v = d x_t / dt = x0 - x1.
* Loss eq. (3) is the squared error averaged over every non-batch dimension and returned per
  sample ([B]); the caller averages or weights across the batch.

Timestep laws:

* Uniform U[0, 1]: paper 000's base schedule.
* Logit-normal, t = sigmoid(N(mean, scale)): the FluxAudio / MeanAudio reference default
  (mean 0, scale 1).
* Score-aware Beta(alpha(S), 1) with alpha(S) = 1 + lambda * (1 - S) (paper 000 eq. (1)-(2)):
  when lambda > 0 it replaces the law above (paper 000 §II-C), so low-score segments spend more
  of their training at high noise.

REPA weighting (1 - t)^alpha (paper 000 §II-D, eq. (6)) emphasises alignment at low noise.

Every sampler draws from an explicit `torch.Generator` so a run is reproducible and, with the
generator state checkpointed, resumable.
"""

from __future__ import annotations

from typing import Literal, TypeVar, get_args

import numpy as np
import torch

TimestepLaw = Literal["uniform", "logit_normal"]
TIMESTEP_LAWS: tuple[str, ...] = get_args(TimestepLaw)

Array = TypeVar("Array", np.ndarray, torch.Tensor)


def _broadcast_over_sample(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape a per-sample [B] time to [B, 1, ..., 1] so it scales every element of `like`."""
    if t.ndim != 1 or t.shape[0] != like.shape[0]:
        raise ValueError(f"t must have shape [{like.shape[0]}], got {list(t.shape)}")
    return t.to(dtype=like.dtype).reshape(-1, *([1] * (like.ndim - 1)))


def interpolate(data: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x_t = (1 - t) * data + t * noise (paper 000 eq. (3)); t is [B], data any rank [B, ...]."""
    if data.shape != noise.shape:
        raise ValueError(f"data {list(data.shape)} and noise {list(noise.shape)} differ")
    t_b = _broadcast_over_sample(t, data)
    return (1 - t_b) * data + t_b * noise


def target_velocity(data: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """v = d x_t / dt = noise - data, the regression target of paper 000 eq. (3)."""
    return noise - data


def flow_matching_loss(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample squared error, mean over all non-batch dims (paper 000 eq. (3)); shape [B]."""
    if predicted.shape != target.shape:
        # Silent broadcasting here would average the wrong pairs and still look like a loss.
        raise ValueError(
            f"predicted {list(predicted.shape)} and target {list(target.shape)} differ"
        )
    squared_error = (predicted - target).square()
    return squared_error.reshape(squared_error.shape[0], -1).mean(dim=1)


def sample_uniform(
    batch_size: int,
    generator: torch.Generator,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """t ~ U[0, 1], paper 000's base schedule; drawn on the generator's device, then moved."""
    u = torch.rand(batch_size, generator=generator, device=generator.device, dtype=torch.float32)
    return u.to(device if device is not None else generator.device)


def sample_logit_normal(
    batch_size: int,
    mean: float,
    scale: float,
    generator: torch.Generator,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """t = sigmoid(mean + scale * z), z ~ N(0, 1): the FluxAudio / MeanAudio default (0, 1).

    With mean 0 the law is symmetric about t = 1/2, so it does not depend on which end is noise;
    under this module's convention a positive mean biases training toward noise.
    """
    if not scale >= 0:
        raise ValueError(f"logit-normal scale must be >= 0, got {scale}")
    z = torch.randn(batch_size, generator=generator, device=generator.device, dtype=torch.float32)
    t = torch.sigmoid(mean + scale * z)
    return t.to(device if device is not None else generator.device)


def beta_alpha(score: torch.Tensor, beta_lambda: float) -> torch.Tensor:
    """alpha(S) = 1 + lambda * (1 - S) (paper 000 eq. (2)); S is normalised to [0, 1] upstream."""
    if not beta_lambda >= 0:
        raise ValueError(f"beta_lambda must be >= 0, got {beta_lambda}")
    # Written so NaN fails too: any comparison with NaN is False. Eager only: under
    # torch.compile (`train.compile`) the data-dependent check would break the graph; the
    # loader's scores are the ones the eager first runs and the tests already checked.
    if not torch.compiler.is_compiling() and not bool(((score >= 0) & (score <= 1)).all()):
        raise ValueError("score must lie in [0, 1] with no NaN; normalise and clip it upstream")
    return 1 + beta_lambda * (1 - score.to(torch.float32))


def sample_score_aware(
    score: torch.Tensor,
    beta_lambda: float,
    generator: torch.Generator,
) -> torch.Tensor:
    """t ~ Beta(alpha(S), 1) per sample (paper 000 eq. (1)-(2)), on the score's device.

    Beta(alpha, 1) has CDF t^alpha, so t = U^(1 / alpha) with U ~ U[0, 1] is an exact
    inverse-CDF sampler. lambda = 0 gives alpha = 1 and reproduces `sample_uniform` draw for
    draw; alpha > 1 (low score) pushes t toward 1 = noise, as the paper intends.
    """
    alpha = beta_alpha(score, beta_lambda)
    u = sample_uniform(score.shape[0], generator, device=score.device)
    return u.pow(1 / alpha)


def sample_timesteps(
    score: torch.Tensor,
    law: TimestepLaw,
    beta_lambda: float,
    logit_normal_mean: float,
    logit_normal_scale: float,
    generator: torch.Generator,
) -> torch.Tensor:
    """The trainer's timestep draw: the Beta schedule when lambda > 0, else `law` (§II-C).

    The law is validated even when the Beta schedule overrides it, so a typo in the config
    cannot hide behind a positive lambda.
    """
    if law not in TIMESTEP_LAWS:
        raise ValueError(f"unknown timestep law {law!r}; expected one of {TIMESTEP_LAWS}")
    if not beta_lambda >= 0:
        raise ValueError(f"beta_lambda must be >= 0, got {beta_lambda}")
    if beta_lambda > 0:
        # paper 000 §II-C: the score-aware Beta law replaces the base schedule outright.
        return sample_score_aware(score, beta_lambda, generator)
    if law == "uniform":
        return sample_uniform(score.shape[0], generator, device=score.device)
    return sample_logit_normal(
        score.shape[0], logit_normal_mean, logit_normal_scale, generator, device=score.device
    )


def beta_density(t: Array, alpha: float | Array) -> Array:
    """Beta(alpha, 1) density alpha * t^(alpha - 1), for numpy or torch (paper 000 Fig. 2)."""
    return alpha * t ** (alpha - 1)


def beta_cdf(t: Array, alpha: float | Array) -> Array:
    """Beta(alpha, 1) CDF t^alpha, for numpy or torch; the KS reference for the sampler."""
    return t**alpha


def repa_time_weight(t: torch.Tensor, exponent: float) -> torch.Tensor:
    """(1 - t)^exponent (paper 000 §II-D, eq. (6)): full REPA weight at data, none at noise.

    The teacher's features describe clean audio, so alignment matters most at low noise.
    """
    if not exponent >= 0:
        raise ValueError(f"REPA time-weight exponent must be >= 0, got {exponent}")
    return (1 - t).pow(exponent)
