"""Pre-flight checks: the configuration against the data, before a stage's expensive work.

A stage that cannot finish on the data at hand must say so in seconds, naming the params
key and what to set instead, not after minutes of training or scoring (an ingested corpus
has no recorded quality levels, no caption noise, and may lack a caption style). Each
check is a pure function returning the problems it found (empty: fine); a stage's
`main()` runs the ones it needs and `require` stops it with all of them at once.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import pandas as pd

from tasks.params import Params

# The caption styles a corpus records per track; any of them may be missing on an
# ingested corpus (ingest keeps a file with at least one style).
TRACK_CAPTION_COLUMNS = ("caption_holistic", "caption_dense", "prompt_concise")


class PreflightError(SystemExit):
    """The configuration cannot run on this data; the message names the params keys."""


def require(problems: Iterable[str], stage: str) -> None:
    found = list(problems)
    if found:
        listed = "\n".join(f"  - {problem}" for problem in found)
        raise PreflightError(f"error: `{stage}` cannot run on this data:\n{listed}")


def present(values: pd.Series) -> pd.Series:
    """True where a caption is recorded (not missing, not whitespace)."""
    return values.notna() & (values.astype("string").str.strip().fillna("") != "")


def recorded_styles(tracks: pd.DataFrame) -> list[str]:
    return [c for c in TRACK_CAPTION_COLUMNS if c in tracks and present(tracks[c]).any()]


def caption_column_problems(tracks: pd.DataFrame, column: str, key: str) -> list[str]:
    """`key` names a caption style that no track of the corpus records."""
    if column in tracks and present(tracks[column]).any():
        return []
    styles = recorded_styles(tracks)
    instead = f"set {key} to one of {styles}" if styles else "the corpus has no captions at all"
    return [
        f"{key} = {column}, but no track of this corpus has a {column} (the caption "
        f"sources, data.ingest.caption_sources, give {styles or 'none'}): {instead}"
    ]


def calibration_problems(tracks: pd.DataFrame, params: Params) -> list[str]:
    """Quantile thresholds need enough val tracks with the scored caption: quantiles of a
    handful of tracks are noise (curate.min_calibration_tracks)."""
    curate = params.curate
    if curate.threshold_mode != "validation_quantile":
        return []
    column = curate.caption_column
    val = tracks[tracks["split"] == "val"]
    captioned = int(present(val[column]).sum()) if column in val else 0
    if captioned >= curate.min_calibration_tracks:
        return []
    return [
        f"curate.threshold_mode = validation_quantile calibrates the tiers on the val "
        f"tracks' {column} scores, and {captioned} of this corpus's {len(val)} val track(s) "
        f"have a {column}, fewer than curate.min_calibration_tracks = "
        f"{curate.min_calibration_tracks} (quantiles of so few tracks are noise): raise "
        f"data.val_fraction, set curate.threshold_mode: absolute, or lower "
        f"curate.min_calibration_tracks"
    ]


def quality_backend_problems(tracks: pd.DataFrame, params: Params) -> list[str]:
    """The embedded p-MOS regressor learns quality levels on the p-MOS scale of
    quality.pmos_mean / pmos_std (tasks/common/quality_levels.py): recorded ones, or known
    degradations of the dataset's own clips (`scorers.quality_targets`,
    tasks/scorers/quality.py)."""
    if params.backends.quality.name != "embedded":
        return []
    problems = []
    train = tracks.loc[tracks["split"] == "train", "quality_level"]
    missing = int(train.isna().sum())
    setting = params.scorers.quality_targets
    if missing and setting == "recorded":
        problems.append(
            f"scorers.quality_targets = recorded trains the embedded p-MOS regressor "
            f"(backends.quality.name = embedded) on recorded quality levels (the embedded "
            f"corpus's degradation levels), and {missing} of {len(train)} train tracks of "
            f"this corpus have none: set scorers.quality_targets: synthetic_degradations (or "
            f"auto) to learn known degradations of this dataset's own clips, or "
            f"backends.quality.name: pmos with backends.quality.path a local p-MOS "
            f"checkpoint (README, 'Pretrained parts')"
        )
    synthetic = setting == "synthetic_degradations" or (setting == "auto" and missing)
    if synthetic and params.scorers.quality_augment_per_track == 0:
        problems.append(
            "scorers.quality_targets resolves to synthetic_degradations on this corpus (no "
            "recorded quality level on some train tracks), which learns from degraded copies "
            "of the train clips, and scorers.quality_augment_per_track = 0 makes none: set it "
            "to 1 or more"
        )
    q = params.quality
    if q.levels != 5 or q.pmos_mean is None or q.pmos_std is None:
        problems.append(
            "backends.quality.name = embedded learns 5 quality levels (4 degradation "
            "severities + clean) on the p-MOS scale of quality.pmos_mean / pmos_std: set "
            "quality.levels: 5 and both numbers, or select a real predictor "
            "(backends.quality.name: pmos)"
        )
    return problems


def caption_table_problems(table: pd.DataFrame, columns: Sequence[str], where: str) -> list[str]:
    """Every caption a stage will encode is there: name the column and a few segments."""
    problems = []
    for column in columns:
        if column not in table:
            problems.append(f"{where} has no column {column}")
            continue
        missing = table.loc[~present(table[column]), "segment_id"].astype(str).tolist()
        if missing:
            problems.append(
                f"{len(missing)} segment(s) of {where} have no {column} "
                f"(e.g. {', '.join(missing[:3])}); rerun the `captions` stage"
            )
    return problems


def evaluation_prompt_problems(prompts: int, params: Params) -> list[str]:
    """FAD needs two clips per set and the FAD-inf fit three, and the quality-level and
    random-latent sets hold one clip per prompt: too few prompts fail after generation."""
    needed = 3 if params.evaluate.fad_infinity else 2
    if prompts >= needed:
        return []
    source = params.evaluate.prompts or (
        "the corpus's eval_prompts.parquet, one per test track up to data.eval_prompt_count"
    )
    return [
        f"evaluate has {prompts} prompt(s) ({source}), and its Fréchet distances need at least "
        f"{needed} (FAD: 2 clips per set, FAD-inf (evaluate.fad_infinity): 3; the quality-level "
        f"and random-latent sets hold one clip per prompt): raise data.test_fraction, give "
        f"evaluate.prompts a longer list, or set evaluate.fad_infinity: false"
    ]
