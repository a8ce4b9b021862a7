"""Params sections of the data side of the DAG: corpus, scorers, curation, captions, latents."""

from __future__ import annotations

import itertools
from typing import Annotated, Literal, Self

from pydantic import Field, model_validator

from tasks.params.base import Fraction, Positive, PositiveInt, Section


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

    file: str  # relative to data.ingest.caption_root, so that DVC tracks it (dvc.yaml corpus)
    style: Literal["holistic", "dense", "concise"]
    path_column: str
    caption_column: str


class IngestParams(Section):
    """A real dataset. dvc.yaml's `corpus` stage depends on `audio_root` and `caption_root`
    (`${data.ingest.audio_root}`): DVC interpolates only one primitive value per dep, and a
    missing dep path fails `dvc repro`, so both are folders that always exist (the shipped
    defaults are the committed, empty inbox/ folders) and every caption file lies in
    `caption_root`: adding audio or editing a caption file makes `corpus` stale."""

    audio_root: str = Field(min_length=1)
    caption_root: str = Field(min_length=1)
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
    # false: the unfiltered baseline, `keep_per_track` scored candidates drawn at random
    # whatever their tier (tasks/curate/segments.py select_unfiltered); an ablation row
    clap_filter: bool
    caption_column: Literal["caption_holistic", "caption_dense", "prompt_concise"]
    threshold_mode: Literal["absolute", "validation_quantile"]
    high_threshold: float
    medium_threshold: float
    high_share: Annotated[float, Field(gt=0.0, lt=1.0)]
    low_share: Annotated[float, Field(ge=0.0, lt=1.0)]
    batch_size: PositiveInt
    cache_dir: str
    # Label-free health gates (tasks/common/health.py): below min_clap_auc the CLAP cannot
    # tell a val track's caption from another's, so its tiers would be noise; 0 disables.
    min_clap_auc: Annotated[float, Field(ge=0.0, le=1.0)]
    # validation_quantile thresholds from fewer val tracks than this are refused.
    min_calibration_tracks: PositiveInt
    health_resamples: PositiveInt  # bootstrap resamples of the health figures' intervals
    health_confidence: Annotated[float, Field(gt=0.0, lt=1.0)]

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
    # The unconditional branch's quality level (paper 003 eq. (7)): null keeps the requested
    # level in both branches (text-only guidance; the training dropout keeps each sample's
    # level, as QA-MDT's training never drops the MOS token); a number fixes it, in training
    # dropout and at sampling (QA-MDT's code: 3, docs/reference.md §C.4).
    unconditional_level: PositiveInt | None

    @model_validator(mode="after")
    def _levels_in_range(self) -> Self:
        for key in ("inference_level", "unconditional_level"):
            if (getattr(self, key) or 0) > self.levels:
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
CaptionColumn = Literal["caption_holistic", "caption_dense", "caption_refined"]


class CaptionParams(Section):
    """Paper 000 §II-B (two-stage captions) and paper 003 §4.3 (three-step refinement).

    Refinement decides per kept segment with three CLAP similarities (003 eq. (8)-(10)):
    the generated caption's text-audio score (below `generated_threshold`: keep the
    original), the original's text-audio score (below `original_threshold`: the original
    is useless, use the generated one) and the text-text similarity of the two (below
    `merge_threshold`: the original adds something, merge; above: redundant, generated).
    `threshold_mode` works as in `curate`: `absolute` for LAION-CLAP's scale, or
    `validation_quantile`, where each threshold is the validation quantile at its share.
    """

    refine_column: Literal["caption_holistic", "caption_dense"]
    # false: no refinement, every segment keeps its original caption (`refine_column`) where
    # eq. (8)-(10) would replace it (paper 003 Table 2's tag-caption row); an ablation row
    refine: bool
    pretrain_columns: list[CaptionColumn] = Field(min_length=1)
    finetune_fraction: Annotated[float, Field(gt=0.0, le=1.0)]
    rewrite_batch_size: PositiveInt
    rewrite_few_shot: PositiveInt
    rewrite_max_retries: Annotated[int, Field(ge=0)]
    llm_max_new_tokens: PositiveInt
    captioner_instruments: PositiveInt
    threshold_mode: Literal["absolute", "validation_quantile"]
    generated_threshold: float
    original_threshold: float
    merge_threshold: float
    generated_filter_share: Annotated[float, Field(ge=0.0, lt=1.0)]
    original_discard_share: Annotated[float, Field(ge=0.0, lt=1.0)]
    merge_share: Annotated[float, Field(ge=0.0, lt=1.0)]
    batch_size: PositiveInt
    # Captioner health (tasks/common/health.py): below this share of the dataset's caption
    # words that the captioner can write, refinement keeps every original caption.
    min_captioner_coverage: Fraction
    # A genre tag is confident at this zero-shot probability (tasks/common/health.py).
    tag_confidence_floor: Fraction


# --------------------------------------------------------------------------- latents
class Mel25Params(Section):
    """The embedded codec: log-mel at the shape of ACE-Step 1.5 latents (25 Hz x 64)."""

    sample_rate: PositiveInt
    n_mels: PositiveInt
    frame_rate: PositiveInt
    fmax: Positive
    griffin_lim_iters: PositiveInt


class LatentParams(Section):
    """The `latents` stage: sharded, resumable safetensors cache of everything training reads."""

    root: str
    segments_per_shard: PositiveInt
    batch_size: PositiveInt
    text_dtype: Literal["float32", "float16", "bfloat16"]  # text-encoder sequences on disk
    mel25: Mel25Params


# --------------------------------------------------------------------------- backends
class BackendChoice(Section):
    name: str
    path: str | None


class ClapChoice(BackendChoice):
    # LAION-CLAP builds its text branch from roberta-base: a local save_pretrained copy.
    text_model_path: str | None
    # `crossfit` only: k tiny CLAPs, each trained on the dataset's pairs minus one fold of
    # tracks and scoring only that fold (tasks/scorers/crossfit.py); k = 1 would score
    # every track in-sample.
    folds: Annotated[int, Field(ge=2)]


class BackendParams(Section):
    """docs/architecture.md "Two profiles, one code path": each pretrained part behind a
    registry."""

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
    # What the embedded p-MOS regressor learns (tasks/scorers/quality.py): recorded quality
    # levels, known degradations of the dataset's own train clips, or auto (recorded when
    # every train track has a level).
    quality_targets: Literal["auto", "recorded", "synthetic_degradations"]
    eval_windows_per_track: PositiveInt
