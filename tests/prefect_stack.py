"""A local Prefect stack for the end-to-end tests and the sweep benchmark: a server on a free
loopback port with its own PREFECT_HOME, and `python -m flows.serve` (work pool, workers,
served deployments) in a scratch repository, exactly as `make serve` starts them."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import mlflow
import optuna

from flows.local_servers import free_port, wait_until_answering

# prefect_test_harness's 30 s is too tight on 2 cores (~25 s measured): wait longer.
SERVER_START_SECONDS = 180


@dataclass(frozen=True)
class Stack:
    root: Path
    env: dict[str, str]  # PREFECT_API_URL, PREFECT_HOME, MLFLOW_TRACKING_URI, PATH
    api_url: str

    def prefect(self, *arguments: str, timeout: float = 1200) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "prefect", *arguments],
            cwd=self.root,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def python(self, code: str, timeout: float = 1200) -> str:
        """Run `code` in the scratch repository against the stack; returns its stdout."""
        result = subprocess.run(
            [sys.executable, "-c", code],
            cwd=self.root,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert result.returncode == 0, f"{code}\n{result.stdout}\n{result.stderr}"
        return result.stdout

    def flow_run(self, flow_run_id: str) -> dict:
        """The flow run's state, read from the server's REST API (`GET /flow_runs/{id}`): the
        tests poll it, and a Prefect client process per poll costs ~2 s of CPU."""
        response = httpx.get(f"{self.api_url}/flow_runs/{flow_run_id}", timeout=30)
        response.raise_for_status()
        state = response.json()["state"]
        return {"state": state["name"], "message": state["message"]}


def _deployments_served(stack: Stack, names: Sequence[str], serve: subprocess.Popen, log: Path):
    deadline = time.monotonic() + SERVER_START_SECONDS
    while time.monotonic() < deadline:
        if serve.poll() is not None:
            raise RuntimeError(f"flows.serve exited with {serve.returncode}:\n{log.read_text()}")
        # the log first: each `prefect deployment ls` is a CLI process (~2 s of CPU)
        if "deployments are being served" in log.read_text():
            listed = stack.prefect("deployment", "ls", timeout=60).stdout
            if all(name in listed for name in names):
                return
        time.sleep(1)
    raise TimeoutError(f"deployments {names} were not served:\n{log.read_text()}")


def stop(process: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    """`sig`, then SIGKILL after 30 s."""
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def running(root: Path, env: dict[str, str], serve_arguments: Sequence[str]) -> Iterator[Stack]:
    """A Prefect server and `flows.serve` for `root` until the block ends."""
    port = free_port()
    home = root / ".prefect-test-home"
    home.mkdir(exist_ok=True)
    api_url = f"http://127.0.0.1:{port}/api"
    # COLUMNS: the CLI's rich console wraps at 80 columns without a terminal; the tests
    # read whole log lines from `--watch`, as a user's wide terminal shows them.
    stack_env = {**env, "PREFECT_API_URL": api_url, "PREFECT_HOME": str(home), "COLUMNS": "1000"}
    stack = Stack(root, stack_env, api_url)
    server_log, serve_log = home / "server.log", home / "serve.log"
    with server_log.open("w") as log:
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "prefect",
                "server",
                "start",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            cwd=root,
            env=stack_env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until_answering(f"{api_url}/health", SERVER_START_SECONDS, server, "prefect server")
        with serve_log.open("w") as log:
            serve = subprocess.Popen(
                [sys.executable, "-m", "flows.serve", *serve_arguments],
                cwd=root,
                env=stack_env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            names = ["ablation-sweep/local", "ablation-table/local", "pipeline/local"]
            _deployments_served(stack, [*names, "ablation-trial/pool"], serve, serve_log)
            yield stack
        finally:
            stop(serve)
    finally:
        stop(server, signal.SIGINT)


# --------------------------------------------------------------------------- the e2e tests' reads
# What the end-to-end sweep and table tests (tests/flows/test_*_e2e.py) read back from a stack.
EXPERIMENT = "score-aware-ttm"
# The trials' pretraining budget: the scratch DAG's 12 steps cut to the fewest that still
# take every path of a trial's training (eval_every 4, checkpoint_every 4): a validation,
# sample log, pruning report and checkpoint at step 4, then the final one at step 5.
PRETRAIN_STEPS = ("--param", "pretrain_steps=5")


def study(root: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{root / 'optuna.db'}")


def runs_of(root: Path, parent_run_id: str) -> list:
    client = mlflow.MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(EXPERIMENT)
    return client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}'"
    )


def parent_run(root: Path, study_name: str) -> tuple[mlflow.MlflowClient, Any]:
    client = mlflow.MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(EXPERIMENT)
    (run_,) = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.kind = 'sweep' and tags.study = '{study_name}'",
    )
    return client, run_


def prefect_artifacts(stack: Stack, key: str) -> list[dict]:
    """The Prefect artifacts under `key`, newest first."""
    shown = stack.prefect("artifact", "inspect", key, "--output", "json", timeout=120)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    return json.loads(shown.stdout)
