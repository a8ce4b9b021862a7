"""The ablation tables: every trial whatever its state; Table I over seeds with Welch's test."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState
from scipy import stats

from flows import ablation_report, ablation_tables, dvc_runs, sensitivity, studies
from tasks.params import Params
from tasks.train import pruning

ROOT = Path(__file__).resolve().parents[2]
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
    welch = stats.ttest_ind(repa, base, equal_var=False)
    assert rows.loc["clap_repa_normal", "clap_score_p"] == pytest.approx(welch.pvalue)
    interval = welch.confidence_interval(0.95)
    assert rows.loc["clap_repa_normal", "clap_score_ci_low"] == pytest.approx(interval.low)
    assert rows.loc["clap_repa_normal", "clap_score_ci_high"] == pytest.approx(interval.high)
    # Holm over the rows that have a test (beta_0.2 and clap_repa_normal; muq_repa has none)
    p_beta = rows.loc["beta_0.2", "clap_score_p"]
    assert rows.loc["clap_repa_normal", "clap_score_p_holm"] == pytest.approx(
        min(1.0, 2 * min(welch.pvalue, p_beta))
    )
    assert rows.loc["clap_repa_normal", "clap_score_significant"]
    assert not rows.loc["beta_0.2", "clap_score_significant"]
    assert rows.loc["muq_repa", "seeds"] == 0 and rows.loc["muq_repa", "failed"] == 1
    assert np.isnan(rows.loc["muq_repa", "clap_score_p"])  # no seeds: no test


def test_table_one_pairs_each_row_with_base_seed_by_seed(table_study) -> None:
    """A seed's cells share initial weights, data order and evaluation noise: the paired
    test sees a shift that the seed-to-seed spread hides from Welch's."""
    study, spec = table_study
    trials = ablation_tables.trials_table(study, spec)
    table = ablation_tables.table_one(trials, spec, ["clap_repa_normal", "beta_0.2", "muq_repa"])
    rows = table.set_index("configuration")
    differences = np.array(CELLS["beta_0.2"]) - np.array(CELLS["base"])
    test = stats.ttest_1samp(differences, 0.0)
    assert rows.loc["beta_0.2", "clap_score_paired_delta"] == pytest.approx(differences.mean())
    assert rows.loc["beta_0.2", "clap_score_paired_p"] == pytest.approx(test.pvalue)
    assert rows.loc["beta_0.2", "clap_score_paired_std"] == pytest.approx(differences.std(ddof=1))
    interval = test.confidence_interval(0.95)
    assert rows.loc["beta_0.2", "clap_score_paired_ci_low"] == pytest.approx(interval.low)
    assert rows.loc["beta_0.2", "clap_score_paired_pairs"] == 3
    # REPA's cells sit 0.03 above base's at every seed: no spread of differences, p = 0
    assert rows.loc["clap_repa_normal", "clap_score_paired_delta"] == pytest.approx(0.03)
    assert rows.loc["clap_repa_normal", "clap_score_paired_significant"]
    assert not rows.loc["beta_0.2", "clap_score_paired_significant"]
    assert np.isnan(rows.loc["muq_repa", "clap_score_paired_p"])  # no complete seed
    assert rows.loc["muq_repa", "clap_score_paired_pairs"] == 0


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
    raw, adjusted = shown.loc[1, "p clap_score (Holm)"].rstrip(")").split(" (")
    assert float(raw) < float(adjusted) < 0.05 and shown.loc[0, "p clap_score (Holm)"] == ""
    low, high = (float(bound) for bound in shown.loc[1, "CI clap_score"].strip("[]").split(","))
    assert 0 < low < 0.03 < high  # the 95 % interval of Δ, around +0.03, excluding 0
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


# --------------------------------------------------------------------------- noise axis
NOISY = {  # (noise level, configuration): clap scores over two seeds
    ("wrong_0", "base"): [0.30, 0.31],
    ("wrong_0", "no_clap_filter"): [0.29, 0.30],
    ("wrong_30", "base"): [0.26, 0.27],
    ("wrong_30", "no_clap_filter"): [0.20, 0.21],
}


