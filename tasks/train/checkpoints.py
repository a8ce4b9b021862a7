"""Checkpoints that describe themselves and load safely.

A training checkpoint is a directory `step-NNNNNNN/` holding
- `model.safetensors`: the trained module's state (backbone, REPA heads, latent stats);
- `ema.safetensors`: the EMA weights, when EMA is on;
- `trainer.pt`: optimiser, scheduler and RNG state, loaded with `weights_only=True`;
- `meta.json`: the step, the run fingerprint and the backbone's config.
It is written under a temporary name and renamed, then `latest` (a one-line file) is
replaced atomically, so a run killed at any point leaves the previous checkpoint intact.
The stage's final output is `model.safetensors` + `model.json` at the top of the directory.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from models.fluxaudio import FluxAudio, FluxAudioConfig
from tasks.common.atomic import atomic_path

LATEST = "latest"
MODEL_FILE = "model.safetensors"
EMA_FILE = "ema.safetensors"
TRAINER_FILE = "trainer.pt"
META_FILE = "meta.json"
FINAL_META = "model.json"


def state_tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    """A contiguous CPU copy of the state dict (safetensors refuses shared storage)."""
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in module.state_dict().items()}


def save_training_checkpoint(
    root: Path,
    step: int,
    model: nn.Module,
    ema: nn.Module | None,
    trainer_state: Mapping[str, Any],
    meta: Mapping[str, Any],
) -> Path:
    final = root / f"step-{step:07d}"
    staging = root / f".step-{step:07d}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    save_file(state_tensors(model), staging / MODEL_FILE)
    if ema is not None:
        save_file(state_tensors(ema), staging / EMA_FILE)
    torch.save(dict(trainer_state), staging / TRAINER_FILE)
    (staging / META_FILE).write_text(json.dumps({"step": step, **meta}, indent=2, default=str))
    shutil.rmtree(final, ignore_errors=True)
    staging.rename(final)
    with atomic_path(root / LATEST) as tmp:
        tmp.write_text(final.name)
    for older in root.glob("step-*"):  # keep only the checkpoint `latest` points to
        if older != final:
            shutil.rmtree(older)
    return final


def latest_checkpoint(root: Path, fingerprint: str) -> Path | None:
    """The checkpoint to resume from, or None; a checkpoint of another run is discarded."""
    pointer = root / LATEST
    if not pointer.exists():
        return None
    directory = root / pointer.read_text().strip()
    meta = json.loads((directory / META_FILE).read_text()) if directory.exists() else {}
    if meta.get("fingerprint") != fingerprint:
        clear_training_checkpoints(root)
        return None
    return directory


def clear_training_checkpoints(root: Path) -> None:
    for path in [*root.glob("step-*"), *root.glob(".step-*.tmp")]:
        shutil.rmtree(path)
    (root / LATEST).unlink(missing_ok=True)


def load_trainer_state(directory: Path) -> dict[str, Any]:
    return torch.load(directory / TRAINER_FILE, map_location="cpu", weights_only=True)


def load_weights(module: nn.Module, path: Path) -> None:
    module.load_state_dict(load_file(path), strict=True)


def read_meta(directory: Path) -> dict[str, Any]:
    return json.loads((directory / META_FILE).read_text())


def save_final_model(
    root: Path, model: nn.Module, config: FluxAudioConfig, meta: Mapping[str, Any]
) -> None:
    """The stage output: weights (EMA ones when EMA is on) + what is needed to rebuild them."""
    with atomic_path(root / MODEL_FILE) as tmp:
        save_file(state_tensors(model), tmp)
    with atomic_path(root / FINAL_META) as tmp:
        tmp.write_text(json.dumps({"config": asdict(config), **meta}, indent=2, default=str))


def read_final_meta(root: Path) -> dict[str, Any]:
    path = root / FINAL_META
    if not path.exists():
        raise FileNotFoundError(f"{path}: no trained model here (run its training stage)")
    return json.loads(path.read_text())


def final_config(root: Path) -> FluxAudioConfig:
    return FluxAudioConfig(**read_final_meta(root)["config"])


BACKBONE_PREFIX = "backbone."  # FlowMatchingModel's attribute: the REPA heads are training-only


# What decides the shape of the weights, and where a run's value of it comes from.
WEIGHT_SHAPING = {
    "latent_dim": "model.latent_dim (the codec's channels, backends.codec)",
    "hidden_dim": "model.hidden_dim",
    "num_heads": "model.num_heads",
    "depth": "model.depth",
    "fused_depth": "model.fused_depth",
    "mlp_ratio": "model.mlp_ratio",
    "text_dim": "the text encoder's token width (backends.text_encoder)",
    "condition_dim": "the CLAP text embedding's width (backends.clap)",
}
# Paper 003's additions (quality token, MDT side interpolator) may be absent from a source
# trained without them (the baseline's weights): they keep their initialisation.
ADDED_BY_SWITCHES = ("quality_embedding.", "mask_token", "side_interpolator.")


def load_initial_backbone(backbone: FluxAudio, root: Path, key: str) -> Path:
    """Start `backbone` from the stage output in `root` (`key` names the param that chose it).

    The source must have the same weight shapes (`WEIGHT_SHAPING`); the RoPE length may
    differ (tables are recomputed), and the paper-003 modules may be missing from it. Its
    latent statistics come with it: the weights were trained on latents normalised by them.
    """
    try:
        source = final_config(root)
    except FileNotFoundError as error:
        raise FileNotFoundError(f"{key}: {error}") from None
    differences = [
        f"{field} {getattr(source, field)} there, {getattr(backbone.config, field)} here ({where})"
        for field, where in WEIGHT_SHAPING.items()
        if getattr(source, field) != getattr(backbone.config, field)
    ]
    if differences:
        raise ValueError(f"{key}: {root} holds another FluxAudio: " + "; ".join(differences))
    path = root / MODEL_FILE
    state = {
        name.removeprefix(BACKBONE_PREFIX): value
        for name, value in load_file(path).items()
        if name.startswith(BACKBONE_PREFIX)
    }
    result = backbone.load_state_dict(state, strict=False)
    missing = [name for name in result.missing_keys if not name.startswith(ADDED_BY_SWITCHES)]
    if missing or result.unexpected_keys:
        raise ValueError(
            f"{key}: {path} does not fit this model: missing {missing}, "
            f"unexpected {result.unexpected_keys}"
        )
    return path


def load_backbone(root: Path) -> FluxAudio:
    """The trained backbone of a stage output (weights + latent stats), for sampling.

    Any stage's `model.safetensors` works: the REPA heads are dropped, the backbone's keys
    must match its `model.json` config exactly (strict load).
    """
    backbone = FluxAudio(final_config(root))
    path = root / MODEL_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path}: no trained weights here (run its training stage)")
    state = {
        key.removeprefix(BACKBONE_PREFIX): value
        for key, value in load_file(path).items()
        if key.startswith(BACKBONE_PREFIX)
    }
    backbone.load_state_dict(state, strict=True)
    return backbone.eval()
