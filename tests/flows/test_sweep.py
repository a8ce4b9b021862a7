"""Optuna side of the sweep: storages, study specs, claiming and closing trials, pruning."""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState

from flows import studies
from tasks.params import Params, PrunerParams
from tasks.train import pruning

PARENT = "0123456789abcdef0123456789abcdef"


@pytest.fixture
def params(shipped_params: dict) -> Params:
    return Params.from_mapping(shipped_params)


def storage_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'optuna.db'}"


def spec_for(params: Params, kind: str = "sweep", **changes) -> studies.StudySpec:
    spec = studies.study_spec(params, kind, PARENT, {"train.optim.steps": 8}, None)
    return spec.model_copy(update=changes)


def test_storage_urls_and_journal_files(tmp_path) -> None:
    assert isinstance(pruning.open_storage(storage_url(tmp_path)), optuna.storages.RDBStorage)
    journal = pruning.open_storage(str(tmp_path / "study.log"))
    assert isinstance(journal, optuna.storages.JournalStorage)
    with pytest.raises(ValueError, match="SQLAlchemy URL"):
        pruning.open_storage("optuna.db")
    assert studies.default_storage(tmp_path) == f"sqlite:///{tmp_path.resolve() / 'optuna.db'}"


def test_a_study_carries_its_spec_and_refuses_another_under_its_name(tmp_path, params) -> None:
    url, spec = storage_url(tmp_path), spec_for(params)
    studies.create_study(url, "s", spec, "tpe", 0)
    loaded, stored = studies.load_study(url, "s")
    assert stored == spec and loaded.direction == optuna.study.StudyDirection.MAXIMIZE
    resumed = spec.model_copy(update={"mlflow_parent_run_id": "f" * 32})
    studies.create_study(url, "s", resumed, "tpe", 0)  # a new parent run: resumes
    assert studies.load_study(url, "s")[1].mlflow_parent_run_id == "f" * 32
    with pytest.raises(ValueError, match="another specification"):
        studies.create_study(url, "s", spec.model_copy(update={"objective": "fad_clap"}), "tpe", 0)
    # a study that recorded its DAG refuses to resume on another one (its trials wouldn't
    # compare); one from before the DAG was recorded resumes whatever it is now
    studies.create_study(url, "d", spec.model_copy(update={"dvc_lock_sha256": "a" * 64}), "tpe", 0)
    with pytest.raises(ValueError, match="dvc_lock_sha256"):
        studies.create_study(
            url, "d", spec.model_copy(update={"dvc_lock_sha256": "b" * 64}), "tpe", 0
        )
    studies.create_study(url, "s", spec.model_copy(update={"dvc_lock_sha256": "b" * 64}), "tpe", 0)


def test_sweep_trials_sample_the_space_reproducibly_and_carry_fixed_overrides(
    tmp_path, params
) -> None:
    def claim_three(url: str) -> list[dict]:
        studies.create_study(url, "s", spec_for(params), "tpe", 7)
        claimed = []
        for _ in range(3):
            study, spec = studies.load_study(url, "s")  # one process per trial
            trial = studies.claim_trial(study, spec, {"host": "here"})
            studies.close_trial(
                study, trial.number, TrialState.COMPLETE, 0.1 * trial.number, {}, None
            )
            claimed.append(trial.overrides)
        return claimed

    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    first = claim_three(storage_url(tmp_path / "a"))
    second = claim_three(storage_url(tmp_path / "b"))
    assert first == second  # same seed, same sequence
    assert len({overrides["train.timestep.beta_lambda"] for overrides in first}) == 3
    for overrides in first:
        assert overrides["train.optim.steps"] == 8
        for key, space in params.ablation.search_space.items():
            assert space.low <= overrides[key] <= space.high


def test_table_cells_are_enqueued_once_and_claimed_in_order(tmp_path, params) -> None:
    url = storage_url(tmp_path)
    study = studies.create_study(url, "t", spec_for(params, "table"), "random", 0)
    cells = [("base", 0, {"train.seed": 0}), ("beta_0.2", 0, {"train.seed": 0, "x": 1})]
    assert studies.enqueue_cells(study, cells) == [("base", 0), ("beta_0.2", 0)]
    assert studies.enqueue_cells(study, cells) == []  # waiting: not enqueued twice
    study, spec = studies.load_study(url, "t")
    first = studies.claim_trial(study, spec, {})
    assert first.label == "base-s0"
    assert first.overrides == {"train.optim.steps": 8, "train.seed": 0}
    studies.close_trial(study, first.number, TrialState.FAIL, None, {}, "boom")
    second = studies.claim_trial(study, spec, {})
    studies.close_trial(study, second.number, TrialState.COMPLETE, 0.5, {"clap_score": 0.5}, None)
    # a rerun enqueues only the failed cell again; an extra claim finds nothing to run
    assert studies.enqueue_cells(study, cells) == [("base", 0)]
    studies.claim_trial(study, spec, {})
    with pytest.raises(LookupError, match="no waiting table cell"):
        studies.claim_trial(study, spec, {})
    assert study.trials[-1].state == TrialState.FAIL


