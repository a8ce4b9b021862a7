"""What the sweep and table flows share: the study and its MLflow parent run, the trials
fanned out to the work pool (or run in-process), the reconciliation of crashed trials, and
the final report.

The two flows keep flat, separately declared parameters (budget, storage, deployment) rather
than one shared model, so that each is a plain `--param key=value` on the command line."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any, Literal, cast
from uuid import UUID

import optuna
from prefect import get_run_logger, task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    update_progress_artifact,
)
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import FlowRun
from prefect.deployments import run_deployment
from prefect.exceptions import ObjectNotFound
from prefect.runtime import flow_run
from pydantic import Field, NonNegativeInt, PositiveFloat, PositiveInt

from flows import ablation_report, dvc_runs, mlflow_runs, mlflow_views, studies
from flows.settings import tracking
from flows.trial import ablation_trial
from tasks.params import Params

POLL_SECONDS = 2.0

# The flows' parameter types. Prefect validates a flow's parameters with pydantic before its
# body runs, and a deployment's server refuses a flow run whose parameters break the
# deployment's schema (`enforce_parameter_schema`, on by default): a bad value fails naming
# the flow parameter, before a study, an MLflow run or a report section exists.
StudyName = Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][\w.-]*$")]
TrialCount = NonNegativeInt  # 0: only close and report an existing study
Steps = PositiveInt | None
Seed = NonNegativeInt
Seeds = Annotated[list[NonNegativeInt], Field(min_length=1)] | None
Minutes = PositiveFloat | None


def budget_overrides(
    pretrain_steps: int | None,
    finetune_steps: int | None,
    training_seed: int | None,
    overrides: dict[str, Any] | None,
    trial_overrides: dict[str, Any],
) -> dict[str, Any]:
    """The per-trial budget and seed as params overrides, on top of `overrides`, on top of
    params.yaml's `ablation.trial_overrides` (the trial evaluation profile): a flow's
    `overrides` can set `evaluate.profile: full` back for its trials."""
    fixed = {**trial_overrides, **(overrides or {})}
    if pretrain_steps is not None:
        fixed["train.optim.steps"] = pretrain_steps
    if finetune_steps is not None:
        fixed["finetune.optim.steps"] = finetune_steps
    if training_seed is not None:
        fixed["train.seed"] = training_seed
    return fixed


@task
def require_reproduced(repo: Path) -> None:
    """Trials start from dvc.lock: the DAG must be reproduced first, or every trial would
    recompute what is stale (most stages write uncached reports, so the run-cache can't help)."""
    stale = dvc_runs.stale_stages(repo)
    if stale:
        raise RuntimeError(
            f"stages {stale} are not up to date with dvc.lock: run `dvc repro` (or the "
            "pipeline flow) first, so that trials start from a reproduced DAG"
        )


def start_study(
    repo: Path,
    config: Params,
    kind: Literal["sweep", "table"],
    name: str,
    storage: str,
    fixed: dict[str, Any],
    timeout_seconds: float | None,
    sampler: tuple[str, int],
    logged: dict[str, Any],
) -> optuna.Study:
    """The study's MLflow parent run (with `logged` as params), then the study itself,
    created once before any trial. A study of that name with another specification is
    refused before the parent run exists, so a refusal leaves no run behind."""
    studies.check_resumable(
        storage,
        name,
        studies.study_spec(config, kind, "", fixed, timeout_seconds, dvc_runs.lock_digest(repo)),
    )
    uri, experiment = tracking(repo)
    client = mlflow_runs.client_for(uri)
    tags = {"kind": kind, "study": name, "prefect.flow_run_id": str(flow_run.get_id())}
    parent = mlflow_runs.start_run(client, experiment, f"{kind}-{name}", tags, logged)
    digest = dvc_runs.lock_digest(repo)
    spec = studies.study_spec(config, kind, parent, fixed, timeout_seconds, digest)
    try:
        study = studies.create_study(storage, name, spec, *sampler)
    except Exception:  # the storage went away in between: the run says so
        client.set_terminated(parent, "FAILED")
        raise
    # the runs list's "Sweeps and tables" view has the study's columns while its trials run
    best = [f"best_{spec.objective}"] if kind == "sweep" else []
    mlflow_views.save_view(client, parent, [*best, spec.objective, *spec.metrics], spec.objective)
    return study


def _run_in_process(count: int, study_name: str, storage: str, root: str) -> None:
    for _ in range(count):
        ablation_trial(study_name, storage, root, return_state=True)  # a failed trial goes on


def _run_on_pool(count: int, deployment: str, study_name: str, storage: str) -> None:
    """Create `count` trial flow runs at once; workers start them as they free up (each
    claims its trial then), so adding workers adds throughput. A trial runs in its worker's
    own clone (the deployment's pull step, flows.settings.enter_worker_clone), which on a
    lab's worker host is not this one's path. Waits for all to end, with a
    line per trial as it starts and ends (the flow run's logs, which `prefect deployment run
    --watch` streams) and a progress artifact in the Prefect UI."""
    logger = get_run_logger()
    parent = str(flow_run.get_id())
    # run_deployment is sync-compatible: called from a sync flow it returns the FlowRun itself
    runs = [
        cast(
            FlowRun,
            run_deployment(
                deployment,
                parameters={"study_name": study_name, "storage": storage},
                timeout=0,
                idempotency_key=f"{parent}-{index}",  # a retried sweep does not launch twice
                flow_run_name=f"{study_name}-trial-{index}",
            ),
        )
        for index in range(count)
    ]
    logger.info("launched %d trial flow runs on %s", count, deployment)
    key = f"progress-{_artifact_key(study_name)}"
    progress = cast(UUID, create_progress_artifact(0.0, key=key))
    names = {run.id: run.name for run in runs}
    pending, started = set(names), set()
    with get_client(sync_client=True) as client:
        while pending:
            time.sleep(POLL_SECONDS)
            for run_id in sorted(pending):
                state = client.read_flow_run(run_id).state
                if state is None:
                    continue
                if state.is_running() and run_id not in started:
                    started.add(run_id)
                    logger.info("%s: started", names[run_id])
                if state.is_final():
                    pending.discard(run_id)
                    logger.info("%s: %s", names[run_id], trial_line(storage, study_name, run_id))
                    update_progress_artifact(progress, 100.0 * (count - len(pending)) / count)


def trial_line(storage: str, study_name: str, flow_run_id: object) -> str:
    """How the trial that `flow_run_id` ran ended: state, objective, minutes, and the
    reason of a failure or the step of a pruning."""
    study, spec = studies.load_study(storage, study_name)
    found = [
        trial
        for trial in study.get_trials(deepcopy=False)
        if trial.user_attrs.get("prefect_flow_run_id") == str(flow_run_id)
    ]
    if not found:
        return "ended before it claimed a trial"
    trial = found[0]
    attrs = trial.user_attrs
    line = f"trial {trial.number} {trial.state.name}"
    if trial.state == optuna.trial.TrialState.COMPLETE and trial.value is not None:
        line += f", {spec.objective} {trial.value:.4g}"
    if "trial_seconds" in attrs:
        line += f", {attrs['trial_seconds'] / 60:.1f} min"
    if attrs.get("pruned_at_step") is not None and trial.state.name == "PRUNED":
        line += f", pruned at step {attrs['pruned_at_step']}"
    if attrs.get("fail_reason"):
        line += f": {attrs['fail_reason']}"
    return line


def run_trials(
    count: int, deployment: str | None, study_name: str, storage: str, root: str
) -> None:
    """Each trial as a flow run, on the pool or (deployment None) in this process."""
    if count == 0:
        return
    if deployment is None:
        _run_in_process(count, study_name, storage, root)
    else:
        _run_on_pool(count, deployment, study_name, storage)


def ended_flow_runs(study: optuna.Study) -> dict[str, str]:
    """{flow run id: "final state[: its message]"} of the flow runs holding RUNNING trials
    that have ended: a trial whose process was killed outright never told the study."""
    running = [
        trial.user_attrs.get("prefect_flow_run_id")
        for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    ]
    ended: dict[str, str] = {}
    with get_client(sync_client=True) as client:
        for run_id in filter(None, running):
            try:
                state = client.read_flow_run(run_id).state
            except ObjectNotFound:  # started against another Prefect server: not ours to judge
                continue
            if state is not None and state.is_final():
                ended[run_id] = f"{state.name}" + (f": {state.message}" if state.message else "")
    return ended


@task
def finish(repo: Path, storage: str, study_name: str, configurations: list[str]) -> dict[str, Any]:
    """Close trials whose flow run died before it could (of this sweep or an earlier,
    interrupted one), then build and log the report."""
    study, spec = studies.load_study(storage, study_name)
    uri, _ = tracking(repo)
    client = mlflow_runs.client_for(uri)
    failed = studies.fail_orphaned_trials(study, ended_flow_runs(study))
    for number in failed:  # their MLflow runs were left RUNNING too
        attrs = study.trials[number].user_attrs
        if "mlflow_run_id" in attrs:
            tags = {"fail_reason": attrs["fail_reason"]}
            mlflow_runs.finish_trial_run(client, attrs["mlflow_run_id"], "FAIL", {}, tags, None)
    if failed:
        get_run_logger().warning("trials %s: flow run ended before closing them", failed)
    path, markdown = ablation_report.publish(study, spec, repo, client, configurations)
    create_markdown_artifact(markdown, key=f"ablations-{_artifact_key(study_name)}")
    client.set_terminated(spec.mlflow_parent_run_id, "FINISHED")
    states = [trial.state.name for trial in study.trials]
    return {
        "study": study_name,
        "report": str(path),
        "mlflow_parent_run_id": spec.mlflow_parent_run_id,
        "states": {state: states.count(state) for state in sorted(set(states))},
        "best_value": _best_value(study) if spec.kind == "sweep" else None,
    }


def best_line(result: dict[str, Any]) -> str:
    best = result.get("best_value")
    return "" if best is None else f"; best objective {best:.4g}"


def _best_value(study: optuna.Study) -> float | None:
    try:
        return study.best_value
    except ValueError:  # no complete trial
        return None


def _artifact_key(name: str) -> str:
    """Prefect artifact keys: lowercase letters, digits and dashes."""
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-") or "study"
