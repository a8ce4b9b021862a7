"""MLflow runs as the flows address them: the stage run a pipeline task started, a parent
run per sweep or table, a child run per trial (the trial's stage runs nest under it), and
the ablation report on the parent.

Runs are addressed by id through `MlflowClient`, never through the fluent active run, so a
flow can hold a parent open while its trials run in other processes or on other machines.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import mlflow
import optuna
import pandas as pd
from mlflow.entities import RunStatus
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

from tasks.common.tracking import EXPERIMENT_TAGS

STATUS_OF_STATE = {
    "COMPLETE": RunStatus.to_string(RunStatus.FINISHED),
    "PRUNED": RunStatus.to_string(RunStatus.KILLED),
    "FAIL": RunStatus.to_string(RunStatus.FAILED),
}


def client_for(tracking_uri: str) -> mlflow.MlflowClient:
    return mlflow.MlflowClient(tracking_uri=tracking_uri)


def experiment_id(client: mlflow.MlflowClient, name: str) -> str:
    """Create the experiment once, before trials fan out (concurrent creation races)."""
    found = client.get_experiment_by_name(name)
    return found.experiment_id if found else client.create_experiment(name, tags=EXPERIMENT_TAGS)


def start_run(
    client: mlflow.MlflowClient,
    experiment: str,
    name: str,
    tags: Mapping[str, str],
    params: Mapping[str, Any],
    parent_run_id: str | None = None,
) -> str:
    all_tags = {MLFLOW_RUN_NAME: name, **tags}
    if parent_run_id:
        all_tags[MLFLOW_PARENT_RUN_ID] = parent_run_id
    run = client.create_run(experiment_id(client, experiment), tags=all_tags, run_name=name)
    for key, value in params.items():
        client.log_param(
            run.info.run_id, key, json.dumps(value) if not isinstance(value, str) else value
        )
    return run.info.run_id


def finish_trial_run(
    client: mlflow.MlflowClient,
    run_id: str,
    state: str,
    metrics: Mapping[str, float],
    tags: Mapping[str, str],
    log_path: Path | None,
) -> None:
    for key, value in metrics.items():
        client.log_metric(run_id, key, value)
    for key, tag in {**tags, "optuna.state": state}.items():
        client.set_tag(run_id, key, tag)
    if log_path is not None and log_path.exists():
        client.log_artifact(run_id, str(log_path), artifact_path="logs")
    client.set_terminated(run_id, STATUS_OF_STATE[state])


def child_runs(client: mlflow.MlflowClient, experiment: str, parent_run_id: str) -> list:
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return []
    return client.search_runs(
        [found.experiment_id], filter_string=f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{parent_run_id}'"
    )


def latest_stage_run(
    client: mlflow.MlflowClient, experiment: str, stage: str, flow_run_id: str | None = None
):
    """The newest run of `stage`; with `flow_run_id`, only one that this flow run started
    (the tag the pipeline task passes through TTM_MLFLOW_TAGS)."""
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return None
    query = f"tags.stage = '{stage}'"
    if flow_run_id:
        query += f" and tags.`prefect.flow_run_id` = '{flow_run_id}'"
    runs = client.search_runs(
        [found.experiment_id],
        filter_string=query,
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0] if runs else None


def run_url(ui_url: str, run) -> str:
    return f"{ui_url.rstrip('/')}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"


def stage_timings(
    client: mlflow.MlflowClient, experiment: str, trial_run_id: str
) -> dict[str, float]:
    """The trial's stage runs (nested under it): seconds inside the stages, and training
    seconds (the trainers' own wall clock, pretrain + finetune)."""
    stage_seconds = training_seconds = 0.0
    for run in child_runs(client, experiment, trial_run_id):
        seconds = 0.0
        if run.info.end_time and run.info.start_time:
            seconds = (run.info.end_time - run.info.start_time) / 1000
        stage_seconds += seconds
        if run.data.tags.get("stage") in ("pretrain", "finetune"):
            # A trainer stopped early (pruned, killed) never logged its own wall clock: its
            # run's duration is the closest measure of the steps it did train.
            training_seconds += run.data.metrics.get("wall_seconds", seconds)
    return {"stage_seconds": stage_seconds, "training_seconds": training_seconds}


def mark_stopped_stage_runs(
    client: mlflow.MlflowClient, experiment: str, trial_run_id: str
) -> None:
    """A pruned trial's training stage ended by raising, so its run says FAILED; the pruner
    stopped it, like the trial (KILLED): one state for both records."""
    for run in child_runs(client, experiment, trial_run_id):
        if run.info.status == "FAILED":
            client.set_terminated(run.info.run_id, "KILLED")


# --------------------------------------------------------------------------- the report
def _headless_pyplot() -> Any:
    """pyplot on the Agg backend (optuna's matplotlib plots use pyplot; no display here),
    imported on first use: a trial's flow run, which draws nothing, starts ~0.4 s sooner."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    return pyplot


def optuna_figures(study: optuna.Study) -> dict[str, Any]:
    """Optuna's optimisation history, parameter importances and parallel coordinates, each
    where the study has what it needs (importances: two complete trials that differ)."""
    _headless_pyplot()
    plots = optuna.visualization.matplotlib
    makers: dict[str, Callable[[optuna.Study], Any]] = {
        "optimization_history": plots.plot_optimization_history,
        "param_importances": plots.plot_param_importances,
        "parallel_coordinate": plots.plot_parallel_coordinate,
        "intermediate_values": plots.plot_intermediate_values,
    }
    figures = {}
    for name, make in makers.items():
        try:
            axes = make(study)
        except (ValueError, RuntimeError, ZeroDivisionError):
            continue  # not computable for this study (too few complete trials)
        figure = axes.figure if hasattr(axes, "figure") else axes.flat[0].figure
        figure.set_size_inches(8, 4.5)
        figure.tight_layout()
        figures[name] = figure
    return figures


def log_report(
    client: mlflow.MlflowClient,
    parent_run_id: str,
    tables: Mapping[str, pd.DataFrame],
    files: Mapping[str, Path],
    figures: Mapping[str, Any],
    metrics: Mapping[str, float],
) -> None:
    """Tables with `log_table` (the MLflow UI's table view), the Markdown/HTML copies and the
    figures as artifacts of the parent run, `metrics` on it. Called once per flow run:
    log_table appends."""
    for key, value in metrics.items():
        client.log_metric(parent_run_id, key, value)
    for name, table in tables.items():
        # The UI's table view reads a dotted column name as a nested path and shows it
        # empty (MLflow 3.x): `train.timestep.beta_lambda` is logged as `train/timestep/...`.
        shown = table.rename(columns=lambda column: str(column).replace(".", "/"))
        client.log_table(parent_run_id, data=shown, artifact_file=f"ablations/{name}.json")
    for path in files.values():
        client.log_artifact(parent_run_id, str(path), artifact_path="ablations")
    for name, figure in figures.items():
        client.log_figure(parent_run_id, figure, f"ablations/{name}.png")
        _headless_pyplot().close(figure)
