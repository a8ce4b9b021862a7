"""MLflow for every stage: one run per stage execution, params flattened, metrics, artifacts.

Orchestration links a stage's run to its own through two environment variables, so the
stage code stays the same under `dvc repro`, a Prefect task or a sweep trial:
`TTM_MLFLOW_PARENT_RUN_ID` nests the stage run under a trial's run (MLflow's parent tag;
`nested=True` does not cross processes), and `TTM_MLFLOW_TAGS` (a JSON object) adds tags,
e.g. the Prefect flow run that started the stage, by which the flow finds the run again.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator

import mlflow

from tasks.common.warm_start import WARM_CHILD_ENV
from tasks.params import Params, TrackingParams, flatten
from tasks.params.tracked import tracked_params

PARENT_RUN_ENV = "TTM_MLFLOW_PARENT_RUN_ID"
RUN_TAGS_ENV = "TTM_MLFLOW_TAGS"
# MLflow 3 opens an experiment without this tag in its GenAI view (traces, judges); ours are
# training runs, so the UI shows the runs table with params and metrics instead.
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}


def tracking_uri(tracking: TrackingParams) -> str:
    """MLFLOW_TRACKING_URI in the environment wins, as in mlflow itself (sweeps set it)."""
    return os.environ.get("MLFLOW_TRACKING_URI", tracking.mlflow_tracking_uri)


def tags_from_environment() -> dict[str, str]:
    raw = os.environ.get(RUN_TAGS_ENV, "")
    if not raw:
        return {}
    try:
        tags = json.loads(raw)
    except json.JSONDecodeError as error:
        raise ValueError(f"${RUN_TAGS_ENV} is not JSON: {error}") from None
    if not isinstance(tags, dict):
        raise ValueError(f"${RUN_TAGS_ENV} must be a JSON object of tags")
    return {str(key): str(value) for key, value in tags.items()}


@contextlib.contextmanager
def stage_run(params: Params, stage: str) -> Iterator[mlflow.ActiveRun]:
    """Start a run named after the stage, tagged with it, with the params the stage declares
    in dvc.yaml logged flat (tasks/params/tracked.py)."""
    tracking = params.tracking
    mlflow.set_tracking_uri(tracking_uri(tracking))
    experiment = mlflow.set_experiment(tracking.experiment)
    for key, value in EXPERIMENT_TAGS.items():
        if experiment.tags.get(key) != value:
            mlflow.set_experiment_tag(key, value)
    tags = {**tags_from_environment(), "stage": stage}
    if os.environ.get(WARM_CHILD_ENV):  # started in a fork of a worker's warm-start server
        tags["warm_start"] = "true"
    parent = os.environ.get(PARENT_RUN_ENV) or None
    with mlflow.start_run(run_name=stage, tags=tags, parent_run_id=parent) as run:
        logged = flatten(tracked_params(params, stage))
        mlflow.log_params({key: str(value) for key, value in logged})
        yield run
