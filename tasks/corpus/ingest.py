"""Ingest a real dataset (ICME 2026 ATTM / MTG-Jamendo layout) into the corpus schema.

Layout (docs/reference.md §B.1):

    {audio_root}/{last-2-digits-of-id}/{id}_instrumental.mp3     e.g. 00/1085700_instrumental.mp3
    captions: JSON list [{"path": "00/1085700.mp3", "caption": "..."}, ...], path relative
              to audio_root, one file per style (Qwen-style = holistic, MusicFlamingo = dense)

Every `data.ingest.caption_sources` entry names one caption file (.json list, .jsonl, .csv or
.tsv) in `data.ingest.caption_root` with its style and its path/caption columns; captions of
several styles for one path merge into one track row. Each captioned file is decoded
(soundfile), mixed to mono, resampled to `data.sample_rate` (librosa/soxr) and written to
`audio/<track_id>.flac`.

Nothing that is wrong with one input stops the stage: it becomes a row of the rejects table
with a reason (undecodable, silent, too_short, no_caption, missing_audio, outside_root).
A caption file that cannot be read at all is a configuration error and raises ValueError.
"""

from __future__ import annotations

import csv
import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import librosa
import numpy as np
import pandas as pd
import soundfile as sf

from tasks.common import schema
from tasks.common.parallel import ordered_map
from tasks.common.schema import numeric_id
from tasks.corpus.splits import assign_splits
from tasks.params import CaptionSource, DataParams

PARAMS_KEY = "data.ingest.caption_sources"
# caption style -> track column (tasks/common/schema.py)
STYLE_COLUMNS = {
    "holistic": "caption_holistic",
    "dense": "caption_dense",
    "concise": "prompt_concise",
}


@dataclass(frozen=True)
class IngestResult:
    tracks: pd.DataFrame  # schema.TRACK_COLUMNS
    rejects: pd.DataFrame  # schema.REJECT_COLUMNS


@dataclass
class Entry:
    """All caption-file rows of one (normalised) audio path."""

    given: str  # the path as first written in a caption file
    captions: dict[str, str] = field(default_factory=dict)  # style -> first non-empty caption


@dataclass(frozen=True)
class DecodeJob:
    track_id: str
    given: str
    source: Path
    audio_dir: Path  # writes <audio_dir>/<track_id>.flac
    sample_rate: int
    min_seconds: float
    silence_dbfs: float


@dataclass(frozen=True)
class Outcome:
    duration_s: float | None = None  # set when kept
    reason: str | None = None  # set when rejected
    detail: str = ""


# --------------------------------------------------------------------------- caption files
def _read_rows(path: Path) -> list[dict]:
    """Rows of one caption file, by extension; raises ValueError (or OSError) when unreadable."""
    suffix = path.suffix.lower()
    text = path.read_text(encoding="utf-8-sig")
    if suffix == ".json":
        rows = json.loads(text)
        if not isinstance(rows, list):
            raise ValueError("a .json caption file must hold a list of objects")
    elif suffix == ".jsonl":
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    elif suffix in (".csv", ".tsv"):
        # TSV: no quoting (the baseline replaces tabs/newlines in captions, docs/reference.md §B.1)
        options: dict[str, Any] = (
            {"delimiter": "\t", "quoting": csv.QUOTE_NONE} if suffix == ".tsv" else {}
        )
        rows = list(csv.DictReader(text.splitlines(), **options))
    else:
        raise ValueError(f"unknown extension {suffix!r} (use .json, .jsonl, .csv or .tsv)")
    if not all(isinstance(row, dict) for row in rows):
        raise ValueError("every entry must be an object/row with named fields")
    return rows


def caption_file(source: CaptionSource, caption_root: Path, where: str) -> Path:
    """`source.file` inside `caption_root`: the folder dvc.yaml's `corpus` stage depends on,
    so a caption file elsewhere would change without making `corpus` stale."""
    if os.path.isabs(source.file):
        raise ValueError(f"{where}: give the file relative to data.ingest.caption_root")
    path = caption_root / source.file
    if not path.resolve().is_relative_to(caption_root.resolve()):
        raise ValueError(f"{where}: resolves outside data.ingest.caption_root ({caption_root})")
    return path


