"""`corpus` stage: the embedded music corpus with ground truth, or a real dataset ingested.

Writes `data/corpus/` (audio/*.flac, tracks.parquet, rejects.parquet, eval_prompts.parquet)
atomically as one directory, and `reports/corpus.json` (DVC metrics). Schema:
tasks/common/schema.py.

The embedded corpus (docs/architecture.md "The embedded corpus"): seeded multi-section pieces with
known genre, instruments, tempo, key/mode, mood, metre and chords; captions in the three
ATTM styles; a controlled fraction of wrong or partly wrong captions and of degraded audio
with a known quality level. Noise is applied to train and val only: the test split is the
clean held-out reference set behind the evaluation prompts.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import soundfile as sf

from tasks.common import schema
from tasks.common.atomic import atomic_directory, write_json, write_parquet
from tasks.common.parallel import ordered_map
from tasks.common.tracking import stage_run
from tasks.corpus.ingest import ingest_dataset
from tasks.corpus.splits import assign_splits
from tasks.params import DataParams, DegradationParams, load_stage_params
from tasks.synthesis.arrangement import TrackSpec, render
from tasks.synthesis.captions import claims_of, concise
from tasks.synthesis.degradation import CLEAN_LEVEL, degrade
from tasks.synthesis.plan import (
    plan_caption_noise,
    plan_degradations,
    sample_specs,
    stream_rng,
    write_captions,
)
from tasks.synthesis.vocabulary import roman_numeral

REPORT = Path("reports/corpus.json")


@dataclass(frozen=True)
class Corpus:
    tracks: pd.DataFrame
    rejects: pd.DataFrame
    eval_prompts: pd.DataFrame


@dataclass(frozen=True)
class RenderJob:
    spec: TrackSpec
    degradation: str
    quality_level: int
    degradation_params: DegradationParams
    sample_rate: int
    path: Path


# --------------------------------------------------------------------------- rendering
def render_job(job: RenderJob) -> float:
    """Render, degrade and write one track; returns its duration in seconds."""
    audio = render(job.spec, job.sample_rate)
    if job.quality_level != CLEAN_LEVEL:
        rng = np.random.default_rng([job.spec.render_seed, 7])
        audio = degrade(
            audio, job.degradation, job.quality_level, job.degradation_params, job.sample_rate, rng
        )
    sf.write(job.path, audio, job.sample_rate, subtype="PCM_16")
    return len(audio) / job.sample_rate


# --------------------------------------------------------------------------- assembly
def build_embedded_corpus(data: DataParams, seed: int, root: Path) -> Corpus:
    specs = sample_specs(data, seed)
    splits = assign_splits([s.track_id for s in specs], data.val_fraction, data.test_fraction, seed)
    noisy_ids = sorted(t for t, split in splits.items() if split != "test")
    noise = plan_caption_noise(noisy_ids, data, seed)
    degradations = plan_degradations(noisy_ids, data, seed)
    captions = write_captions(specs, noise, seed)
    (root / schema.AUDIO_DIR).mkdir(parents=True, exist_ok=True)
    jobs = [
        RenderJob(
            spec,
            *degradations.get(spec.track_id, ("none", CLEAN_LEVEL)),
            data.degradation,
            data.sample_rate,
            root / schema.AUDIO_DIR / f"{spec.track_id}.flac",
        )
        for spec in specs
    ]
    durations = ordered_map(render_job, jobs, data.workers)
    rows = [
        {
            "track_id": spec.track_id,
            "audio_path": f"{schema.AUDIO_DIR}/{spec.track_id}.flac",
            "source": "embedded",
            "split": splits[spec.track_id],
            "duration_s": duration,
            "sample_rate": data.sample_rate,
            **caption,
            "quality_level": job.quality_level,
            "degradation": job.degradation,
            **spec.attributes(),
            "chord_progression": "-".join(_numerals(spec)),
            "instruments": spec.instruments,
            "sections": json.dumps(spec.section_table()),
        }
        for spec, job, duration, caption in zip(specs, jobs, durations, captions, strict=True)
    ]
    tracks = schema.frame(rows, schema.TRACK_COLUMNS)
    return Corpus(
        tracks,
        schema.frame([], schema.REJECT_COLUMNS),
        eval_prompts(specs, splits, data.eval_prompt_count, seed),
    )


def _numerals(spec: TrackSpec) -> list[str]:
    return [roman_numeral(degree, spec.mode) for degree in spec.progression]


def eval_prompts(
    specs: list[TrackSpec], splits: dict[str, str], count: int, seed: int
) -> pd.DataFrame:
    """Held-out concise prompts written afresh from the true attributes of test tracks.

    With more prompts than test tracks, tracks are reused with new wording.
    """
    test = [s for s in specs if splits[s.track_id] == "test"]
    rows = []
    for index in range(count if test else 0):
        spec = test[index % len(test)]
        rows.append(
            {
                "prompt_id": f"p{index:04d}",
                "track_id": spec.track_id,
                "prompt": concise(claims_of(spec), stream_rng(seed, 5, index)),
                **spec.attributes(),  # columns the prompt table lacks are dropped
                "instruments": spec.instruments,
            }
        )
    return schema.frame(rows, schema.EVAL_PROMPT_COLUMNS)


def ingested_eval_prompts(tracks: pd.DataFrame, count: int) -> pd.DataFrame:
    """Real data: the test tracks' own captions, concise style first."""
    test = tracks[tracks["split"] == "test"].sort_values("track_id").head(count)
    prompts = test["prompt_concise"].fillna(test["caption_holistic"]).fillna(test["caption_dense"])
    rows = [
        {"prompt_id": f"p{index:04d}", "track_id": track_id, "prompt": prompt, "instruments": None}
        for index, (track_id, prompt) in enumerate(zip(test["track_id"], prompts, strict=True))
    ]
    return schema.frame(rows, schema.EVAL_PROMPT_COLUMNS)


