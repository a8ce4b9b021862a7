"""CLAP-guided segment filtering (paper 000 §II-A) and the score S of the Beta schedule (§II-C).

Pure functions, no I/O: candidate windows, the three tiers, the per-file priority
selection, threshold calibration and S. `tasks/curate/stage.py` wires them to audio and backends.
"""

from __future__ import annotations

import zlib
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from tasks.params import CurateParams

HIGH, MEDIUM, LOW = "high", "medium", "low"
TIERS = (HIGH, MEDIUM, LOW)
KEPT_HIGH, KEPT_MEDIUM = "kept_high", "kept_medium"
KEPT_LOW = "kept_low"  # only with `curate.clap_filter: false` (the unfiltered baseline)
KEPT = (KEPT_HIGH, KEPT_MEDIUM, KEPT_LOW)
DROPPED_LOW, DROPPED_SURPLUS, REJECTED_SILENT = "dropped_low", "dropped_surplus", "rejected_silent"
STATUSES = (KEPT_HIGH, KEPT_MEDIUM, KEPT_LOW, DROPPED_SURPLUS, DROPPED_LOW, REJECTED_SILENT)


# Independent seeded streams (seed, purpose, track): never collide, never depend on order.
_CANDIDATE_STREAM, _SELECTION_STREAM, _FIG1_STREAM = 5, 6, 7


def track_rng(seed: int, stream: int, track_id: str) -> np.random.Generator:
    return np.random.default_rng([seed, stream, zlib.crc32(track_id.encode())])


# --------------------------------------------------------------------------- candidates
def candidate_starts(
    track_id: str, num_samples: int, sample_rate: int, curate: CurateParams, seed: int
) -> np.ndarray:
    """Start sample of each candidate window, sorted (paper 000 §II-A: 15 random 10 s).

    start ~ U[0, duration - seconds], drawn from the track's own stream: the same track
    gets the same windows whatever else is in the corpus or in which order it is read.
    """
    length = window_length(curate, sample_rate)
    if num_samples < length:
        raise ValueError(f"{track_id}: {num_samples} samples < one window of {length}")
    rng = track_rng(seed, _CANDIDATE_STREAM, track_id)
    starts = np.rint(rng.uniform(0.0, 1.0, curate.candidates_per_track) * (num_samples - length))
    return np.sort(starts.astype(np.int64))


def window_length(curate: CurateParams, sample_rate: int) -> int:
    return round(curate.segment_seconds * sample_rate)


def segment_id(track_id: str, index: int) -> str:
    return f"{track_id}-{index:02d}"


def fig1_sample(segments: pd.DataFrame, seed: int) -> pd.DataFrame:
    """Paper 000 Fig. 1: one randomly sampled 10 s segment per validation file.

    Candidate 0 is not used: candidates are sorted by start, so it is the earliest of 15
    and biased toward the intro. A uniform pick among the (iid uniform) candidates is a
    uniformly placed window again.
    """
    val = segments[(segments["split"] == "val") & segments["tier"].notna()]
    picks = []
    for track_id, rows in val.groupby("track_id", sort=True):
        rng = track_rng(seed, _FIG1_STREAM, str(track_id))
        picks.append(rows.iloc[int(rng.integers(len(rows)))])
    columns = ["segment_id", "track_id", "start_s", "clap_score", "tier"]
    return pd.DataFrame(picks, columns=columns).reset_index(drop=True)


# --------------------------------------------------------------------------- tiers
@dataclass(frozen=True)
class Thresholds:
    """The two tier boundaries actually applied, and where they came from."""

    high: float
    medium: float
    mode: str
    calibration_scores: int = 0  # validation candidates behind a quantile calibration

    def as_dict(self) -> dict[str, float | str | int]:
        return asdict(self)


