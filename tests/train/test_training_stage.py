"""The pretrain / finetune stages: outputs, schedule, data order, checkpoints, kill-and-resume."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from models.objective import LossTerms
from tasks.params import OptimParams, Params, merge
from tasks.train import checkpoints
from tasks.train import stage as training_stage
from tasks.train.batch_plan import BatchPlan, quality_acceptance
from tasks.train.loop import check_finite, learning_rate_factor


# --------------------------------------------------------------------------- pure parts
def _optim(**overrides) -> OptimParams:
    base = dict(
        steps=100,
        batch_size=4,
        learning_rate=1e-4,
        weight_decay=1e-6,
        adam_betas=[0.9, 0.95],
        grad_clip=1.0,
        warmup_steps=10,
        lr_milestones=[0.8, 0.9],
        lr_gamma=0.1,
        mixed_precision="no",
        eval_every=10,
        checkpoint_every=10,
    )
    return OptimParams(**{**base, **overrides})


def test_learning_rate_warms_up_linearly_then_steps_down() -> None:
    optim = _optim()
    assert learning_rate_factor(0, optim) == pytest.approx(1 / 11)
    assert learning_rate_factor(9, optim) == pytest.approx(10 / 11)
    assert learning_rate_factor(10, optim) == 1.0
    assert learning_rate_factor(79, optim) == 1.0
    assert learning_rate_factor(80, optim) == pytest.approx(0.1)
    assert learning_rate_factor(95, optim) == pytest.approx(0.01)


def test_batch_plan_is_a_function_of_the_step() -> None:
    plan = BatchPlan(size=10, batch_size=3, seed=0, stage="pretrain", weights=None)
    whole = [b for _, batches in plan.epochs(0, 9) for b in batches]
    resumed = [b for _, batches in plan.epochs(4, 9) for b in batches]
    assert resumed == whole[4:]
    first_epoch = [i for b in whole[:3] for i in b]
    assert len(set(first_epoch)) == 9  # drop-last permutation: no repeats within an epoch
    other = BatchPlan(size=10, batch_size=3, seed=1, stage="pretrain", weights=None)
    assert [b for _, bs in other.epochs(0, 9) for b in bs] != whole


@pytest.mark.parametrize(("stage", "key"), [("pretrain", "train"), ("finetune", "finetune")])
def test_a_batch_larger_than_the_data_names_the_stage_key(stage: str, key: str) -> None:
    with pytest.raises(ValueError, match=rf"^{key}\.optim\.batch_size 4 exceeds the 2 {stage}"):
        BatchPlan(size=2, batch_size=4, seed=0, stage=stage, weights=None)


def test_quality_resampling_follows_the_reference_acceptance() -> None:
    """docs/reference.md §C.3: exp(5·mos)/623787092.85, ≈ 1 at mos 4.07, 0.29 at 3.8."""
    accept = quality_acceptance(np.array([3.4, 3.8, 4.07, 4.5, np.nan]))
    assert accept[1] == pytest.approx(0.287, abs=0.005)
    assert accept[2] == pytest.approx(1.0, abs=0.01) and accept[3] == 1.0 and accept[4] < 1e-8
    plan = BatchPlan(
        4000, 4000, 0, "pretrain", np.repeat(quality_acceptance(np.array([3.6, 4.2])), 2000)
    )
    drawn = plan.order(0)
    assert (drawn >= 2000).mean() > 0.85  # high p-MOS segments dominate


def test_two_stage_captions_off_finetunes_on_the_pretraining_captions(tiny_params) -> None:
    """Paper 000 §II-B ablated: fine-tuning reads the pretraining captions, not the rewrites."""
    assert training_stage.finetune_columns(tiny_params) == [training_stage.FINETUNE_COLUMN]
    off = tiny_params.model_copy(
        update={"finetune": tiny_params.finetune.model_copy(update={"two_stage_captions": False})}
    )
    assert training_stage.finetune_columns(off) == list(tiny_params.captions.pretrain_columns)
    assert training_stage.FINETUNE_COLUMN not in tiny_params.captions.pretrain_columns


def test_non_finite_loss_stops_with_the_step_and_samples() -> None:
    nan = torch.tensor(float("nan"))
    terms = LossTerms(nan, nan, None, None, nan[None], nan[None])
    with pytest.raises(FloatingPointError, match=r"step 7 .*samples \[3, 9\].*step 4 is intact"):
        check_finite(terms, 7, [3, 9], 4)


def test_a_checkpoint_of_another_run_is_never_resumed(tmp_path: Path) -> None:
    model = torch.nn.Linear(2, 2)
    checkpoints.save_training_checkpoint(
        tmp_path, 5, model, None, {"step": 5}, {"fingerprint": "a"}
    )
    assert checkpoints.latest_checkpoint(tmp_path, "a") == tmp_path / "step-0000005"
    checkpoints.save_training_checkpoint(
        tmp_path, 9, model, None, {"step": 9}, {"fingerprint": "a"}
    )
    assert [p.name for p in tmp_path.glob("step-*")] == ["step-0000009"]
    assert checkpoints.latest_checkpoint(tmp_path, "b") is None
    assert not list(tmp_path.glob("step-*"))


# --------------------------------------------------------------------------- the stages
def _workspace(latent_workspace, destination: Path) -> tuple[Path, Params]:
    source, raw = latent_workspace
    shutil.copytree(source, destination, dirs_exist_ok=True)
    return destination, Params.from_mapping(raw)


@contextlib.contextmanager
def _inside(root: Path):
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        yield


@pytest.mark.slow
def test_pretrain_then_finetune(latent_workspace, tmp_path: Path) -> None:
    root, params = _workspace(latent_workspace, tmp_path / "ws")
    with_ema = Params.from_mapping(
        merge(latent_workspace[1], {"train": {"ema": {"enabled": True, "decay": 0.5}}})
    )
    with _inside(root):
        pretrained = training_stage.run(params, "pretrain")
        finetuned = training_stage.run(with_ema, "finetune")  # sampled from the EMA weights
        runs = mlflow.search_runs(experiment_names=[params.tracking.experiment])
        client = mlflow.MlflowClient()
        pretrain_run = runs[runs["tags.stage"] == "pretrain"].iloc[0]["run_id"]
        history = client.get_metric_history(pretrain_run, "flow_matching")
        samples = client.list_artifacts(pretrain_run, "samples")
    for stage, summary in (("pretrain", pretrained), ("finetune", finetuned)):
        folder = root / "checkpoints" / stage
        assert (folder / "model.safetensors").exists() and (folder / "model.json").exists()
        assert not list(folder.glob("step-*")) and not (folder / "latest").exists()
        reports = root / "reports" / stage
        for name in ("metrics.json", "train.csv", "val.csv", "loss.png"):
            assert (reports / name).stat().st_size > 0
        assert json.loads((reports / "metrics.json").read_text())["steps"] == summary["steps"]
        assert np.isfinite(summary["val_flow_matching"])
        assert set(summary["samples"]) >= {"clap_score_generated", "clap_score_random_latents"}
    assert pretrained["steps"] == 12 and finetuned["steps"] == 4
    assert len(history) == 12 // 2  # every log_every steps
    assert [a.path for a in samples] == [f"samples/step{s:07d}" for s in (4, 8, 12)]
    pre = load_file(root / "checkpoints/pretrain/model.safetensors")
    fine = load_file(root / "checkpoints/finetune/model.safetensors")
    assert pre.keys() == fine.keys()
    assert not all(torch.equal(pre[k], fine[k]) for k in pre)
    torch.testing.assert_close(pre["backbone.latent_std"], fine["backbone.latent_std"])


KILLABLE_RUN = """
import os, signal, sys
from tasks.train import stage as training_stage
from tasks.params import load_stage_params

