"""The minimum detectable difference (flows/power.py): exact at small n, the normal
approximation at large n, and the power it promises is the power a simulation finds."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from flows.power import minimum_detectable_difference, power


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