def calibrate_thresholds(curate: CurateParams, val_scores: np.ndarray) -> Thresholds:
    """Paper 000 §II-A thresholds, absolute or calibrated on validation candidate scores.

    `validation_quantile` (for a CLAP whose scale is not LAION-CLAP's, see CurateParams):
    high = the (1 - high_share) quantile and medium = the low_share quantile of the
    validation candidates' scores, so that about high_share of them are high and
    low_share low, which is the shape paper 000 Fig. 1 reports at 0.33 / 0.20.
    """
    if curate.threshold_mode == "absolute":
        return Thresholds(curate.high_threshold, curate.medium_threshold, "absolute")
    scores = np.asarray(val_scores, dtype=np.float64)
    scores = scores[np.isfinite(scores)]
    if scores.size < 2:
        raise ValueError(
            "curate.threshold_mode = validation_quantile needs scored validation candidates "
            f"(got {scores.size}); give the corpus a val split or use threshold_mode: absolute"
        )
    high = float(np.quantile(scores, 1.0 - curate.high_share))
    medium = float(np.quantile(scores, curate.low_share))
    return Thresholds(high, min(medium, high), "validation_quantile", int(scores.size))


def assign_tiers(scores: np.ndarray, thresholds: Thresholds) -> np.ndarray:
    """high: score >= high; medium: medium <= score < high; low: below; NaN (unscored): None."""
    scores = np.asarray(scores, dtype=np.float64)
    tiers = np.where(
        scores >= thresholds.high, HIGH, np.where(scores >= thresholds.medium, MEDIUM, LOW)
    ).astype(object)
    tiers[~np.isfinite(scores)] = None
    return tiers


# --------------------------------------------------------------------------- selection
def select_track(
    scores: np.ndarray, tiers: np.ndarray, keep: int, rng: np.random.Generator
) -> np.ndarray:
    """Statuses of one file's candidates under paper 000 §II-A's priority scheme.

    1. |S_high| >= keep: `keep` high segments sampled at random (uniformly, seeded).
    2. otherwise all high segments, and the remaining keep - |S_high| slots go to the
       top-scoring medium segments (ties: earlier window first). Low segments are never
       kept, so a file with fewer than `keep` admissible segments keeps fewer.
    """
    scores = np.asarray(scores, dtype=np.float64)
    status = np.full(len(scores), REJECTED_SILENT, dtype=object)
    high = np.flatnonzero(tiers == HIGH)
    medium = np.flatnonzero(tiers == MEDIUM)
    status[high] = DROPPED_SURPLUS
    status[medium] = DROPPED_SURPLUS
    status[tiers == LOW] = DROPPED_LOW
    if len(high) >= keep:
        status[np.sort(rng.choice(high, size=keep, replace=False))] = KEPT_HIGH
        return status
    status[high] = KEPT_HIGH
    by_score = medium[np.argsort(-scores[medium], kind="stable")]
    status[by_score[: keep - len(high)]] = KEPT_MEDIUM
    return status


def select_unfiltered(
    scores: np.ndarray, tiers: np.ndarray, keep: int, rng: np.random.Generator
) -> np.ndarray:
    """The unfiltered baseline of paper 000 §II-A ("treating all segments uniformly"): `keep`
    of the file's scored candidates drawn uniformly at random (seeded), whatever their tier.

    The same `keep` as the filter, not every candidate: filtering then changes which segments
    train, not how many, so a table row measures alignment, not data volume (15 candidates a
    file would be 2.5x the segments, more latents and more epochs' worth of distinct data at
    the same step budget). Tiers are still assigned and reported, so the kept share of low
    segments shows how much misaligned audio the filter keeps out.
    """
    status = np.full(len(scores), REJECTED_SILENT, dtype=object)
    scored = np.flatnonzero(np.isfinite(np.asarray(scores, dtype=np.float64)))
    status[scored] = DROPPED_SURPLUS
    chosen = np.sort(rng.choice(scored, size=min(keep, len(scored)), replace=False))
    by_tier = {HIGH: KEPT_HIGH, MEDIUM: KEPT_MEDIUM, LOW: KEPT_LOW}
    for index in chosen:
        status[index] = by_tier[tiers[index]]
    return status