def test_cells_span_configurations_noise_levels_and_seeds(shipped_params) -> None:
    """Each level has its own base; its overrides are the level's; every cell validates
    (data.noise keys included); cells that change upstream stages differently come first."""
    ablation = Params.from_mapping(shipped_params).ablation
    rows = ["beta_0.2", "no_clap_filter", "no_two_stage_captions"]
    cells = studies.table_cells(ablation, rows, [0, 1], ["wrong_0", "wrong_30"])
    assert len(cells) == 4 * 2 * 2
    assert {(c.noise, c.configuration) for c in cells} == {
        (level, name) for level in ("wrong_0", "wrong_30") for name in ("base", *rows)
    }
    for cell in cells:
        fraction = ablation.noise_levels[cell.noise]["data.noise.wrong_caption_fraction"]
        assert cell.overrides["data.noise.wrong_caption_fraction"] == fraction
        assert cell.overrides["train.seed"] == cell.seed
        dvc_runs.check_overrides(ROOT, cell.overrides)
    # upstream groups: (level) x (filter on, filter off): the first four cells, one each
    head = [(c.noise, c.configuration == "no_clap_filter") for c in cells[:4]]
    assert len(set(head)) == 4
    assert cells[0] == studies.Cell("base", 0, cells[0].overrides, "wrong_0")
    # model-side and fine-tune-only rows share base's upstream: none of them is in the head
    assert {c.configuration for c in cells[:4]} == {"base", "no_clap_filter"}
    with pytest.raises(ValueError, match="wrong_50"):
        studies.table_cells(ablation, rows, [0], ["wrong_50"])


def test_upstream_params_are_those_of_the_stages_before_training() -> None:
    overrides = {
        "train.seed": 1,
        "model.quality_token": True,
        "finetune.two_stage_captions": False,
        "quality.use_prefix": True,  # latents encode the prefixed text
        "curate.clap_filter": False,
        "data.noise.wrong_caption_fraction": 0.3,
    }
    keys = [key for key, _ in studies.upstream_params(overrides, studies.UPSTREAM_STAGES)]
    assert keys == ["curate.clap_filter", "data.noise.wrong_caption_fraction", "quality.use_prefix"]


def test_table_over_noise_levels_compares_with_base_at_the_same_level(
    tmp_path, shipped_params
) -> None:
    params = Params.from_mapping(shipped_params)
    spec = studies.study_spec(params, "table", "p" * 32, {}, None)
    study = studies.create_study(f"sqlite:///{tmp_path / 'o.db'}", "n", spec, "random", 0)
    cells = studies.table_cells(
        params.ablation, ["no_clap_filter"], [0, 1], ["wrong_0", "wrong_30"]
    )
    studies.enqueue_cells(study, cells)
    assert studies.enqueue_cells(study, cells) == []  # a rerun queues nothing twice
    seen = {key: list(values) for key, values in NOISY.items()}
    for _ in cells:
        claimed = studies.claim_trial(study, spec, {})
        attrs = pruning.trial_by_number(study, claimed.number).user_attrs
        key = (attrs["noise"], attrs["configuration"])
        assert claimed.label == f"{key[1]}-{key[0]}-s{attrs['seed']}"
        value = seen[key].pop()
        metrics = {"clap_score": value, "fad_clap": 1.0 - value}
        studies.close_trial(study, claimed.number, TrialState.COMPLETE, value, metrics, None)
    trials = ablation_tables.trials_table(study, spec)
    table = ablation_tables.table_one(trials, spec, ["no_clap_filter"])
    assert list(zip(table["noise"], table["configuration"], strict=True)) == [
        ("wrong_0", "base"),
        ("wrong_0", "no_clap_filter"),
        ("wrong_30", "base"),
        ("wrong_30", "no_clap_filter"),
    ]
    rows = table.set_index(["noise", "configuration"])
    for level in ("wrong_0", "wrong_30"):
        off, base = NOISY[(level, "no_clap_filter")], NOISY[(level, "base")]
        delta = rows.loc[(level, "no_clap_filter"), "clap_score_delta"]
        assert delta == pytest.approx(np.mean(off) - np.mean(base))
        welch = stats.ttest_ind(off, base, equal_var=False).pvalue
        assert rows.loc[(level, "no_clap_filter"), "clap_score_p"] == pytest.approx(welch)
    shown = ablation_tables.table_one_display(table, spec)
    assert list(shown.columns[:4]) == ["noise", "configuration", "seeds", "failed"]
    assert list(ablation_tables.compact_trials(trials, spec).columns[:4]) == [
        "trial",
        "configuration",
        "noise",
        "seed",
    ]
    metrics = ablation_report.summary_metrics(study, spec, trials, table)
    assert metrics["wrong_30/no_clap_filter/clap_score_mean"] == pytest.approx(0.205)


