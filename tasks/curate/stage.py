"""`curate` stage: CLAP-guided segment filtering (paper 000 §II-A) + quality levels (003 §4.1).

For every track (all splits) it draws `curate.candidates_per_track` random windows of
`curate.segment_seconds`, scores each against the track's caption with the CLAP backend,
sorts them into high / medium / low tiers and keeps up to `curate.keep_per_track` per file
by the paper's priority scheme. Kept segments get S, the normalised CLAP score of the Beta
timestep schedule (paper 000 §II-C), and a p-MOS with its quality level and text prefix
(paper 003 §4.1). Audio scorer outputs are cached by content (tasks/common/score_cache.py).

Writes data/curated/segments.parquet (every candidate), data/curated/rejects.parquet and
reports/curation.{json,md} + reports/curation/ (tables, Fig. 1 sample, histogram).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd

from tasks.backends.base import ClapBackend
from tasks.backends.clap import load_clap, pair_audio, pair_scores, pair_text
from tasks.backends.quality import load_quality
from tasks.common import schema
from tasks.common.atomic import write_parquet
from tasks.common.audio_io import AudioRejected, dbfs, read_audio, segment_windows
from tasks.common.preflight import calibration_problems, caption_column_problems, require
from tasks.common.quality_levels import fitted_moments, moments, quality_level, quality_prefix
from tasks.common.reporting import json_safe, log_report, numeric_items
from tasks.common.schema import SEGMENT_COLUMNS
from tasks.common.score_cache import CachedScorer, ScoreCache, backend_identity, cache_directory
from tasks.common.tracking import stage_run
from tasks.curate import health
from tasks.curate.report import write_reports
from tasks.curate.segments import (
    Curation,
    add_normalised_score,
    calibrate_thresholds,
    candidate_starts,
    segment_id,
    select_segments,
    window_length,
)
from tasks.params import Params, load_stage_params

CURATED = Path("data/curated")
REJECT_COLUMNS: dict[str, str] = {
    "track_id": "string",
    "audio_path": "string",
    "reason": "string",  # missing_audio | undecodable | too_short | missing_caption
    "detail": "string",
}


@dataclass
class Scorers:
    clap: ClapBackend  # text features (one per unique caption, not cached) and pair scores
    clap_audio: CachedScorer  # audio features (tasks/backends/clap.py pair_audio), by content
    quality: CachedScorer  # p-MOS, cached by content

    def stats(self) -> dict[str, dict[str, int]]:
        return {"clap_audio": self.clap_audio.stats(), "quality": self.quality.stats()}


def load_scorers(params: Params, cache: ScoreCache) -> Scorers:
    clap, quality = load_clap(params.backends.clap), load_quality(params.backends.quality)
    size = params.curate.batch_size
    return Scorers(
        clap,
        CachedScorer(
            cache,
            "clap_audio",
            backend_identity("clap", params.backends.clap),
            pair_audio(clap),
            size,
        ),
        CachedScorer(
            cache,
            "pmos",
            backend_identity("quality", params.backends.quality),
            quality.predict,
            size,
        ),
    )


# --------------------------------------------------------------------------- audio
def load_track(path: Path, sample_rate: int, min_samples: int) -> np.ndarray:
    """The whole track, mono at `sample_rate`; AudioRejected if it holds no full window."""
    audio = read_audio(path, sample_rate)
    if audio.size < min_samples:
        raise AudioRejected(
            "too_short",
            f"{audio.size / sample_rate:.2f} s < one segment of {min_samples / sample_rate:g} s",
        )
    return audio


def scan_candidates(
    tracks: pd.DataFrame, corpus_root: Path, params: Params, rows: list, rejects: list
) -> Iterator[np.ndarray]:
    """Yield each non-silent candidate window; append every candidate row / reject row.

    A generator, so that windows stream into the batched scorer one track at a time
    instead of holding the corpus's candidate audio (GBs at paper scale) in memory.
    """
    curate, rate = params.curate, params.data.sample_rate
    length = window_length(curate, rate)
    for track in tracks.itertuples(index=False):
        caption = getattr(track, curate.caption_column)
        try:
            if pd.isna(caption) or not str(caption).strip():
                raise AudioRejected("missing_caption", f"no {curate.caption_column}")
            audio = load_track(corpus_root / track.audio_path, rate, length)
        except AudioRejected as rejected:
            rejects.append(
                {
                    "track_id": track.track_id,
                    "audio_path": track.audio_path,
                    "reason": rejected.reason,
                    "detail": rejected.detail,
                }
            )
            continue
        starts = candidate_starts(track.track_id, audio.size, rate, curate, params.seed)
        for index, start in enumerate(starts):
            window = audio[start : start + length]
            silent = dbfs(window) < params.data.ingest.silence_dbfs
            rows.append(
                {
                    "segment_id": segment_id(track.track_id, index),
                    "track_id": track.track_id,
                    "split": track.split,
                    "candidate_index": index,
                    "start_s": start / rate,
                    "end_s": (start + length) / rate,
                    "caption": str(caption),
                    "silent": silent,
                }
            )
            if not silent:
                yield window


# --------------------------------------------------------------------------- scoring


def clap_scores(
    tracks: pd.DataFrame, corpus_root: Path, params: Params, scorers: Scorers
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(candidate rows with `clap_score`, NaN for silent windows; rejects table)."""
    rows: list[dict] = []
    rejects: list[dict] = []
    windows = scan_candidates(tracks, corpus_root, params, rows, rejects)
    audio = scorers.clap_audio.run(windows, params.data.sample_rate)
    candidates = pd.DataFrame(rows, columns=[*list(SEGMENT_COLUMNS)[:6], "caption", "silent"])
    scores = np.full(len(candidates), np.nan)
    scored = ~candidates["silent"].to_numpy(dtype=bool)
    if audio:
        captions = sorted(set(candidates.loc[scored, "caption"]))
        text = pair_text(scorers.clap, captions, params.curate.batch_size)
        caption_row = {caption: i for i, caption in enumerate(captions)}
        rows_of_text = text[[caption_row[c] for c in candidates.loc[scored, "caption"]]]
        # paper 000 §II-A: the CLAP score is the audio-text cosine (both L2-normalised);
        # the cross-fitted CLAP's is the out-of-fold z-score of the segment's track's model
        track_ids = candidates.loc[scored, "track_id"].astype(str).tolist()
        scores[scored] = pair_scores(scorers.clap, np.stack(audio), rows_of_text, track_ids)
    candidates["clap_score"] = scores
    return candidates.drop(columns=["caption", "silent"]), schema.frame(rejects, REJECT_COLUMNS)


