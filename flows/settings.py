"""Where the flows find the repository, MLflow and Optuna: params.yaml, overridable by the
environment (MLFLOW_TRACKING_URI) and by flow parameters."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from ruamel.yaml import YAML

from flows.dvc_runs import absolute_tracking_uri
from flows.studies import default_storage
from tasks.common.tracking import tracking_uri
from tasks.params import Params, load_params

# Where `make serve` registers the pool deployment and where workers poll for trials.
WORK_POOL = "ttm-trials"
TRIAL_DEPLOYMENT = "ablation-trial/pool"
# A trial worker's environment: the clone its trials run in (`make serve`, `make worker` and
# `make lab-worker` set it), and the git remote that each finished trial's DVC experiment is
# pushed to (a lab's worker hosts: `make lab-worker`), unset to keep experiments local.
REPOSITORY_ENV = "TTM_REPOSITORY"
PUSH_ENV = "TTM_PUSH_EXPERIMENTS"


def repository(root: str | None) -> Path:
    """The DVC repository the flow works in: `root`, else the working directory (serve and
    workers start there)."""
    path = Path(root or os.getcwd()).resolve()
    if not (path / "dvc.yaml").exists():
        raise ValueError(f"{path} is not the project's repository (no dvc.yaml); pass root=")
    return path


def enter_worker_clone() -> dict[str, str]:
    """The trial deployment's pull step, which Prefect runs in each trial's flow-run process
    before it loads the flow: enter the worker's own clone, $TTM_REPOSITORY. On a lab's
    worker host that is not the path of the clone that registered the deployment."""
    directory = os.environ.get(REPOSITORY_ENV)
    if not directory:
        raise RuntimeError(
            f"${REPOSITORY_ENV} is not set: start trial workers with `make serve`, `make "
            "worker` or `make lab-worker`, which set it to their clone of the repository"
        )
    os.chdir(directory)
    return {"directory": str(Path(directory).resolve())}


def params(repo: Path) -> Params:
    return load_params(repo / "params.yaml")


def committed_params(repo: Path) -> Params:
    """params.yaml as HEAD has it: what a trial reads while other trials run, because
    `dvc exp run --temp -S` writes its overrides into the workspace's params.yaml for a
    moment (its stash), where a concurrent read can find it half-written."""
    text = subprocess.run(
        ["git", "show", "HEAD:params.yaml"], cwd=repo, capture_output=True, text=True, check=True
    ).stdout
    return Params.from_mapping(YAML(typ="safe", pure=True).load(text))


def tracking(repo: Path) -> tuple[str, str]:
    """(tracking URI anchored at the repository, experiment name)."""
    section = params(repo).tracking
    return absolute_tracking_uri(tracking_uri(section), repo), section.experiment


def storage(repo: Path, given: str | None) -> str:
    """The Optuna storage: the flow parameter (a team's PostgreSQL URL; `make serve
    STORAGE=...` makes it the deployments' default), else SQLite in the repository."""
    return given or default_storage(repo)
