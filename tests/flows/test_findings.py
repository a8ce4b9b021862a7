"""The papers' claims read off an ablation table, and the table's figure and report files."""

from __future__ import annotations

import math

import numpy as np
import pytest
from optuna.trial import TrialState

from flows import ablation_figures, ablation_report, ablation_tables, findings, mlflow_runs, studies
from flows.power import minimum_detectable_difference
from tasks.params import Params
from tasks.train import pruning

# clap_score per configuration over three seeds; fad_clap = 1 - clap_score
SCORES = {
    "base": [0.270, 0.275, 0.280],
    "clap_repa_normal": [0.300, 0.305, 0.310],  # clearly better: the paper's direction
    "muq_repa": [0.300, 0.306, 0.309],  # clearly better: against the paper ("worse")
    "beta_0.2": [0.268, 0.282, 0.276],  # no difference: consistent with "same"
    "no_clap_filter": [0.240, 0.245, 0.250],  # filtering off is worse: filtering helps
}


@pytest.fixture
def table(tmp_path, shipped_params):
    params = Params.from_mapping(shipped_params)
    spec = studies.study_spec(params, "table", "p" * 32, {}, None)
    study = studies.create_study(f"sqlite:///{tmp_path / 'o.db'}", "claims", spec, "random", 0)
    cells = studies.table_cells(params.ablation, [n for n in SCORES if n != "base"], [0, 1, 2])
    studies.enqueue_cells(study, cells)
    for _ in cells:
        claimed = studies.claim_trial(study, spec, {})
        attrs = pruning.trial_by_number(study, claimed.number).user_attrs
        value = SCORES[attrs["configuration"]][attrs["seed"]]
        metrics = {"clap_score": value, "fad_clap": 1.0 - value, "pmos": 3.0}
        studies.close_trial(study, claimed.number, TrialState.COMPLETE, value, metrics, None)
    trials = ablation_tables.trials_table(study, spec)
    names = [name for name in SCORES if name != "base"]
    return study, spec, ablation_tables.table_one(trials, spec, names)


def test_verdicts_need_a_holm_significant_difference() -> None:
    assert findings.verdict(0.02, True, "better", maximize=True) == "reproduced"
    assert findings.verdict(0.02, True, "worse", maximize=True) == "contradicted"
    assert findings.verdict(-0.02, True, "better", maximize=False) == "reproduced"  # FAD down
    assert findings.verdict(0.02, False, "better", True) == "not detected (same direction)"
    assert findings.verdict(-0.02, False, "better", True) == "not detected (opposite direction)"
    assert findings.verdict(0.0, False, "same", True) == "consistent: no difference detected"
    assert findings.verdict(0.05, True, "same", True) == "differs (significant)"
    assert findings.verdict(math.nan, False, "better", True) == "not measured"
    assert findings.verdict(0.02, None, "better", True) == "not tested (< 2 seeds)"


def test_claims_read_leave_one_out_rows_as_the_recipe_s_effect(table) -> None:
    _, spec, frame = table
    claims = findings.claims_table(frame, spec)
    by_row = {(r["row"], r["metric"]): r for _, r in claims.iterrows()}
    repa = by_row[("clap_repa_normal", "clap_score")]
    assert repa["effect"] == pytest.approx(0.03) and repa["verdict"] == "reproduced"
    assert repa["ci_low"] < repa["effect"] < repa["ci_high"]
    # filtering off lowered the score by 0.03: the recipe's effect is +0.03, interval flipped
    kept = frame.set_index("configuration").loc["no_clap_filter"]
    off = by_row[("no_clap_filter", "clap_score")]
    assert off["effect"] == pytest.approx(-kept["clap_score_delta"]) == pytest.approx(0.03)
    assert (off["ci_low"], off["ci_high"]) == pytest.approx(
        (-kept["clap_score_ci_high"], -kept["clap_score_ci_low"])
    )
    assert off["verdict"] == "reproduced"
    assert by_row[("no_clap_filter", "fad_clap")]["verdict"] == "reproduced"  # FAD down
    assert by_row[("muq_repa", "clap_score")]["verdict"] == "contradicted"
    assert by_row[("beta_0.2", "clap_score")]["verdict"] == "consistent: no difference detected"
    assert by_row[("beta_0.2", "clap_score")]["mdd"] > 0
    # seed by seed: REPA is 0.03 above base at every seed; beta's differences straddle 0
    assert repa["paired_effect"] == pytest.approx(0.03) and repa["paired_verdict"] == "reproduced"
    assert off["paired_effect"] == pytest.approx(0.03) and off["paired_verdict"] == "reproduced"
    beta = by_row[("beta_0.2", "clap_score")]
    assert beta["paired_verdict"] == "consistent: no difference detected"
    assert beta["paired_mdd"] == pytest.approx(  # from the std of its seed differences
        minimum_detectable_difference(
            float(np.std([-0.002, 0.007, -0.004], ddof=1)), 3, paired=True
        )
    )
    # rows the table doesn't have, and metrics it doesn't measure, are left out
    assert ("beta_1.0", "clap_score") not in by_row
    assert not (claims["metric"] == "val_flow_matching").any()
    assert "noise" not in claims


def test_the_figure_has_a_panel_per_metric_and_none_for_base_alone(table) -> None:
    _, spec, frame = table
    figure = ablation_figures.deltas_figure(frame, spec)
    assert figure is not None and len(figure.axes) == len(spec.metrics)
    labels = [tick.get_text() for tick in figure.axes[0].get_yticklabels()]
    assert labels == [name for name in SCORES if name != "base"]
    assert ablation_figures.deltas_figure(frame[frame["configuration"] == "base"], spec) is None


def test_a_published_table_links_its_figure_and_states_the_claims(tmp_path, table) -> None:
    study, spec, _ = table
    client = mlflow_runs.client_for(f"sqlite:///{tmp_path / 'mlflow.db'}")
    parent = mlflow_runs.start_run(client, "exp", "table-claims", {"kind": "table"}, {})
    spec = spec.model_copy(update={"mlflow_parent_run_id": parent})
    names = [name for name in SCORES if name != "base"]
    path, markdown = ablation_report.publish(study, spec, tmp_path, client, names)
    assert (path.parent / "claims_deltas.png").stat().st_size > 0
    assert "![deltas](claims_deltas.png)" in markdown
    assert "The papers' claims against this table" in markdown
    assert "claims_deltas.png" in path.with_suffix(".html").read_text()
    index = (tmp_path / "reports" / ablation_report.INDEX).read_text()
    assert "![deltas](ablations/claims_deltas.png)" in index
    artifacts = {a.path for a in client.list_artifacts(parent, "ablations")}
    assert "ablations/deltas.png" in artifacts