def test_a_table_resumed_with_a_noise_level_keeps_its_cells_at_the_params_corpus(
    tmp_path, shipped_params
) -> None:
    """Run without noise levels (every row), then resumed with the data-centric row at one
    level: both sets of cells are in the table, each compared with base at its own level,
    the first labelled as the corpus params.yaml sets; a level shows only its own rows."""
    params = Params.from_mapping(shipped_params)
    spec = studies.study_spec(params, "table", "p" * 32, {}, None)
    study = studies.create_study(f"sqlite:///{tmp_path / 'o.db'}", "m", spec, "random", 0)
    plain = studies.table_cells(params.ablation, ["beta_0.2", "no_clap_filter"], [0, 1])
    noisy = studies.table_cells(params.ablation, ["no_clap_filter"], [0, 1], ["wrong_30"])
    scores = {
        (None, "base"): [0.30, 0.31],
        (None, "beta_0.2"): [0.30, 0.32],
        (None, "no_clap_filter"): [0.28, 0.29],
        ("wrong_30", "base"): [0.26, 0.27],
        ("wrong_30", "no_clap_filter"): [0.20, 0.21],
    }
    for cells in (plain, noisy):
        studies.enqueue_cells(study, cells)
        for _ in cells:
            claimed = studies.claim_trial(study, spec, {})
            attrs = pruning.trial_by_number(study, claimed.number).user_attrs
            value = scores[(attrs["noise"], attrs["configuration"])][attrs["seed"]]
            metrics = {"clap_score": value, "fad_clap": 1.0 - value}
            studies.close_trial(study, claimed.number, TrialState.COMPLETE, value, metrics, None)
    trials = ablation_tables.trials_table(study, spec)
    table = ablation_tables.table_one(trials, spec, ["beta_0.2", "no_clap_filter"])
    label = ablation_tables.PARAMS_LEVEL
    assert list(zip(table["noise"], table["configuration"], strict=True)) == [
        (label, "base"),
        (label, "beta_0.2"),
        (label, "no_clap_filter"),
        ("wrong_30", "base"),
        ("wrong_30", "no_clap_filter"),
    ]
    rows = table.set_index(["noise", "configuration"])
    assert rows.loc[(label, "no_clap_filter"), "clap_score_delta"] == pytest.approx(-0.02)
    assert rows.loc[("wrong_30", "no_clap_filter"), "clap_score_delta"] == pytest.approx(-0.06)
    # Holm over the rows of each level: two rows at params.yaml's corpus, one at wrong_30
    p_plain = rows.loc[(label, "no_clap_filter"), "clap_score_p"]
    assert rows.loc[(label, "no_clap_filter"), "clap_score_p_holm"] >= p_plain
    p_noisy = rows.loc[("wrong_30", "no_clap_filter"), "clap_score_p"]
    assert rows.loc[("wrong_30", "no_clap_filter"), "clap_score_p_holm"] == pytest.approx(p_noisy)
    compact = ablation_tables.compact_trials(trials, spec)
    assert set(compact["noise"]) == {label, "wrong_30"}
    section = sensitivity.report_section(trials, ["clap_score"], (3, 5))
    assert f"(noise level {label})" in section and "(noise level wrong_30)" in section


def test_holm_adjusts_step_down_and_keeps_order() -> None:
    # the textbook example: p = 0.01, 0.04, 0.03, 0.005 over four rows
    assert ablation_tables.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx(
        [0.03, 0.06, 0.06, 0.02]
    )
    adjusted = ablation_tables.holm([0.2, float("nan"), 0.9])
    assert adjusted[0] == pytest.approx(0.4) and np.isnan(adjusted[1]) and adjusted[2] == 0.9
