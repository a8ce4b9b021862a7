"""A lab simulated on one machine (flows/lab.py), for tests/lab/ and benchmarks/lab_scaling:
a bare "origin" repository, a DVC remote in a directory (as on a shared file system: the
remote every lab host mounts, and the one DVC setting that needs no server), the head node
(`python -m flows.lab head`: PostgreSQL, the MLflow server, the Prefect server, the
deployments) on the user's clone, and worker hosts that are clones of origin in their own
directories, with their own DVC caches and their own HOMEs."""

from __future__ import annotations

import contextlib
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

import optuna

from flows.local_servers import free_port
from tasks.train.pruning import open_storage
from tests import scratch_repo
from tests.prefect_stack import Stack, stop
from tests.processes import kill_tree, processes
from tests.scratch_repo import run

HEAD_START_SECONDS = 300.0
# Prefect's shortest flow-run heartbeat: a killed host's trial is Crashed after 3 x 30 s.
HEARTBEAT_SECONDS = "30"


@dataclass(frozen=True)
class Lab:
    root: Path  # the folder holding origin, the remote, the clones and the HOMEs
    user: Path  # the user's clone, where the head node runs
    ports: dict[str, int]
    env: dict[str, str]  # a client of the lab: Prefect, MLflow and PostgreSQL on the head

    def arguments(self) -> list[str]:
        return [f"--{name}={port}" for name, port in self.ports.items()]

    def prefect(self, *arguments: str, timeout: float = 900) -> subprocess.CompletedProcess:
        """The Prefect CLI from the user's clone, as a client of the head node."""
        stack = Stack(self.user, self.env, self.env["PREFECT_API_URL"])
        return stack.prefect(*arguments, timeout=timeout)


def host_env(lab_root: Path, name: str, base: dict[str, str]) -> dict[str, str]:
    """A host of its own: HOME (user-level git, DVC and Prefect config) and one core."""
    home = lab_root / f"home-{name}"
    home.mkdir(exist_ok=True)
    return {
        **base,
        "HOME": str(home),
        "PREFECT_HOME": str(home / ".prefect"),
        "OMP_NUM_THREADS": "1",
        "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": HEARTBEAT_SECONDS,
    }


def clone_of_origin(lab_root: Path, name: str, env: dict[str, str]) -> Path:
    clone = lab_root / name
    run(["git", "clone", "-q", str(lab_root / "origin.git"), str(clone)], lab_root, env)
    return clone


def _wait_for_line(log: Path, text: str, process: subprocess.Popen, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while text not in (log.read_text() if log.exists() else ""):
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"no {text!r} in {log}:\n{log.read_text()}")
        time.sleep(1.0)


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
        stop(process)


@contextlib.contextmanager
def running(root: Path, scratch_dag: Path) -> Iterator[Lab]:
    """A lab in `root` whose user's clone is a copy of the reproduced scratch DAG, its head
    node running until the block ends (worker hosts: `worker_host`)."""
    user = root / "user"
    user.mkdir()
    env = host_env(root, "user", scratch_repo.copy(scratch_dag, user))
    remote = root / "dvc-remote"
    run([sys.executable, "-m", "dvc", "remote", "add", "-d", "lab", str(remote)], user, env)
    run(["git", "commit", "-qam", "the lab's DVC remote"], user, env)
    run([sys.executable, "-m", "dvc", "push", "-q"], user, env)
    run(["git", "clone", "-q", "--bare", str(user), str(root / "origin.git")], root, env)
    run(["git", "remote", "add", "origin", str(root / "origin.git")], user, env)
    ports = {"port": free_port(), "mlflow-port": free_port(), "postgres-port": free_port()}
    # the head's state outside pytest's root-only tree: as root, PostgreSQL runs as `postgres`
    state = Path(tempfile.mkdtemp(prefix="ttm-lab-"))
    state.chmod(0o711)  # the `postgres` account enters it (its files stay private)
    client = {
        **env,
        "PREFECT_API_URL": f"http://127.0.0.1:{ports['port']}/api",
        "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{ports['mlflow-port']}",
        "PGPASSFILE": str(state / "pgpass"),
        "COLUMNS": "1000",
    }
    lab = Lab(root, user, ports, client)
    head = [sys.executable, "-m", "flows.lab", "head", f"--state={state}", *lab.arguments()]
    try:
        with started(head, user, env, root / "head.log") as process:
            _wait_for_line(
                root / "head.log", "deployments are being served", process, HEAD_START_SECONDS
            )
            yield lab
    finally:
        shutil.rmtree(state, ignore_errors=True)


@contextlib.contextmanager
def worker_host(lab: Lab, name: str, clone: Path | None = None) -> Iterator[subprocess.Popen]:
    """`python -m flows.lab worker` in a clone of origin, with the head's password file."""
    env = host_env(lab.root, name, {k: v for k, v in lab.env.items() if k != "PGPASSFILE"})
    clone = clone or clone_of_origin(lab.root, name, env)
    (clone / ".lab").mkdir(exist_ok=True)
    shutil.copy(lab.env["PGPASSFILE"], clone / ".lab" / "pgpass")
    os.chmod(clone / ".lab" / "pgpass", 0o600)
    command = [sys.executable, "-m", "flows.lab", "worker", "--name", name, *lab.arguments()]
    with started(command, clone, env, lab.root / f"{name}.log") as process:
        _wait_for_line(lab.root / f"{name}.log", "worker(s) of", process, HEAD_START_SECONDS)
        yield process


def study(lab: Lab, name: str) -> optuna.Study:
    """The study on the head's PostgreSQL, through one engine per process (the tests poll)."""
    port, passfile = lab.ports["postgres-port"], lab.env["PGPASSFILE"]
    url = f"postgresql+psycopg://ttm@127.0.0.1:{port}/optuna?passfile={passfile}"
    return optuna.load_study(study_name=name, storage=open_storage(url))


def crash_mlflow_server(lab: Lab) -> None:
    """The head's MLflow server dies at once, with everything it started (SIGKILL to its
    process group): the head's supervisor must notice and start it again."""
    port = str(lab.ports["mlflow-port"]).encode()
    for process in processes():
        if (
            b"server" in process.argv
            and port in process.argv
            and any(Path(arg.decode()).name == "mlflow" for arg in process.argv)
        ):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(os.getpgid(process.pid), signal.SIGKILL)
                return
    raise LookupError(f"no `mlflow server ... --port {port.decode()}` process is running")


def kill_host(process: subprocess.Popen) -> None:
    """A host that dies: SIGKILL to its worker command and everything below it at once."""
    kill_tree(process.pid)
    process.wait()