def load_captions(sources: list[CaptionSource], caption_root: Path) -> dict[str, Entry]:
    """Normalised path -> Entry over every caption source, in file order."""
    entries: dict[str, Entry] = {}
    for index, source in enumerate(sources):
        where = f"{PARAMS_KEY}[{index}].file = {source.file!r}"
        path = caption_file(source, caption_root, where)
        try:
            rows = _read_rows(path)
        except (OSError, UnicodeDecodeError, ValueError, csv.Error) as error:
            raise ValueError(f"{where}: cannot read caption file: {error}") from None
        if rows and not any(source.caption_column in row for row in rows):
            raise ValueError(
                f"{where}: no entry has the field {source.caption_column!r} (caption_column)"
            )
        for number, row in enumerate(rows, start=1):
            given = row.get(source.path_column)
            if not isinstance(given, str):
                raise ValueError(
                    f"{where}: entry {number} has no text field "
                    f"{source.path_column!r} (path_column)"
                )
            entry = entries.setdefault(os.path.normpath(given), Entry(given))
            caption = row.get(source.caption_column)
            if isinstance(caption, str) and caption.strip():
                entry.captions.setdefault(source.style, caption.strip())
    return entries


# --------------------------------------------------------------------------- paths and ids
def _outside_root(given: str, root: Path) -> str | None:
    """Why a caption path may not be used (absolute, or escapes the root), else None."""
    if os.path.isabs(given):
        return "absolute path; caption paths must be relative to data.ingest.audio_root"
    if not (root / given).resolve().is_relative_to(root.resolve()):
        return "resolves outside data.ingest.audio_root (via '..' or a symlink)"
    return None


def scan_audio(root: Path, extensions: list[str]) -> list[str]:
    """Relative POSIX paths of every audio file under `root`, sorted."""
    wanted = {ext.lower() for ext in extensions}
    found = (p for p in root.rglob("*") if p.suffix.lower() in wanted and p.is_file())
    return sorted(p.relative_to(root).as_posix() for p in found)


def assign_ids(paths: list[str]) -> dict[str, str]:
    """Normalised path -> unique track id; colliding ids fall back to the path itself."""
    base = {path: numeric_id(path) for path in paths}
    counts = Counter(base.values())
    ids: dict[str, str] = {}
    taken: set[str] = set()
    for path in sorted(paths):
        candidates = [base[path]] if counts[base[path]] == 1 else []
        candidates += [os.path.splitext(path)[0].replace("/", "_"), path.replace("/", "_")]
        track_id = next((c for c in candidates if c not in taken), None)
        suffix = 2
        while track_id is None or track_id in taken:
            track_id, suffix = f"{candidates[-1]}-{suffix}", suffix + 1
        ids[path] = track_id
        taken.add(track_id)
    return ids


# --------------------------------------------------------------------------- decoding
def decode_job(job: DecodeJob) -> Outcome:
    """Decode, check, resample and write one file; never raises for a bad input file."""
    try:
        audio, rate = sf.read(job.source, dtype="float32", always_2d=True)
    except Exception as error:  # libsndfile reports every bad file as some RuntimeError
        return Outcome(
            reason="undecodable", detail=f"libsndfile: {error}".replace(str(job.source), job.given)
        )
    mono = audio.mean(axis=1)
    if not np.isfinite(mono).all():
        return Outcome(reason="undecodable", detail="decoded samples are not finite")
    if rate != job.sample_rate and mono.size:
        mono = librosa.resample(mono, orig_sr=rate, target_sr=job.sample_rate, res_type="soxr_hq")
    duration = mono.size / job.sample_rate
    if not mono.size or duration < job.min_seconds:
        return Outcome(reason="too_short", detail=f"{duration:.2f} s < {job.min_seconds} s")
    rms = float(np.sqrt(np.mean(np.square(mono, dtype=np.float64))))
    dbfs = 20.0 * np.log10(max(rms, 1e-10))
    if dbfs < job.silence_dbfs:
        return Outcome(
            reason="silent", detail=f"RMS {dbfs:.1f} dBFS < silence_dbfs {job.silence_dbfs} dBFS"
        )
    sf.write(
        job.audio_dir / f"{job.track_id}.flac",
        np.clip(mono, -1.0, 1.0),
        job.sample_rate,
        format="FLAC",
        subtype="PCM_16",
    )
    return Outcome(duration_s=duration)


