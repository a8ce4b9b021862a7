"""The ODE samplers on fields with known solutions, and classifier-free guidance's batching.

In the spirit of facebookresearch/flow_matching's solver tests: each field below has a
closed-form x(0) given x(1), so the solvers are checked against the exact answer, and
their convergence orders against the textbook rates.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from itertools import pairwise

import pytest
import torch
from torch import Tensor

from models.sampling import (
    SOLVERS,
    Condition,
    Solver,
    Velocity,
    euler,
    function_evaluations,
    guided,
    heun,
    solve,
    time_grid,
)

SolverFn = Callable[[Velocity, Tensor, int], Tensor]


def seeded_noise(*shape: int, dtype: torch.dtype = torch.float32, seed: int = 0) -> Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def broadcast_time(t: Tensor, x: Tensor) -> Tensor:
    """[B] times reshaped to broadcast against x [B, ...]."""
    return t.reshape(-1, *([1] * (x.dim() - 1)))


def checked_velocity(field: Velocity) -> Velocity:
    """The field, asserting the solver's side of the contract: t is a [B] tensor in [0, 1]."""

    def velocity(x: Tensor, t: Tensor) -> Tensor:
        assert t.shape == (x.shape[0],)
        assert bool(((t >= 0) & (t <= 1)).all())
        return field(x, t)

    return velocity


# --------------------------------------------------------------------------- time grid
@pytest.mark.parametrize("steps", [1, 2, 25])
def test_time_grid_runs_from_noise_to_data(steps: int) -> None:
    grid = time_grid(steps, "cpu")
    assert grid.shape == (steps + 1,)
    assert grid.dtype == torch.float32
    assert grid[0].item() == 1.0
    assert grid[-1].item() == 0.0
    assert bool((grid.diff() < 0).all())


@pytest.mark.parametrize("steps", [0, -3])
def test_time_grid_rejects_fewer_than_one_step(steps: int) -> None:
    with pytest.raises(ValueError, match="steps"):
        time_grid(steps, "cpu")


# --------------------------------------------------------------------------- known solutions
@pytest.mark.parametrize("solver", [euler, heun])
@pytest.mark.parametrize("steps", [1, 3, 25])
def test_constant_field_lands_on_noise_minus_velocity(solver: SolverFn, steps: int) -> None:
    noise = seeded_noise(4, 2, 3, dtype=torch.float64)
    c = seeded_noise(1, 2, 3, dtype=torch.float64, seed=1)
    x0 = solver(checked_velocity(lambda x, t: c.expand_as(x)), noise, steps)
    torch.testing.assert_close(x0, noise - c, rtol=0.0, atol=1e-6)


def linear_field_error(solver: SolverFn, a: float, steps: int) -> float:
    """|x(0) - x(1)·exp(-a)| for dx/dt = a·x, integrated from t = 1 to t = 0 in float64."""
    noise = seeded_noise(8, 3, dtype=torch.float64)
    x0 = solver(checked_velocity(lambda x, t: a * x), noise, steps)
    return (x0 - noise * math.exp(-a)).abs().max().item()


@pytest.mark.parametrize(
    ("solver", "order_ratio"),
    [(euler, (1.8, 2.2)), (heun, (3.5, 4.5))],
    ids=["euler-first-order", "heun-second-order"],
)
def test_linear_field_converges_at_the_solver_order(
    solver: SolverFn, order_ratio: tuple[float, float]
) -> None:
    errors = [linear_field_error(solver, 1.5, steps) for steps in (10, 20, 40)]
    ratios = [coarse / fine for coarse, fine in pairwise(errors)]
    low, high = order_ratio
    assert all(low <= ratio <= high for ratio in ratios), ratios


@pytest.mark.parametrize("steps", [2, 5, 25])
def test_heun_beats_euler_at_equal_steps(steps: int) -> None:
    assert linear_field_error(heun, 1.5, steps) < linear_field_error(euler, 1.5, steps) / 2


MU, SIGMA = 2.0, 0.5


