"""The training loop shared by `pretrain` and `finetune` (paper 000 §II-B, Table II).

AdamW, linear warm-up then step decay, gradient clipping, optional EMA, mixed precision and
device placement through `accelerate` (the same code on 2 CPU cores and under
`accelerate launch` on GPUs). Every random draw of a step comes from generators seeded by
(seed, stage, step, process), and the data order from (seed, stage, epoch), so a run killed
at any point resumes from its last checkpoint to the same weights as an uninterrupted one.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from accelerate import Accelerator
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader

from models.objective import FlowMatchingModel, LossTerms, ObjectiveConfig, TrainingBatch
from tasks.common.seeds import derived_seed
from tasks.latents.dataset import LatentDataset, Sample, collate
from tasks.params import OptimParams, TrainParams
from tasks.train import checkpoints
from tasks.train.batch_plan import (
    STAGE_CODES,
    BatchPlan,
    process_slice,
    quality_acceptance,
)

VALIDATION_STREAM = 1_000_003  # seeds the fixed validation draws, apart from any step

# A validation callback gets (step, validation flow-matching loss); it may raise to stop the
# run (the sweep raises optuna.TrialPruned). The flow-matching term, not the total, is what
# compares across REPA weights.
ValidationCallback = Callable[[int, float], None]
EvaluationHook = Callable[[int, FlowMatchingModel], None]


@dataclass(frozen=True)
class RunSpec:
    stage: str  # "pretrain" | "finetune"
    checkpoint_dir: Path
    optim: OptimParams
    train: TrainParams
    objective: ObjectiveConfig
    seed: int
    fingerprint: str  # checkpoints of another configuration are never resumed


@dataclass
class History:
    train: list[dict[str, float]] = field(default_factory=list)
    validation: list[dict[str, float]] = field(default_factory=list)


@dataclass
class TrainResult:
    model: FlowMatchingModel  # unwrapped; EMA weights when EMA is on
    history: History
    steps: int
    resumed_from: int
    wall_seconds: float


# --------------------------------------------------------------------------- schedule
def learning_rate_factor(step: int, optim: OptimParams) -> float:
    """Linear warm-up (step+1)/(warmup+1), then ×γ at each milestone (docs/reference.md §A.7)."""
    if step < optim.warmup_steps:
        return (step + 1) / (optim.warmup_steps + 1)
    passed = sum(step >= int(m * optim.steps) for m in optim.lr_milestones)
    return optim.lr_gamma**passed


def build_optimizer(
    model: torch.nn.Module, optim: OptimParams, fused: bool = True
) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW on all parameters, weight decay included (the reference has no exclusion list)."""
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=optim.learning_rate,
        betas=(optim.adam_betas[0], optim.adam_betas[1]),
        weight_decay=optim.weight_decay,
        eps=1e-6 if optim.mixed_precision != "no" else 1e-8,
        # One kernel over all parameters instead of a loop over them (CPU and CUDA);
        # the same update to round-off (tests/train/test_speedups.py).
        fused=fused,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: learning_rate_factor(step, optim)
    )
    return optimizer, scheduler


def to_training_batch(
    sample: Sample, model: FlowMatchingModel, device: torch.device
) -> TrainingBatch:
    backbone = model.backbone
    quality = sample["quality_level"].to(device) if backbone.quality_embedding else None
    return TrainingBatch(
        latent=backbone.normalise(sample["latent"].to(device)),
        text=sample["text"].to(device),
        clap_text=sample["clap_text"].to(device),
        quality_level=quality,
        score=sample["score"].to(device),
        clap_target=sample["clap_target"].to(device),
        frame_target=sample["teacher_target"].to(device),
    )


def step_generator(seed: int, stage: str, step: int, rank: int, device: torch.device):
    generator = torch.Generator(device=device)
    generator.manual_seed(derived_seed(seed, STAGE_CODES[stage], step, rank))
    return generator


# --------------------------------------------------------------------------- validation
def validation_objective(objective: ObjectiveConfig) -> ObjectiveConfig:
    """Uniform t, no masking: validation losses compare across λ and mask ratios."""
    return replace(objective, timestep_law="uniform", beta_lambda=0.0, mask_ratio=0.0)


@torch.no_grad()
def validate(
    model: FlowMatchingModel,
    dataset: LatentDataset,
    spec: RunSpec,
    accelerator: Accelerator,
) -> dict[str, float]:
    """Mean eq. (6) and eq. (3) losses on the first validation batches, with fixed t and
    noise per batch, so successive evaluations differ only by the weights (Figs. 4-5)."""
    objective = validation_objective(spec.objective)
    size = spec.optim.batch_size
    count = min(spec.train.validation_batches, math.ceil(len(dataset) / size))
    totals, flows = [], []
    for j in range(count):
        indices = list(range(j * size, min(len(dataset), (j + 1) * size)))
        mine = indices[accelerator.process_index :: accelerator.num_processes]
        batch = to_training_batch(collate([dataset[i] for i in mine]), model, accelerator.device)
        generator = step_generator(
            spec.seed, spec.stage, VALIDATION_STREAM + j, 0, batch.latent.device
        )
        with accelerator.autocast():
            terms: LossTerms = model(batch, objective, generator)
        totals.append(accelerator.gather_for_metrics(terms.per_sample))
        flows.append(accelerator.gather_for_metrics(terms.flow_per_sample))
    return {
        "val_loss": float(torch.cat(totals).mean()),
        "val_flow_matching": float(torch.cat(flows).mean()),
    }


