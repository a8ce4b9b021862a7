"""The corpus tables: one schema whether the corpus is generated or ingested.

`tracks.parquet` holds one row per usable track; `rejects.parquet` one row per input that
could not be used, with its reason; `eval_prompts.parquet` the held-out prompt set.
Attribute columns are ground truth for the embedded corpus and empty for real data.
"""

from __future__ import annotations

import pandas as pd

# column -> pandas dtype; object columns hold lists (instruments) or None.
TRACK_COLUMNS: dict[str, str] = {
    "track_id": "string",
    "audio_path": "string",  # relative to the corpus root
    "origin_path": "string",  # ingest: the path in the caption file; embedded: empty
    "source": "string",  # embedded | ingest
    "split": "string",  # train | val | test
    "duration_s": "float64",
    "sample_rate": "int64",
    "caption_holistic": "string",  # Qwen-style holistic caption
    "caption_dense": "string",  # MusicFlamingo-style caption with tempo, key, chords
    "prompt_concise": "string",  # inference-style prompt (paper 000 §II-B)
    "caption_noise": "string",  # clean | wrong | partial | unknown
    "caption_source_track": "string",  # whose attributes the captions describe
    "corrupted_attribute": "string",  # partial: which attribute was swapped
    "caption_claims": "string",  # JSON: the attributes the captions state
    "quality_level": "Int64",  # 1 (worst) .. 5 (clean); empty for real data
    "degradation": "string",  # none | noise | bandlimit | clip | bitcrush
    "genre": "string",
    "mood": "string",
    "tempo_bpm": "float64",
    "key": "string",  # tonic, e.g. "F#"
    "mode": "string",  # major | minor
    "time_signature": "string",  # e.g. "4/4"
    "chord_progression": "string",  # roman numerals, e.g. "I-V-vi-IV"
    "instruments": "object",  # list[str], every instrument heard in the track
    "sections": "string",  # JSON list of {name, start_s, end_s, instruments, dynamics}
}

REJECT_COLUMNS: dict[str, str] = {"path": "string", "reason": "string", "detail": "string"}

EVAL_PROMPT_COLUMNS: dict[str, str] = {
    "prompt_id": "string",
    "track_id": "string",  # the reference recording of the prompt
    "prompt": "string",
    "genre": "string",
    "mood": "string",
    "tempo_bpm": "float64",
    "key": "string",
    "mode": "string",
    "instruments": "object",
}

AUDIO_DIR = "audio"  # FLAC files live here, relative to the corpus root


def frame(rows: list[dict], columns: dict[str, str]) -> pd.DataFrame:
    """A DataFrame with exactly `columns`, in order and typed; missing values become NA."""
    table = pd.DataFrame.from_records(rows, columns=list(columns))
    return table.astype(columns)


def check_columns(table: pd.DataFrame, columns: dict[str, str], name: str) -> None:
    missing = [column for column in columns if column not in table.columns]
    if missing:
        raise ValueError(f"{name}: missing columns {missing}")
