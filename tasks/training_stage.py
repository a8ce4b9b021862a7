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
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import soundfile as sf
import torch
from accelerate import Accelerator
from matplotlib.figure import Figure  # the OO API: Agg canvas, no pyplot global state

from models.fluxaudio import trainable_parameters
from models.objective import FlowMatchingModel
from tasks import checkpoints, pruning
from tasks.atomic import atomic_path
from tasks.backends.clap import load_clap
from tasks.backends.codec import load_codec
from tasks.dataset import LatentDataset
from tasks.generation import cached_conditions, clap_scores, decode, generate_audio
from tasks.latent_store import read_manifest
from tasks.latents import FINETUNE_COLUMN
from tasks.model_factory import (
    backbone_config,
    build_model,
    cache_shapes,
    objective_config,
    with_latent_stats,
)
from tasks.params import Params, load_stage_params
from tasks.reporting import Report, json_safe, log_report
from tasks.tracking import stage_run
from tasks.trainer import RunSpec, TrainResult, ValidationCallback, train

CHECKPOINTS = Path("checkpoints")
REPORTS = Path("reports")


def training_seed(params: Params) -> int:
    """`train.seed` reseeds training alone (the ablation table's seeds); null: `seed`. Sample
    checks keep `seed`, so every training seed is judged on the same generation noise."""
    return params.seed if params.train.seed is None else params.train.seed


def datasets(params: Params, stage: str) -> tuple[LatentDataset, LatentDataset]:
    root = Path(params.latents.root)
    common = dict(
        root=root,
        stage=stage,
        pretrain_columns=params.captions.pretrain_columns,
        finetune_column=FINETUNE_COLUMN,
        seed=training_seed(params),
        unconditional_level=params.quality.unconditional_level,
    )
    train_set = LatentDataset(split="train", cfg_dropout=params.train.cfg_dropout, **common)
    val_set = LatentDataset(split="val", cfg_dropout=0.0, **common)
    return train_set, val_set


def stage_params(params: Params, stage: str) -> dict[str, Any]:
    """What the stage's result depends on (also its DVC params and its fingerprint)."""
    optim = params.train.optim if stage == "pretrain" else params.finetune.optim
    return {
        "seed": params.seed,
        "model": params.model.model_dump(),
        "optim": optim.model_dump(),
        "train": params.train.model_dump(exclude={"optim"}),
        "quality": params.quality.model_dump(),
        "captions.pretrain_columns": params.captions.pretrain_columns,
        "sample": params.sample.model_dump(),
    }


def fingerprint(params: Params, stage: str, inputs: Sequence[Path]) -> str:
    digest = hashlib.sha256(json.dumps(stage_params(params, stage), sort_keys=True).encode())
    digest.update(json.dumps(read_manifest(Path(params.latents.root))["fingerprint"]).encode())
    for path in inputs:
        digest.update(path.read_bytes())
    return digest.hexdigest()


def initial_weights(model: FlowMatchingModel, stage: str, config) -> list[Path]:
    """Fine-tuning starts from the pretrained model, which must have the same shape."""
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


# --------------------------------------------------------------------------- samples
def audio_frames(val_set: LatentDataset) -> int:
    return val_set[0]["latent"].shape[0]


def generate_for_val(
    backbone, val_set: LatentDataset, count: int, params: Params, codec, generator
) -> tuple[np.ndarray, list[str]]:
    """Audio for the first `count` val rows from their cached captions (quality-aware
    guidance when the model has a quality token), with the captions as prompts."""
    rows = list(range(count))
    with_quality = backbone.quality_embedding is not None
    condition, null, text_ids = cached_conditions(val_set, rows, params.quality, with_quality)
    prompts = val_set.text_table_captions(text_ids)
    audio, _ = generate_audio(
        backbone,
        condition,
        null,
        prompts,
        audio_frames(val_set),
        params.sample,
        codec,
        None,
        generator,
    )
    return audio, prompts


def sample_check(
    model: FlowMatchingModel, val_set: LatentDataset, params: Params, codec, clap
) -> dict[str, float]:
    """Paper-free sanity figure: CLAP score of generations for held-out val captions against
    the same prompts' decoded random latents (the trivial baseline) and decoded true latents
    (the codec's ceiling)."""
    count = min(params.train.sample_check_prompts, len(val_set))
    if count == 0:
        return {}
    backbone = model.backbone
    generator = torch.Generator().manual_seed(params.seed)
    audio, prompts = generate_for_val(backbone, val_set, count, params, codec, generator)
    frames = audio_frames(val_set)
    random_latents = backbone.denormalise(
        torch.randn((count, frames, backbone.config.latent_dim), generator=generator)
    )
    reference = torch.stack([val_set[row]["latent"] for row in range(count)])
    rate = codec.sample_rate
    return {
        "clap_score_generated": float(clap_scores(clap, audio, rate, prompts).mean()),
        "clap_score_random_latents": float(
            clap_scores(clap, decode(codec, random_latents), rate, prompts).mean()
        ),
        "clap_score_reference": float(
            clap_scores(clap, decode(codec, reference), rate, prompts).mean()
        ),
        "prompts": count,
    }


