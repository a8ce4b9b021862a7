"""The flows' own small pieces: budgets as overrides, where the repository is, retries."""

from __future__ import annotations

from pathlib import Path

import pytest
from prefect.states import Failed

from flows import fanout, pipeline
from flows.dvc_runs import DvcResult
from flows.settings import repository, storage
from tests.conftest import REPO


def test_budget_and_seed_become_params_overrides() -> None:
    assert fanout.budget_overrides(None, None, None, None) == {}
    assert fanout.budget_overrides(300, 100, 7, {"sample.steps": 10}) == {
        "sample.steps": 10,
        "train.optim.steps": 300,
        "finetune.optim.steps": 100,
        "train.seed": 7,
    }


def test_flows_work_in_the_project_repository(tmp_path: Path) -> None:
    assert repository(str(REPO)) == REPO.resolve()
    with pytest.raises(ValueError, match=r"no dvc\.yaml"):
        repository(str(tmp_path))
    assert storage(REPO, None) == f"sqlite:///{REPO.resolve() / 'optuna.db'}"
    assert storage(REPO, "postgresql+psycopg://db/optuna") == "postgresql+psycopg://db/optuna"


def _failed(result: DvcResult):
    return Failed(data=pipeline.StageFailed(result))


def _stage_result(log: str) -> DvcResult:
    return DvcResult("pretrain", 1, 1.0, ("pretrain",), "pretrain", log)


def test_pipeline_retries_only_transient_stage_failures() -> None:
    killed = _stage_result("ERROR: failed to reproduce 'pretrain': failed to run, exited with -9")
    broken = _stage_result("ValueError: bad\nERROR: failed to reproduce 'pretrain': exited with 1")
    assert pipeline._is_transient(None, None, _failed(killed))
    assert not pipeline._is_transient(None, None, _failed(broken))
    assert not pipeline._is_transient(None, None, Failed(data=ValueError("not a stage")))