def select_segments(
    candidates: pd.DataFrame, thresholds: Thresholds, keep: int, seed: int, clap_filter: bool
) -> pd.DataFrame:
    """`candidates` (track_id, candidate_index, clap_score) + tier, status, kept columns;
    `clap_filter` false: the unfiltered baseline (`select_unfiltered`)."""
    out = candidates.copy()
    scores = out["clap_score"].to_numpy(dtype=np.float64, na_value=np.nan)
    tiers = assign_tiers(scores, thresholds)
    status = np.empty(len(out), dtype=object)
    select = select_track if clap_filter else select_unfiltered
    for track_id, rows in out.groupby("track_id", sort=False).indices.items():
        rows = rows[np.argsort(out["candidate_index"].to_numpy()[rows], kind="stable")]
        rng = track_rng(seed, _SELECTION_STREAM, str(track_id))
        status[rows] = select(scores[rows], tiers[rows], keep, rng)
    out["tier"] = pd.array(tiers, dtype="string")
    out["status"] = pd.array(status, dtype="string")
    out["kept"] = out["status"].isin(KEPT).to_numpy(dtype=bool)
    return out


@dataclass(frozen=True)
class Curation:
    """What the `curate` stage decided, and the numbers it decided with."""

    segments: pd.DataFrame  # SEGMENT_COLUMNS, one row per candidate
    rejects: pd.DataFrame  # tracks that yielded no candidate, with the reason
    thresholds: Thresholds
    score_clip: float  # p: S = 1 at and above this raw score
    pmos_moments: tuple[float, float]  # (μ, σ) used for levels and prefixes
    pmos_moments_fitted: tuple[float, float] | None  # fitted on train kept p-MOS
    scorer_stats: dict[str, dict[str, int]]  # backend calls / computed / cache hits


# --------------------------------------------------------------------------- S (§II-C)
def score_clip_value(train_kept_scores: np.ndarray, percentile: float) -> float:
    """p: the `train.timestep.score_clip_percentile` percentile of kept train scores."""
    scores = np.asarray(train_kept_scores, dtype=np.float64)
    scores = scores[np.isfinite(scores)]
    if scores.size == 0:
        raise ValueError("no kept train-split segment: cannot normalise the CLAP score S")
    return float(np.percentile(scores, percentile))


def normalise_scores(scores: np.ndarray, floor: float, clip_at: float) -> np.ndarray:
    """S = clip((score - floor) / (clip_at - floor), 0, 1) (paper 000 §II-C).

    The paper says only that S is "normalised to [0, 1]" and that scores above the training
    set's 75th percentile count as perfect, S = 1 (docs/reference.md §A.9 [U]: the mapping is
    not given). We take the tier floor, the medium threshold (the lowest score a kept
    segment can have), as S = 0 and the percentile `clip_at` as S = 1, linear in between.
    If `clip_at` does not exceed the floor every kept segment is at the clip: S = 1.
    """
    scores = np.asarray(scores, dtype=np.float64)
    span = clip_at - floor
    if span <= 0:
        return np.where(np.isfinite(scores), 1.0, np.nan)
    return np.clip((scores - floor) / span, 0.0, 1.0)


def add_normalised_score(
    segments: pd.DataFrame, thresholds: Thresholds, percentile: float
) -> tuple[pd.DataFrame, float]:
    """`score_normalised` for kept rows (NaN elsewhere) and the clip value p used."""
    out = segments.copy()
    scores = out["clap_score"].to_numpy(dtype=np.float64, na_value=np.nan)
    kept = out["kept"].to_numpy(dtype=bool)
    clip_at = score_clip_value(scores[kept & (out["split"] == "train").to_numpy()], percentile)
    normalised = normalise_scores(scores, thresholds.medium, clip_at)
    out["score_normalised"] = np.where(kept, normalised, np.nan)
    return out, clip_at
