"""DVC as the flows drive it: stage order from DVC's graph, experiment commands, failure
reasons read from DVC's log, overrides checked before anything runs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from dvc.lock import make_lock

from flows import dvc_runs
from tasks.params import ParamsError
from tests.conftest import REPO

KILLED = """Reproducing experiment 's-t1'
Stage 'latents' didn't change, skipping
Running stage 'pretrain':
> python -m tasks.train pretrain
ERROR: failed to reproduce 'pretrain': failed to run: python -m tasks.train pretrain, exited with -9
"""
RAISED = """Running stage 'finetune':
> python -m tasks.train finetune
Traceback (most recent call last):
  File "x.py", line 1, in <module>
ValueError: non-finite loss at step 7 (samples [3, 9])
ERROR: failed to reproduce 'finetune': failed to run: python -m tasks.train finetune, exited with 1
"""


def result(log: str, returncode: int = 1) -> dvc_runs.DvcResult:
    failed = dvc_runs.FAILED_STAGE.findall(log)
    ran = tuple(dvc_runs.RAN_STAGE.findall(log))
    return dvc_runs.DvcResult("x", returncode, 1.0, ran, failed[-1] if failed else None, log)


def test_failure_reasons_name_the_stage_the_signal_and_the_error() -> None:
    killed = result(KILLED)
    assert killed.failure_reason() == "stage pretrain killed by SIGKILL"
    assert killed.transient and killed.ran_stages == ("pretrain",)
    raised = result(RAISED)
    assert raised.failure_reason() == (
        "stage finetune exited with 1: ValueError: non-finite loss at step 7 (samples [3, 9])"
    )
    assert not raised.transient
    locked = result("ERROR: Unable to acquire lock. Most likely another DVC process is running")
    assert locked.transient and locked.failure_reason().startswith("dvc exited with 1")


def test_a_signal_reported_by_a_waiting_shell_is_still_a_signal() -> None:
    """With SHELL unset DVC runs stages under dash, which waits for the command: the
    SIGKILL arrives as exit status 137 after dash's own "Killed" line (as on CI)."""
    via_dash = KILLED.replace("exited with -9", "exited with 137").replace(
        "ERROR:", "Killed\nERROR:"
    )
    killed = result(via_dash)
    assert killed.failure_reason() == "stage pretrain killed by SIGKILL"
    assert killed.transient
    ordinary = result(via_dash.replace("exited with 137", "exited with 2"))
    assert ordinary.failure_reason() == "stage pretrain exited with 2: Killed"
    assert not ordinary.transient


def test_stage_order_is_dvc_yaml_order_and_respects_every_dependency() -> None:
    order = dvc_runs.stage_order(REPO)
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    assert order == list(stages)  # dvc.yaml lists them upstream first
    producers = {
        out if isinstance(out, str) else next(iter(out)): name
        for name, stage in stages.items()
        for out in stage.get("outs", [])
    }
    for name, stage in stages.items():
        for dependency in stage.get("deps", []):
            producer = producers.get(
                dependency.replace("${evaluate.checkpoint}", "checkpoints/finetune")
            )
            if producer:
                assert order.index(producer) < order.index(name), (producer, name)


def test_experiment_command_passes_overrides_in_dvc_grammar() -> None:
    command = dvc_runs.exp_run_command(
        "s-t0", {"model.repa.clap.weight": 0.2, "train.seed": 3, "quality.use_prefix": False}
    )
    assert command[:3] == [sys.executable, "-m", "dvc"]
    assert command[3:8] == ["exp", "run", "--temp", "-n", "s-t0"]
    assert command[8:] == [
        "-S",
        "model.repa.clap.weight=0.2",
        "-S",
        "train.seed=3",
        "-S",
        "quality.use_prefix=false",
    ]


