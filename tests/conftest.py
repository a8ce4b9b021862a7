"""Shared fixtures: the shipped params, shrunk to a tiny corpus for fast tests."""

from __future__ import annotations

from pathlib import Path

import pytest

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


@pytest.fixture(scope="session")
def shipped_params() -> dict:
    return read_yaml(REPO / "params.yaml")


def params_with(raw: dict, overlay: dict) -> Params:
    return Params.from_mapping(merge(raw, overlay))


@pytest.fixture(scope="session")
def tiny_params(shipped_params: dict) -> Params:
    return params_with(shipped_params, {"data": TINY_DATA})