def add_quality(
    segments: pd.DataFrame,
    tracks: pd.DataFrame,
    corpus_root: Path,
    params: Params,
    scorer: CachedScorer,
) -> tuple[pd.DataFrame, tuple[float, float], tuple[float, float] | None]:
    """p-MOS, quality level and prefix of the kept segments (paper 003 §4.1)."""
    out = segments.copy()
    kept = out["kept"].to_numpy(dtype=bool)
    windows = segment_windows(out[kept], tracks, corpus_root, params.data.sample_rate)
    pmos = np.full(len(out), np.nan)
    values = scorer.run(windows, params.data.sample_rate)
    pmos[kept] = np.concatenate(values) if values else []
    train = pmos[kept & (out["split"] == "train").to_numpy()]
    fitted = fitted_moments(train) if np.isfinite(train).sum() >= 2 else None
    mean, std = moments(params.quality, train)
    q = params.quality
    levels = quality_level(pmos[kept], mean, std, q.level_edges_std)
    prefixes = quality_prefix(pmos[kept], mean, std, q.prefix_edges_std, q.prefixes)
    out["pmos"] = pmos
    out["quality_level"] = pd.array([pd.NA] * len(out), dtype="Int64")
    out.loc[kept, "quality_level"] = levels
    out["quality_prefix"] = pd.array([pd.NA] * len(out), dtype="string")
    out.loc[kept, "quality_prefix"] = prefixes
    return out, (mean, std), fitted


def curate_segments(
    tracks: pd.DataFrame, corpus_root: Path, params: Params, scorers: Scorers
) -> Curation:
    """The whole stage minus file output: candidates, tiers, selection, S, quality."""
    candidates, rejects = clap_scores(tracks, corpus_root, params, scorers)
    val = candidates.loc[candidates["split"] == "val", "clap_score"].to_numpy()
    thresholds = calibrate_thresholds(params.curate, val)
    cfg = params.curate
    segments = select_segments(
        candidates, thresholds, cfg.keep_per_track, params.seed, cfg.clap_filter
    )
    segments, score_clip = add_normalised_score(
        segments, thresholds, params.train.timestep.score_clip_percentile
    )
    segments, used, fitted = add_quality(segments, tracks, corpus_root, params, scorers.quality)
    return Curation(
        segments=segments[list(SEGMENT_COLUMNS)].astype(SEGMENT_COLUMNS),
        rejects=rejects,
        thresholds=thresholds,
        score_clip=score_clip,
        pmos_moments=used,
        pmos_moments_fitted=fitted,
        scorer_stats=scorers.stats(),
    )


