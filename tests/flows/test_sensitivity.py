"""The sensitivity report's arithmetic (flows/sensitivity.py)."""

from __future__ import annotations

import pandas as pd
import pytest

from flows.power import minimum_detectable_difference
from flows.sensitivity import PAPER_EFFECTS, against_papers, report_section, spread


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


def test_a_table_report_says_what_its_base_seeds_can_detect() -> None:
    trials = pd.DataFrame(
        {
            "configuration": ["base"] * 3 + ["beta_0.2"] * 3,
            "state": ["COMPLETE"] * 5 + ["FAIL"],
            "clap_score": [0.30, 0.32, 0.31, 0.35, 0.36, None],
        }
    )
    section = report_section(trials, ["clap_score"], (3, 5))
    assert "### What this table can detect" in section and "CLAP REPA, normal" in section
    assert f"{minimum_detectable_difference(0.01, 3):.4g}" in section  # base's std is 0.01
    assert report_section(trials.iloc[3:], ["clap_score"], (3,)) == ""  # no base: nothing
