"""Which params each stage depends on: declared once, in dvc.yaml's `params:` list.

DVC reruns a stage when one of those keys changes; the stage logs the same keys to its
MLflow run and, where it fingerprints its outputs (latent shards, training checkpoints),
hashes the same values. Reading the list from dvc.yaml, instead of writing it again in
Python, keeps the three from drifting apart (tests/test_layout.py checks every key resolves).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

from tasks.params import Params, ParamsError, read_yaml, resolve_key

# The dvc.yaml beside this checkout of the code (a `dvc exp run --temp` copy has its own).
DVC_FILE = Path(__file__).resolve().parents[2] / "dvc.yaml"


@cache
def tracked_keys(stage: str, dvc_file: Path = DVC_FILE) -> tuple[str, ...]:
    stages = read_yaml(dvc_file).get("stages", {})
    if stage not in stages:
        raise ParamsError(f"{dvc_file}: no stage {stage!r}")
    keys = stages[stage].get("params", [])
    if not all(isinstance(key, str) for key in keys):
        raise ParamsError(f"{dvc_file}: stages.{stage}.params must list params.yaml keys")
    return tuple(keys)


def tracked_params(params: Params, stage: str) -> dict[str, Any]:
    """{dotted key: value} of every params.yaml key the stage declares in dvc.yaml."""
    tree = params.model_dump(mode="json")
    where = f"dvc.yaml stages.{stage}.params"
    return {key: resolve_key(tree, key, where) for key in tracked_keys(stage)}
