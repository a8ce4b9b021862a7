"""The corpus tables: one schema whether the corpus is generated or ingested.

`tracks.parquet` holds one row per usable track; `rejects.parquet` one row per input that
could not be used, with its reason; `eval_prompts.parquet` the held-out prompt set.
Attribute columns are ground truth for the embedded corpus and empty for real data.
"""

from __future__ import annotations

import re
from pathlib import Path

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


def corpus_sample_rate(tracks: pd.DataFrame) -> int:
    """The one sample rate the corpus was written at (tracks.parquet), for later stages."""
    rates = tracks["sample_rate"].unique()
    if len(rates) != 1:
        raise ValueError(f"tracks.parquet mixes sample rates {sorted(rates)}")
    return int(rates[0])


# One row per candidate window; `tier` is NA for silent windows, S / p-MOS / level for
# windows that were not kept.
SEGMENT_COLUMNS: dict[str, str] = {
    "segment_id": "string",  # {track_id}-{candidate_index:02d}
    "track_id": "string",
    "split": "string",
    "candidate_index": "int64",  # order of start time within the track
    "start_s": "float64",
    "end_s": "float64",
    "clap_score": "float64",  # dot(audio embedding, caption embedding)
    "tier": "string",  # high | medium | low
    "status": "string",  # one of STATUSES
    "kept": "bool",
    "score_normalised": "float64",  # S in [0, 1] for the Beta schedule (kept rows)
    "pmos": "float64",  # kept rows
    "quality_level": "Int64",  # paper 003 §4.1 quality token, kept rows
    "quality_prefix": "string",  # paper 003 §4.1 text prefix, kept rows
}


# One row per kept segment. `caption_*` columns are what training can read
# (`captions.pretrain_columns` for pretraining, `caption_inference` for fine-tuning).
CAPTION_COLUMNS: dict[str, str] = {
    "segment_id": "string",
    "track_id": "string",
    "split": "string",
    "finetune": "bool",  # in the fine-tune subset (paper 000 §II-B stage 2)
    "caption_holistic": "string",  # pretraining caption, Qwen style (as recorded)
    "caption_dense": "string",  # pretraining caption, MusicFlamingo style (as recorded)
    # where a style was not recorded for the track, whose text stands in for it, e.g.
    # "caption_dense from caption_holistic"; NA when both styles are as recorded
    "caption_style_fallback": "string",
    "caption_generated": "string",  # the captioner's caption (003 §4.3 step 1)
    "caption_refined": "string",  # after filter / discard / merge (003 §4.3)
    "caption_inference": "string",  # the refined caption in the concise style (000 §II-B)
    "refinement": "string",  # one of caption_refinement.DECISIONS
    "clap_original": "float64",  # audio · original (captions.refine_column)
    "clap_generated": "float64",  # audio · generated, eq. (8)
    "text_similarity": "float64",  # original · generated, eq. (10)
    "clap_refined": "float64",  # audio · refined
    "clap_inference": "float64",  # audio · inference-style caption
    "captioner": "string",  # backends.captioner.name
    "merge_backend": "string",  # who wrote caption_refined when merged; NA otherwise
    "merge_fallback": "string",  # why the selected rewriter's merge was not used
    "rewrite_backend": "string",  # who wrote caption_inference
    "rewrite_fallback": "string",  # why the selected rewriter's rewrite was not used
}


def numeric_id(path: str) -> str:
    """The baseline's sample id: the digits of the stem (docs/reference.md §B.1),
    e.g. 00/1085700_instrumental.mp3 -> 1085700; a stem without digits is its own id."""
    stem = Path(path).stem
    digits = re.search(r"\d+", stem)
    return digits.group() if digits else stem
