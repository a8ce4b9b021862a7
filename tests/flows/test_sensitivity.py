"""The sensitivity report's arithmetic (flows/sensitivity.py)."""

from __future__ import annotations

import pytest

from flows.power import minimum_detectable_difference
from flows.sensitivity import PAPER_EFFECTS, against_papers, spread


def test_spread_gives_the_seed_std_and_the_detectable_difference() -> None:
    table = spread({"clap_score": [0.30, 0.32, 0.31, 0.29, 0.33]}, seeds=(3, 5))
    row = table.iloc[0]
    assert row["mean"] == pytest.approx(0.31) and row["std"] == pytest.approx(0.0158114, rel=1e-5)
    assert row["mdd_3"] == pytest.approx(minimum_detectable_difference(row["std"], 3))
    assert row["mdd_3"] > row["mdd_5"]
    assert row["mdd_5_relative"] == pytest.approx(row["mdd_5"] / 0.31)


def test_one_seed_is_refused_and_missing_values_are_skipped() -> None:
    with pytest.raises(ValueError, match="clap_score: a spread needs >= 2"):
        spread({"clap_score": [0.3, float("nan")]}, seeds=(3,))


def test_paper_effects_are_compared_on_the_relative_scale() -> None:
    tight = spread({"clap_score": [0.300, 0.301, 0.299, 0.300, 0.3005]}, seeds=(3, 5))
    loose = spread({"clap_score": [0.2, 0.4, 0.3, 0.25, 0.35]}, seeds=(3, 5))
    repa = next(
        e for e in PAPER_EFFECTS if e.claim == "CLAP REPA, normal" and e.metric == "clap_score"
    )
    assert repa.relative == pytest.approx(0.0635, abs=1e-4)  # 0.2755 -> 0.2930
    seen = against_papers(tight, (3, 5)).set_index("claim")
    assert seen.loc["CLAP REPA, normal", "detectable_with_3"].all()
    assert not against_papers(loose, (3, 5))["detectable_with_5"].any()
    assert set(against_papers(tight, (3,))["metric"]) == {"clap_score"}  # only measured ones
