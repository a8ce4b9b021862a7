"""Paper 003 §4.3 decisions (eq. (8)-(10)), threshold calibration and the fine-tune subset."""

from __future__ import annotations

import numpy as np
import pytest

from tasks.captions.refinement import (
    GENERATED_REDUNDANT,
    KEEP_ORIGINAL,
    MERGE,
    USE_GENERATED,
    RefinementThresholds,
    calibrate,
    decide,
    finetune_subset,
)
from tasks.params import Params

THRESHOLDS = RefinementThresholds(generated=0.3, original=0.2, merge=0.6, mode="absolute")


def test_decisions_follow_equations_8_9_10_in_order() -> None:
    generated = np.array([0.1, 0.1, 0.5, 0.5, 0.5, 0.3])
    original = np.array([0.5, 0.1, 0.1, 0.5, 0.5, 0.2])
    text = np.array([0.9, 0.1, 0.1, 0.1, 0.9, 0.6])
    decisions = decide(generated, original, text, THRESHOLDS)
    # eq. (8) wins over everything; (9) over (10); thresholds are inclusive from below
    assert list(decisions) == [
        KEEP_ORIGINAL,
        KEEP_ORIGINAL,
        USE_GENERATED,
        MERGE,
        GENERATED_REDUNDANT,
        GENERATED_REDUNDANT,
    ]


def test_absolute_mode_uses_the_params(tiny_params: Params) -> None:
    captions = tiny_params.captions.model_copy(update={"threshold_mode": "absolute"})
    got = calibrate(captions, np.zeros(3), np.zeros(3), np.zeros(3))
    assert (got.generated, got.original, got.merge) == (
        captions.generated_threshold,
        captions.original_threshold,
        captions.merge_threshold,
    )


def test_quantile_mode_filters_and_merges_the_paper_shares(tiny_params: Params) -> None:
    """Paper 003 §6.2: 8.9 % of generated captions filtered, 15.1 % fused."""
    rng = np.random.default_rng(0)
    generated, original, text = rng.normal(size=(3, 4000))
    captions = tiny_params.captions.model_copy(update={"threshold_mode": "validation_quantile"})
    thresholds = calibrate(captions, generated, original, text)
    assert np.mean(generated < thresholds.generated) == pytest.approx(0.089, abs=0.002)
    assert np.mean(original < thresholds.original) == pytest.approx(0.10, abs=0.002)
    assert np.mean(text < thresholds.merge) == pytest.approx(0.151, abs=0.002)


def test_quantile_mode_without_validation_scores_says_what_to_do(tiny_params: Params) -> None:
    captions = tiny_params.captions.model_copy(update={"threshold_mode": "validation_quantile"})
    with pytest.raises(ValueError, match="absolute"):
        calibrate(captions, np.array([]), np.array([]), np.array([]))


def test_finetune_subset_is_seeded_sized_and_order_free() -> None:
    ids = [f"t{i:03d}-{j:02d}" for i in range(50) for j in range(3)]
    chosen = finetune_subset(ids, 0.4, seed=7)
    assert chosen.sum() == round(0.4 * len(ids))
    again = finetune_subset(list(reversed(ids)), 0.4, seed=7)
    assert set(np.array(ids)[chosen]) == set(np.array(list(reversed(ids)))[again])
    other = finetune_subset(ids, 0.4, seed=8)
    assert set(np.array(ids)[chosen]) != set(np.array(ids)[other])
