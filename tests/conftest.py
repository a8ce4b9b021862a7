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


@pytest.fixture(scope="session")
def shipped_params() -> dict:
    return read_yaml(REPO / "params.yaml")


def params_with(raw: dict, overlay: dict) -> Params:
    return Params.from_mapping(merge(raw, overlay))


@pytest.fixture(scope="session")
def tiny_params(shipped_params: dict) -> Params:
    return params_with(shipped_params, {"data": TINY_DATA})
