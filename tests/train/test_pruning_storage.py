"""tasks/train/pruning.py open_storage: one Optuna RDB storage (one SQLAlchemy engine and
pool) per URL and process, however often a process opens its study."""

from __future__ import annotations

import os

from tasks.train import pruning


def test_a_process_reopening_its_study_reuses_one_storage(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    first = pruning.open_storage(url)
    assert pruning.open_storage(url) is first
    assert pruning.open_storage(f"sqlite:///{tmp_path / 'other.db'}") is not first


def test_a_forked_child_gets_a_storage_of_its_own(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    parent = pruning.open_storage(url)
    assert pruning._rdb_storage(url, os.getpid() + 1) is not parent