kill_at = int(sys.argv[1])

def kill(step, loss):
    if step == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)

training_stage.run(load_stage_params(), "pretrain", callbacks=[kill])
"""


def _pretrain(root: Path, kill_at: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}"}
    return subprocess.run(
        [sys.executable, "-c", KILLABLE_RUN, str(kill_at)],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_weights(latent_workspace, tmp_path: Path) -> None:
    straight, _ = _workspace(latent_workspace, tmp_path / "straight")
    killed, _ = _workspace(latent_workspace, tmp_path / "killed")
    assert _pretrain(straight, kill_at=0).returncode == 0
    interrupted = _pretrain(killed, kill_at=8)  # after step 8's evaluation, before its save
    assert interrupted.returncode == -9, interrupted.stdout + interrupted.stderr
    assert (killed / "checkpoints/pretrain/latest").read_text() == "step-0000004"
    resumed = _pretrain(killed, kill_at=0)
    assert resumed.returncode == 0, resumed.stderr
    metrics = json.loads((killed / "reports/pretrain/metrics.json").read_text())
    assert metrics["resumed_from_step"] == 4
    a = load_file(straight / "checkpoints/pretrain/model.safetensors")
    b = load_file(killed / "checkpoints/pretrain/model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ"
    curves = [(root / "reports/pretrain/train.csv").read_text() for root in (straight, killed)]
    loss = [[line.split(",")[1] for line in c.splitlines()] for c in curves]
    assert loss[0] == loss[1]  # the same losses, step for step


@pytest.mark.slow
def test_two_processes_train_as_one_group(latent_workspace, tmp_path: Path) -> None:
    """The multi-GPU path on CPU: `torchrun` (what `accelerate launch` wraps) starts two
    processes that form one gloo group, split each global batch, and write once."""
    root, _ = _workspace(latent_workspace, tmp_path / "ws")
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
        "OMP_NUM_THREADS": "1",
    }
    torchrun = Path(sys.executable).parent / "torchrun"
    result = subprocess.run(
        [str(torchrun), "--nproc_per_node", "2", "-m", "tasks.train", "pretrain"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("pretrain: 12 steps") == 1  # the main process reports
    metrics = json.loads((root / "reports/pretrain/metrics.json").read_text())
    assert metrics["steps"] == 12 and np.isfinite(metrics["val_flow_matching"])
    assert (root / "checkpoints/pretrain/model.safetensors").exists()


def test_a_sweep_trial_is_pruned_inside_the_stage(latent_workspace, tmp_path: Path) -> None:
    """The stage reports its validation losses to the trial named by TTM_OPTUNA_* and stops
    when the median pruner says so, recording the step for the trial's runner."""
    from optuna.trial import TrialState

    from flows import studies
    from tasks.params import PrunerParams
    from tasks.train import pruning

    root, params = _workspace(latent_workspace, tmp_path / "ws")
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    pruner = PrunerParams(name="median", startup_trials=1, warmup_steps=0)
    spec = studies.study_spec(params, "sweep", "p" * 32, {}, None).model_copy(
        update={"pruner": pruner}
    )
    study = studies.create_study(url, "prune", spec, "tpe", 0)
    excellent = study.ask()
    for step in (4, 8, 12):
        excellent.report(-0.01, step)  # a loss of 0.01 (maximised study: negated)
    study.tell(excellent, 1.0)
    trial = study.ask()
    with _inside(root), pytest.MonkeyPatch.context() as patch:
        for key, value in pruning.trial_environment(url, "prune", trial.number).items():
            patch.setenv(key, value)
        with pytest.raises(SystemExit, match="pretrain: trial pruned at step 4"):
            training_stage.main("pretrain")
    assert pruning.pruned_step(url, "prune", trial.number) == 4
    frozen = study.trials[trial.number]
    assert frozen.state == TrialState.RUNNING and list(frozen.intermediate_values) == [4]
    # the loss went in negated (the study maximises); the trials table turns it back
    assert frozen.intermediate_values[4] < 0
    assert pruning.report_sign(study.direction) * frozen.intermediate_values[4] > 0
    assert not (root / "checkpoints/pretrain/model.safetensors").exists()
