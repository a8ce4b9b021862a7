"""The `latents` stage: alignment of teacher frames, the cache end to end, kill and resume."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from tasks.captions import stage as captions
from tasks.latents import stage as latents
from tasks.latents.dataset import LatentDataset
from tasks.latents.store import ShardedTable, read_manifest
from tasks.params import Params, merge


# --------------------------------------------------------------------------- alignment
def test_equal_grids_pass_through_untouched() -> None:
    features = np.random.default_rng(0).normal(size=(2, 250, 3)).astype(np.float32)
    assert latents.align_frames(features, 25.0, 250, 25.0) is features


@pytest.mark.parametrize("source_rate", [50.0, 75.0, 12.5])
def test_teacher_frames_are_resampled_onto_the_latent_grid(source_rate: float) -> None:
    """A feature that is a linear ramp in time stays that ramp on the 25 Hz grid."""
    seconds, rate = 4.0, 25.0
    source_times = np.arange(int(seconds * source_rate)) / source_rate
    features = np.stack([source_times, 2.0 * source_times + 1.0], axis=-1)[None]
    aligned = latents.align_frames(features, source_rate, int(seconds * rate), rate)
    times = np.arange(int(seconds * rate)) / rate
    inside = times <= source_times[-1]  # past the last teacher frame it holds its value
    assert aligned.shape == (1, 100, 2)
    np.testing.assert_allclose(aligned[0, inside, 0], times[inside], atol=1e-6)
    np.testing.assert_allclose(aligned[0, inside, 1], 2.0 * times[inside] + 1.0, atol=1e-5)


# --------------------------------------------------------------------------- end to end
def _workspace(curated_workspace, destination: Path, shard: int) -> tuple[Path, dict]:
    source, raw = curated_workspace
    shutil.copytree(source, destination, dirs_exist_ok=True)
    raw = merge(raw, {"latents": {"segments_per_shard": shard, "batch_size": 4}})
    (destination / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    return destination, raw


# --------------------------------------------------------------------------- publishing
def _cache(folder: Path, marker: str) -> Path:
    (folder / "segments").mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps({"marker": marker}))
    return folder


def test_the_finished_cache_replaces_an_earlier_one(tmp_path) -> None:
    root = _cache(tmp_path / "latents", "earlier")
    partial = _cache(latents.partial_root(root), "new")
    assert partial == tmp_path / "latents.partial"
    latents.publish(partial, root)
    assert read_manifest(root) == {"marker": "new"} and not partial.exists()


def test_a_root_holding_other_files_is_never_replaced(tmp_path) -> None:
    root = tmp_path / "mine"
    root.mkdir()
    (root / "notes.txt").write_text("not a cache")
    partial = _cache(latents.partial_root(root), "new")
    with pytest.raises(FileExistsError, match="not a latents cache"):
        latents.publish(partial, root)
    assert (root / "notes.txt").exists() and partial.exists()


def _env(root: Path) -> dict:
    return {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}"}


def _caption(root: Path, raw: dict) -> None:
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        captions.run(Params.from_mapping(raw))


def _latents(root: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "tasks.latents"],
        cwd=root,
        env=_env(root),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_cache(curated_workspace, tmp_path) -> None:
    clean, raw = _workspace(curated_workspace, tmp_path / "clean", shard=4)
    _caption(clean, raw)
    killed = tmp_path / "killed"
    shutil.copytree(clean, killed)
    process = _latents(clean)
    assert process.wait(timeout=600) == 0, process.stdout.read().decode()

    process = _latents(killed)
    shards = killed / "data/latents.partial/segments"  # built beside the output until done
    deadline = time.monotonic() + 300
    while len(list(shards.glob("shard-*.safetensors"))) < 2 and time.monotonic() < deadline:
        assert process.poll() is None, "finished before it could be killed"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (killed / "data/latents").exists()  # the output appears only when complete
    assert not (killed / "data/latents.partial/segments.parquet").exists()  # index last
    rerun = subprocess.run(
        [sys.executable, "-m", "tasks.latents"],
        cwd=killed,
        env=_env(killed),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "skipped 0 +" not in rerun.stdout  # finished shards were not recomputed
    assert not (killed / "data/latents.partial").exists()
    assert _files(killed / "data/latents") == _files(clean / "data/latents")

    # what the cache holds, read back through the store and the Dataset
    root = clean / "data/latents"
    manifest = read_manifest(root)
    table = pd.read_parquet(root / "segments.parquet")
    segments = ShardedTable(root, "segments")
    assert len(segments) == len(table) == manifest["segments"]
    first = segments.get("latents", [0])
    params = Params.from_mapping(raw)
    frames = int(params.curate.segment_seconds * params.latents.mel25.frame_rate)
    assert tuple(first.shape) == (1, frames, params.latents.mel25.n_mels)
    teacher = segments.get("teacher", [0])
    assert teacher.shape[1] == frames
    texts = pd.read_parquet(root / "texts.parquet")
    assert "" in set(texts["text"]) and manifest["empty_text_id"] in set(texts["text_id"])
    prefixed = texts["text"].str.contains(", ", regex=False) & texts["caption"].ne("")
    assert prefixed.any()  # quality.use_prefix: "{prefix}, {caption}" (paper 003 §4.1)
    dataset = LatentDataset(
        root,
        "train",
        "finetune",
        params.captions.pretrain_columns,
        ["caption_inference"],
        params.seed,
        0.0,
        params.quality.unconditional_level,
    )
    assert len(dataset) == table.loc[table["split"] == "train", "finetune"].sum()
    sample = dataset[0]
    assert sample["latent"].shape == (frames, params.latents.mel25.n_mels)
