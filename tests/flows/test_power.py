"""The minimum detectable difference (flows/power.py): exact at small n, the normal
approximation at large n, and the power it promises is the power a simulation finds."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from flows.power import minimum_detectable_difference, paired_power, power


def test_large_samples_approach_the_normal_approximation() -> None:
    normal = (stats.norm.ppf(0.975) + stats.norm.ppf(0.8)) * math.sqrt(2 / 2000)
    assert minimum_detectable_difference(1.0, 2000) == pytest.approx(normal, rel=2e-3)


def test_few_seeds_need_a_larger_effect_than_the_normal_approximation_says() -> None:
    at_three, at_five = (minimum_detectable_difference(1.0, n) for n in (3, 5))
    assert at_three == pytest.approx(3.07, abs=0.01)  # Cohen's tables: d = 3.07 at n = 3
    assert at_five == pytest.approx(2.02, abs=0.01)  # and d = 2.02 at n = 5
    assert minimum_detectable_difference(0.01, 5) == pytest.approx(0.01 * at_five)


def test_simulated_tables_reject_at_the_promised_rate() -> None:
    rng = np.random.default_rng(0)
    seeds, std = 3, 0.02
    effect = minimum_detectable_difference(std, seeds)
    base = rng.normal(0.0, std, size=(20000, seeds))
    switched = rng.normal(effect, std, size=(20000, seeds))
    rejected = stats.ttest_ind(switched, base, axis=1).pvalue < 0.05
    assert rejected.mean() == pytest.approx(0.8, abs=0.01)
    assert power(0.0, std, seeds) == pytest.approx(0.05)


def test_nonsense_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 2 seeds"):
        power(0.1, 0.1, 1)
    with pytest.raises(ValueError, match="positive"):
        minimum_detectable_difference(0.0, 3)


def test_the_paired_test_rejects_seed_matched_shifts_at_the_promised_rate() -> None:
    """n pairs whose differences have std 1, shifted by the paired MDD: a one-sample t-test
    of the differences rejects 80 % of the time (simulated)."""
    pairs = 3
    shift = minimum_detectable_difference(1.0, pairs, paired=True)
    assert paired_power(shift, 1.0, pairs) == pytest.approx(0.8)
    differences = np.random.default_rng(0).normal(shift, 1.0, size=(20_000, pairs))
    rejected = stats.ttest_1samp(differences, 0.0, axis=1).pvalue < 0.05
    assert rejected.mean() == pytest.approx(0.8, abs=0.015)
    with pytest.raises(ValueError, match="2 pairs"):
        paired_power(1.0, 1.0, 1)
