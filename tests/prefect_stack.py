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
        code = (
            "import json\nfrom prefect.client.orchestration import get_client\n"
            f"with get_client(sync_client=True) as c:\n r = c.read_flow_run('{flow_run_id}')\n"
            " print(json.dumps({'state': r.state.name, 'message': r.state.message}))"
        )
        return json.loads(self.python(code).strip().splitlines()[-1])


def _deployments_served(stack: Stack, names: Sequence[str], serve: subprocess.Popen, log: Path):
    deadline = time.monotonic() + SERVER_START_SECONDS
    while time.monotonic() < deadline:
        if serve.poll() is not None:
            raise RuntimeError(f"flows.serve exited with {serve.returncode}:\n{log.read_text()}")
        listed = stack.prefect("deployment", "ls", timeout=60).stdout
        if all(name in listed for name in names) and "deployments are being served" in (
            log.read_text()
        ):
            return
        time.sleep(1)
    raise TimeoutError(f"deployments {names} were not served:\n{log.read_text()}")


def _stop(process: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
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
            _stop(serve)
    finally:
        _stop(server, signal.SIGINT)