def audio_logger(val_set: LatentDataset, params: Params, codec, stage: str):
    """Evaluation hook: the first `train.log_samples` val prompts as WAV + text in MLflow."""
    count = min(params.train.log_samples, len(val_set))

    def log_samples(step: int, model: FlowMatchingModel) -> None:
        if count == 0:
            return
        generator = torch.Generator().manual_seed(params.seed)
        audio, prompts = generate_for_val(model.backbone, val_set, count, params, codec, generator)
        folder = REPORTS / stage / "samples"
        folder.mkdir(parents=True, exist_ok=True)
        for row, (clip, prompt) in enumerate(zip(audio, prompts, strict=True)):
            path = folder / f"step{step:07d}_{row}.wav"
            sf.write(path, clip, codec.sample_rate)
            mlflow.log_artifact(str(path), artifact_path=f"samples/step{step:07d}")
            mlflow.log_text(prompt, f"samples/step{step:07d}/{row}.txt")

    return log_samples


# --------------------------------------------------------------------------- reports
def loss_figure(train_rows: pd.DataFrame, val_rows: pd.DataFrame, path: Path, stage: str):
    figure = Figure(figsize=(6, 3.5))
    axis = figure.subplots()
    axis.plot(train_rows["step"], train_rows["flow_matching"], label="train flow matching")
    axis.plot(train_rows["step"], train_rows["loss"], label="train total (eq. 6)", alpha=0.6)
    axis.plot(val_rows["step"], val_rows["val_flow_matching"], "o-", label="val flow matching")
    axis.set(xlabel="step", ylabel="loss", title=f"{stage} (paper 000 Figs. 4-5)")
    axis.legend()
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=120)


# Wall-clock figures vary from run to run: they go to MLflow only, so the DVC files of a
# rerun are byte-identical (a fresh clone's `dvc repro` leaves git clean).
TIMINGS = ("wall_seconds", "samples_per_second")


def write_reports(result: TrainResult, stage: str, summary: dict) -> Report:
    folder = REPORTS / stage
    folder.mkdir(parents=True, exist_ok=True)
    tables = {
        "train": pd.DataFrame(result.history.train),
        "val": pd.DataFrame(result.history.validation),
    }
    for name, table in tables.items():
        with atomic_path(folder / f"{name}.csv") as tmp:
            table.drop(columns=list(TIMINGS), errors="ignore").to_csv(tmp, index=False)
    loss_figure(tables["train"], tables["val"], folder / "loss.png", stage)
    reproducible = {key: value for key, value in summary.items() if key not in TIMINGS}
    with atomic_path(folder / "metrics.json") as tmp:
        tmp.write_text(json.dumps(json_safe(reproducible), indent=2) + "\n")
    artifacts = [folder / "metrics.json", folder / "loss.png"]
    return Report(summary=summary, tables=tables, artifacts=artifacts)


# --------------------------------------------------------------------------- the stage
def main(stage: str) -> None:
    """The `pretrain` / `finetune` entry point (tasks/pretrain.py, tasks/finetune.py).

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


def run(params: Params, stage: str, callbacks: Sequence[ValidationCallback] = ()) -> dict:
    optim = params.train.optim if stage == "pretrain" else params.finetune.optim
    # cpu=True where there is no GPU: under torchrun / `accelerate launch` that makes the
    # processes one gloo group (MULTI_CPU) instead of independent copies of the run.
    accelerator = Accelerator(
        mixed_precision=optim.mixed_precision, cpu=not torch.cuda.is_available()
    )
    torch.manual_seed(training_seed(params))
    train_set, val_set = datasets(params, stage)
    shapes = cache_shapes(train_set)
    config = backbone_config(params.model, params.quality, shapes)
    model = build_model(config, params.model, shapes)
    with_latent_stats(model, *train_set.stats)
    inputs = initial_weights(model, stage, config)
    root = CHECKPOINTS / stage
    root.mkdir(parents=True, exist_ok=True)
    (REPORTS / stage / "samples").mkdir(parents=True, exist_ok=True)  # a DVC output
    spec = RunSpec(
        stage=stage,
        checkpoint_dir=root,
        optim=optim,
        train=params.train,
        objective=objective_config(params.model, params.train.timestep),
        seed=training_seed(params),
        fingerprint=fingerprint(params, stage, inputs),
    )
    main = accelerator.is_main_process
    codec = load_codec(params.backends.codec, params.latents.mel25)
    tracking = stage_run(params.tracking, stage, stage_params(params, stage))
    with tracking if main else contextlib.nullcontext():
        if main:
            mlflow.log_params({"trainable_parameters": trainable_parameters(model.backbone)})
        result = train(
            model,
            train_set,
            val_set,
            spec,
            accelerator,
            log_metrics=mlflow.log_metrics if main else lambda metrics, step: None,
            callbacks=callbacks,
            on_evaluate=audio_logger(val_set, params, codec, stage),
        )
        if not main:
            return {}
        checks = sample_check(result.model, val_set, params, codec, load_clap(params.backends.clap))
        last = result.history.validation[-1]
        summary = {
            "steps": result.steps,
            "resumed_from_step": result.resumed_from,
            "wall_seconds": result.wall_seconds,
            "trainable_parameters": trainable_parameters(model.backbone),
            "val_loss": last["val_loss"],
            "val_flow_matching": last["val_flow_matching"],
            "first_val_flow_matching": result.history.validation[0]["val_flow_matching"],
            "train_loss": result.history.train[-1]["loss"],
            "samples_per_second": float(
                np.mean([row["samples_per_second"] for row in result.history.train])
            ),
            "samples": checks,
        }
        report = write_reports(result, stage, summary)
        log_report(report, f"tables/{stage}")
        meta = {"stage": stage, "step": result.steps, "fingerprint": spec.fingerprint}
        meta["params"] = stage_params(params, stage)
        checkpoints.save_final_model(root, result.model, config, meta)
        mlflow.log_dict(asdict(config), "model_config.json")
        checkpoints.clear_training_checkpoints(root)
    return summary