def test_pruning_callback_reports_and_stops_a_trial_worse_than_the_median(
    tmp_path, params, monkeypatch
) -> None:
    url = storage_url(tmp_path)
    pruner = PrunerParams(name="median", startup_trials=1, warmup_steps=0)
    study = studies.create_study(url, "p", spec_for(params, pruner=pruner), "tpe", 0)
    good = study.ask()
    for step, loss in ((4, 1.0), (8, 0.5)):
        good.report(-loss, step)  # a maximised study: losses are reported negated
    study.tell(good, 0.3)
    bad = study.ask()
    monkeypatch.setenv(pruning.STORAGE_ENV, url)
    monkeypatch.setenv(pruning.STUDY_ENV, "p")
    monkeypatch.setenv(pruning.TRIAL_ENV, str(bad.number))
    (callback,) = pruning.pruning_callbacks(step_offset=0)
    callback(4, 0.9)  # better than the median: goes on
    # MedianPruner compares the trial's best value so far (0.9) with the others' at step 8
    with pytest.raises(pruning.TrialPruned, match="step 8"):
        callback(8, 5.0)
    assert pruning.pruned_step(url, "p", bad.number) == 8
    assert study.trials[bad.number].intermediate_values == {4: -0.9, 8: -5.0}
    monkeypatch.delenv(pruning.STORAGE_ENV)
    assert pruning.pruning_callbacks(step_offset=0) == []


def test_finetune_steps_follow_pretrain_steps(tmp_path, params) -> None:
    url = storage_url(tmp_path)
    study = studies.create_study(url, "o", spec_for(params), "tpe", 0)
    trial = study.ask()
    pruning.PruningCallback(pruning.trial_by_number(study, trial.number), step_offset=600)(50, 1.0)
    assert study.trials[0].intermediate_values == {650: -1.0}  # maximised: negated


def test_outcomes_and_orphaned_trials(tmp_path, params) -> None:
    spec = spec_for(params)
    assert studies.trial_outcome(True, "", {"clap_score": 0.3}, spec, None) == (
        TrialState.COMPLETE,
        0.3,
        None,
    )
    state, _, reason = studies.trial_outcome(True, "", {"fad_clap": 1.0}, spec, None)
    assert state == TrialState.FAIL and "clap_score missing" in reason
    assert studies.trial_outcome(False, "killed", {}, spec, 8)[0] == TrialState.PRUNED
    assert studies.trial_outcome(False, "killed", {}, spec, None) == (
        TrialState.FAIL,
        None,
        "killed",
    )
    url = storage_url(tmp_path)
    study = studies.create_study(url, "c", spec, "tpe", 0)
    alive, dead = study.ask(), study.ask()
    studies.record_attributes(study, alive.number, {"prefect_flow_run_id": "run-a"})
    studies.record_attributes(study, dead.number, {"prefect_flow_run_id": "run-b"})
    assert studies.fail_orphaned_trials(study, {"run-b": "Crashed: no heartbeat"}) == [dead.number]
    states = [trial.state for trial in study.trials]
    assert states == [TrialState.RUNNING, TrialState.FAIL]
    assert study.trials[dead.number].user_attrs["fail_reason"] == (
        "flow run run-b ended Crashed before closing the trial: no heartbeat"
    )


def test_table_cells_put_each_switch_alone_on_top_of_base(params) -> None:
    cells = studies.table_cells(params.ablation, ["clap_repa_aggressive", "beta_2.0"], [0, 1])
    assert [(cell.configuration, cell.seed, cell.noise) for cell in cells] == [
        ("base", 0, None),
        ("base", 1, None),
        ("clap_repa_aggressive", 0, None),
        ("clap_repa_aggressive", 1, None),
        ("beta_2.0", 0, None),
        ("beta_2.0", 1, None),
    ]
    base = dict(params.ablation.base)
    assert cells[1][2] == {**base, "train.seed": 1}
    aggressive = cells[2][2]
    assert aggressive["model.repa.clap.weight"] == 0.4
    assert aggressive["model.repa.clap.time_weight_exponent"] == 4.0
    assert aggressive["train.timestep.beta_lambda"] == 0.0  # inherited from base
    assert cells[4][2]["train.timestep.beta_lambda"] == 2.0
    assert cells[4][2]["model.repa.clap.weight"] == 0.0
    with pytest.raises(ValueError, match=r"not in params\.yaml"):
        studies.table_cells(params.ablation, ["beta_3.0"], [0])
    # no configuration: base alone, over as many seeds as a sensitivity study wants
    alone = studies.table_cells(params.ablation, [], range(5))
    assert [(cell.configuration, cell.seed) for cell in alone] == [("base", s) for s in range(5)]
