"""How small an effect an ablation table can see: the minimum detectable difference (MDD) of
a two-sided two-sample t-test between a configuration and base, n seeds each, at level α
and the given power, from the seed-to-seed standard deviation measured on base.

With equal n and a common σ, the test statistic is non-central t with 2n − 2 degrees of
freedom and non-centrality δ / (σ √(2/n)); the MDD is the δ at which it exceeds the critical
value with the given probability (solved exactly, not with the normal approximation, which is
far off at 3 to 5 seeds: at n = 3 the exact MDD is 3.07 σ, the normal one 2.29 σ). Welch's
test, which the tables report, has at most these degrees of freedom, so its MDD is no smaller.

Cells of one seed share the initial weights, the data order and the evaluation's noise, so
a table also compares each row with base seed by seed (the paired test): its MDD comes from
the standard deviation of the per-seed differences, with n − 1 degrees of freedom.
"""

from __future__ import annotations

import math

from scipy import optimize, stats


def power(effect: float, std: float, seeds: int, alpha: float = 0.05) -> float:
    """Probability that the two-sided t-test at `alpha` rejects when the true difference of
    means is `effect`, with `seeds` runs per arm and seed-to-seed standard deviation `std`."""
    if seeds < 2:
        raise ValueError(f"a t-test needs at least 2 seeds per arm, got {seeds}")
    return _t_power(abs(effect) / (std * math.sqrt(2 / seeds)), 2 * seeds - 2, alpha)


def paired_power(effect: float, std: float, seeds: int, alpha: float = 0.05) -> float:
    """The same for the paired test: `seeds` seed-matched pairs whose differences have
    standard deviation `std` (a one-sample t-test of the differences, n − 1 freedom)."""
    if seeds < 2:
        raise ValueError(f"a paired t-test needs at least 2 pairs, got {seeds}")
    return _t_power(abs(effect) / (std / math.sqrt(seeds)), seeds - 1, alpha)


def _t_power(shift: float, freedom: int, alpha: float) -> float:
    critical = stats.t.ppf(1 - alpha / 2, freedom)
    # scipy's non-central t returns NaN for the far tail at large shifts, where it is ~0
    wrong_side = float(stats.nct.cdf(-critical, freedom, shift))
    return float(stats.nct.sf(critical, freedom, shift)) + (
        wrong_side if math.isfinite(wrong_side) else 0.0
    )


def minimum_detectable_difference(
    std: float,
    seeds: int,
    alpha: float = 0.05,
    target_power: float = 0.8,
    paired: bool = False,
) -> float:
    """The smallest true difference of means detected with `target_power` (in `std`'s unit);
    `paired`: by the paired test, `std` being that of the seed-matched differences."""
    if std <= 0:
        raise ValueError(f"the seed-to-seed standard deviation must be positive, got {std}")
    if not 0 < target_power < 1:
        raise ValueError(f"power must lie in (0, 1), got {target_power}")
    test = paired_power if paired else power
    upper = std
    while test(upper, std, seeds, alpha) < target_power:
        upper *= 2
    return float(optimize.brentq(lambda d: test(d, std, seeds, alpha) - target_power, 0.0, upper))
