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
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.trial import TrialState
from prefect import flow, get_run_logger, task
from prefect.runtime import flow_run

from flows import dvc_runs, mlflow_runs, studies
from flows.settings import PUSH_ENV, committed_params, repository, tracking
from tasks.common.score_cache import SHARED_CACHE_ENV
from tasks.common.tracking import PARENT_RUN_ENV, RUN_TAGS_ENV
from tasks.params import ParamsError
from tasks.train import pruning


class TrialFailed(RuntimeError):
    """The trial ended FAIL in the study; the flow run ends Failed with the same reason."""


@task
def claim(
    repo: Path, storage: str, study_name: str
) -> tuple[studies.ClaimedTrial, studies.StudySpec]:
    study, spec = studies.load_study(storage, study_name)
    where = {
        "prefect_flow_run_id": str(flow_run.get_id()),
        "host": socket.gethostname(),
        "clone": str(repo),  # a lab's hosts each run trials in a clone of their own
        # the worker's GPU (one worker per GPU): which device this trial trained on
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES", ""),
    }
    return studies.claim_trial(study, spec, where), spec


@task
def run_experiment(
    repo: Path,
    name: str,
    *,
    overrides: dict,
    environment: dict[str, str],
    log_path: Path,
    spec: studies.StudySpec,
) -> tuple[dvc_runs.DvcResult, dict[str, float]]:
    result = dvc_runs.run_experiment(
        repo,
        name,
        overrides=overrides,
        environment=environment,
        log_path=log_path,
        timeout_seconds=spec.trial_timeout_seconds,
    )
    get_run_logger().info("dvc exp run %s: %.1f s\n%s", name, result.seconds, result.log_tail)
    metrics = dvc_runs.read_metrics(repo, name, spec.metrics) if result.succeeded else {}
    return result, metrics


@dataclass(frozen=True)
class TrialRun:
    """One claimed trial and where it is recorded: its study, DVC experiment, MLflow run."""

    repo: Path
    storage: str
    study: optuna.Study
    spec: studies.StudySpec
    claimed: studies.ClaimedTrial
    name: str  # the DVC experiment and the MLflow run: <study>-t<N> or <study>-<cell>-s<seed>
    tracking_uri: str
    experiment: str
    mlflow_run_id: str

    @property
    def log_path(self) -> Path:
        return self.repo / ".prefect" / "logs" / self.study.study_name / f"{self.name}.log"


def open_trial(repo: Path, storage: str, study_name: str) -> TrialRun:
    claimed, spec = claim(repo, storage, study_name)
    study, _ = studies.load_study(storage, study_name)
    name = f"{study_name}-{claimed.label}"
    uri, experiment = tracking(repo)
    tags = {
        "kind": f"{spec.kind}-trial",
        "study": study_name,
        "optuna.trial": str(claimed.number),
        "prefect.flow_run_id": str(flow_run.get_id()),
    }
    run_id = mlflow_runs.start_run(
        mlflow_runs.client_for(uri),
        experiment,
        name,
        tags=tags,
        params=claimed.overrides,
        parent_run_id=spec.mlflow_parent_run_id,
    )
    studies.record_attributes(study, claimed.number, {"mlflow_run_id": run_id})
    return TrialRun(
        repo=repo,
        storage=storage,
        study=study,
        spec=spec,
        claimed=claimed,
        name=name,
        tracking_uri=uri,
        experiment=experiment,
        mlflow_run_id=run_id,
    )


@dataclass(frozen=True)
class ExperimentOutcome:
    """How a trial's DVC experiment ended: its metrics, or why it failed."""

    succeeded: bool
    metrics: dict[str, float]
    reason: str  # empty when it succeeded
    seconds: float = 0.0  # the `dvc exp run` process's wall time, attempts included


def execute(trial: TrialRun) -> ExperimentOutcome:
    """Run the trial's DVC experiment with the trial's params, linked to its MLflow run."""
    try:
        dvc_runs.refuse_another_dag(trial.repo, trial.spec.dvc_lock_sha256)
        dvc_runs.check_overrides(trial.repo, trial.claimed.overrides)
    except ParamsError as error:
        return ExperimentOutcome(succeeded=False, metrics={}, reason=str(error))
    environment = {
        "MLFLOW_TRACKING_URI": trial.tracking_uri,
        PARENT_RUN_ENV: trial.mlflow_run_id,
        RUN_TAGS_ENV: json.dumps(
            {"prefect.flow_run_id": str(flow_run.get_id()), "trial": trial.name}
        ),
        **pruning.trial_environment(trial.storage, trial.study.study_name, trial.claimed.number),
        # the repository's score cache, not an empty one in the experiment's --temp copy
        SHARED_CACHE_ENV: str(
            (trial.repo / committed_params(trial.repo).curate.cache_dir).resolve()
        ),
    }
    result, metrics = run_experiment(
        trial.repo,
        trial.name,
        overrides=trial.claimed.overrides,
        environment=environment,
        log_path=trial.log_path,
        spec=trial.spec,
    )
    return ExperimentOutcome(result.succeeded, metrics, result.failure_reason(), result.seconds)


