"""Warm stage starts (tasks/common/warm_start.py): a command served by a warm server behaves
like the same command started cold — streams, working directory, environment, arguments,
exit status, death by a signal — and falls back to a cold start whenever the server can't
vouch for the code (another checkout, an edited file), isn't there, or doesn't serve it."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tasks.common.warm_start import ENV
from tests.conftest import REPO

TARGET = ["-m", "tests.warm_target"]


@contextlib.contextmanager
def server(socket_path: Path, module: str = "tests.warm_target") -> Iterator[Path]:
    command = [sys.executable, "-m", "tasks.common.warm_start", "--socket", str(socket_path)]
    command += ["--module", module, "--preload", "tasks.common.warm_start"]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        assert "listening on" in process.stdout.readline()
        yield socket_path
    finally:
        process.kill()
        process.wait()


def command(
    socket_path: Path, *arguments: str, cwd: Path = REPO
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, ENV: str(socket_path), "TOKEN": "abc"}
    return subprocess.run(
        [sys.executable, *TARGET, *arguments], cwd=cwd, env=env, capture_output=True, text=True
    )


def test_a_served_command_behaves_like_a_cold_one(tmp_path: Path) -> None:
    with server(tmp_path / "warm.sock") as path:
        done = command(path, "exit", "3")
    assert done.returncode == 3, done.stderr
    assert done.stdout == f"warm=1 cwd={REPO} args=['3'] token=abc\n"
    assert done.stderr == "to stderr\n"


def test_death_by_a_signal_reaches_the_caller(tmp_path: Path) -> None:
    with server(tmp_path / "warm.sock") as path:
        done = command(path, "kill-self")
    assert done.returncode == -signal.SIGKILL and done.stdout.startswith("warm=1")


def test_killing_the_caller_kills_the_served_command(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    with server(tmp_path / "warm.sock") as path:
        env = {**os.environ, ENV: str(path)}
        caller = subprocess.Popen(
            [sys.executable, *TARGET, "sleep", str(pid_file)], cwd=REPO, env=env
        )
        deadline = time.monotonic() + 60
        while not pid_file.exists() or not pid_file.read_text():
            assert time.monotonic() < deadline and caller.poll() is None
            time.sleep(0.05)
        child = int(pid_file.read_text())
        assert child != caller.pid  # it ran in the server's fork
        caller.kill()
        caller.wait()
        deadline = time.monotonic() + 10
        while Path(f"/proc/{child}").exists() and _state(child) != "Z":
            assert time.monotonic() < deadline, "the served command outlived its caller"
            time.sleep(0.05)


def _state(pid: int) -> str:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    return "gone"


def test_other_code_in_the_working_directory_starts_cold(tmp_path: Path) -> None:
    """A `dvc exp run --temp` copy with the server's code runs warm; edited, it runs cold."""
    checkout = tmp_path / "checkout"
    shutil.copytree(
        REPO / "tasks", checkout / "tasks", ignore=shutil.ignore_patterns("__pycache__")
    )
    (checkout / "tests").mkdir()
    for name in ("__init__.py", "warm_target.py"):
        shutil.copy(REPO / "tests" / name, checkout / "tests" / name)
    shutil.copy(REPO / "dvc.yaml", checkout / "dvc.yaml")
    with server(tmp_path / "warm.sock") as path:
        assert command(path, "exit", "0", cwd=checkout).stdout.startswith("warm=1")
        edited = checkout / "tasks" / "common" / "warm_start.py"
        edited.write_text(edited.read_text() + "\n# edited after the server started\n")
        cold = command(path, "exit", "0", cwd=checkout)
    assert cold.returncode == 0 and cold.stdout.startswith("warm=0")


@pytest.mark.parametrize("served", ["tasks.corpus", None])
def test_no_server_or_another_command_starts_cold(tmp_path: Path, served: str | None) -> None:
    path = tmp_path / "warm.sock"
    with server(path, served) if served else contextlib.nullcontext(path):
        done = command(path, "exit", "5")
    assert done.returncode == 5 and done.stdout.startswith("warm=0")


def test_the_server_leaves_when_whoever_started_it_is_gone(tmp_path: Path) -> None:
    """A `flows.serve` killed outright must not leave its warm servers behind."""
    socket_path = tmp_path / "warm.sock"
    start = (
        "import os, subprocess, sys\n"
        "server = subprocess.Popen([sys.executable, '-m', 'tasks.common.warm_start', '--socket',"
        f" {str(socket_path)!r}, '--module', 'tests.warm_target', '--parent', str(os.getpid())],"
        " stdout=subprocess.DEVNULL)\n"
        "print(server.pid)\n"
    )
    starter = subprocess.run(
        [sys.executable, "-c", start], cwd=REPO, capture_output=True, text=True, check=True
    )
    orphan = int(starter.stdout)
    deadline = time.monotonic() + 30
    while Path(f"/proc/{orphan}").exists() and _state(orphan) != "Z":
        assert time.monotonic() < deadline, "the orphaned warm server kept running"
        time.sleep(0.1)


def test_the_workers_serve_every_stage_command_of_dvc_yaml() -> None:
    from flows.serve import stage_packages
    from tests.test_layout import STAGE_PACKAGES

    assert stage_packages(REPO) == list(STAGE_PACKAGES)
