"""The lab simulated on one machine (tests/lab_stack.py, flows/lab.py): a 4-trial sweep runs
across two worker hosts; Optuna, MLflow (through its server) and Prefect agree on every
trial, and the user's clone gets every experiment back from origin, through a crash of the
MLflow server mid-trial (fault b). A host whose clone is behind the study's DAG refuses its
trials (fault c); a host killed mid-trial fails its trial and comes back (fault a)."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import mlflow
import pytest
import yaml
from optuna.trial import FrozenTrial, TrialState

from tests import lab_stack
from tests.lab_stack import Lab, clone_of_origin, host_env, study, worker_host
from tests.prefect_stack import EXPERIMENT, PRETRAIN_STEPS
from tests.scratch_repo import run

pytestmark = pytest.mark.slow

HOSTS = ("host-a", "host-b")


@pytest.fixture(scope="module")
def lab(tmp_path_factory, scratch_dag) -> Iterator[Lab]:
    with lab_stack.running(tmp_path_factory.mktemp("lab"), scratch_dag[0]) as running:
        yield running


def _watched_sweep(lab: Lab, study_name: str, trials: int) -> subprocess.Popen:
    """`prefect deployment run ablation-sweep/local --watch` from the user's clone, in the
    background."""
    command = [sys.executable, "-m", "prefect", "deployment", "run", "ablation-sweep/local"]
    command += ["--param", f"study_name={study_name}", "--param", f"n_trials={trials}"]
    return subprocess.Popen(
        [*command, *PRETRAIN_STEPS, "--watch"],
        cwd=lab.user,
        env=lab.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _wait_for_trials(
    lab: Lab,
    study_name: str,
    sweep: subprocess.Popen,
    ready: Callable[[list[FrozenTrial]], bool],
    what: str,
    seconds: float = 600,
) -> list[FrozenTrial]:
    """The study's trials, once `ready` holds for them."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and sweep.poll() is None:
        with contextlib.suppress(KeyError):  # the sweep has not created the study yet
            trials = study(lab, study_name).trials
            if ready(trials):
                return trials
        time.sleep(1.0)
    output = sweep.communicate()[0] if sweep.poll() is not None else ""
    raise TimeoutError(f"{study_name}: no {what}:\n{output}")


def _ended_run(client: mlflow.MlflowClient, run_id: str, seconds: float = 300):
    deadline = time.monotonic() + seconds
    while (run_ := client.get_run(run_id)).info.status == "RUNNING":
        assert time.monotonic() < deadline, f"MLflow run {run_id} did not end"
        time.sleep(0.5)
    return run_


def _finished_and_running(trials: list[FrozenTrial]) -> bool:
    states = [(t.state, "mlflow_run_id" in t.user_attrs) for t in trials]
    return (TrialState.COMPLETE, True) in states and (TrialState.RUNNING, True) in states