def shared_experiment(trial: TrialRun) -> dict[str, str]:
    """The finished trial's DVC experiment by name, pushed to the git remote $TTM_PUSH_EXPERIMENTS
    names (with its outputs, to the DVC remote) where the worker sets one: a lab's worker
    host, whose clone nobody else reads. A failed push keeps the trial and says why."""
    kept = {"dvc_experiment": trial.name}
    remote = os.environ.get(PUSH_ENV)
    if not remote:
        return kept
    error = dvc_runs.push_experiment(trial.repo, remote, trial.name)
    if error:
        get_run_logger().warning("dvc exp push %s %s failed: %s", remote, trial.name, error)
        return {**kept, "dvc_push_error": error}
    return {**kept, "dvc_experiment_pushed_to": remote}


def close(trial: TrialRun, outcome: ExperimentOutcome, seconds: float, opening: float):
    """Record the outcome, the time split and the reason on the trial and its MLflow run.
    `seconds` is the trial's wall time so far, `opening` the part before its experiment."""
    number, metrics = trial.claimed.number, outcome.metrics
    pruned = pruning.pruned_step(trial.storage, trial.study.study_name, number)
    state, value, reason = studies.trial_outcome(
        outcome.succeeded, outcome.reason, metrics, trial.spec, pruned
    )
    client = mlflow_runs.client_for(trial.tracking_uri)
    if pruned is not None:
        mlflow_runs.mark_stopped_stage_runs(client, trial.experiment, trial.mlflow_run_id)
    timings = mlflow_runs.stage_timings(client, trial.experiment, trial.mlflow_run_id)
    timings["trial_seconds"] = seconds
    timings["overhead_seconds"] = seconds - timings["stage_seconds"]
    # Where the overhead goes (benchmarks/sweep_overhead prints it): claiming the trial and
    # opening its MLflow run; DVC's own work plus each stage's interpreter start-up inside the
    # experiment; reading its metrics back and closing (up to this point).
    timings["opening_seconds"] = opening
    timings["experiment_outside_stages_seconds"] = outcome.seconds - timings["stage_seconds"]
    timings["closing_seconds"] = seconds - opening - outcome.seconds
    # `dvc exp run --temp` keeps only an experiment that finished: a name to look up only then
    # (a trial whose flow run died never gets here, so it has none either).
    kept = shared_experiment(trial) if outcome.succeeded else {}
    studies.record_attributes(trial.study, number, {**timings, **kept})
    studies.close_trial(trial.study, number, state, value, metrics, reason)
    tags = {"fail_reason": reason} if reason else {}
    if outcome.succeeded:
        tags["dvc.experiment"] = trial.name
        if kept.get("dvc_push_error"):
            tags["dvc.push_error"] = str(kept["dvc_push_error"])
    if pruned is not None:
        tags["pruned_at_step"] = str(pruned)
    mlflow_runs.finish_trial_run(
        client, trial.mlflow_run_id, state.name, {**metrics, **timings}, tags, trial.log_path
    )
    print(f"trial {number} ({trial.name}): {state.name}" + (f": {reason}" if reason else ""))
    return state, value


@flow(name="ablation-trial", log_prints=True)
def ablation_trial(study_name: str, storage: str, root: str | None = None) -> dict:
    """One trial of `study_name` (a sweep or a table created by its flow) in `storage`."""
    started = time.perf_counter()
    trial = open_trial(repository(root), storage, study_name)
    opening = time.perf_counter() - started
    try:
        outcome = execute(trial)
    except Exception as error:  # closed as FAIL with the error, then the flow run fails too
        crashed = ExperimentOutcome(False, {}, f"{type(error).__name__}: {error}")
        close(trial, crashed, time.perf_counter() - started, opening)
        raise
    state, value = close(trial, outcome, time.perf_counter() - started, opening)
    if state == TrialState.FAIL:
        raise TrialFailed(outcome.reason)
    return {"trial": trial.claimed.number, "state": state.name, "value": value, **outcome.metrics}