def straight_gaussian_flow(x: Tensor, t: Tensor) -> Tensor:
    """Velocity of the deterministic coupling data = MU + SIGMA·noise (rectified, straight).

    x_t = (1 - t)·MU + ((1 - t)·SIGMA + t)·noise, so noise = (x_t - (1 - t)·MU) / s_t and
    v = noise - data = (1 - SIGMA)·noise - MU, constant along each (straight) trajectory.
    """
    t = broadcast_time(t, x)
    noise = (x - (1 - t) * MU) / ((1 - t) * SIGMA + t)
    return (1 - SIGMA) * noise - MU


def independent_gaussian_flow(x: Tensor, t: Tensor) -> Tensor:
    """Marginal velocity E[noise - data | x_t] for data ~ N(MU, SIGMA²) independent of noise.

    x_t is Gaussian with mean m_t = (1 - t)·MU and variance s_t² = (1 - t)²·SIGMA² + t²;
    (noise - data, x_t) are jointly Gaussian with covariance t - (1 - t)·SIGMA², so
    v = -MU + (x - m_t)·(t - (1 - t)·SIGMA²) / s_t² = m_t' + (s_t'/s_t)·(x - m_t). Its
    trajectories are x_t = m_t + s_t·x_1 (curved), so x(0) = MU + SIGMA·x(1) exactly.
    """
    t = broadcast_time(t, x)
    variance = (1 - t) ** 2 * SIGMA**2 + t**2
    return -MU + (x - (1 - t) * MU) * (t - (1 - t) * SIGMA**2) / variance


@pytest.mark.parametrize("solver", ["euler", "heun"])
def test_straight_paths_are_integrated_exactly_in_one_step(solver: Solver) -> None:
    noise = seeded_noise(64, 4)
    x0 = solve(checked_velocity(straight_gaussian_flow), noise, 1, solver)
    torch.testing.assert_close(x0, MU + SIGMA * noise, rtol=0.0, atol=1e-5)


@pytest.mark.parametrize(("solver", "steps", "atol"), [("euler", 100, 5e-2), ("heun", 25, 2e-3)])
def test_curved_gaussian_flow_transports_noise_to_the_data_law(
    solver: Solver, steps: int, atol: float
) -> None:
    noise = seeded_noise(4096, 1, dtype=torch.float64)
    x0 = solve(checked_velocity(independent_gaussian_flow), noise, steps, solver)
    assert (x0 - (MU + SIGMA * noise)).abs().max().item() < atol
    assert abs(x0.mean().item() - MU) < 0.05
    assert abs(x0.std().item() - SIGMA) < 0.05


def test_curved_gaussian_flow_is_not_solved_by_one_euler_step() -> None:
    # Guards the exactness test above: on curved paths one step must visibly miss.
    noise = seeded_noise(64, 1, dtype=torch.float64)
    x0 = euler(independent_gaussian_flow, noise, 1)
    assert (x0 - (MU + SIGMA * noise)).abs().max().item() > 0.1


# --------------------------------------------------------------------------- dispatch
def test_solve_dispatches_to_the_named_solver() -> None:
    noise = seeded_noise(8, 3, dtype=torch.float64)
    field = checked_velocity(lambda x, t: 1.5 * x)
    assert set(SOLVERS) == {"euler", "heun"}
    for name, solver in SOLVERS.items():
        torch.testing.assert_close(solve(field, noise, 7, name), solver(field, noise, 7))


def test_solve_names_the_unknown_solver_and_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"'rk4'.*euler.*heun"):
        solve(lambda x, t: x, seeded_noise(1, 1), 4, "rk4")


@pytest.mark.parametrize("solver", ["euler", "heun"])
@pytest.mark.parametrize("steps", [1, 25])
def test_function_evaluations_counts_velocity_calls(solver: Solver, steps: int) -> None:
    calls: list[Tensor] = []

    def counting(x: Tensor, t: Tensor) -> Tensor:
        calls.append(t)
        return x

    solve(counting, seeded_noise(2, 3), steps, solver)
    assert function_evaluations(solver, steps) == len(calls)
    with pytest.raises(ValueError, match="unknown solver"):
        function_evaluations("dopri5", steps)


