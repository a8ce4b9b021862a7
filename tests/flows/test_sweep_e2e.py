"""End to end, as a user drives it: a Prefect server, `python -m flows.serve` with two
"GPU" workers (CUDA_VISIBLE_DEVICES=0 and 1; on this CPU machine they only differ by the
variable), and `prefect deployment run ablation-sweep/local` on a scratch repository whose
tiny DAG is reproduced and committed (the `stack` fixture, tests/flows/conftest.py). Then
Optuna, MLflow, DVC and reports/ are checked; a second sweep loses two trials' processes.
The table and pipeline deployments are tests/flows/test_table_e2e.py, on the other worker."""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import time
from pathlib import Path

import optuna
import pytest

from tests.prefect_stack import PRETRAIN_STEPS, parent_run, prefect_artifacts, runs_of, study
from tests.processes import kill_tree, processes
from tests.scratch_repo import run

# One xdist group (conftest.XDIST_GROUPS): its tests share the module's Prefect stack.
pytestmark = pytest.mark.slow


def test_sweep_deployment_runs_three_trials_end_to_end(stack):
    started = time.perf_counter()
    result = stack.prefect(
        "deployment",
        "run",
        "ablation-sweep/local",
        "--param",
        "study_name=e2e",
        "--param",
        "n_trials=3",
        *PRETRAIN_STEPS,
        "--watch",
    )
    wall = time.perf_counter() - started
    assert result.returncode == 0, result.stdout + result.stderr
    print(f"3-trial sweep: {wall:.0f} s wall")
    # --watch streams the sweep's log: a line per trial as it starts and ends, the summary
    ended = re.findall(r"e2e-trial-\d: trial \d (?:COMPLETE|PRUNED|FAIL)", result.stdout)
    assert len(ended) == 3 and result.stdout.count(": started") == 3, result.stdout
    assert (
        "sweep e2e: {'COMPLETE': 3}" in result.stdout
        and "reports/ablations/e2e.md" in result.stdout
    )
    (progress, *_) = prefect_artifacts(stack, "progress-e2e")
    assert progress["type"] == "progress" and progress["data"] == 100.0

    trials = study(stack.root, "e2e").trials
    assert len(trials) == 3
    assert all(trial.state.is_finished() for trial in trials)
    complete = [trial for trial in trials if trial.state == optuna.trial.TrialState.COMPLETE]
    assert complete, [trial.state for trial in trials]
    for trial in complete:
        assert set(trial.params) == {
            "train.timestep.beta_lambda",
            "model.repa.clap.weight",
            "model.repa.muq.weight",
            "model.masking.mask_ratio",
        }
        assert trial.intermediate_values, "the trainer reported validation losses"
        assert "metric.fad_clap" in trial.user_attrs
    # Two workers, one per "GPU": the trials were spread over both.
    assert {trial.user_attrs["cuda_visible_devices"] for trial in trials} == {"0", "1"}

    client, parent = parent_run(stack.root, "e2e")
    children = runs_of(stack.root, parent.info.run_id)
    assert sorted(child.info.run_name for child in children) == ["e2e-t0", "e2e-t1", "e2e-t2"]
    logged = {item.path for item in client.list_artifacts(parent.info.run_id, "ablations")}
    assert {"ablations/compact.json", "ablations/trials.json", "ablations/e2e.md"} <= logged
    assert "ablations/optimization_history.png" in logged
    table = json.loads(
        Path(client.download_artifacts(parent.info.run_id, "ablations/trials.json")).read_text()
    )
    assert len(table["data"]) == 3
    # dotted param names would show empty in the UI's table view: logged with "/" instead
    assert "train/timestep/beta_lambda" in table["columns"]
    compact = json.loads(
        Path(client.download_artifacts(parent.info.run_id, "ablations/compact.json")).read_text()
    )
    assert (
        compact["columns"][:2] == ["trial", "beta_lambda"] and "clap/weight" in compact["columns"]
    )
    assert None not in [cell for row in compact["data"] + table["data"] for cell in row]
    assert parent.data.metrics["trials_complete"] == 3 and "best_clap_score" in parent.data.metrics
    # each trial's stage runs nest under its child run
    stages = runs_of(stack.root, children[0].info.run_id)
    assert {run_.data.tags["stage"] for run_ in stages} == {"pretrain", "finetune", "evaluate"}
    # ... each started in a fork of its worker's warm-start server (flows/serve.py)
    assert {run_.data.tags.get("warm_start") for run_ in stages} == {"true"}

    report = (stack.root / "reports" / "ablations.md").read_text()
    for number in range(3):
        assert f"e2e-t{number}" in report
    # every trial is a DVC experiment: DVC lists it and can apply it
    listed = run([sys.executable, "-m", "dvc", "exp", "list", "--name-only"], stack.root, stack.env)
    assert {"e2e-t0", "e2e-t1", "e2e-t2"} <= set(listed.split())


