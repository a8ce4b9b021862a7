"""End to end, as a user drives it: a Prefect server, `python -m flows.serve` with two
"GPU" workers (CUDA_VISIBLE_DEVICES=0 and 1; on this CPU machine they only differ by the
variable), and `prefect deployment run ablation-sweep/local` on a scratch repository whose
tiny DAG is reproduced and committed. Then Optuna, MLflow, DVC and reports/ are checked."""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import time
from pathlib import Path

import mlflow
import optuna
import pytest
import yaml

from tests import prefect_stack, scratch_repo
from tests.scratch_repo import run

pytestmark = pytest.mark.slow

EXPERIMENT = "score-aware-ttm"


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep-repo")
    env = scratch_repo.reproduced(root)
    with prefect_stack.running(root, env, ["--workers", "0", "--gpus", "0,1"]) as running:
        yield running


def study(root: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{root / 'optuna.db'}")


def runs_of(root: Path, parent_run_id: str) -> list:
    client = mlflow.MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(EXPERIMENT)
    return client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}'"
    )


def parent_run(root: Path, study_name: str):
    client = mlflow.MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(EXPERIMENT)
    (run_,) = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.kind = 'sweep' and tags.study = '{study_name}'",
    )
    return client, run_


def test_sweep_deployment_runs_three_trials_end_to_end(stack):
    started = time.perf_counter()
    result = stack.prefect(
        "deployment", "run", "ablation-sweep/local",
        "--param", "study_name=e2e", "--param", "n_trials=3", "--watch",
    )  # fmt: skip
    wall = time.perf_counter() - started
    assert result.returncode == 0, result.stdout + result.stderr
    print(f"3-trial sweep: {wall:.0f} s wall")

    trials = study(stack.root, "e2e").trials
    assert len(trials) == 3
    assert all(trial.state.is_finished() for trial in trials)
    complete = [trial for trial in trials if trial.state == optuna.trial.TrialState.COMPLETE]
    assert complete, [trial.state for trial in trials]
    for trial in complete:
        assert set(trial.params) == {
            "train.timestep.beta_lambda", "model.repa.clap.weight", "model.repa.muq.weight",
            "model.masking.mask_ratio",
        }  # fmt: skip
        assert trial.intermediate_values, "the trainer reported validation losses"
        assert "metric.fad_clap" in trial.user_attrs
    # Two workers, one per "GPU": the trials were spread over both.
    assert {trial.user_attrs["cuda_visible_devices"] for trial in trials} == {"0", "1"}

    client, parent = parent_run(stack.root, "e2e")
    children = runs_of(stack.root, parent.info.run_id)
    assert sorted(child.info.run_name for child in children) == ["e2e-t0", "e2e-t1", "e2e-t2"]
    artifacts = {item.path for item in client.list_artifacts(parent.info.run_id, "ablations")}
    assert {"ablations/trials.json", "ablations/e2e.md", "ablations/e2e.html"} <= artifacts
    assert "ablations/optimization_history.png" in artifacts
    table = json.loads(
        Path(client.download_artifacts(parent.info.run_id, "ablations/trials.json")).read_text()
    )
    assert len(table["data"]) == 3
    # each trial's stage runs nest under its child run
    stages = runs_of(stack.root, children[0].info.run_id)
    assert {run_.data.tags["stage"] for run_ in stages} == {"pretrain", "finetune", "evaluate"}

    report = (stack.root / "reports" / "ablations.md").read_text()
    for number in range(3):
        assert f"e2e-t{number}" in report
    # every trial is a DVC experiment: DVC lists it and can apply it
    listed = run([sys.executable, "-m", "dvc", "exp", "list", "--name-only"], stack.root, stack.env)
    assert {"e2e-t0", "e2e-t1", "e2e-t2"} <= set(listed.split())


