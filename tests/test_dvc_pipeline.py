"""`dvc repro` in a scratch git repo: the stage runs, a second repro reproduces nothing."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests import scratch_repo as scratch_repo_
from tests.conftest import TINY_TRAINING
from tests.scratch_repo import run as _run

pytestmark = pytest.mark.slow


@pytest.fixture
def scratch_repo(tmp_path: Path, scratch_dag: tuple[Path, str]) -> Iterator[tuple[Path, dict, str]]:
    """A copy of the scratch repo (tests/scratch_repo.py) whose first `dvc repro` ran once
    per test run (conftest.scratch_dag), and what that repro printed; its stages start warm."""
    source, first_repro = scratch_dag
    with scratch_repo_.warm_stages(tmp_path, scratch_repo_.copy(source, tmp_path)) as env:
        yield tmp_path, env, first_repro


def test_repro_runs_the_dag_then_is_a_no_op(scratch_repo):
    root, env, first = scratch_repo
    dvc = [sys.executable, "-m", "dvc"]
    stages = (
        "corpus",
        "scorers",
        "curate",
        "captions",
        "latents",
        "pretrain",
        "finetune",
        "evaluate",
    )
    for stage in stages:
        assert f"Running stage '{stage}'" in first
    assert (root / "data/corpus/tracks.parquet").exists()
    assert (root / "data/curated/segments.parquet").exists()
    assert (root / "artifacts/scorers/clap/model.safetensors").exists()
    assert (root / "data/captions/captions.parquet").exists()
    assert (root / "data/latents/segments.parquet").exists()
    assert (root / "checkpoints/finetune/model.safetensors").exists()
    assert (root / "reports/listening/index.html").exists()
    assert (root / "dvc.lock").exists()
    second = _run([*dvc, "repro"], root, env)
    assert "Running stage" not in second
    assert "didn't change" in second or "up to date" in second
    metrics = _run([*dvc, "metrics", "show", "--json"], root, env)
    assert '"tracks": 8' in metrics
    assert '"generated_clips": 2' in metrics  # reports/metrics.json of evaluate
    plots = json.loads(_run([*dvc, "plots", "show", "--json"], root, env))["data"]
    assert {"train_loss", "val_loss", "reports/finetune/loss.png"} <= set(plots)
    assert {"beta_densities", "quality_curve", "reports/evaluate/clap_scores.png"} <= set(plots)
    # a params change the stage depends on makes it stale again; one it ignores does not
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["finetune"]["optim"]["steps"] = 7
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert set(json.loads(_run([*dvc, "status", "--json"], root, env))) == {"finetune"}
    params["finetune"]["optim"]["steps"] = TINY_TRAINING["finetune"]["optim"]["steps"]
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert "up to date" in _run([*dvc, "status"], root, env)
    # a rewriting param reruns captions and what reads it, nothing upstream
    params["captions"]["rewrite_batch_size"] = 5
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    stale = json.loads(_run([*dvc, "status", "--json"], root, env))
    assert set(stale) == {"captions"}, stale
    rerun = _run([*dvc, "repro"], root, env)
    assert "Running stage 'captions'" in rerun
    assert not re.search(r"Running stage '(corpus|scorers|curate)'", rerun)
    params["data"]["num_tracks"] = 9
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert re.search(r"modified:\s+data\b", _run([*dvc, "status"], root, env))