def _trial_process(stack, study_name: str, trial: int, marker: bytes, timeout: float = 600) -> int:
    """The pid of the process whose NUL-joined argv contains `marker`, started for `trial`
    by this stack (not by another test run's on the same machine)."""
    wanted = {
        f"TTM_OPTUNA_STUDY={study_name}".encode(),
        f"TTM_OPTUNA_TRIAL={trial}".encode(),
        f"PREFECT_API_URL={stack.api_url}".encode(),
    }
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for process in processes():
            if marker in b"\0".join(process.argv) and wanted <= set(process.environ()):
                return process.pid
        time.sleep(0.2)
    raise TimeoutError(f"no {marker!r} process of trial {trial} of {study_name} appeared")


def _parent(pid: int) -> int:
    return next(process.parent for process in processes() if process.pid == pid)


def test_killed_trials_are_recorded_failed_and_the_sweep_finishes_the_others(stack):
    """Trial 0 loses its training process (the OOM killer): it closes itself as FAIL. Trial
    1 loses its whole flow run process tree (a worker crash): nobody closes it, the worker
    reports the flow run Crashed, and the sweep closes the trial as FAIL. Trial 2 runs."""
    created = stack.prefect(
        "deployment",
        "run",
        "ablation-sweep/local",
        "--param",
        "study_name=killed",
        "--param",
        "n_trials=3",
        *PRETRAIN_STEPS,
    )
    assert created.returncode == 0, created.stdout + created.stderr
    flow_run_id = next(line.split()[-1] for line in created.stdout.splitlines() if "UUID" in line)
    os.kill(_trial_process(stack, "killed", 0, b"tasks.train\0pretrain"), signal.SIGKILL)
    experiment = _trial_process(stack, "killed", 1, b"dvc")  # `dvc exp run`, child of the flow run
    kill_tree(_parent(experiment))  # a worker's flow run dying outright
    deadline = time.monotonic() + 1200
    while (state := stack.flow_run(flow_run_id))["state"] not in ("Completed", "Failed", "Crashed"):
        assert time.monotonic() < deadline, "the sweep did not finish"
        time.sleep(3)
    assert state["state"] == "Completed", state

    trials = {trial.number: trial for trial in study(stack.root, "killed").trials}
    assert [trials[n].state for n in range(3)] == [
        optuna.trial.TrialState.FAIL,
        optuna.trial.TrialState.FAIL,
        optuna.trial.TrialState.COMPLETE,
    ], {number: trial.user_attrs.get("fail_reason") for number, trial in trials.items()}
    assert trials[0].user_attrs["fail_reason"] == "stage pretrain killed by SIGKILL"
    assert "ended Crashed before closing the trial" in trials[1].user_attrs["fail_reason"]

    report = (stack.root / "reports" / "ablations" / "killed.md").read_text()
    assert "COMPLETE 1, FAIL 2" in report and "stage pretrain killed by SIGKILL" in report
    _, parent = parent_run(stack.root, "killed")
    statuses = sorted(child.info.status for child in runs_of(stack.root, parent.info.run_id))
    assert statuses == ["FAILED", "FAILED", "FINISHED"]
