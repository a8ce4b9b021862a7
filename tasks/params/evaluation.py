"""Params of the `evaluate` stage: what is generated, against what, and how it is scored."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator

from tasks.params.base import PositiveInt, Section

# What a trial evaluation can compute for the generated set (tasks/evaluate/summary.py): the
# metrics a sweep or an ablation table ranks trials by, never the attribute accuracies.
TrialMetric = Literal[
    "clap_score",
    "clap_score_wrong_prompt",
    "pmos",
    "inception_score",
    "fad_clap",
    "fad_teacher",
    "kl",
    "fad_clap_infinity",
]


class TrialEvaluation(Section):
    """The `trial` profile (issue 18): the same generator and scorers on a smaller set, only
    the metrics that rank a trial; no floor/ceiling rows, attribute analysis, quality curve,
    plots or listening page."""

    prompts: PositiveInt | None  # the first n evaluation prompts; null: all of them
    generations_per_prompt: PositiveInt
    metrics: list[TrialMetric] = Field(min_length=1)


class EvaluateParams(Section):
    """Paper 000 §III-B / paper 003 §5.3: generate for held-out prompts, score the set.

    `checkpoint` is a training stage's output folder (model.safetensors + model.json), so any
    trained model can be evaluated; dvc.yaml depends on it through `${evaluate.checkpoint}`.
    `prompts` null = the corpus's held-out concise prompts, else a TSV with the header
    `id<TAB>caption` (the challenge's split files, docs/reference.md §B.1). `reference_audio` null =
    the corpus's test split, else a folder of audio files; a file whose stem is a prompt id is
    that prompt's reference (audioldm_eval's pairing by file name, for the paired KL).
    """

    # full: every report (what `dvc repro` runs, the promoted model's evaluation); trial: the
    # ranking metrics only (`trial`), what sweep and table trials run (ablation.trial_overrides)
    profile: Literal["full", "trial"]
    trial: TrialEvaluation
    checkpoint: str
    prompts: str | None
    reference_audio: str | None
    reference_windows: PositiveInt  # evenly spaced 10-s windows per reference file
    generations_per_prompt: PositiveInt  # seeds per prompt: the clips a prompt's metrics average
    batch_size: PositiveInt  # prompts per sampling call and clips per scorer call
    quality_levels: list[Annotated[int, Field(ge=1)]]  # paper 003 Fig. 3 curve; [] = off
    fad_infinity: bool  # Gui et al. 2024 extrapolation (cited by paper 003), besides FAD_N
    confidence: Annotated[float, Field(gt=0.0, lt=1.0)]
    bootstrap_resamples: PositiveInt
    tag_temperature: Annotated[float, Field(gt=0.0)]  # zero-shot tags: softmax(cos / T)
    beta_density_scores: list[Annotated[float, Field(ge=0.0, le=1.0)]]  # paper 000 Fig. 2
    min_prompts_for_rates: PositiveInt  # an accuracy over fewer prompts is flagged as thin

    @field_validator("quality_levels")
    @classmethod
    def _distinct_levels(cls, levels: list[int]) -> list[int]:
        if len(set(levels)) != len(levels):
            raise ValueError("levels must be distinct")
        return sorted(levels)
