"""What `pretrain` and `finetune` share: data, model, run, reports (paper 000 §II-B).

Pretraining reads both caption styles of every training segment (one drawn per sample);
fine-tuning starts from the pretrained weights and reads the LLM-rewritten inference-style
caption of the fine-tuning subset (Table II: 40 % of the data). Outputs per stage:
`checkpoints/<stage>/model.safetensors` + `model.json` and `reports/<stage>/` (DVC metrics
and plots: metrics.json, train.csv, val.csv, loss.png), the same in the stage's MLflow run.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import mlflow
import numpy as np
import torch
from accelerate import Accelerator

from models.fluxaudio import FluxAudioConfig, trainable_parameters
from models.objective import FlowMatchingModel
from tasks.backends.clap import load_clap
from tasks.backends.codec import load_codec
from tasks.common.reporting import log_report
from tasks.common.text_conditioning import FINETUNE_COLUMN
from tasks.common.tracking import stage_run
from tasks.latents.dataset import LatentDataset, Stage
from tasks.latents.store import read_manifest
from tasks.params import Params, load_stage_params
from tasks.params.tracked import tracked_params
from tasks.train import checkpoints, pruning
from tasks.train.loop import RunSpec, TrainingHooks, TrainResult, ValidationCallback, train
from tasks.train.model_factory import (
    backbone_config,
    build_model,
    cache_shapes,
    objective_config,
    with_latent_stats,
)
from tasks.train.reports import write_reports
from tasks.train.samples import audio_logger, sample_check

CHECKPOINTS = Path("checkpoints")
REPORTS = Path("reports")
STAGES = ("pretrain", "finetune")


def training_seed(params: Params) -> int:
    """`train.seed` reseeds training alone (the ablation table's seeds); null: `seed`. Sample
    checks keep `seed`, so every training seed is judged on the same generation noise."""
    return params.seed if params.train.seed is None else params.train.seed


def finetune_columns(params: Params) -> list[str]:
    """What fine-tuning reads: the concise rewrites (paper 000 §II-B stage 2), or with
    `finetune.two_stage_captions` false the pretraining captions, one drawn per sample."""
    if params.finetune.two_stage_captions:
        return [FINETUNE_COLUMN]
    return list(params.captions.pretrain_columns)


def datasets(params: Params, stage: Stage) -> tuple[LatentDataset, LatentDataset]:
    def split(name: str, cfg_dropout: float) -> LatentDataset:
        return LatentDataset(
            root=Path(params.latents.root),
            split=name,
            stage=stage,
            pretrain_columns=params.captions.pretrain_columns,
            # pretraining never reads them: its outputs must not depend on finetune params
            finetune_columns=finetune_columns(params) if stage == "finetune" else [],
            seed=training_seed(params),
            cfg_dropout=cfg_dropout,
            unconditional_level=params.quality.unconditional_level,
        )

    return split("train", params.train.cfg_dropout), split("val", 0.0)


def fingerprint(params: Params, stage: str, inputs: Sequence[Path]) -> str:
    digest = hashlib.sha256(json.dumps(tracked_params(params, stage), sort_keys=True).encode())
    digest.update(json.dumps(read_manifest(Path(params.latents.root))["fingerprint"]).encode())
    for path in inputs:
        digest.update(path.read_bytes())
    return digest.hexdigest()


def initial_weights(
    model: FlowMatchingModel, stage: str, config: FluxAudioConfig, params: Params
) -> list[Path]:
    """Where training starts: `train.init_from` for pretraining (null: fresh weights);
    `finetune.init_from` for fine-tuning (null: the pretrained model, same shape required)."""
    key = "train.init_from" if stage == "pretrain" else "finetune.init_from"
    init_from = params.train.init_from if stage == "pretrain" else params.finetune.init_from
    if init_from is not None:
        return [checkpoints.load_initial_backbone(model.backbone, Path(init_from), key)]
    if stage == "pretrain":
        return []
    source = CHECKPOINTS / "pretrain"
    if checkpoints.final_config(source) != config:
        raise ValueError(
            f"{source} was trained with another model configuration; rerun pretrain "
            "(the model params are shared by both stages)"
        )
    checkpoints.load_weights(model, source / checkpoints.MODEL_FILE)
    return [source / checkpoints.MODEL_FILE]


# --------------------------------------------------------------------------- the stage
def main(stage: Stage) -> None:
    """The `pretrain` / `finetune` entry point (`python -m tasks.train pretrain|finetune`).

    Inside a sweep trial (TTM_OPTUNA_* set) the validation losses go to the trial, finetune's
    steps after pretrain's, and a pruned trial ends the stage (and the experiment) here."""
    params = load_stage_params()
    offset = 0 if stage == "pretrain" else params.train.optim.steps
    try:
        summary = run(params, stage, callbacks=pruning.pruning_callbacks(offset))
    except pruning.TrialPruned as pruned:
        raise SystemExit(f"{stage}: trial {pruned}") from None
    if summary:  # the main process
        print(
            f"{stage}: {summary['steps']} steps in {summary['wall_seconds']:.0f} s, val flow "
            f"matching {summary['first_val_flow_matching']:.4f} -> "
            f"{summary['val_flow_matching']:.4f}"
        )


def log_metrics(metrics: dict[str, float], step: int) -> None:
    mlflow.log_metrics(metrics, step=step)


def run_spec(params: Params, stage: str, fingerprint_value: str) -> RunSpec:
    optim = params.train.optim if stage == "pretrain" else params.finetune.optim
    return RunSpec(
        stage=stage,
        checkpoint_dir=CHECKPOINTS / stage,
        optim=optim,
        train=params.train,
        objective=objective_config(params.model, params.train.timestep),
        seed=training_seed(params),
        fingerprint=fingerprint_value,
    )


def summarise(result: TrainResult, model: FlowMatchingModel, checks: dict) -> dict:
    """The stage's DVC metrics (reports/<stage>/metrics.json) and MLflow summary."""
    history = result.history
    return {
        "steps": result.steps,
        "resumed_from_step": result.resumed_from,
        "wall_seconds": result.wall_seconds,
        "trainable_parameters": trainable_parameters(model.backbone),
        "val_loss": history.validation[-1]["val_loss"],
        "val_flow_matching": history.validation[-1]["val_flow_matching"],
        "first_val_flow_matching": history.validation[0]["val_flow_matching"],
        "train_loss": history.train[-1]["loss"],
        "samples_per_second": float(np.mean([row["samples_per_second"] for row in history.train])),
        "samples": checks,
    }


def run(params: Params, stage: Stage, callbacks: Sequence[ValidationCallback] = ()) -> dict:
    """Train one stage end to end; {} on the processes other than the main one."""
    # cpu=True where there is no GPU: under torchrun / `accelerate launch` that makes the
    # processes one gloo group (MULTI_CPU) instead of independent copies of the run.
    optim = params.train.optim if stage == "pretrain" else params.finetune.optim
    accelerator = Accelerator(
        mixed_precision=optim.mixed_precision, cpu=not torch.cuda.is_available()
    )
    torch.manual_seed(training_seed(params))
    train_set, val_set = datasets(params, stage)
    shapes = cache_shapes(train_set)
    config = backbone_config(params.model, params.quality, shapes)
    model = build_model(config, params.model, shapes)
    with_latent_stats(model, *train_set.stats)
    inputs = initial_weights(model, stage, config, params)
    spec = run_spec(params, stage, fingerprint(params, stage, inputs))
    spec.checkpoint_dir.mkdir(parents=True, exist_ok=True)
    (REPORTS / stage / "samples").mkdir(parents=True, exist_ok=True)  # a DVC output
    main = accelerator.is_main_process
    codec = load_codec(params.backends.codec, params.latents.mel25)
    with stage_run(params, stage) if main else contextlib.nullcontext():
        if main:
            mlflow.log_params({"trainable_parameters": trainable_parameters(model.backbone)})
        hooks = TrainingHooks(
            log_metrics=log_metrics if main else lambda metrics, step: None,
            callbacks=callbacks,
            on_evaluate=audio_logger(val_set, params, codec, stage, REPORTS),
        )
        result = train(model, train_set, val_set, spec, accelerator, hooks)
        if not main:
            return {}
        clap = load_clap(params.backends.clap)
        summary = summarise(result, model, sample_check(result.model, val_set, params, codec, clap))
        log_report(write_reports(result, REPORTS / stage, stage, summary), f"tables/{stage}")
        meta = {
            "stage": stage,
            "step": result.steps,
            "fingerprint": spec.fingerprint,
            "params": tracked_params(params, stage),
        }
        checkpoints.save_final_model(spec.checkpoint_dir, result.model, config, meta)
        mlflow.log_dict(asdict(config), "model_config.json")
        checkpoints.clear_training_checkpoints(spec.checkpoint_dir)
    return summary
