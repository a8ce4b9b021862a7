"""The one typed configuration object, mirroring params.yaml section by section.

Every stage calls `load_params()` once and hands each function only its own section.
Unknown keys, wrong types and out-of-range values fail at load time with a message that
names the dotted key (`train.timestep.beta_lambda: ...`), never deep inside a stage.

Overlay files (params/*.yaml) hold only the keys that differ from params.yaml, e.g. the
paper-scale configurations; `python -m tasks.params overrides FILE...` prints them, stacked
in order, as `-S key=value` arguments for `dvc exp run`, and `check FILE...` validates.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, Self

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

PARAMS_FILE = Path("params.yaml")

Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
Positive = Annotated[float, Field(gt=0.0)]
PositiveInt = Annotated[int, Field(ge=1)]


class Section(BaseModel):
    """Frozen, strict, closed: a typo in params.yaml is an error, not a silent default."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class ParamsError(ValueError):
    """params.yaml (or an overlay) does not validate; the message names every bad key."""


# --------------------------------------------------------------------------- tracking
class TrackingParams(Section):
    # A relative sqlite path is resolved against the working directory; MLFLOW_TRACKING_URI
    # in the environment wins (mlflow's own rule), which is how sweeps point trials at one store.
    mlflow_tracking_uri: str
    experiment: str


# --------------------------------------------------------------------------- data
class DegradationParams(Section):
    """Controlled audio degradations; list index i is the severity of quality level i + 1."""

    kinds: list[Literal["noise", "bandlimit", "clip", "bitcrush"]] = Field(min_length=1)
    snr_db: list[float] = Field(min_length=4, max_length=4)
    lowpass_hz: list[Positive] = Field(min_length=4, max_length=4)
    clip_drive_db: list[Annotated[float, Field(ge=0.0)]] = Field(min_length=4, max_length=4)
    bit_depth: list[Annotated[int, Field(ge=2, le=16)]] = Field(min_length=4, max_length=4)

    @model_validator(mode="after")
    def _severity_decreases_with_level(self) -> Self:
        for key in ("snr_db", "lowpass_hz", "bit_depth"):
            values = getattr(self, key)
            if values != sorted(values):
                raise ValueError(f"{key} must increase from level 1 to level 4 (milder)")
        if self.clip_drive_db != sorted(self.clip_drive_db, reverse=True):
            raise ValueError("clip_drive_db must decrease from level 1 to level 4 (milder)")
        return self


class NoiseParams(Section):
    wrong_caption_fraction: Fraction
    partial_caption_fraction: Fraction
    degraded_fraction: Fraction

    @model_validator(mode="after")
    def _caption_fractions_fit(self) -> Self:
        if self.wrong_caption_fraction + self.partial_caption_fraction > 1.0:
            raise ValueError("wrong_caption_fraction + partial_caption_fraction must be <= 1")
        return self


class CaptionSource(Section):
    """One caption file of a real dataset (ATTM JSON list, JSONL, CSV or TSV)."""

    file: str
    style: Literal["holistic", "dense", "concise"]
    path_column: str
    caption_column: str


class IngestParams(Section):
    audio_root: str | None
    caption_sources: list[CaptionSource]
    audio_extensions: list[str] = Field(min_length=1)
    # Below this RMS level (dBFS) a file counts as silent and is rejected.
    silence_dbfs: float


class DataParams(Section):
    source: Literal["embedded", "ingest"]
    root: str
    sample_rate: Annotated[int, Field(ge=8000, le=96000)]
    num_tracks: Annotated[int, Field(ge=6)]
    min_track_seconds: Positive
    max_track_seconds: Positive
    min_sections: Annotated[int, Field(ge=1)]
    max_sections: Annotated[int, Field(ge=1)]
    val_fraction: Annotated[float, Field(ge=0.0, lt=0.5)]
    test_fraction: Annotated[float, Field(ge=0.0, lt=0.5)]
    eval_prompt_count: PositiveInt
    workers: PositiveInt
    noise: NoiseParams
    degradation: DegradationParams
    ingest: IngestParams

    @model_validator(mode="after")
    def _ranges_are_ordered(self) -> Self:
        if self.min_track_seconds > self.max_track_seconds:
            raise ValueError("min_track_seconds must be <= max_track_seconds")
        if self.min_sections > self.max_sections:
            raise ValueError("min_sections must be <= max_sections")
        if self.source == "ingest" and not self.ingest.audio_root:
            raise ValueError("source 'ingest' needs ingest.audio_root")
        return self


