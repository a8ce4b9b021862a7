"""The `pipeline` flow: the DVC stages in DAG order, one Prefect task each.

DVC owns the order and the cache; each task is `dvc repro --single-item STAGE`, so a stage
whose inputs did not change is not run and a second flow run reproduces nothing. A stage
killed by a signal or blocked by another DVC process's lock is retried (training resumes
from its last checkpoint); a stage that fails on its own is not. Every task links the
stage's MLflow run from the Prefect run (a link artifact).
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact
from prefect.runtime import flow_run

from flows import dvc_runs, mlflow_runs
from flows.settings import repository, tracking
from tasks.common.tracking import RUN_TAGS_ENV


class StageFailed(RuntimeError):
    def __init__(self, result: dvc_runs.DvcResult) -> None:
        super().__init__(f"{result.name}: {result.failure_reason()}")
        self.result = result


def _is_transient(task, task_run, state) -> bool:
    error = state.result(raise_on_failure=False)
    return isinstance(error, StageFailed) and error.result.transient


@task(retries=2, retry_delay_seconds=10, retry_condition_fn=_is_transient, task_run_name="{stage}")
def reproduce_stage(stage: str, root: str, mlflow_ui_url: str) -> dict:
    logger = get_run_logger()
    repo = Path(root)
    uri, experiment = tracking(repo)
    current = str(flow_run.get_id())
    environment = {
        "MLFLOW_TRACKING_URI": uri,
        RUN_TAGS_ENV: f'{{"prefect.flow_run_id": "{current}"}}',
    }
    log_path = repo / ".prefect" / "logs" / current / f"{stage}.log"
    result = dvc_runs.run_dvc(
        repo, stage, dvc_runs.repro_command(stage), environment, log_path, timeout_seconds=None
    )
    logger.info("dvc repro -s %s: %.1f s\n%s", stage, result.seconds, result.log_tail)
    if not result.succeeded:
        raise StageFailed(result)
    ran = stage in result.ran_stages
    client = mlflow_runs.client_for(uri)
    run = mlflow_runs.latest_stage_run(client, experiment, stage, current if ran else None)
    if run is not None:
        create_link_artifact(
            mlflow_runs.run_url(mlflow_ui_url, run),
            link_text=f"MLflow run of {stage}" + ("" if ran else " (up to date: its last run)"),
            key=f"mlflow-{stage}".replace("_", "-"),
        )
    return {"stage": stage, "ran": ran, "seconds": result.seconds}


@flow(name="pipeline", log_prints=True)
def pipeline(root: str | None = None, mlflow_ui_url: str = "http://127.0.0.1:5000") -> list[dict]:
    """Reproduce the DAG (`dvc repro`, stage by stage): only what changed runs."""
    repo = repository(root)
    stages = dvc_runs.stage_order(repo)
    outcomes = []
    for stage in stages:  # in order: each stage reads what the previous ones wrote
        outcomes.append(reproduce_stage(stage, str(repo), mlflow_ui_url))
    rows = "\n".join(
        f"| {o['stage']} | {'ran' if o['ran'] else 'up to date'} | {o['seconds']:.1f} |"
        for o in outcomes
    )
    create_markdown_artifact(
        f"| stage | status | seconds |\n| --- | --- | --- |\n{rows}\n", key="pipeline-stages"
    )
    return outcomes