# --------------------------------------------------------------------------- guidance
class RecordingModel:
    """A conditional velocity v = t·x + text + 10·quality that records every call; x and t
    are evaluated under each condition set stacked in `condition` (the sampling contract)."""

    def __init__(self) -> None:
        self.calls: list[tuple[Tensor, Tensor, Condition]] = []

    def __call__(self, x: Tensor, t: Tensor, condition: Condition) -> Tensor:
        self.calls.append((x, t, condition))
        sets = condition["text"].shape[0] // x.shape[0]
        x, t = x.repeat(sets, 1), t.repeat(sets)
        return broadcast_time(t, x) * x + condition["text"] + 10 * condition["quality"]


BATCH, DIM = 3, 4
CONDITION = {"text": seeded_noise(BATCH, DIM, seed=1), "quality": torch.full((BATCH, 1), 5.0)}
NULL = {"text": torch.zeros(BATCH, DIM), "quality": torch.full((BATCH, 1), 3.0)}


def guided_inputs() -> tuple[Tensor, Tensor]:
    return seeded_noise(BATCH, DIM), torch.full((BATCH,), 0.7)


@pytest.mark.parametrize("scale", [0.0, 0.5, 0.999])
def test_scale_below_one_calls_only_the_conditional_branch(scale: float) -> None:
    model = RecordingModel()
    x, t = guided_inputs()
    v = guided(model, CONDITION, NULL, scale)(x, t)
    assert len(model.calls) == 1
    called_x, called_t, called_condition = model.calls[0]
    assert called_x.shape == (BATCH, DIM) and called_t.shape == (BATCH,)
    assert called_condition is CONDITION
    torch.testing.assert_close(v, RecordingModel()(x, t, CONDITION))


@pytest.mark.parametrize("scale", [1.0, 3.5])
def test_scale_from_one_makes_one_call_on_the_stacked_conditions(scale: float) -> None:
    model = RecordingModel()
    x, t = guided_inputs()
    guided(model, CONDITION, NULL, scale)(x, t)
    assert len(model.calls) == 1
    called_x, called_t, called_condition = model.calls[0]
    assert called_x is x and called_t is t  # once: the network shares what depends on x alone
    for key in CONDITION:
        torch.testing.assert_close(called_condition[key][:BATCH], CONDITION[key])
        torch.testing.assert_close(called_condition[key][BATCH:], NULL[key])


@pytest.mark.parametrize("scale", [1.0, 2.0, 4.5])
def test_guided_velocity_extrapolates_from_unconditional_to_conditional(scale: float) -> None:
    model = RecordingModel()
    x, t = guided_inputs()
    v_cond, v_uncond = model(x, t, CONDITION), model(x, t, NULL)
    v = guided(RecordingModel(), CONDITION, NULL, scale)(x, t)
    torch.testing.assert_close(v, v_uncond + scale * (v_cond - v_uncond))
    torch.testing.assert_close(v, scale * v_cond + (1 - scale) * v_uncond)
    assert not torch.allclose(v_cond, v_uncond)


def test_scale_one_is_the_conditional_velocity() -> None:
    x, t = guided_inputs()
    v = guided(RecordingModel(), CONDITION, NULL, 1.0)(x, t)
    torch.testing.assert_close(v, RecordingModel()(x, t, CONDITION))


def test_guided_sampling_shifts_by_the_guided_constant() -> None:
    # A constant conditional field c and unconditional field u: guidance must move the
    # sample by exactly u + s·(c - u), the end-to-end check that wrapper and solver compose.
    def constant(x: Tensor, t: Tensor, condition: Condition) -> Tensor:
        return condition["text"]  # [sets · batch, dim]: x under each condition set

    noise = seeded_noise(BATCH, DIM)
    scale = 3.0
    x0 = heun(guided(constant, CONDITION, NULL, scale), noise, 10)
    shift = NULL["text"] + scale * (CONDITION["text"] - NULL["text"])
    torch.testing.assert_close(x0, noise - shift, rtol=0.0, atol=1e-5)


@pytest.mark.parametrize("scale", [0.0, 2.0])
def test_mismatched_conditions_raise(scale: float) -> None:
    missing_key = {"text": NULL["text"]}
    with pytest.raises(ValueError, match="same keys"):
        guided(RecordingModel(), CONDITION, missing_key, scale)
    wrong_shape = {**NULL, "text": torch.zeros(1, DIM)}
    with pytest.raises(ValueError, match="shape"):
        guided(RecordingModel(), CONDITION, wrong_shape, scale)