# --------------------------------------------------------------------------- curate
class CurateParams(Section):
    """Paper 000 §II-A: CLAP-guided segment filtering.

    `threshold_mode: absolute` applies high/medium_threshold to raw CLAP scores (LAION-CLAP,
    the paper's scale). `validation_quantile` is the calibration for a CLAP whose score scale
    differs (the embedded one): the thresholds become the validation-score quantiles that
    leave `high_share` of validation candidates in the high tier and `low_share` in the low.
    """

    candidates_per_track: PositiveInt
    segment_seconds: Positive
    keep_per_track: PositiveInt
    caption_column: Literal["caption_holistic", "caption_dense", "prompt_concise"]
    threshold_mode: Literal["absolute", "validation_quantile"]
    high_threshold: float
    medium_threshold: float
    high_share: Annotated[float, Field(gt=0.0, lt=1.0)]
    low_share: Annotated[float, Field(ge=0.0, lt=1.0)]
    batch_size: PositiveInt
    cache_dir: str

    @model_validator(mode="after")
    def _tiers_are_ordered(self) -> Self:
        if self.medium_threshold > self.high_threshold:
            raise ValueError("medium_threshold must be <= high_threshold")
        if self.keep_per_track > self.candidates_per_track:
            raise ValueError("keep_per_track must be <= candidates_per_track")
        if self.high_share + self.low_share >= 1.0:
            raise ValueError("high_share + low_share must be < 1 (room for the medium tier)")
        return self


# --------------------------------------------------------------------------- quality
class QualityParams(Section):
    """Paper 003 §4.1: p-MOS quality prefixes and quantised quality tokens.

    Bin edges are in units of the p-MOS standard deviation around the mean (the paper's
    "distance from the mean in terms of standard deviation"); null mean/std are fitted on
    the train split's p-MOS, numbers are used as given (the reference code's 3.80 / 0.20).
    """

    levels: Annotated[int, Field(ge=2)]
    pmos_mean: float | None
    pmos_std: Positive | None
    level_edges_std: list[float]
    prefix_edges_std: list[float] = Field(min_length=2, max_length=2)
    prefixes: list[str] = Field(min_length=3, max_length=3)
    use_prefix: bool
    inference_level: PositiveInt
    unconditional_level: PositiveInt

    @model_validator(mode="after")
    def _levels_in_range(self) -> Self:
        for key in ("inference_level", "unconditional_level"):
            if getattr(self, key) > self.levels:
                raise ValueError(f"{key} must be <= levels ({self.levels})")
        if len(self.level_edges_std) != self.levels - 1:
            raise ValueError(f"level_edges_std needs levels - 1 = {self.levels - 1} edges")
        for key in ("level_edges_std", "prefix_edges_std"):
            edges = getattr(self, key)
            if any(a >= b for a, b in itertools.pairwise(edges)):
                raise ValueError(f"{key} must be strictly increasing")
        if (self.pmos_mean is None) != (self.pmos_std is None):
            raise ValueError("pmos_mean and pmos_std are both numbers or both null")
        return self


# --------------------------------------------------------------------------- captions
class CaptionParams(Section):
    """Paper 000 §II-B (two-stage captions) and paper 003 §4.3 (caption refinement)."""

    finetune_fraction: Annotated[float, Field(gt=0.0, le=1.0)]
    rewrite_batch_size: PositiveInt
    rewrite_few_shot: PositiveInt
    rewrite_max_retries: Annotated[int, Field(ge=0)]
    generated_caption_threshold: float
    merge_threshold: float


# --------------------------------------------------------------------------- backends
class BackendChoice(Section):
    name: str
    path: str | None


class ClapChoice(BackendChoice):
    # LAION-CLAP builds its text branch from roberta-base: a local save_pretrained copy.
    text_model_path: str | None


class BackendParams(Section):
    """DESIGN.md "Two profiles, one code path": each pretrained part behind a registry."""

    clap: ClapChoice
    text_encoder: BackendChoice
    codec: BackendChoice
    quality: BackendChoice
    frame_teacher: BackendChoice
    captioner: BackendChoice
    rewriter: BackendChoice


# --------------------------------------------------------------------------- scorers
class ScorerOptim(Section):
    steps: PositiveInt
    batch_size: PositiveInt
    learning_rate: Positive
    weight_decay: Annotated[float, Field(ge=0.0)]


