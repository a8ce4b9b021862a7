"""A lab simulated on one machine (flows/lab.py): a bare "origin" repository, a DVC remote in
a directory (as on a shared file system: the remote every lab host mounts, and the one DVC
setting that needs no server), the head node (`python -m flows.lab head`: PostgreSQL, the
MLflow server, the Prefect server, the deployments) on the user's clone, and two worker
hosts that are clones of origin in their own directories, with their own DVC caches and
their own HOMEs. A 4-trial sweep runs across both hosts; Optuna, MLflow (through its
server) and Prefect agree on every trial, and the user's clone gets every experiment back
from origin. A host whose clone is behind the study's DAG refuses its trials."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import mlflow
import optuna
import pytest
import yaml
from optuna.trial import TrialState

from flows.local_servers import free_port
from tests import scratch_repo
from tests.prefect_stack import EXPERIMENT, PRETRAIN_STEPS
from tests.scratch_repo import run

pytestmark = pytest.mark.slow

HEAD_START_SECONDS = 300.0
HOSTS = ("host-a", "host-b")


@dataclass(frozen=True)
class Lab:
    root: Path  # the folder holding origin, the remote, the clones and the HOMEs
    user: Path  # the user's clone, where the head node runs
    ports: dict[str, int]
    env: dict[str, str]  # a client of the lab: Prefect, MLflow and PostgreSQL on the head

    def arguments(self) -> list[str]:
        return [f"--{name}={port}" for name, port in self.ports.items()]

    def prefect(self, *arguments: str, timeout: float = 900) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "prefect", *arguments],
            cwd=self.user,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )


def host_env(lab_root: Path, name: str, base: dict[str, str]) -> dict[str, str]:
    """A host of its own: HOME (user-level git, DVC and Prefect config) and one core."""
    home = lab_root / f"home-{name}"
    home.mkdir(exist_ok=True)
    return {
        **base,
        "HOME": str(home),
        "PREFECT_HOME": str(home / ".prefect"),
        "OMP_NUM_THREADS": "1",
    }


def _clone(lab_root: Path, name: str, env: dict[str, str]) -> Path:
    clone = lab_root / name
    run(["git", "clone", "-q", str(lab_root / "origin.git"), str(clone)], lab_root, env)
    return clone


def _wait_for_line(log: Path, text: str, process: subprocess.Popen, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while text not in (log.read_text() if log.exists() else ""):
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"no {text!r} in {log}:\n{log.read_text()}")
        time.sleep(1.0)


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def started(
    command: list[str], cwd: Path, env: dict[str, str], log: Path
) -> Iterator[subprocess.Popen]:
    with log.open("w") as output:
        process = subprocess.Popen(
            command, cwd=cwd, env=env, stdout=output, stderr=subprocess.STDOUT
        )
    try:
        yield process
    finally:
        _stop(process)


@pytest.fixture(scope="module")
def lab(request, tmp_path_factory, scratch_dag) -> Iterator[Lab]:
    root = tmp_path_factory.mktemp("lab")
    user = root / "user"
    user.mkdir()
    env = host_env(root, "user", scratch_repo.copy(scratch_dag[0], user))
    remote = root / "dvc-remote"
    run([sys.executable, "-m", "dvc", "remote", "add", "-d", "lab", str(remote)], user, env)
    run(["git", "commit", "-qam", "the lab's DVC remote"], user, env)
    run([sys.executable, "-m", "dvc", "push", "-q"], user, env)
    run(["git", "clone", "-q", "--bare", str(user), str(root / "origin.git")], root, env)
    run(["git", "remote", "add", "origin", str(root / "origin.git")], user, env)
    ports = {"port": free_port(), "mlflow-port": free_port(), "postgres-port": free_port()}
    # the head's state outside pytest's root-only tree: PostgreSQL runs as `postgres` here
    state = Path(tempfile.mkdtemp(prefix="ttm-lab-"))
    state.chmod(0o711)  # the `postgres` account enters it (its files stay private)
    request.addfinalizer(lambda: shutil.rmtree(state, ignore_errors=True))
    client = {
        **env,
        "PREFECT_API_URL": f"http://127.0.0.1:{ports['port']}/api",
        "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{ports['mlflow-port']}",
        "PGPASSFILE": str(state / "pgpass"),
        "COLUMNS": "1000",
    }
    lab = Lab(root, user, ports, client)
    head = [sys.executable, "-m", "flows.lab", "head", f"--state={state}", *lab.arguments()]
    with started(head, user, env, root / "head.log") as process:
        _wait_for_line(
            root / "head.log", "deployments are being served", process, HEAD_START_SECONDS
        )
        yield lab


@contextlib.contextmanager
def worker_host(lab: Lab, name: str, clone: Path | None = None) -> Iterator[subprocess.Popen]:
    """`python -m flows.lab worker` in a clone of origin, with the head's password file."""
    env = host_env(lab.root, name, {k: v for k, v in lab.env.items() if k != "PGPASSFILE"})
    clone = clone or _clone(lab.root, name, env)
    (clone / ".lab").mkdir(exist_ok=True)
    shutil.copy(lab.env["PGPASSFILE"], clone / ".lab" / "pgpass")
    os.chmod(clone / ".lab" / "pgpass", 0o600)
    command = [sys.executable, "-m", "flows.lab", "worker", "--name", name, *lab.arguments()]
    with started(command, clone, env, lab.root / f"{name}.log") as process:
        _wait_for_line(lab.root / f"{name}.log", "worker(s) of", process, HEAD_START_SECONDS)
        yield process


