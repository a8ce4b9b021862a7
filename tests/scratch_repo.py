"""A scratch copy of the project (git + DVC) on the tiny params, for the end-to-end tests and
the sweep benchmark: the code, dvc.yaml and prefect.toml, the DAG shrunk to seconds."""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import yaml

from flows.serve import start_warm_server, stop_all
from tasks.common import warm_start
from tasks.params import merge, read_yaml
from tests.conftest import HEALTH_GATES_OFF, REPO, TINY_DATA, TINY_SCORERS, TINY_TRAINING

COPIED_FILES = ("dvc.yaml", ".gitignore", "prefect.toml")
COPIED_PACKAGES = ("tasks", "models", "flows", "inbox")  # inbox/: the corpus stage's deps
WARM_SERVER_START_SECONDS = 180.0


def tiny_params(shipped: dict) -> dict:
    """The whole DAG in about a minute: 8 tracks, seconds of scorer and model training."""
    raw = {
        **shipped,
        "data": {
            **shipped["data"],
            **TINY_DATA,
            "num_tracks": 8,
            "eval_prompt_count": 2,
            "min_track_seconds": 20.5,  # two 10-s reference windows per test track (evaluate)
            "max_track_seconds": 22.0,
            "workers": 2,
        },
        "scorers": {**shipped["scorers"], **TINY_SCORERS},
        # seconds of scorer training and one val track: the health gates are off
        "curate": {**shipped["curate"], "segment_seconds": 4.0, **HEALTH_GATES_OFF},
    }
    raw = merge(raw, TINY_TRAINING)
    # params.yaml's trial budget (ablation.trial_overrides) is the embedded corpus's: scratch
    # trials keep the tiny steps, and the rest of the shipped overrides (the trial profile)
    steps = {
        "train.optim.steps": raw["train"]["optim"]["steps"],
        "finetune.optim.steps": raw["finetune"]["optim"]["steps"],
    }
    trial = {**raw["ablation"]["trial_overrides"], **steps}
    raw = {**raw, "ablation": {**raw["ablation"], "trial_overrides": trial}}
    return merge(raw, {"evaluate": {"fad_infinity": False}})  # FAD-inf needs >= 3 clips


def environment(root: Path) -> dict[str, str]:
    return {
        **os.environ,
        # dvc runs `python -m tasks.corpus` through the shell: the interpreter of this venv
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
        "DVC_NO_ANALYTICS": "1",
        "GIT_AUTHOR_NAME": "ci",
        "GIT_AUTHOR_EMAIL": "ci@localhost",
        "GIT_COMMITTER_NAME": "ci",
        "GIT_COMMITTER_EMAIL": "ci@localhost",
    }


def run(command: list[str], cwd: Path, env: dict) -> str:
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"{command} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


def create(root: Path, raw_params: dict) -> dict[str, str]:
    """Copy the project into `root` with `raw_params` as params.yaml; git + dvc init."""
    for name in COPIED_FILES:
        shutil.copy(REPO / name, root / name)
    for package in COPIED_PACKAGES:
        shutil.copytree(
            REPO / package, root / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    (root / "params.yaml").write_text(yaml.safe_dump(raw_params, sort_keys=False))
    env = environment(root)
    run(["git", "init", "-q"], root, env)
    run([sys.executable, "-m", "dvc", "init", "-q"], root, env)
    return env


@contextlib.contextmanager
def warm_stages(root: Path, env: dict[str, str]) -> Iterator[dict[str, str]]:
    """`env` with the stage commands served by a warm-start server on `root`'s code, as a
    trial worker serves them (flows.serve): a tiny DAG's `dvc repro` skips the ~4-8 s of
    imports of each stage. What the stages compute is the same (tests/test_warm_start.py);
    a command the server refuses, or sent before it listens, starts cold."""
    folder = Path(tempfile.mkdtemp(prefix="warm-"))  # short: a socket's path is < 108 bytes
    socket_path = folder / "stages.sock"
    server = start_warm_server(socket_path, env, folder / "server.log", root)
    try:
        deadline = time.monotonic() + WARM_SERVER_START_SECONDS
        while not socket_path.exists() and server.poll() is None:
            if time.monotonic() > deadline:
                break
            time.sleep(0.2)
        yield {**env, warm_start.ENV: str(socket_path)}
    finally:
        stop_all([server])
        shutil.rmtree(folder, ignore_errors=True)


def reproduce(root: Path) -> tuple[dict[str, str], str]:
    """A scratch repo on the tiny params after `dvc repro`, all of it committed: the state
    `dvc exp run` starts from. Returns its environment and what `dvc repro` printed."""
    env = create(root, tiny_params(read_yaml(REPO / "params.yaml")))
    with warm_stages(root, env) as warm:
        output = run([sys.executable, "-m", "dvc", "repro"], root, warm)
    run(["git", "add", "-A"], root, env)
    run(["git", "commit", "-q", "-m", "tiny DAG reproduced"], root, env)
    return env, output


def reproduced(root: Path) -> dict[str, str]:
    """`reproduce`'s repo, its environment."""
    return reproduce(root)[0]


def copy(source: Path, root: Path) -> dict[str, str]:
    """A copy of the scratch repo `source` in `root` (git, DVC cache, workspace, MLflow store)
    that shares nothing with it: the absolute paths in the MLflow store (artifact locations)
    are moved to `root`. Returns the copy's environment."""
    shutil.copytree(source, root, symlinks=True, dirs_exist_ok=True)
    store = root / "mlflow.db"
    if store.exists():
        with contextlib.closing(sqlite3.connect(store)) as db, db:
            tables = db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            for (table,) in tables.fetchall():
                for _, column, kind, *_ in db.execute(f'PRAGMA table_info("{table}")'):
                    if "CHAR" in kind.upper() or "TEXT" in kind.upper():
                        db.execute(
                            f'UPDATE "{table}" SET "{column}" = REPLACE("{column}", ?, ?)',
                            (str(source), str(root)),
                        )
    return environment(root)