def test_a_sweep_runs_across_two_worker_hosts_and_every_trial_comes_home(lab: Lab) -> None:
    """With fault (b) on the way: the MLflow server crashes while a trial runs and another has
    finished; the head restarts it, the running trial's logging retries through the gap, and
    nothing the finished trial logged is lost."""
    client = mlflow.MlflowClient(lab.env["MLFLOW_TRACKING_URI"])
    with worker_host(lab, HOSTS[0]), worker_host(lab, HOSTS[1]):
        sweep = _watched_sweep(lab, "lab", 4)
        seen = _wait_for_trials(lab, "lab", sweep, _finished_and_running, "trial mid-run")
        finished = next(t for t in seen if t.state == TrialState.COMPLETE)
        # Optuna's COMPLETE comes before the trial's last MLflow metrics (its opening and
        # closing seconds): the snapshot waits for its run to end.
        before = _ended_run(client, finished.user_attrs["mlflow_run_id"])
        before_artifacts = client.list_artifacts(before.info.run_id)
        lab_stack.crash_mlflow_server(lab)
        output, _ = sweep.communicate(timeout=900)
    assert sweep.returncode == 0, output
    head_log = (lab.root / "head.log").read_text()
    assert "the MLflow server exited with -9; restarting it" in head_log, head_log
    after = client.get_run(before.info.run_id)
    assert after.data.metrics == before.data.metrics and after.data.params == before.data.params
    assert client.list_artifacts(before.info.run_id) == before_artifacts
    trials = study(lab, "lab").trials
    assert [trial.state for trial in trials] == [TrialState.COMPLETE] * 4, [
        (trial.state, trial.user_attrs.get("fail_reason")) for trial in trials
    ]
    assert {Path(trial.user_attrs["clone"]).name for trial in trials} == set(HOSTS)
    assert all(trial.user_attrs["dvc_experiment_pushed_to"] == "origin" for trial in trials)
    names = sorted(trial.user_attrs["dvc_experiment"] for trial in trials)

    # MLflow, through the server: the sweep's parent run, a finished child run per trial
    # whose artifacts (the trial's DVC log) download through the server's API.
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
    clone = clone_of_origin(lab.root, name, host_env(lab.root, name, lab.env))
    params = yaml.safe_load((lab.user / "params.yaml").read_text())
    params["finetune"]["optim"]["steps"] += 1
    (lab.user / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run([sys.executable, "-m", "dvc", "repro", "-q"], lab.user, lab.env)
    run(["git", "commit", "-qam", "one more fine-tuning step"], lab.user, lab.env)
    run(["git", "push", "-q", "origin", "HEAD"], lab.user, lab.env)  # hosts cloned from now on
    run([sys.executable, "-m", "dvc", "push", "-q"], lab.user, lab.env)  # are current again
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
    client = mlflow.MlflowClient(lab.env["MLFLOW_TRACKING_URI"])
    tags = client.get_run(trial.user_attrs["mlflow_run_id"]).data.tags
    assert tags["fail_reason"] == trial.user_attrs["fail_reason"]


def test_a_host_killed_mid_trial_fails_its_trial_and_comes_back_for_more(lab: Lab) -> None:
    """Fault (a): one host's whole process tree is killed while it runs a trial. Nothing is
    left there to report it; its flow run misses its heartbeats, Prefect's zombie automation
    marks it Crashed, and the sweep fails the trial with that reason and finishes on the
    other host. Restarted, the host takes new trials."""
    killed, survivor = "host-killed", "host-survivor"
    sweep = ["deployment", "run", "ablation-sweep/local", *PRETRAIN_STEPS, "--watch"]

    def running_on_killed(trials: list[FrozenTrial]) -> bool:
        return any(
            t.state == TrialState.RUNNING
            and Path(t.user_attrs["clone"]).name == killed
            and "mlflow_run_id" in t.user_attrs
            for t in trials
        )

    with worker_host(lab, survivor):
        with worker_host(lab, killed) as host:
            watching = _watched_sweep(lab, "killed", 3)
            _wait_for_trials(lab, "killed", watching, running_on_killed, f"trial on {killed}")
            lab_stack.kill_host(host)
        output, _ = watching.communicate(timeout=900)
    assert watching.returncode == 0, output
    trials = study(lab, "killed").trials
    by_host = {
        name: [t for t in trials if Path(t.user_attrs["clone"]).name == name]
        for name in (killed, survivor)
    }
    (lost,) = by_host[killed]
    assert lost.state == TrialState.FAIL and "no heartbeat" in lost.user_attrs["fail_reason"]
    assert [t.state for t in by_host[survivor]] == [TrialState.COMPLETE] * 2, output
    client = mlflow.MlflowClient(lab.env["MLFLOW_TRACKING_URI"])
    tags = client.get_run(lost.user_attrs["mlflow_run_id"]).data.tags
    assert tags["fail_reason"] == lost.user_attrs["fail_reason"]

    with worker_host(lab, killed, lab.root / killed):  # the host is back
        result = lab.prefect(*sweep, "--param", "study_name=back", "--param", "n_trials=1")
    (trial,) = study(lab, "back").trials
    assert trial.state == TrialState.COMPLETE, result.stdout + result.stderr
    assert Path(trial.user_attrs["clone"]).name == killed
