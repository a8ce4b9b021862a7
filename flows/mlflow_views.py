"""The experiment's saved runs view "Sweeps and tables": in the MLflow UI, the runs list's
Views menu opens the sweeps' and tables' parent runs, their trials nested under them, with the
key metrics as columns.

MLflow's runs list shows no metric column by default (Source, Models and Dataset only) and
keeps a browser's columns in that browser; a saved view is what the experiment itself can
carry, for every browser and every server that shows it. MLflow 3.x keeps a view as an
experiment tag, `mlflow.sharedViewState.<id>`, holding `{"name", "createdAt", "updatedAt",
"state"}` with `state` the view as JSON (the runs search and the table's columns; MLflow
never saves which rows are expanded, so a parent's trials open with its `+`). The view is
rewritten each time a sweep or table starts and reports, with the columns of every study so
far.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable

import mlflow

VIEW_ID = "sweeps-and-tables"
VIEW_NAME = "Sweeps and tables"
VIEW_TAG = f"mlflow.sharedViewState.{VIEW_ID}"
# The parents (tagged with their study) and their trials (tagged too); the stage runs of
# `dvc repro` and of each trial, which have no study, stay in MLflow's default list.
SEARCH_FILTER = "tags.study LIKE '%'"


def column(metric: str) -> str:
    """A metric's column as the runs table names it."""
    return f"metrics.`{metric}`"


def _rank(metric: str, objective: str) -> tuple[int, str]:
    """The sweep's result first, the trials' figures next, then the counts and timings."""
    if metric.startswith("best_"):
        return 0, metric
    if metric == objective:
        return 1, ""
    if metric.startswith("trials_"):  # trials_complete, _pruned, _fail
        return 4, metric
    if metric in ("overhead_fraction", "trial_seconds_mean"):
        return 5, metric
    if metric.endswith("_mean"):  # a table's configuration means
        return 3, metric
    return 2, metric


def view_state(metrics: Iterable[str], objective: str) -> dict:
    names = sorted(set(metrics), key=lambda metric: _rank(metric, objective))
    ordered = [column(name) for name in names]
    return {
        "searchFilter": SEARCH_FILTER,
        "orderByKey": "attributes.start_time",
        "orderByAsc": False,
        "selectedColumns": ordered,
        "columnOrder": ordered,
        # wide enough for the header and a float's first 12 digits (MLflow's 150 px cuts
        # `val_flow_matching` and `0.12617799…`)
        "columnWidths": {column(n): min(320, max(170, 8 * len(n) + 40)) for n in names},
    }


def _saved(client: mlflow.MlflowClient, experiment_id: str) -> tuple[list[str], int | None]:
    """The view's metric columns and creation time (none before the first study, or where
    the tag was edited into something else: then rewritten from what the flows know)."""
    tag = client.get_experiment(experiment_id).tags.get(VIEW_TAG)
    try:
        envelope = json.loads(tag or "")
        columns = json.loads(envelope["state"]).get("selectedColumns", [])
        created = int(envelope["createdAt"])
    except (ValueError, KeyError, TypeError, AttributeError):
        return [], None
    prefix = column("")[:-1]
    return [name[len(prefix) : -1] for name in columns if name.startswith(prefix)], created


def shown_metrics(client: mlflow.MlflowClient, experiment_id: str) -> list[str]:
    """The metrics the experiment's view shows now, in its order."""
    return _saved(client, experiment_id)[0]


def save_view(
    client: mlflow.MlflowClient, parent_run_id: str, metrics: Iterable[str], objective: str
) -> None:
    """Add `metrics` to the view's columns in the experiment of `parent_run_id` (creating the
    view), keeping the columns it shows already."""
    experiment_id = client.get_run(parent_run_id).info.experiment_id
    shown, created = _saved(client, experiment_id)
    now = int(time.time() * 1000)
    envelope = {
        "name": VIEW_NAME,
        "createdAt": created or now,
        "updatedAt": now,
        "state": json.dumps(view_state([*shown, *metrics], objective)),
    }
    client.set_experiment_tag(experiment_id, VIEW_TAG, json.dumps(envelope))
