"""The end-to-end tests' Prefect stack: one per test module (each module is one xdist group,
conftest.XDIST_GROUPS, so the groups run side by side on the two workers)."""

from __future__ import annotations

import pytest

from tests import prefect_stack, scratch_repo


@pytest.fixture(scope="module")
def stack(tmp_path_factory, scratch_dag):
    """A Prefect server and `flows.serve` with two "GPU" workers (CUDA_VISIBLE_DEVICES=0 and
    1; on a CPU machine they differ by the variable only) on a copy of the scratch DAG."""
    root = tmp_path_factory.mktemp("sweep-repo")
    env = scratch_repo.copy(scratch_dag[0], root)
    with prefect_stack.running(root, env, ["--workers", "0", "--gpus", "0,1"]) as running:
        yield running
