"""Shared fixtures: the shipped params, shrunk to a tiny corpus for fast tests."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from tasks.params import Params, merge, read_yaml

REPO = Path(__file__).resolve().parents[1]

TINY_DATA = {
    "num_tracks": 24,
    "min_track_seconds": 8.0,
    "max_track_seconds": 12.0,
    "val_fraction": 0.125,
    "test_fraction": 0.125,
    "eval_prompt_count": 5,
    "workers": 1,
    "noise": {
        "wrong_caption_fraction": 0.2,
        "partial_caption_fraction": 0.3,
        "degraded_fraction": 0.5,
    },
}

# The embedded scorers shrunk to seconds of training: mechanics, not reach.
TINY_SCORERS = {
    "crop_seconds": 2.0,
    "clap_pretrain_tracks": 8,
    "clap_pretrain_seconds": [8.0, 10.0],
    "embed_dim": 16,
    "clap_channels": 16,
    "quality_channels": 8,
    "clap": {"steps": 6, "batch_size": 4, "learning_rate": 1.0e-3, "weight_decay": 0.0},
    "quality": {"steps": 6, "batch_size": 4, "learning_rate": 1.0e-3, "weight_decay": 0.0},
    "quality_augment_per_track": 1,
    "eval_windows_per_track": 2,
}


# Test files whose tests run on one xdist worker (`make test`: -n 2 --dist loadgroup), by
# group: a module whose tests share a module fixture that builds something expensive (a
# Prefect stack, a whole DAG) runs as one unit, or each worker, and each return to the module
# after another, would build it again. The end-to-end sweep modules also copy the scratch
# DAG, built once per run (`built_once`, SCRATCH_DAG): the first of them starts before
# anything else, and its worker builds the DAG; another goes, one per worker, to a worker
# without one once the DAG is built, so that no worker idles on the build's lock meanwhile.
XDIST_GROUPS = {
    "tests/flows/test_sweep_e2e.py": "sweep-e2e",
    "tests/flows/test_table_e2e.py": "table-e2e",
    "tests/ingested/test_ingested_dag.py": "ingested-dag",
    "tests/ingested/test_ingested_stages.py": "ingested-stages",
    "tests/lab/test_lab_simulation.py": "lab",
}
SCRATCH_DAG_GROUPS = {"sweep-e2e", "table-e2e", "lab"}
SCRATCH_DAG = "scratch-dag"


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """`--dist loadgroup` with the groups of XDIST_GROUPS, each group's tests on one worker
    (pytest-xdist 3.8's `xdist_group` marks are lost on pytest 9.2, whose node ids it can
    no longer suffix: pytest-dev/pytest-xdist#1386), handed out as XDIST_GROUPS says."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadGroupScheduling

    # the workers' base temporary folders live in the controller's: `built_once` writes there
    built = config._tmp_path_factory.getbasetemp() / f"{SCRATCH_DAG}.json"  # type: ignore[attr-defined]

    class FileGroupScheduling(LoadGroupScheduling):
        def _split_scope(self, nodeid: str) -> str:
            group = XDIST_GROUPS.get(nodeid.split("::", 1)[0])
            return group if group is not None else super()._split_scope(nodeid)

        def _assign_work_unit(self, node: Any) -> None:
            """The next unit this node may take goes to the head of the queue first."""
            self.workqueue.move_to_end(self._next_scope(node), last=False)
            super()._assign_work_unit(node)

        def _next_scope(self, node: Any) -> str:
            queued = list(self.workqueue)
            assigned = [scope for work in self.assigned_work.values() for scope in work]
            if not SCRATCH_DAG_GROUPS & set(assigned):  # the DAG's build starts first
                return next((s for s in queued if s in SCRATCH_DAG_GROUPS), queued[0])
            mine = SCRATCH_DAG_GROUPS & set(self.assigned_work.get(node, {}))
            for scope in queued:
                if scope not in SCRATCH_DAG_GROUPS or (not mine and built.exists()):
                    return scope
            return queued[0]  # only end-to-end groups are left: better late than never

    return FileGroupScheduling(config, log)


def pytest_configure(config: pytest.Config) -> None:
    """Under xdist, compile librosa's numba functions once, in the controller, before the
    workers start: numba writes its on-disk cache (`cache=True`) without locking, and two
    workers compiling the same function into a cold cache (a fresh clone's first run, as in
    CI) crashed one of them with a segfault in librosa's peak_pick."""
    if getattr(config.option, "numprocesses", None) and not hasattr(config, "workerinput"):
        warm_numba_cache()


def warm_numba_cache() -> None:
    import numpy as np

    from tasks.evaluate.metrics import music_analysis

    sample_rate = 16_000
    time = np.arange(3 * sample_rate) / sample_rate
    clicks = (np.sin(2 * np.pi * 440 * time) * (time % 0.5 < 0.05)).astype(np.float32)
    music_analysis.estimate_tempo(clicks, sample_rate)
    music_analysis.estimate_key(clicks, sample_rate)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """`gpu` tests need a CUDA device: without one they are skipped, saying why, unless
    TTM_GPU_TESTS_DEVICE=cpu runs their bodies on the CPU (benchmarks/gpu_check.sh --dry-run).
    On xdist workers the `slow` tests are handed out first (after the groups), so that no
    worker is left with a long test when the other is done."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        items.sort(key=lambda item: "slow" not in item.keywords)  # stable: the same on all
    if torch.cuda.is_available() or os.environ.get("TTM_GPU_TESTS_DEVICE") == "cpu":
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (torch.cuda.is_available() is False)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def shipped_params() -> dict:
    return read_yaml(REPO / "params.yaml")


def params_with(raw: dict, overlay: dict) -> Params:
    return Params.from_mapping(merge(raw, overlay))


@pytest.fixture(scope="session")
def tiny_params(shipped_params: dict) -> Params:
    return params_with(shipped_params, {"data": TINY_DATA})


# Stages after `curate` start from this: a tiny corpus, random embedded scorers, curated.
# Random scorers know nothing, and a tiny val split holds a few tracks: the health gates
# (tasks/curate/health.py) are off here and tested on their own (tests/curate/test_health.py).
HEALTH_GATES_OFF = {"min_clap_auc": 0.0, "min_calibration_tracks": 1, "health_resamples": 200}
CURATED_OVERLAY = {
    "data": {**TINY_DATA, "root": "corpus"},
    "curate": {
        "candidates_per_track": 6,
        "segment_seconds": 4.0,
        "keep_per_track": 3,
        **HEALTH_GATES_OFF,
    },
}


@contextlib.contextmanager
def inside_workspace(root: Path) -> Iterator[None]:
    """Work in `root` with its own MLflow store (session fixtures cannot use monkeypatch)."""
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{root / 'mlflow.db'}"
    try:
        with contextlib.chdir(root):
            yield
    finally:
        if previous is None:
            os.environ.pop("MLFLOW_TRACKING_URI")
        else:
            os.environ["MLFLOW_TRACKING_URI"] = previous


def built_once(tmp_path_factory, name: str, build: Callable[[Path], Any]) -> tuple[Path, Any]:
    """(folder, what `build(folder)` returned, through JSON), built once per test run: on
    xdist workers, which share the run's base temporary folder, the first one to need it
    builds it and the others wait for it, then read it (tests copy what they change)."""
    if os.environ.get("PYTEST_XDIST_WORKER") is None:
        root = tmp_path_factory.mktemp(name)
        return root, build(root)
    shared = tmp_path_factory.getbasetemp().parent
    root, result = shared / name, shared / f"{name}.json"
    with (shared / f"{name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not result.exists():
            shutil.rmtree(root, ignore_errors=True)  # what a failed build left
            root.mkdir()
            result.write_text(json.dumps(build(root)))
    return root, json.loads(result.read_text())


@pytest.fixture(scope="session")
def curated_workspace(shipped_params: dict, tmp_path_factory) -> tuple[Path, dict]:
    """(directory, raw params) after corpus + curate on random scorers; copy it to use it."""

    def build(root: Path) -> dict:
        from tasks.corpus import stage as corpus
        from tasks.curate import stage as curate
        from tests.curate.test_curate import save_random_scorers

        base = params_with(shipped_params, {"data": TINY_DATA})
        clap_dir, quality_dir = save_random_scorers(base, root / "scorers")
        backends = {
            "clap": {"name": "embedded", "path": str(clap_dir), "text_model_path": None},
            "quality": {"name": "embedded", "path": str(quality_dir)},
            "frame_teacher": {"name": "embedded", "path": str(clap_dir)},
        }
        raw = merge(shipped_params, {**CURATED_OVERLAY, "backends": backends})
        params = Params.from_mapping(raw)
        with inside_workspace(root):
            built = corpus.build_corpus(params.data, params.seed, 4.0, root / "corpus")
            corpus.write_corpus(built, root / "corpus")
            curate.run(params)
        return raw

    return built_once(tmp_path_factory, "curated", build)


# The training stages on the tiny cache: a model and a run small enough for seconds.
TINY_TRAINING = {
    "model": {"hidden_dim": 32, "num_heads": 2, "depth": 3, "fused_depth": 1},
    "train": {
        "optim": {
            "steps": 12,
            "batch_size": 4,
            "warmup_steps": 2,
            "eval_every": 4,
            "checkpoint_every": 4,
        },
        "log_every": 2,
        "validation_batches": 2,
        "log_samples": 1,
        "sample_check_prompts": 2,
    },
    "finetune": {
        "optim": {
            "steps": 4,
            "batch_size": 4,
            "warmup_steps": 1,
            "eval_every": 2,
            "checkpoint_every": 2,
        },
    },
    "sample": {"steps": 4},
    "latents": {"segments_per_shard": 16, "batch_size": 4},
    "evaluate": {
        "generations_per_prompt": 1,
        "quality_levels": [1, 5],
        "bootstrap_resamples": 100,
        "batch_size": 4,
    },
}


@pytest.fixture(scope="session")
def latent_workspace(curated_workspace, tmp_path_factory) -> tuple[Path, dict]:
    """(directory, raw params) after captions + latents on the curated workspace, with the
    tiny training overlay in params.yaml; copy it to use it."""
    source, curated = curated_workspace

    def build(root: Path) -> dict:
        import yaml

        from tasks.captions import stage as captions
        from tasks.latents import stage as latents

        shutil.copytree(source, root, dirs_exist_ok=True)
        raw = merge(curated, TINY_TRAINING)
        (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
        params = Params.from_mapping(raw)
        with inside_workspace(root):
            captions.run(params)
            latents.run(params)
        return raw

    return built_once(tmp_path_factory, "latents", build)


@pytest.fixture(scope="session")
def trained_workspace(latent_workspace, tmp_path_factory) -> tuple[Path, dict]:
    """(directory, raw params) after tiny pretrain + finetune on the latent workspace; copy it
    to use it."""
    source, raw = latent_workspace

    def build(root: Path) -> dict:
        from tasks.train import stage as training_stage

        shutil.copytree(source, root, dirs_exist_ok=True)
        params = Params.from_mapping(raw)
        with inside_workspace(root):
            training_stage.run(params, "pretrain")
            training_stage.run(params, "finetune")
        return raw

    return built_once(tmp_path_factory, "trained", build)


@pytest.fixture(scope="session")
def scratch_dag(tmp_path_factory) -> tuple[Path, str]:
    """(directory, what its first `dvc repro` printed): a scratch copy of the project on the
    tiny params (tests/scratch_repo.py), the whole DAG reproduced and committed once per test
    run; `scratch_repo.copy` it to use it."""

    def build(root: Path) -> str:
        from tests import scratch_repo

        return scratch_repo.reproduce(root)[1]

    return built_once(tmp_path_factory, SCRATCH_DAG, build)


@pytest.fixture
def chromium() -> str:
    """The system Chromium for the browser checks: skipped where there is none, except in
    CI, which must run them (`make test` installs it)."""
    from tasks.evaluate.listening_page import find_chromium

    found = find_chromium()
    if found is None:
        message = "no Chromium found (apt-get install chromium, or set $CHROMIUM)"
        if os.environ.get("CI"):
            pytest.fail(f"{message}: CI must run the browser check")
        pytest.skip(message)
    return found
