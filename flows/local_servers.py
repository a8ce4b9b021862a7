"""Servers started on loopback by the project's commands (Prefect, `mlflow ui`): a free
port, and waiting until one answers."""

from __future__ import annotations

import socket
import subprocess
import time

import httpx

# MLflow 3's server starts a job runner beside the tracking server: seven Huey consumer
# processes for its GenAI jobs (LLM-judge scorers, prompt optimisation, trace roll-ups), each
# importing mlflow (~6 CPU-s apiece, ~60 CPU-s per start on the 2-core machine). Runs,
# metrics, tables and artifacts never use them, so every server the project starts goes
# without (MLflow's own switch, mlflow.environment_variables).
MLFLOW_SERVER_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


def wait_until_answering(
    url: str, timeout_seconds: float, process: subprocess.Popen | None = None, what: str = ""
) -> None:
    """Poll `url` until it answers 200; fail early if `process` (the server) exits."""
    deadline = time.monotonic() + timeout_seconds
    while not answers(url):
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{what or process.args!s} exited with {process.returncode}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"nothing answered at {url} in {timeout_seconds:.0f} s")
        time.sleep(0.5)
