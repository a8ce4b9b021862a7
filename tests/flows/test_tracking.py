"""MLflow links: a stage run nests under the run named by the environment and carries its
tags, and the flows find it again (stage runs of a trial, the run a pipeline task started)."""

from __future__ import annotations

import json
import time

import mlflow
import pytest

from flows import mlflow_runs
from tasks.common.tracking import PARENT_RUN_ENV, RUN_TAGS_ENV, stage_run
from tasks.params import TrackingParams
from tasks.params.tracked import tracked_keys


def test_stage_runs_nest_under_the_trial_run_and_are_found_again(
    tmp_path, monkeypatch, tiny_params
) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    client = mlflow_runs.client_for(uri)
    parent = mlflow_runs.start_run(client, "exp", "sweep-s", {"kind": "sweep"}, {"n": 3})
    trial = mlflow_runs.start_run(client, "exp", "s-t0", {}, {"x": 0.5}, parent_run_id=parent)
    monkeypatch.setenv(PARENT_RUN_ENV, trial)
    monkeypatch.setenv(RUN_TAGS_ENV, json.dumps({"prefect.flow_run_id": "fr-1"}))
    tracking = TrackingParams(mlflow_tracking_uri="ignored", experiment="exp")
    params = tiny_params.model_copy(update={"tracking": tracking})
    for stage in ("pretrain", "finetune"):
        with stage_run(params, stage):
            mlflow.log_metric("wall_seconds", 2.5)
    (child,) = mlflow_runs.child_runs(client, "exp", parent)
    assert child.info.run_id == trial and child.data.params["x"] == "0.5"
    stages = mlflow_runs.child_runs(client, "exp", trial)
    assert {run.data.tags["stage"] for run in stages} == {"pretrain", "finetune"}
    assert {run.data.tags["prefect.flow_run_id"] for run in stages} == {"fr-1"}
    for run in stages:  # what dvc.yaml declares for the stage, flattened
        logged = {key.split(".")[0] for key in run.data.params}
        declared = {key.split(".")[0] for key in tracked_keys(run.data.tags["stage"])}
        assert logged == declared and "train.optim.learning_rate" in run.data.params
    found = mlflow_runs.latest_stage_run(client, "exp", "finetune", "fr-1")
    assert found is not None and found.data.tags["stage"] == "finetune"
    assert mlflow_runs.latest_stage_run(client, "exp", "finetune", "another-run") is None
    timings = mlflow_runs.stage_timings(client, "exp", trial)
    assert timings["training_seconds"] == 5.0 and timings["stage_seconds"] >= 0
    assert mlflow_runs.run_url("http://127.0.0.1:5000/", found).endswith(
        f"/#/experiments/{found.info.experiment_id}/runs/{found.info.run_id}"
    )
    mlflow_runs.finish_trial_run(client, trial, "PRUNED", {"clap_score": 0.3}, {}, None)
    assert client.get_run(trial).info.status == "KILLED"


def test_bad_tags_in_the_environment_fail_clearly(tmp_path, monkeypatch, tiny_params) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv(RUN_TAGS_ENV, "not json")
    tracking = TrackingParams(mlflow_tracking_uri="ignored", experiment="exp")
    params = tiny_params.model_copy(update={"tracking": tracking})
    with pytest.raises(ValueError, match="TTM_MLFLOW_TAGS"), stage_run(params, "corpus"):
        pass


def test_a_pruned_trainer_counts_its_time_and_ends_killed_like_its_trial(
    tmp_path, monkeypatch, tiny_params
) -> None:
    """The pruner stops pretrain by raising: its stage run ended FAILED without logging its
    own wall clock. The trial's record counts the run's duration and says KILLED."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    client = mlflow_runs.client_for(uri)
    trial = mlflow_runs.start_run(client, "exp", "s-t0", {}, {})
    monkeypatch.setenv(PARENT_RUN_ENV, trial)
    tracking = TrackingParams(mlflow_tracking_uri="ignored", experiment="exp")
    params = tiny_params.model_copy(update={"tracking": tracking})
    with pytest.raises(RuntimeError, match="pruned"), stage_run(params, "pretrain"):
        time.sleep(0.05)  # some training
        raise RuntimeError("pruned at step 100")
    (stage,) = mlflow_runs.child_runs(client, "exp", trial)
    assert stage.info.status == "FAILED" and "wall_seconds" not in stage.data.metrics
    timings = mlflow_runs.stage_timings(client, "exp", trial)
    duration = (stage.info.end_time - stage.info.start_time) / 1000
    assert timings["training_seconds"] == timings["stage_seconds"] == duration >= 0.05
    mlflow_runs.mark_stopped_stage_runs(client, "exp", trial)
    assert client.get_run(stage.info.run_id).info.status == "KILLED"
