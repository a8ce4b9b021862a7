"""The `ablation-trial` flow: claim one trial from a study, run it as a DVC experiment, close it.

Each trial is one flow run, so it runs wherever a worker of the work pool picks it up (one
worker per GPU: `CUDA_VISIBLE_DEVICES=i prefect worker start --pool ttm-trials --limit 1`);
the trial itself comes from the shared Optuna storage at the moment the run starts, so the
sampler sees every trial finished before it. Its MLflow run is a child of the study's
parent run, and the stages of its experiment nest under it.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from optuna.trial import TrialState
from prefect import flow, get_run_logger, task
from prefect.runtime import flow_run

from flows.settings import repository, tracking
from tasks import dvc_runs, mlflow_runs, pruning, sweep
from tasks.params import ParamsError
from tasks.tracking import PARENT_RUN_ENV, RUN_TAGS_ENV


class TrialFailed(RuntimeError):
    """The trial ended FAIL in the study; the flow run ends Failed with the same reason."""


@task
def claim(storage: str, study_name: str) -> tuple[sweep.ClaimedTrial, sweep.StudySpec]:
    study, spec = sweep.load_study(storage, study_name)
    where = {
        "prefect_flow_run_id": str(flow_run.get_id()),
        "host": socket.gethostname(),
        # the worker's GPU (one worker per GPU): which device this trial trained on
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES", ""),
    }
    return sweep.claim_trial(study, spec, where), spec


@task
def run_experiment(
    repo: Path, name: str, overrides: dict, environment: dict[str, str], log_path: Path,
    spec: sweep.StudySpec,
) -> tuple[dvc_runs.DvcResult, dict[str, float]]:  # fmt: skip
    result = dvc_runs.run_experiment(
        repo, name, overrides, environment, log_path, spec.trial_timeout_seconds
    )
    get_run_logger().info("dvc exp run %s: %.1f s\n%s", name, result.seconds, result.log_tail)
    metrics = dvc_runs.read_metrics(repo, name, spec.metrics) if result.succeeded else {}
    return result, metrics


@flow(name="ablation-trial", log_prints=True)
def ablation_trial(study_name: str, storage: str, root: str | None = None) -> dict:
    """One trial of `study_name` (a sweep or a table created by its flow) in `storage`."""
    started = time.perf_counter()
    repo = repository(root)
    claimed, spec = claim(storage, study_name)
    study, _ = sweep.load_study(storage, study_name)
    name = f"{study_name}-{claimed.label}"
    uri, experiment = tracking(repo)
    client = mlflow_runs.client_for(uri)
    current = str(flow_run.get_id())
    tags = {"kind": f"{spec.kind}-trial", "study": study_name, "optuna.trial": str(claimed.number),
            "dvc.experiment": name, "prefect.flow_run_id": current}  # fmt: skip
    run_id = mlflow_runs.start_run(
        client, experiment, name, tags, claimed.overrides, spec.mlflow_parent_run_id
    )
    sweep.record_attributes(
        study, claimed.number, {"dvc_experiment": name, "mlflow_run_id": run_id}
    )
    log_path = repo / ".prefect" / "logs" / study_name / f"{name}.log"
    try:
        dvc_runs.check_overrides(repo, claimed.overrides)
    except ParamsError as error:
        result, metrics, reason = None, {}, str(error)
    else:
        environment = {
            "MLFLOW_TRACKING_URI": uri,
            PARENT_RUN_ENV: run_id,
            RUN_TAGS_ENV: json.dumps({"prefect.flow_run_id": current, "trial": name}),
            **pruning.trial_environment(storage, study_name, claimed.number),
        }
        result, metrics = run_experiment(repo, name, claimed.overrides, environment, log_path, spec)
        reason = result.failure_reason()
    pruned = pruning.pruned_step(storage, study_name, claimed.number)
    state, value, reason = sweep.trial_outcome(
        result is not None and result.succeeded, reason, metrics, spec, pruned
    )
    timings = mlflow_runs.stage_timings(client, experiment, run_id)
    timings["trial_seconds"] = time.perf_counter() - started
    timings["overhead_seconds"] = timings["trial_seconds"] - timings["stage_seconds"]
    sweep.record_attributes(study, claimed.number, timings)
    sweep.close_trial(study, claimed.number, state, value, metrics, reason)
    outcome_tags = {"fail_reason": reason} if reason else {}
    if pruned is not None:
        outcome_tags["pruned_at_step"] = str(pruned)
    mlflow_runs.finish_trial_run(
        client, run_id, state.name, {**metrics, **timings}, outcome_tags, log_path
    )
    print(f"trial {claimed.number} ({name}): {state.name}" + (f": {reason}" if reason else ""))
    if state == TrialState.FAIL:
        raise TrialFailed(reason)
    return {"trial": claimed.number, "state": state.name, "value": value, **metrics}