# --------------------------------------------------------------------------- checkpoints
def trainer_state(optimizer, scheduler, step: int, history: History, ema) -> dict[str, Any]:
    state = {
        "step": step,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "history_train": history.train,
        "history_validation": history.validation,
    }
    if torch.cuda.is_available():
        state["cuda_rng"] = torch.cuda.get_rng_state_all()
    if ema is not None:
        state["ema_averaged"] = ema.n_averaged
    return state


def restore(directory: Path, model, optimizer, scheduler, ema) -> tuple[int, History]:
    checkpoints.load_weights(model, directory / checkpoints.MODEL_FILE)
    state = checkpoints.load_trainer_state(directory)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    if "cuda_rng" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    if ema is not None:
        checkpoints.load_weights(ema.module, directory / checkpoints.EMA_FILE)
        ema.n_averaged.copy_(state["ema_averaged"])
    return int(state["step"]), History(state["history_train"], state["history_validation"])


# --------------------------------------------------------------------------- the loop
def make_ema(model: FlowMatchingModel, train: TrainParams) -> AveragedModel | None:
    if not train.ema.enabled:
        return None
    return AveragedModel(
        model, multi_avg_fn=get_ema_multi_avg_fn(train.ema.decay), use_buffers=True
    )


LOGGED_TERMS = ("loss", "flow_matching", "repa_clap", "repa_frames")


def loss_values(terms: LossTerms) -> dict[str, float]:
    """The step's scalar losses as floats (NaN for a branch that is off), graph released."""
    values = (terms.total, terms.flow_matching, terms.repa_clap, terms.repa_frames)
    return {
        name: float("nan") if value is None else float(value.detach())
        for name, value in zip(LOGGED_TERMS, values, strict=True)
    }


def _train_row(
    step: int, window: list[dict[str, float]], lr: float, seconds: float, batch: int
) -> dict[str, float]:
    row: dict[str, float] = {"step": step}
    for name in LOGGED_TERMS:
        row[name] = sum(values[name] for values in window) / len(window)
    row["learning_rate"] = lr
    row["samples_per_second"] = len(window) * batch / max(seconds, 1e-9)
    return row


def check_finite(terms: LossTerms, step: int, indices: Sequence[int], resume_step: int) -> None:
    if not math.isfinite(float(terms.total.detach())):
        raise FloatingPointError(
            f"non-finite loss at step {step} (flow matching {float(terms.flow_matching)}, "
            f"REPA-CLAP {terms.repa_clap}, REPA-frames {terms.repa_frames}) on training "
            f"samples {list(indices)}; the checkpoint of step {resume_step} is intact"
        )


@dataclass
class TrainingState:
    """What a step changes: the weights (through the optimiser), the schedule, the EMA, the
    step count and the history; all of it goes into a checkpoint."""

    model: FlowMatchingModel  # unwrapped
    wrapped: torch.nn.Module  # as prepared by accelerate (DDP on several processes)
    forward: Callable[..., LossTerms]  # `wrapped`, compiled when train.compile
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    ema: AveragedModel | None
    step: int
    history: History

    @property
    def evaluated(self) -> FlowMatchingModel:
        """The weights that are validated and kept: the EMA's when EMA is on."""
        return cast(FlowMatchingModel, self.ema.module) if self.ema is not None else self.model


@dataclass(frozen=True)
class TrainingHooks:
    """Where a run reports: metrics sink, validation callbacks, evaluation hook."""

    log_metrics: Callable[[dict[str, float], int], None]
    callbacks: Sequence[ValidationCallback] = ()
    on_evaluate: EvaluationHook | None = None


def start_or_resume(
    model: FlowMatchingModel, spec: RunSpec, accelerator: Accelerator
) -> TrainingState:
    """Optimiser, schedule and EMA, restored from the last checkpoint of this fingerprint."""
    if spec.optim.batch_size % accelerator.num_processes:
        raise ValueError(
            f"optim.batch_size {spec.optim.batch_size} is not divisible by "
            f"{accelerator.num_processes} processes"
        )
    optimizer, scheduler = build_optimizer(model, spec.optim)
    ema = make_ema(model, spec.train)
    history, step = History(), 0
    resume_from = checkpoints.latest_checkpoint(spec.checkpoint_dir, spec.fingerprint)
    if resume_from is not None:
        step, history = restore(resume_from, model, optimizer, scheduler, ema)
    wrapped, optimizer = accelerator.prepare(model, optimizer)
    if ema is not None:
        ema.to(accelerator.device)
    forward = torch.compile(wrapped) if spec.train.compile else wrapped
    return TrainingState(model, wrapped, forward, optimizer, scheduler, ema, step, history)