# --------------------------------------------------------------------------- health
def health_checks(
    tracks: pd.DataFrame, corpus_root: Path, params: Params, scorers: Scorers
) -> dict:
    """Label-free health of the scorers on the val tracks (tasks/curate/health.py), from
    the val candidate windows the full run scores anyway (their embeddings are cached)."""
    rate = params.data.sample_rate
    val = tracks[tracks["split"] == "val"]
    rows: list[dict] = []
    audio = scorers.clap_audio.run(scan_candidates(val, corpus_root, params, rows, []), rate)
    scored = [row for row in rows if not row["silent"]]
    owners = np.array([row["track_id"] for row in scored], dtype=object)
    captions = {row["track_id"]: row["caption"] for row in scored}
    embedded = np.stack(audio) if audio else np.zeros((0, scorers.clap.embedding_dim))
    length = window_length(params.curate, rate)
    clips = []  # the middle window of each scored val track, for the degradation check
    for track in val[val["track_id"].isin(captions)].itertuples(index=False):
        whole = load_track(corpus_root / track.audio_path, rate, length)
        start = (whole.size - length) // 2
        clips.append(whole[start : start + length])
    return {
        "clap": health.clap_section(scorers.clap, embedded, owners, captions, params),
        "quality": health.quality_section(clips, scorers.quality, params),
        "captioner": health.captioner_section(
            scorers.clap, embedded, owners, health.dataset_captions(tracks, params), params
        ),
    }


# --------------------------------------------------------------------------- stage
def clap_scale_problems(params: Params) -> list[str]:
    """The cross-fitted CLAP scores z-scores (tasks/backends/crossfit_clap.py), not cosines
    on LAION-CLAP's scale: absolute thresholds would keep or drop nearly everything."""
    if params.backends.clap.name == "crossfit" and params.curate.threshold_mode == "absolute":
        return [
            "curate.threshold_mode = absolute, but backends.clap.name = crossfit scores "
            "z-scores against its held-out reference captions, not cosines: use validation_quantile"
        ]
    return []


def run(params: Params) -> dict:
    """Curate the corpus under `data.root` into data/curated and reports/ (cwd-relative)."""
    started = time.perf_counter()
    corpus_root = Path(params.data.root)
    tracks = pd.read_parquet(corpus_root / "tracks.parquet")
    schema.check_columns(tracks, schema.TRACK_COLUMNS, "tracks.parquet")
    require(
        [
            *caption_column_problems(tracks, params.curate.caption_column, "curate.caption_column"),
            *calibration_problems(tracks, params),
            *clap_scale_problems(params),
        ],
        "curate",
    )
    with stage_run(params, "curate"):
        with ScoreCache(cache_directory(params.curate.cache_dir)) as cache:
            scorers = load_scorers(params, cache)
            checks = json_safe(health_checks(tracks, corpus_root, params, scorers))
            mlflow.log_metrics(numeric_items(checks, "health"))  # kept when the gate refuses
            require(health.gate_problems(checks, params), "curate")
            curation = curate_segments(tracks, corpus_root, params, scorers)
        write_parquet(CURATED / "segments.parquet", curation.segments)
        write_parquet(CURATED / "rejects.parquet", curation.rejects)
        report = write_reports(curation, tracks, params, checks)
        log_report(report, "curation")
        # Run-dependent figures go to MLflow only, so reports/ stays reproducible.
        mlflow.log_metric("stage_seconds", time.perf_counter() - started)
        for scorer, counts in curation.scorer_stats.items():
            mlflow.log_metrics({f"cache.{scorer}.{k}": v for k, v in counts.items()})
    return report.summary


def main() -> None:
    summary = run(load_stage_params())
    counts = summary["status_counts"]
    print(
        f"curate: {summary['candidates']} candidates of {summary['tracks_scored']} tracks, "
        f"{summary['kept']} kept ({counts}), {summary['rejects']} rejected tracks, "
        f"thresholds {summary['thresholds']['high']:.3f} / "
        f"{summary['thresholds']['medium']:.3f}"
    )