class ScorerParams(Section):
    """The embedded stand-ins the `scorers` stage trains: a tiny CLAP and a p-MOS regressor.

    Both read a log-mel at `frame_rate` frames per second (the codec rate, so the CLAP audio
    tower's frames double as the embedded frame teacher). They train on random windows of
    `crop_seconds` (statistics pooling makes them length-independent; shorter is faster)
    and are measured on windows of `curate.segment_seconds`, the length they score.
    """

    sample_rate: PositiveInt
    n_mels: PositiveInt
    frame_rate: PositiveInt
    crop_seconds: Positive
    clap_pretrain_tracks: PositiveInt
    clap_pretrain_seconds: list[Positive] = Field(min_length=2, max_length=2)
    embed_dim: PositiveInt
    clap_channels: PositiveInt
    quality_channels: PositiveInt
    clap: ScorerOptim
    quality: ScorerOptim
    quality_augment_per_track: Annotated[int, Field(ge=0)]
    eval_windows_per_track: PositiveInt


# --------------------------------------------------------------------------- model
class RepaBranch(Section):
    """Paper 000 eq. (4)-(6): weight λ, projection size, timestep weight (1 - t)^α."""

    weight: Annotated[float, Field(ge=0.0)]
    projection_dim: PositiveInt
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
        if self.fused_depth > self.depth:
            raise ValueError("fused_depth must be <= depth (depth counts all blocks)")
        if self.hidden_dim % self.num_heads:
            raise ValueError("hidden_dim must be divisible by num_heads")
        if (self.hidden_dim // self.num_heads) % 2:
            raise ValueError("hidden_dim / num_heads must be even for RoPE")
        if self.masking.decode_layers > self.depth:
            raise ValueError("masking.decode_layers must be <= depth")
        return self


# --------------------------------------------------------------------------- training
class TimestepParams(Section):
    """Paper 000 §II-C eq. (1)-(2): t ~ Beta(1 + λ(1 - S), 1); λ = 0 is uniform."""

    beta_lambda: Annotated[float, Field(ge=0.0)]
    score_clip_percentile: Annotated[float, Field(gt=0.0, le=100.0)]


class OptimParams(Section):
    """Paper 000 Table II and the reference runner (REFERENCE.md §A.7)."""

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


class TrainParams(Section):
    optim: OptimParams
    timestep: TimestepParams
    cfg_dropout: Fraction


class FinetuneParams(Section):
    """Paper 000 §II-B stage 2: 10,000 steps on rewritten concise captions."""

    optim: OptimParams


class SampleParams(Section):
    steps: PositiveInt
    cfg_scale: Annotated[float, Field(ge=0.0)]


# --------------------------------------------------------------------------- root
class Params(Section):
    seed: Annotated[int, Field(ge=0)]
    tracking: TrackingParams
    data: DataParams
    curate: CurateParams
    quality: QualityParams
    captions: CaptionParams
    backends: BackendParams
    scorers: ScorerParams
    model: ModelParams
    train: TrainParams
    finetune: FinetuneParams
    sample: SampleParams

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any], source: str = "params.yaml") -> Params:
        try:
            return cls.model_validate(raw)
        except ValidationError as error:
            raise ParamsError(_describe(error, source)) from None


def _describe(error: ValidationError, source: str) -> str:
    lines = [f"{source}: {error.error_count()} invalid value(s)"]
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "<root>"
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown key"
        shown = (
            "" if item["type"] in ("missing", "extra_forbidden") else f" (got {item['input']!r})"
        )
        lines.append(f"  {key}: {message}{shown}")
    return "\n".join(lines)


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ParamsError(f"{path}: file not found") from None
    except yaml.YAMLError as error:
        raise ParamsError(f"{path}: not valid YAML: {error}") from None
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: top level must be a mapping of sections")
    return raw


def merge(base: Mapping[str, Any], overlay: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Deep-merge `overlay` into `base`; an overlay key absent from base is an error."""
    merged = dict(base)
    for key, value in overlay.items():
        dotted = f"{prefix}{key}"
        if key not in base:
            raise ParamsError(f"overlay: {dotted}: unknown key")
        if isinstance(value, Mapping) and isinstance(base[key], Mapping):
            merged[key] = merge(base[key], value, prefix=f"{dotted}.")
        else:
            merged[key] = value
    return merged


def load_params(path: Path = PARAMS_FILE, overlays: tuple[Path, ...] = ()) -> Params:
    raw = read_yaml(path)
    for overlay in overlays:
        raw = merge(raw, read_yaml(overlay))
    source = " + ".join(str(p) for p in (path, *overlays))
    return Params.from_mapping(raw, source=source)


def load_stage_params(path: Path = PARAMS_FILE) -> Params:
    """For a stage's main(): a bad params.yaml ends the process with the message alone."""
    try:
        return load_params(path)
    except ParamsError as error:
        raise SystemExit(f"error: {error}") from None


def flatten(tree: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in tree.items():
        if isinstance(value, Mapping):
            yield from flatten(value, prefix=f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


if __name__ == "__main__":  # `python -m tasks.params check|overrides ...` (tasks/overlays.py)
    from tasks.overlays import main

    main()
