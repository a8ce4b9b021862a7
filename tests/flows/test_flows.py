"""The flows' own small pieces: budgets as overrides, where the repository is, retries."""

from __future__ import annotations

import shutil
from pathlib import Path

import mlflow
import pytest
from prefect.exceptions import ParameterTypeError
from prefect.states import Failed
from prefect.utilities.callables import parameter_schema

from flows import fanout, pipeline
from flows.dvc_runs import DvcResult
from flows.settings import repository, storage
from flows.sweep import ablation_sweep
from flows.table import ablation_table
from tasks.params import Params, load_params
from tests.conftest import REPO


def test_budget_and_seed_become_params_overrides() -> None:
    assert fanout.budget_overrides(None, None, None, None, {}) == {}
    assert fanout.budget_overrides(300, 100, 7, {"sample.steps": 10}, {}) == {
        "sample.steps": 10,
        "train.optim.steps": 300,
        "finetune.optim.steps": 100,
        "train.seed": 7,
    }


def test_every_trial_gets_the_trial_evaluation_unless_the_flow_overrides_it() -> None:
    """params.yaml's ablation.trial_overrides is the bottom layer of every trial's overrides:
    the trial evaluation profile by default, a flow's `overrides` winning over it."""
    defaults = load_params(REPO / "params.yaml").ablation.trial_overrides
    assert defaults["evaluate.profile"] == "trial"
    fixed = fanout.budget_overrides(300, None, None, None, defaults)
    assert fixed == {**defaults, "train.optim.steps": 300}
    full = fanout.budget_overrides(None, None, None, {"evaluate.profile": "full"}, defaults)
    assert full["evaluate.profile"] == "full"


def test_flows_work_in_the_project_repository(tmp_path: Path) -> None:
    assert repository(str(REPO)) == REPO.resolve()
    with pytest.raises(ValueError, match=r"no dvc\.yaml"):
        repository(str(tmp_path))
    assert storage(REPO, None) == f"sqlite:///{REPO.resolve() / 'optuna.db'}"
    assert storage(REPO, "postgresql+psycopg://db/optuna") == "postgresql+psycopg://db/optuna"


def _failed(result: DvcResult):
    return Failed(data=pipeline.StageFailed(result))


def _stage_result(log: str) -> DvcResult:
    return DvcResult("pretrain", 1, 1.0, ("pretrain",), "pretrain", log)


def test_pipeline_retries_only_transient_stage_failures() -> None:
    killed = _stage_result("ERROR: failed to reproduce 'pretrain': failed to run, exited with -9")
    broken = _stage_result("ValueError: bad\nERROR: failed to reproduce 'pretrain': exited with 1")
    assert pipeline._is_transient(None, None, _failed(killed))
    assert not pipeline._is_transient(None, None, _failed(broken))
    assert not pipeline._is_transient(None, None, Failed(data=ValueError("not a stage")))


@pytest.mark.parametrize(
    ("flow", "bad", "named"),
    [
        (ablation_sweep, {"n_trials": -1}, "n_trials"),
        (ablation_sweep, {"pretrain_steps": 0}, "pretrain_steps"),
        (ablation_sweep, {"trial_timeout_minutes": 0.0}, "trial_timeout_minutes"),
        (ablation_sweep, {"study_name": "two words"}, "study_name"),
        (ablation_table, {"seeds": []}, "seeds"),
        (ablation_table, {"seeds": [-1]}, "seeds"),
        (ablation_table, {"finetune_steps": -5}, "finetune_steps"),
    ],
)
def test_bad_flow_parameters_fail_naming_the_flow_parameter(flow, bad, named) -> None:
    """Refused by the flow's own signature (and by the deployment's schema on the server),
    before the body could create a study, a run or a report section."""
    with pytest.raises(ParameterTypeError, match=rf"- {named}[.:]"):
        flow.validate_parameters(bad)
    schema = parameter_schema(flow.fn).model_dump()["properties"][named]
    assert "exclusiveMinimum" in str(schema) or "min" in str(schema) or "pattern" in str(schema)


def test_a_refused_resume_creates_no_mlflow_run(tmp_path: Path, shipped_params: dict) -> None:
    """A study name that exists with another budget is refused before its parent run."""
    for name in ("params.yaml", "dvc.lock"):  # the study records which DAG it starts from
        shutil.copy(REPO / name, tmp_path / name)
    config = Params.from_mapping(shipped_params)
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    fanout.start_study(
        tmp_path, config, "sweep", "s", url, {"train.optim.steps": 8}, None, ("tpe", 0), {}
    )
    with pytest.raises(ValueError, match=r"train\.optim\.steps.*8.*9"):
        fanout.start_study(
            tmp_path, config, "sweep", "s", url, {"train.optim.steps": 9}, None, ("tpe", 0), {}
        )
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(config.tracking.experiment)
    runs = client.search_runs([experiment.experiment_id])
    assert [run.info.status for run in runs] == ["RUNNING"]  # the first sweep's, and only it


def test_zero_trials_only_reports_a_study_that_exists(tmp_path: Path) -> None:
    """`n_trials=0` rebuilds an existing study's report; on a new name it would leave an
    empty study, parent run and report section, so it is refused first."""
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(REPO / name, tmp_path / name)
    with pytest.raises(ValueError, match="n_trials=0 closes and reports an existing study"):
        ablation_sweep.fn(study_name="new", n_trials=0, root=str(tmp_path))
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "reports").exists()