def study(lab: Lab, name: str) -> optuna.Study:
    port, passfile = lab.ports["postgres-port"], lab.env["PGPASSFILE"]
    url = f"postgresql+psycopg://ttm@127.0.0.1:{port}/optuna?passfile={passfile}"
    return optuna.load_study(study_name=name, storage=url)


def test_a_sweep_runs_across_two_worker_hosts_and_every_trial_comes_home(lab: Lab) -> None:
    with worker_host(lab, HOSTS[0]), worker_host(lab, HOSTS[1]):
        result = lab.prefect(
            "deployment",
            "run",
            "ablation-sweep/local",
            "--param",
            "study_name=lab",
            "--param",
            "n_trials=4",
            *PRETRAIN_STEPS,
            "--watch",
        )
    assert result.returncode == 0, result.stdout + result.stderr
    trials = study(lab, "lab").trials
    assert [trial.state for trial in trials] == [TrialState.COMPLETE] * 4, [
        (trial.state, trial.user_attrs.get("fail_reason")) for trial in trials
    ]
    assert {Path(trial.user_attrs["clone"]).name for trial in trials} == set(HOSTS)
    assert all(trial.user_attrs["dvc_experiment_pushed_to"] == "origin" for trial in trials)
    names = sorted(trial.user_attrs["dvc_experiment"] for trial in trials)

    # MLflow, through the server: the sweep's parent run, a finished child run per trial
    # whose artifacts (the trial's DVC log) download through the server's API.
    client = mlflow.MlflowClient(lab.env["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name(EXPERIMENT)
    assert experiment.artifact_location.startswith("mlflow-artifacts:")
    (parent,) = client.search_runs(
        [experiment.experiment_id], filter_string="tags.kind = 'sweep' and tags.study = 'lab'"
    )
    children = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'",
    )
    assert sorted(child.info.run_name for child in children) == names
    assert {child.info.status for child in children} == {"FINISHED"}
    by_name = {child.info.run_name: child for child in children}
    for trial in trials:
        assert (
            by_name[trial.user_attrs["dvc_experiment"]].info.run_id
            == trial.user_attrs["mlflow_run_id"]
        )
    stages = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{children[0].info.run_id}'",
    )
    assert {run_.data.tags["stage"] for run_ in stages} == {"pretrain", "finetune", "evaluate"}
    artifacts = [item.path for item in client.list_artifacts(stages[0].info.run_id)]
    assert artifacts, "a stage run's artifacts, uploaded from a worker host through the server"
    downloaded = Path(client.download_artifacts(stages[0].info.run_id, artifacts[0]))
    assert downloaded.exists()

    # Prefect: every trial's flow run Completed.
    code = (
        "import json\nfrom prefect.client.orchestration import get_client\n"
        "from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName\n"
        "with get_client(sync_client=True) as c:\n"
        " runs = c.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName("
        "like_='lab-trial-')))\n"
        " print(json.dumps(sorted(r.state.name for r in runs)))"
    )
    states = subprocess.run(
        [sys.executable, "-c", code], cwd=lab.user, env=lab.env, capture_output=True, text=True
    )
    assert json.loads(states.stdout.splitlines()[-1]) == ["Completed"] * 4, states.stderr

    # The user's clone: every trial's experiment from origin, one applied with its outputs.
    dvc = [sys.executable, "-m", "dvc"]
    listed = run([*dvc, "exp", "list", "--name-only", "origin"], lab.user, lab.env)
    assert sorted(listed.split()) == names
    run([*dvc, "exp", "pull", "origin", *names], lab.user, lab.env)
    assert sorted(run([*dvc, "exp", "list", "--name-only"], lab.user, lab.env).split()) == names
    shutil.rmtree(lab.user / "checkpoints")
    run([*dvc, "exp", "apply", names[0]], lab.user, lab.env)
    run([*dvc, "pull", "-q"], lab.user, lab.env)
    assert (lab.user / "checkpoints" / "finetune" / "model.safetensors").exists()
    run(["git", "checkout", "-q", "--", "."], lab.user, lab.env)


def test_a_host_whose_clone_is_behind_refuses_its_trials(lab: Lab) -> None:
    """A host cloned before the DAG changed: its dvc.lock is not the study's, so its trial
    ends FAIL saying why instead of producing a result that doesn't compare."""
    name = "host-behind"
    clone = _clone(lab.root, name, host_env(lab.root, name, lab.env))
    params = yaml.safe_load((lab.user / "params.yaml").read_text())
    params["finetune"]["optim"]["steps"] += 1
    (lab.user / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run([sys.executable, "-m", "dvc", "repro", "-q"], lab.user, lab.env)
    run(["git", "commit", "-qam", "one more fine-tuning step"], lab.user, lab.env)
    with worker_host(lab, name, clone):
        result = lab.prefect(
            "deployment",
            "run",
            "ablation-sweep/local",
            "--param",
            "study_name=behind",
            "--param",
            "n_trials=1",
            *PRETRAIN_STEPS,
            "--watch",
        )
    assert "sweep behind: {'FAIL': 1}" in result.stdout, result.stdout + result.stderr
    (trial,) = study(lab, "behind").trials
    assert trial.state == TrialState.FAIL and Path(trial.user_attrs["clone"]).name == name
    assert "is not the one the study started from" in trial.user_attrs["fail_reason"]
