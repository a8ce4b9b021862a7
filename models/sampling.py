"""ODE samplers for the rectified-flow models, and classifier-free guidance as a wrapper.

Convention (paper 000 §II-D, the reference FluxAudio code): t = 1 is pure noise, t = 0 is
data, x_t = (1 - t)·data + t·noise, and the network predicts the velocity
v = noise - data = dx_t/dt. Sampling integrates dx/dt = v(x, t) from t = 1 (Gaussian noise)
down to t = 0, so every step has dt = t_next - t < 0.

The shape follows black-forest-labs/flux `sampling.py`: pure functions, noise in, a time
grid, a solver loop. The caller owns `torch.no_grad`; nothing here calls `.item()`, so the
loops never synchronise with a CUDA device.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import pairwise
from typing import Literal

import torch
from torch import Tensor

Velocity = Callable[[Tensor, Tensor], Tensor]
"""(x [B, ...], t [B]) -> v, the same shape as x."""

Condition = dict[str, Tensor]
"""Named conditioning tensors (text embeddings, masks, quality levels), batch-first."""

ConditionalVelocity = Callable[[Tensor, Tensor, Condition], Tensor]
"""(x [B, ...], t [B], condition [n·B, ...]) -> v [n·B, ...]: x evaluated under each of the
n condition sets stacked along the condition's batch (set-major; n = 1: v has x's shape)."""

Solver = Literal["euler", "heun"]


def time_grid(steps: int, device: torch.device | str | None = None) -> Tensor:
    """[steps + 1] float32 times from 1 (noise) to 0 (data), uniformly spaced.

    Uniform spacing is the reference FluxAudio schedule: `linspace(1, 0, num_steps + 1)`.
    """
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    return torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float32, device=device)


def _batched(t: Tensor, batch: int) -> Tensor:
    """The scalar time `t` as a [batch] tensor, the shape every velocity function receives."""
    return t.repeat(batch)


def euler(velocity: Velocity, noise: Tensor, steps: int) -> Tensor:
    """Explicit Euler from t = 1 to t = 0: one velocity evaluation per step."""
    grid = time_grid(steps, noise.device)
    batch = noise.shape[0]
    x = noise
    for t, t_next in pairwise(grid):
        x = x + (t_next - t) * velocity(x, _batched(t, batch))
    return x


def heun(velocity: Velocity, noise: Tensor, steps: int) -> Tensor:
    """Heun's second-order method (explicit trapezoid) from t = 1 to t = 0.

    Every step, the last one to t = 0 included, predicts with Euler and corrects with the mean
    of the slopes at both ends: two velocity evaluations per step. Unlike EDM's sampler
    (Karras et al. 2022, Alg. 1) the final step is not left to Euler, because a
    rectified-flow velocity is finite at t = 0 (it is not a denoiser divided by sigma = 0).
    """
    grid = time_grid(steps, noise.device)
    batch = noise.shape[0]
    x = noise
    for t, t_next in pairwise(grid):
        dt = t_next - t
        slope = velocity(x, _batched(t, batch))
        predicted = x + dt * slope
        slope_next = velocity(predicted, _batched(t_next, batch))
        x = x + dt * 0.5 * (slope + slope_next)
    return x


SOLVERS: dict[str, Callable[[Velocity, Tensor, int], Tensor]] = {"euler": euler, "heun": heun}

_EVALUATIONS_PER_STEP: dict[str, int] = {"euler": 1, "heun": 2}


def _check_solver(solver: str) -> None:
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; known solvers: {sorted(SOLVERS)}")


def solve(velocity: Velocity, noise: Tensor, steps: int, solver: str) -> Tensor:
    """Integrate `velocity` from `noise` at t = 1 to a sample at t = 0 with the named solver."""
    _check_solver(solver)
    return SOLVERS[solver](velocity, noise, steps)


def function_evaluations(solver: str, steps: int) -> int:
    """Velocity evaluations (network calls, counting a guided pair as one batch) per sample."""
    _check_solver(solver)
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    return _EVALUATIONS_PER_STEP[solver] * steps


def _check_pair(condition: Condition, null_condition: Condition) -> None:
    """The null condition must mirror the condition key for key and shape for shape."""
    if condition.keys() != null_condition.keys():
        raise ValueError(
            "condition and null_condition need the same keys, got "
            f"{sorted(condition)} and {sorted(null_condition)}"
        )
    for key, value in condition.items():
        if value.shape != null_condition[key].shape:
            raise ValueError(
                f"condition[{key!r}] has shape {tuple(value.shape)} but "
                f"null_condition[{key!r}] has {tuple(null_condition[key].shape)}"
            )


def _paired(condition: Condition, null_condition: Condition) -> Condition:
    """Each condition tensor stacked on its null counterpart along the batch dimension."""
    return {key: torch.cat([value, null_condition[key]]) for key, value in condition.items()}


def guided(
    velocity_fn: ConditionalVelocity,
    condition: Condition,
    null_condition: Condition,
    scale: float,
) -> Velocity:
    """Classifier-free guidance (Ho & Salimans 2022) as a velocity: v_u + scale·(v_c - v_u).

    Follows the reference rule of MeanAudio / MMAudio `ode_wrapper`: below scale 1 the
    conditional velocity alone is used and the unconditional branch is never evaluated;
    otherwise v = scale·v_c + (1 - scale)·v_u, so scale = 1 is the conditional velocity.
    Both branches go through ONE network call on the two stacked condition sets — the
    condition first, the null condition second — with x and t once, which halves the kernel
    launches of two separate calls and lets the network compute what depends on x alone once
    (FluxAudio's audio stem).

    Paper 003's quality-aware guidance, eq. (7), is this same wrapper with
    condition = (text, high quality level) and null_condition = (null text, a middle
    level): the caller picks the conditions, nothing here knows the model.

    `condition` and `null_condition` need the same keys and shapes (ValueError otherwise,
    whatever the scale), checked once here rather than on every step.
    """
    _check_pair(condition, null_condition)
    if scale < 1.0:

        def conditional(x: Tensor, t: Tensor) -> Tensor:
            return velocity_fn(x, t, condition)

        return conditional

    paired = _paired(condition, null_condition)

    def guided_velocity(x: Tensor, t: Tensor) -> Tensor:
        v_cond, v_uncond = velocity_fn(x, t, paired).chunk(2)
        return v_uncond + scale * (v_cond - v_uncond)

    return guided_velocity