def build_corpus(data: DataParams, seed: int, min_seconds: float, root: Path) -> Corpus:
    """Generate or ingest into `root` (an empty directory)."""
    if data.source == "embedded":
        return build_embedded_corpus(data, seed, root)
    result = ingest_dataset(data, seed, min_seconds, root)
    return Corpus(
        result.tracks, result.rejects, ingested_eval_prompts(result.tracks, data.eval_prompt_count)
    )


def write_corpus(corpus: Corpus, root: Path) -> None:
    write_parquet(root / "tracks.parquet", corpus.tracks)
    write_parquet(root / "rejects.parquet", corpus.rejects)
    write_parquet(root / "eval_prompts.parquet", corpus.eval_prompts)


def summarize(corpus: Corpus) -> dict:
    """Deterministic corpus figures (DVC metrics): sizes, noise and quality breakdowns."""
    tracks = corpus.tracks

    def counts(column: str) -> dict[str, int]:
        values = tracks[column].dropna().astype(str)
        return {str(k): int(v) for k, v in values.value_counts().sort_index().items()}

    return {
        "tracks": len(tracks),
        "hours": round(float(tracks["duration_s"].sum()) / 3600, 4),
        "rejects": len(corpus.rejects),
        "eval_prompts": len(corpus.eval_prompts),
        "splits": counts("split"),
        "caption_noise": counts("caption_noise"),
        "degradation": counts("degradation"),
        "quality_level": counts("quality_level"),
        "genre": counts("genre"),
        "reject_reasons": {
            str(k): int(v) for k, v in corpus.rejects["reason"].value_counts().sort_index().items()
        },
    }


def main() -> None:
    params = load_stage_params()
    started = time.perf_counter()
    root = Path(params.data.root)
    with atomic_directory(root) as staging:
        corpus = build_corpus(params.data, params.seed, params.curate.segment_seconds, staging)
        write_corpus(corpus, staging)
    summary = summarize(corpus)
    write_json(REPORT, summary)
    elapsed = time.perf_counter() - started
    print(
        f"corpus: {summary['tracks']} tracks, {summary['hours']:.2f} h, "
        f"{summary['rejects']} rejects in {elapsed:.1f} s -> {root}"
    )
    with stage_run(params, "corpus"):
        mlflow.log_metrics(
            {
                "tracks": summary["tracks"],
                "hours": summary["hours"],
                "rejects": summary["rejects"],
                "build_seconds": elapsed,
            }
        )
        mlflow.log_artifact(str(REPORT))