def test_overrides_are_checked_against_params_yaml(tmp_path: Path) -> None:
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    checked = dvc_runs.check_overrides(tmp_path, {"train.timestep.beta_lambda": 0.2})
    assert checked.train.timestep.beta_lambda == 0.2
    with pytest.raises(ParamsError, match=r"train\.timestep\.beta_lamda"):
        dvc_runs.check_overrides(tmp_path, {"train.timestep.beta_lamda": 0.2})
    with pytest.raises(ParamsError, match=r"model\.masking\.mask_ratio"):
        dvc_runs.check_overrides(tmp_path, {"model.masking.mask_ratio": 1.5})


def test_relative_sqlite_tracking_uri_is_anchored_at_the_repository(tmp_path: Path) -> None:
    anchored = dvc_runs.absolute_tracking_uri("sqlite:///mlflow.db", tmp_path)
    assert anchored == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    assert dvc_runs.absolute_tracking_uri("sqlite:////abs/m.db", tmp_path) == "sqlite:////abs/m.db"
    assert dvc_runs.absolute_tracking_uri("http://mlflow:5000", tmp_path) == "http://mlflow:5000"


def test_an_experiment_refused_by_a_held_lock_starts_again(tmp_path: Path) -> None:
    """Another DVC process holding the repository's lock (a second trial copying its
    workspace) makes `dvc exp run` give up after 3 s: the trial waits and starts again."""
    root = tmp_path / "repo"
    root.mkdir()
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    (root / "params.yaml").write_text("x: 1\n")
    stage = "import yaml; open('out.txt', 'w').write(str(yaml.safe_load(open('params.yaml'))))"
    (root / "dvc.yaml").write_text(
        yaml.safe_dump(
            {"stages": {"s": {"cmd": f'python -c "{stage}"', "params": ["x"], "outs": ["out.txt"]}}}
        )
    )
    for command in (["git", "init", "-q"], [sys.executable, "-m", "dvc", "init", "-q"]):
        subprocess.run(command, cwd=root, env=env, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "repro", "-q"], cwd=root, env=env, check=True)
    subprocess.run(["git", "add", "-A"], cwd=root, env=env, check=True)
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x"],
        cwd=root,
        check=True,
    )
    log_path = tmp_path / "exp.log"
    lock = make_lock(str(root / ".dvc" / "tmp" / "lock"))
    lock.lock()

    def release_once_refused() -> None:
        while dvc_runs.LOCKED not in (log_path.read_text() if log_path.exists() else ""):
            time.sleep(0.1)
        lock.unlock()

    releaser = threading.Thread(target=release_once_refused, daemon=True)
    releaser.start()
    result = dvc_runs.run_experiment(
        root, "after-lock", {"x": 2}, {}, log_path, timeout_seconds=300
    )
    releaser.join(timeout=1)
    assert not releaser.is_alive(), "the first attempt was never refused"
    assert result.succeeded and result.ran_stages == ("s",), result.log_tail
    assert "the repository was locked: starting again" in log_path.read_text()


def test_a_lock_refusal_is_told_apart_from_a_failed_stage() -> None:
    refused = result(
        "ERROR: Unable to acquire lock. Most likely another DVC process is running\n", 255
    )
    assert refused.locked_out and refused.transient
    assert not result(KILLED).locked_out and not result(RAISED).locked_out


def test_a_trial_refuses_a_checkout_whose_dag_is_not_the_studys(tmp_path: Path) -> None:
    (tmp_path / "dvc.lock").write_text("schema: '2.0'\nstages: {}\n")
    digest = dvc_runs.lock_digest(tmp_path)
    dvc_runs.refuse_another_dag(tmp_path, digest)  # the study's own DAG
    dvc_runs.refuse_another_dag(tmp_path, "")  # a study that recorded none
    (tmp_path / "dvc.lock").write_text("schema: '2.0'\nstages: {corpus: {}}\n")
    with pytest.raises(ParamsError, match=r"dvc\.lock .* is not the one the study started from"):
        dvc_runs.refuse_another_dag(tmp_path, digest)