def batch_plan(train_set: LatentDataset, spec: RunSpec) -> BatchPlan:
    """The global batches of every epoch, reweighted by p-MOS when QA-MDT's resampling is on."""
    weights = (
        quality_acceptance(train_set.rows["pmos"].to_numpy(np.float64))
        if spec.train.quality_resampling
        else None
    )
    return BatchPlan(len(train_set), spec.optim.batch_size, spec.seed, spec.stage, weights)


def optimisation_step(
    state: TrainingState,
    sample: Sample,
    indices: Sequence[int],
    spec: RunSpec,
    accelerator: Accelerator,
) -> LossTerms:
    """One step of eq. (6): loss, backward, clipping, AdamW, schedule, EMA; state.step += 1."""
    batch = to_training_batch(sample, state.model, accelerator.device)
    generator = step_generator(
        spec.seed, spec.stage, state.step, accelerator.process_index, accelerator.device
    )
    with accelerator.autocast():
        terms: LossTerms = state.forward(batch, spec.objective, generator)
    check_finite(terms, state.step, indices, state.step - state.step % spec.optim.checkpoint_every)
    accelerator.backward(terms.total)
    accelerator.clip_grad_norm_(state.wrapped.parameters(), spec.optim.grad_clip)
    state.optimizer.step()
    state.scheduler.step()
    state.optimizer.zero_grad(set_to_none=True)
    if state.ema is not None:
        state.ema.update_parameters(state.model)
    state.step += 1
    return terms


def finite_metrics(row: dict[str, float]) -> dict[str, float]:
    return {key: value for key, value in row.items() if key != "step" and math.isfinite(value)}


def run_validation(
    state: TrainingState,
    val_set: LatentDataset,
    spec: RunSpec,
    accelerator: Accelerator,
    hooks: TrainingHooks,
) -> None:
    """Validate, record, let the evaluation hook and the callbacks (pruning) see the result."""
    row = {"step": state.step, **validate(state.evaluated, val_set, spec, accelerator)}
    state.history.validation.append(row)
    hooks.log_metrics(finite_metrics(row), state.step)
    if hooks.on_evaluate is not None and accelerator.is_main_process:
        hooks.on_evaluate(state.step, state.evaluated)
    for callback in hooks.callbacks:
        callback(state.step, row["val_flow_matching"])


def save_checkpoint(state: TrainingState, spec: RunSpec, accelerator: Accelerator) -> None:
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        trainer = trainer_state(
            state.optimizer, state.scheduler, state.step, state.history, state.ema
        )
        meta = {"fingerprint": spec.fingerprint, "stage": spec.stage}
        ema_model = state.ema.module if state.ema is not None else None
        checkpoints.save_training_checkpoint(
            spec.checkpoint_dir, state.step, state.model, ema_model, trainer, meta
        )


def train(
    model: FlowMatchingModel,
    train_set: LatentDataset,
    val_set: LatentDataset,
    spec: RunSpec,
    accelerator: Accelerator,
    hooks: TrainingHooks,
) -> TrainResult:
    """Train `model` for spec.optim.steps, resuming from the last matching checkpoint."""
    started = time.perf_counter()
    optim = spec.optim
    state = start_or_resume(model, spec, accelerator)
    resumed_from = state.step
    window: list[dict[str, float]] = []
    window_seconds = 0.0
    for epoch, batches in batch_plan(train_set, spec).epochs(state.step, optim.steps):
        train_set.set_epoch(epoch)
        mine = [
            process_slice(b, accelerator.process_index, accelerator.num_processes) for b in batches
        ]
        loader = DataLoader(
            train_set, batch_sampler=mine, collate_fn=collate, num_workers=spec.train.workers
        )
        for indices, sample in zip(mine, loader, strict=True):
            step_start = time.perf_counter()
            terms = optimisation_step(state, sample, indices, spec, accelerator)
            window.append(loss_values(terms))
            window_seconds += time.perf_counter() - step_start  # training steps only
            step = state.step
            if step % spec.train.log_every == 0 or step == optim.steps:
                lr = float(state.scheduler.get_last_lr()[0])
                row = _train_row(step, window, lr, window_seconds, optim.batch_size)
                state.history.train.append(row)
                hooks.log_metrics(finite_metrics(row), step)
                window, window_seconds = [], 0.0
            if step % optim.eval_every == 0 or step == optim.steps:
                run_validation(state, val_set, spec, accelerator, hooks)
            if step % optim.checkpoint_every == 0 and step < optim.steps:
                save_checkpoint(state, spec, accelerator)
    accelerator.wait_for_everyone()
    return TrainResult(
        state.evaluated, state.history, state.step, resumed_from, time.perf_counter() - started
    )