# --------------------------------------------------------------------------- assembly
def _reject(path: str, reason: str, detail: str) -> dict:
    return {"path": path, "reason": reason, "detail": detail}


def triage(
    entries: dict[str, Entry], root: Path, extensions: list[str]
) -> tuple[dict[str, Entry], list[dict]]:
    """Split caption entries into usable ones and rejects; add uncaptioned audio files."""
    usable: dict[str, Entry] = {}
    rejects: list[dict] = []
    for key in sorted(entries):
        entry = entries[key]
        if (why := _outside_root(entry.given, root)) is not None:
            rejects.append(_reject(entry.given, "outside_root", why))
        elif not (root / key).is_file():
            rejects.append(_reject(entry.given, "missing_audio", "no such file under audio_root"))
        elif not entry.captions:
            rejects.append(_reject(entry.given, "no_caption", "every caption entry is empty"))
        else:
            usable[key] = entry
    rejects += [
        _reject(path, "no_caption", "no entry in any caption source")
        for path in scan_audio(root, extensions)
        if path not in entries
    ]
    return usable, rejects


def track_row(job: DecodeJob, entry: Entry, duration: float, split: str) -> dict:
    """One row of schema.TRACK_COLUMNS; attribute columns stay NA for real data."""
    captions = {STYLE_COLUMNS[style]: text for style, text in entry.captions.items()}
    return {
        "track_id": job.track_id,
        "audio_path": f"{schema.AUDIO_DIR}/{job.track_id}.flac",
        "origin_path": entry.given,
        "source": "ingest",
        "split": split,
        "duration_s": duration,
        "sample_rate": job.sample_rate,
        "caption_noise": "unknown",
        "instruments": None,
        **captions,
    }


def ingest_dataset(
    data: DataParams, seed: int, min_seconds: float, output_root: Path
) -> IngestResult:
    """Read `data.ingest` into tracks/rejects tables; writes only output_root/audio/*.flac."""
    ingest = data.ingest
    root, caption_root = Path(ingest.audio_root), Path(ingest.caption_root)
    for key, folder in (("audio_root", root), ("caption_root", caption_root)):
        if not folder.is_dir():
            raise ValueError(f"data.ingest.{key}: {folder} is not a directory")
    if not ingest.caption_sources:
        raise ValueError(f"{PARAMS_KEY}: empty; name at least one caption file")
    entries = load_captions(ingest.caption_sources, caption_root)
    usable, rejects = triage(entries, root, ingest.audio_extensions)
    ids = assign_ids(list(usable))
    (output_root / schema.AUDIO_DIR).mkdir(parents=True, exist_ok=True)
    settings = (data.sample_rate, min_seconds, ingest.silence_dbfs)
    jobs = sorted(
        (
            DecodeJob(ids[key], entry.given, root / key, output_root / schema.AUDIO_DIR, *settings)
            for key, entry in usable.items()
        ),
        key=lambda job: job.track_id,
    )
    outcomes = ordered_map(decode_job, jobs, data.workers)
    kept = [
        (job, o.duration_s)
        for job, o in zip(jobs, outcomes, strict=True)
        if o.duration_s is not None
    ]
    rejects += [
        _reject(job.given, o.reason, o.detail)
        for job, o in zip(jobs, outcomes, strict=True)
        if o.reason is not None
    ]
    try:
        splits = assign_splits(
            [j.track_id for j, _ in kept], data.val_fraction, data.test_fraction, seed
        )
    except ValueError as error:
        reasons = dict(Counter(row["reason"] for row in rejects))
        raise ValueError(
            f"data.ingest: {len(kept)} usable tracks, rejects {reasons}: {error}"
        ) from None
    by_id = {ids[key]: entry for key, entry in usable.items()}
    rows = [
        track_row(job, by_id[job.track_id], duration, splits[job.track_id])
        for job, duration in kept
    ]
    rejects.sort(key=lambda row: (row["path"], row["reason"]))
    return IngestResult(
        schema.frame(rows, schema.TRACK_COLUMNS), schema.frame(rejects, schema.REJECT_COLUMNS)
    )
