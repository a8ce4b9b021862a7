"""Params sections of the model and its training: FluxAudio + the four switches, optimisers."""

from __future__ import annotations

from typing import Annotated, Literal, Self

from pydantic import Field, model_validator

from tasks.params.base import Fraction, Positive, PositiveInt, Section


# --------------------------------------------------------------------------- model
class RepaBranch(Section):
    """Paper 000 eq. (4)-(6): weight λ (0 = branch off), timestep weight (1 - t)^α.

    `projector_dim` is the hidden width of REPA's three-layer projector (REPA's
    --projector-dim, 2048); its output size is the cached target's (LAION-CLAP 512, MuQ 1024).
    """

    weight: Annotated[float, Field(ge=0.0)]
    projector_dim: PositiveInt
    time_weight_exponent: Annotated[float, Field(ge=0.0)]


class RepaParams(Section):
    clap: RepaBranch
    muq: RepaBranch


class MaskingParams(Section):
    """Paper 003 §4.2 MDT masking; ratio drawn from U[mask_ratio, mask_ratio + jitter]."""

    mask_ratio: Annotated[float, Field(ge=0.0, lt=1.0)]
    mask_ratio_jitter: Annotated[float, Field(ge=0.0, lt=1.0)]
    decode_layers: Annotated[int, Field(ge=0)]

    @model_validator(mode="after")
    def _ratio_stays_below_one(self) -> Self:
        if self.mask_ratio > 0 and self.mask_ratio + self.mask_ratio_jitter >= 1.0:
            raise ValueError("mask_ratio + mask_ratio_jitter must be < 1")
        return self


class ModelParams(Section):
    """Paper 000 §III-A / Table II; `depth` counts all blocks, joint = depth - fused_depth."""

    latent_dim: PositiveInt
    hidden_dim: PositiveInt
    num_heads: PositiveInt
    depth: PositiveInt
    fused_depth: Annotated[int, Field(ge=0)]
    latent_seq_len: PositiveInt
    text_seq_len: PositiveInt
    mlp_ratio: Positive
    positional_encoding: Literal["rope"]
    quality_token: bool
    masking: MaskingParams
    repa: RepaParams

    @model_validator(mode="after")
    def _shapes_are_consistent(self) -> Self:
        if self.fused_depth >= self.depth:
            raise ValueError("fused_depth must be < depth (depth counts all blocks, >= 1 joint)")
        if self.hidden_dim % self.num_heads:
            raise ValueError("hidden_dim must be divisible by num_heads")
        if (self.hidden_dim // self.num_heads) % 2:
            raise ValueError("hidden_dim / num_heads must be even for RoPE")
        if self.masking.mask_ratio > 0 and not 0 < self.masking.decode_layers < self.depth:
            raise ValueError("masking.decode_layers must be in [1, depth) when masking")
        return self


# --------------------------------------------------------------------------- training
class TimestepParams(Section):
    """Paper 000 §II-C eq. (1)-(2): t ~ Beta(1 + λ(1 - S), 1) when λ > 0; otherwise `law`,
    uniform (the paper's base) or the reference's logit-normal (docs/reference.md §A.5)."""

    law: Literal["uniform", "logit_normal"]
    logit_normal_mean: float
    logit_normal_scale: Positive
    beta_lambda: Annotated[float, Field(ge=0.0)]
    score_clip_percentile: Annotated[float, Field(gt=0.0, le=100.0)]


class OptimParams(Section):
    """Paper 000 Table II and the reference runner (docs/reference.md §A.7)."""

    steps: PositiveInt
    batch_size: PositiveInt
    learning_rate: Positive
    weight_decay: Annotated[float, Field(ge=0.0)]
    adam_betas: list[Annotated[float, Field(ge=0.0, lt=1.0)]] = Field(min_length=2, max_length=2)
    grad_clip: Positive
    warmup_steps: Annotated[int, Field(ge=0)]
    lr_milestones: list[Annotated[float, Field(gt=0.0, lt=1.0)]]
    lr_gamma: Annotated[float, Field(gt=0.0, le=1.0)]
    mixed_precision: Literal["no", "bf16", "fp16"]
    eval_every: PositiveInt
    checkpoint_every: PositiveInt


class EmaParams(Section):
    """Exponential moving average of the weights, sampled from when enabled."""

    enabled: bool
    decay: Annotated[float, Field(gt=0.0, lt=1.0)]


class TrainParams(Section):
    """Shared by `pretrain` and `finetune`; each stage has its own `optim` section.

    `seed` null trains with the top-level seed; a value reseeds training alone (weights,
    data order, timesteps, noise, masks) over the same data: the ablation table's seeds.
    `init_from` null starts pretraining from a fresh initialisation; a folder holding a stage
    output (`model.safetensors` + `model.json`, e.g. the baseline's public FluxAudio weights
    converted by `python -m tasks.train.import_checkpoint`) starts it from those weights.
    """

    seed: Annotated[int, Field(ge=0)] | None
    init_from: str | None
    optim: OptimParams
    timestep: TimestepParams
    cfg_dropout: Fraction
    ema: EmaParams
    # docs/reference.md §C.3: QA-MDT's hidden rejection sampling, accept with exp(5·mos)/C.
    quality_resampling: bool
    log_every: PositiveInt  # steps per logged (averaged) training-metrics row
    validation_batches: PositiveInt  # fixed val batches (seeded t and noise) per evaluation
    log_samples: Annotated[int, Field(ge=0)]  # val prompts rendered to audio at each eval
    # val prompts generated at the end of a stage and CLAP-scored against two baselines
    sample_check_prompts: Annotated[int, Field(ge=0)]
    workers: Annotated[int, Field(ge=0)]  # DataLoader workers (0 is fastest on 2 cores)
    # torch.compile the training forward + backward (validation and sampling stay eager).
    compile: bool


class FinetuneParams(Section):
    """Paper 000 §II-B stage 2 on rewritten concise captions (10,000 steps: §IV-A, Table II).

    `init_from` null fine-tunes the `pretrain` stage's model; a stage-output folder (an
    imported baseline checkpoint) fine-tunes that model instead. `two_stage_captions` false
    fine-tunes the same segments for the same steps on the pretraining captions
    (`captions.pretrain_columns`, one drawn per sample) instead of the concise rewrites: the
    ablation of §II-B's caption stage alone.
    """

    init_from: str | None
    two_stage_captions: bool
    optim: OptimParams


class SampleParams(Section):
    """ODE sampling (docs/reference.md §A.6) with classifier-free / quality-aware guidance."""

    solver: Literal["euler", "heun"]
    steps: PositiveInt
    cfg_scale: Annotated[float, Field(ge=0.0)]
    # docs/reference.md §C.4: QA-MDT keeps the best of n candidates by CLAP score; 1 = off.
    best_of: PositiveInt
