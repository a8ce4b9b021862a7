"""MLflow for every stage: one run per stage execution, params flattened, metrics, artifacts."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from typing import Any

import mlflow

from tasks.params import TrackingParams, flatten


def tracking_uri(tracking: TrackingParams) -> str:
    """MLFLOW_TRACKING_URI in the environment wins, as in mlflow itself (sweeps set it)."""
    return os.environ.get("MLFLOW_TRACKING_URI", tracking.mlflow_tracking_uri)


@contextlib.contextmanager
def stage_run(
    tracking: TrackingParams, stage: str, params: Mapping[str, Any]
) -> Iterator[mlflow.ActiveRun]:
    """Start a run named after the stage, tagged with it, with `params` logged flat."""
    mlflow.set_tracking_uri(tracking_uri(tracking))
    mlflow.set_experiment(tracking.experiment)
    with mlflow.start_run(run_name=stage, tags={"stage": stage}) as run:
        mlflow.log_params({key: str(value) for key, value in flatten(params)})
        yield run
