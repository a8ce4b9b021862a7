"""The ablation tables: every trial whatever its state; Table I over seeds with Welch's test."""

from __future__ import annotations

import math

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState
from scipy import stats

from flows import ablation_report, ablation_tables, studies
from tasks.params import Params
from tasks.train import pruning

CELLS = {
    "base": [0.270, 0.275, 0.280],
    "clap_repa_normal": [0.300, 0.305, 0.310],  # clearly better
    "beta_0.2": [0.268, 0.282, 0.276],  # indistinguishable from base
}


@pytest.fixture
def table_study(tmp_path, shipped_params):
    params = Params.from_mapping(shipped_params)
    spec = studies.study_spec(params, "table", "p" * 32, {}, None)
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = studies.create_study(url, "t", spec, "random", 0)
    cells = [(name, seed, {"train.seed": seed}) for name in CELLS for seed in range(3)]
    studies.enqueue_cells(study, cells)
    for name, values in CELLS.items():
        for value in values:
            claimed = studies.claim_trial(study, spec, {})
            assert claimed.label.startswith(name)
            metrics = {"clap_score": value, "fad_clap": 1.0 - value}
            studies.close_trial(study, claimed.number, TrialState.COMPLETE, value, metrics, None)
    studies.enqueue_cells(study, [("muq_repa", 0, {"train.seed": 0})])
    killed = studies.claim_trial(study, spec, {})
    studies.close_trial(study, killed.number, TrialState.FAIL, None, {}, "stage pretrain killed")
    return study, spec


def test_trials_table_lists_every_trial_with_state_and_reason(table_study) -> None:
    study, spec = table_study
    trials = ablation_tables.trials_table(study, spec)
    assert len(trials) == 10
    assert trials["state"].value_counts().to_dict() == {"COMPLETE": 9, "FAIL": 1}
    failed = trials[trials["state"] == "FAIL"].iloc[0]
    assert (
        failed["configuration"] == "muq_repa" and failed["fail_reason"] == "stage pretrain killed"
    )
    assert trials.loc[trials["configuration"] == "base", "clap_score"].tolist() == CELLS["base"]


def test_table_one_means_deltas_and_welch_test(table_study) -> None:
    study, spec = table_study
    trials = ablation_tables.trials_table(study, spec)
    table = ablation_tables.table_one(trials, spec, ["clap_repa_normal", "beta_0.2", "muq_repa"])
    rows = table.set_index("configuration")
    assert list(table["configuration"]) == ["base", "clap_repa_normal", "beta_0.2", "muq_repa"]
    base, repa = np.array(CELLS["base"]), np.array(CELLS["clap_repa_normal"])
    assert rows.loc["base", "clap_score_mean"] == pytest.approx(base.mean())
    assert rows.loc["base", "clap_score_std"] == pytest.approx(base.std(ddof=1))
    assert rows.loc["clap_repa_normal", "clap_score_delta"] == pytest.approx(
        repa.mean() - base.mean()
    )
    welch = stats.ttest_ind(repa, base, equal_var=False).pvalue
    assert rows.loc["clap_repa_normal", "clap_score_p"] == pytest.approx(welch)
    assert rows.loc["clap_repa_normal", "clap_score_significant"]
    assert not rows.loc["beta_0.2", "clap_score_significant"]
    assert rows.loc["muq_repa", "seeds"] == 0 and rows.loc["muq_repa", "failed"] == 1
    assert np.isnan(rows.loc["muq_repa", "clap_score_p"])  # no seeds: no test


def test_reports_render_both_tables(table_study) -> None:
    study, spec = table_study
    trials = ablation_tables.trials_table(study, spec)
    table = ablation_tables.table_one(trials, spec, ["clap_repa_normal", "beta_0.2"])
    markdown = ablation_tables.markdown_report("T", {"study": "t"}, trials, table, spec)
    assert "Welch's two-sided t-test" in markdown
    assert "| clap_repa_normal |" in markdown and "stage pretrain killed" in markdown
    shown = ablation_tables.table_one_display(table, spec)
    assert shown.loc[1, "clap_score ↑"] == "0.3050 ± 0.005000"  # 4 significant digits
    assert shown.loc[1, "Δ clap_score"] == "+0.03000*"
    assert float(shown.loc[1, "p clap_score"]) < 0.05 and shown.loc[0, "p clap_score"] == ""
    html = ablation_tables.html_report("T", {"study": "t"}, {"table_one": shown})
    assert "<table" in html and "clap_repa_normal" in html
    # the parent run's metrics: counts per state and each configuration's mean
    metrics = ablation_report.summary_metrics(study, spec, trials, table)
    assert metrics["clap_repa_normal/clap_score_mean"] == pytest.approx(0.305)
    assert metrics["trials_fail"] >= 1 and "best_clap_score" not in metrics


def test_sweep_table_has_the_searched_params(tmp_path, shipped_params) -> None:
    params = Params.from_mapping(shipped_params)
    spec = studies.study_spec(params, "sweep", "p" * 32, {}, None)
    study = studies.create_study(f"sqlite:///{tmp_path / 'o.db'}", "s", spec, "tpe", 0)
    claimed = studies.claim_trial(study, spec, {})
    trial = pruning.trial_by_number(study, claimed.number)
    trial.report(-1.2, 4)
    trial.set_user_attr(pruning.PRUNED_ATTR, 4)
    study.tell(claimed.number, state=TrialState.PRUNED)
    trials = ablation_tables.trials_table(study, spec)
    assert set(params.ablation.search_space) <= set(trials.columns)
    assert trials.loc[0, "state"] == "PRUNED" and trials.loc[0, "pruned_at_step"] == 4
    # Optuna gives a pruned trial its last intermediate value; the table keeps it out of the
    # objective column and shows the loss, unsigned, and the step as an integer
    assert study.trials[0].value == -1.2 and math.isnan(trials.loc[0, spec.objective])
    assert trials.loc[0, "pruned_val_loss"] == 1.2
    assert ablation_tables.trials_display(trials).loc[0, "pruned_at_step"] == 4
    # the compact view: short names, 4 significant digits (scientific where small), a note
    # instead of a signed value, empty cells where nothing exists
    trials.loc[0, "model.repa.muq.weight"] = 2.3e-05
    compact = ablation_tables.compact_trials(trials, spec)
    assert list(compact.columns[:5]) == [
        "trial",
        "beta_lambda",
        "clap.weight",
        "muq.weight",
        "mask_ratio",
    ]
    row = compact.iloc[0]
    assert row["muq.weight"] == "2.300e-05" and row[spec.objective] == ""
    assert row["note"] == "pruned at step 4 (val loss 1.200)" and row["experiment"] == ""
    assert "–" not in compact.to_numpy().tolist()[0]
    assert isinstance(study, optuna.Study)