def _training_process(study_name: str, timeout: float = 600) -> int:
    """The pid of a `python -m tasks.pretrain` started by a trial of `study_name`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                command = (entry / "cmdline").read_bytes().split(b"\0")
                environ = (entry / "environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if (
                b"tasks.pretrain" in command
                and f"TTM_OPTUNA_STUDY={study_name}".encode() in environ
            ):
                return int(entry.name)
        time.sleep(0.2)
    raise TimeoutError(f"no training process of {study_name} appeared")


def test_a_killed_trial_is_recorded_failed_and_the_sweep_finishes_the_others(stack):
    created = stack.prefect(
        "deployment", "run", "ablation-sweep/local",
        "--param", "study_name=killed", "--param", "n_trials=3",
    )  # fmt: skip
    assert created.returncode == 0, created.stdout + created.stderr
    flow_run_id = next(line.split()[-1] for line in created.stdout.splitlines() if "UUID" in line)
    os.kill(_training_process("killed"), signal.SIGKILL)
    deadline = time.monotonic() + 1200
    while (state := stack.flow_run(flow_run_id))["state"] not in ("Completed", "Failed", "Crashed"):
        assert time.monotonic() < deadline, "the sweep did not finish"
        time.sleep(3)
    assert state["state"] == "Completed", state

    trials = study(stack.root, "killed").trials
    failed = [trial for trial in trials if trial.state == optuna.trial.TrialState.FAIL]
    assert len(trials) == 3 and len(failed) == 1, [trial.state for trial in trials]
    reason = failed[0].user_attrs["fail_reason"]
    assert "pretrain" in reason and "SIGKILL" in reason, reason
    assert all(trial.state.is_finished() for trial in trials)

    report = (stack.root / "reports" / "ablations" / "killed.md").read_text()
    assert "FAIL 1" in report and "killed by SIGKILL" in report
    _, parent = parent_run(stack.root, "killed")
    statuses = sorted(child.info.status for child in runs_of(stack.root, parent.info.run_id))
    assert statuses.count("FAILED") == 1


def test_table_deployment_runs_base_and_one_switch_over_two_seeds(stack):
    """Table I's protocol on two seeds: mean ± std per configuration, Δ against base,
    Welch's test, in MLflow and in reports/."""
    result = stack.prefect(
        "deployment", "run", "ablation-table/local", "--param", "table_name=t1",
        "--param", 'configurations=["beta_0.2"]', "--param", "seeds=[0, 1]", "--watch",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    trials = study(stack.root, "t1").trials
    cells = sorted((t.user_attrs["configuration"], t.user_attrs["seed"]) for t in trials)
    assert cells == [("base", 0), ("base", 1), ("beta_0.2", 0), ("beta_0.2", 1)]
    assert all(trial.state == optuna.trial.TrialState.COMPLETE for trial in trials)
    client = mlflow.MlflowClient(f"sqlite:///{stack.root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(EXPERIMENT)
    (parent,) = client.search_runs(
        [experiment.experiment_id], filter_string="tags.kind = 'table' and tags.study = 't1'"
    )
    table = json.loads(
        Path(client.download_artifacts(parent.info.run_id, "ablations/table_one.json")).read_text()
    )
    rows = {row[0]: dict(zip(table["columns"], row, strict=True)) for row in table["data"]}
    assert set(rows) == {"base", "beta_0.2"} and rows["beta_0.2"]["seeds"] == 2
    assert rows["beta_0.2"]["clap_score_p"] is not None  # Welch's test over the two seeds
    report = (stack.root / "reports" / "ablations" / "t1.md").read_text()
    assert "Table I protocol" in report
    assert re.search(r"^\| beta_0\.2 +\| +2 \| +0 \|", report, re.MULTILINE), report


def _artifacts(stack, key: str) -> list[dict]:
    shown = stack.prefect("artifact", "inspect", key, "--output", "json", timeout=120)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    return json.loads(shown.stdout)


def test_pipeline_deployment_reproduces_only_what_changed(stack):
    def run_pipeline() -> str:
        result = stack.prefect("deployment", "run", "pipeline/local", "--watch")
        assert result.returncode == 0, result.stdout + result.stderr
        (latest, *_) = _artifacts(stack, "pipeline-stages")
        return latest["data"]

    table = run_pipeline()  # the reproduced DAG: a no-op
    assert table.count("up to date") == 8 and "| ran |" not in table
    path = stack.root / "params.yaml"
    params = yaml.safe_load(path.read_text())
    params["finetune"]["optim"]["steps"] += 2
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    table = run_pipeline()
    ran = {line.split("|")[1].strip() for line in table.splitlines() if "| ran |" in line}
    assert ran == {"finetune", "evaluate"}, table
    (link, *_) = _artifacts(stack, "mlflow-finetune")
    assert "/#/experiments/" in link["data"] and "/runs/" in link["data"]
