"""What the `evaluate` stage scores against: the prompt set and the reference audio set.

Embedded profile: the corpus's held-out concise prompts (`eval_prompts.parquet`, drawn from
the test split, with the source track's attributes) and the test split's audio. Paper scale:
a prompt TSV in the challenge's split format (`id<TAB>caption`, docs/reference.md §B.1) and a
folder of reference audio; a reference file whose stem is a prompt id is that prompt's pair
(audioldm_eval pairs generated and reference clips by file name, docs/reference.md §F.3).

Reference windows follow the challenge's `partition_clips.py` (§B.1): `windows` evenly
spaced 10-s windows per file. A file that cannot be used is recorded with its reason
(missing, undecodable, too short, silent) and left out; nothing fails silently.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf

from tasks.common.audio_io import AudioRejected, check_not_silent, read_audio
from tasks.common.schema import numeric_id

ATTRIBUTES = ("genre", "mood", "tempo_bpm", "key", "mode", "instruments")


@dataclass(frozen=True)
class PromptSet:
    """One row per prompt: prompt_id, prompt, reference_id (None: unpaired), attributes."""

    table: pd.DataFrame
    source: str

    @property
    def prompts(self) -> list[str]:
        return self.table["prompt"].tolist()

    @property
    def ids(self) -> list[str]:
        return self.table["prompt_id"].tolist()


@dataclass(frozen=True)
class ReferenceSet:
    """Reference clips [M, samples] with the id of the file each came from."""

    clips: np.ndarray
    ids: list[str]
    source: str
    rejected: list[dict] = field(default_factory=list)

    def first_clip(self, reference_id: str | None) -> int | None:
        """Index of the first window of a reference file (a prompt's paired clip)."""
        if reference_id is None:
            return None
        try:
            return self.ids.index(reference_id)
        except ValueError:
            return None


# --------------------------------------------------------------------------- prompts
def corpus_prompts(corpus_root: Path) -> PromptSet:
    table = pd.read_parquet(corpus_root / "eval_prompts.parquet")
    table = table.rename(columns={"track_id": "reference_id"})
    return PromptSet(check_prompts(table, "eval_prompts.parquet"), "eval_prompts.parquet")


def tsv_prompts(path: Path) -> PromptSet:
    """The challenge's `id<TAB>caption` file (header required); a broken row is an error."""
    if not path.is_file():
        raise FileNotFoundError(f"evaluate.prompts: {path} does not exist")
    table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, quoting=csv.QUOTE_NONE)
    missing = {"id", "caption"} - set(table.columns)
    if missing:
        raise ValueError(f"evaluate.prompts: {path} lacks the column(s) {sorted(missing)}")
    table = table.rename(columns={"id": "prompt_id", "caption": "prompt"})
    table["reference_id"] = table["prompt_id"]  # paired where a reference file has this stem
    return PromptSet(check_prompts(table, str(path)), str(path))


def check_prompts(table: pd.DataFrame, source: str) -> pd.DataFrame:
    table = table.copy()
    table["prompt"] = table["prompt"].astype(str).str.strip()
    empty = table.loc[table["prompt"] == "", "prompt_id"].tolist()
    if empty:
        raise ValueError(f"{source}: empty prompt(s) for id(s) {empty[:10]}")
    duplicated = table.loc[table["prompt_id"].duplicated(), "prompt_id"].tolist()
    if duplicated:
        raise ValueError(f"{source}: duplicated prompt id(s) {duplicated[:10]}")
    if table.empty:
        raise ValueError(f"{source}: no prompts")
    return table.reset_index(drop=True)


# --------------------------------------------------------------------------- reference
def window_starts(duration_s: float, seconds: float, windows: int) -> list[float]:
    """Evenly spaced window starts (partition_clips.py: interval = (len - seglen) // (n - 1)),
    as many as fit without overlap beyond the file, at least one."""
    if duration_s < seconds:
        return []
    count = max(1, min(windows, int(duration_s // seconds)))
    if count == 1:
        return [0.0]
    step = (duration_s - seconds) / (count - 1)
    # floored to the millisecond: rounding up could put the last window a sample past the end
    return [float(np.floor(i * step * 1000.0) / 1000.0) for i in range(count)]


@dataclass(frozen=True)
class AudioFile:
    reference_id: str
    path: Path
    duration_s: float | None  # None: read the header


def read_reference(
    files: list[AudioFile],
    sample_rate: int,
    seconds: float,
    windows: int,
    silence_dbfs: float,
    source: str,
) -> ReferenceSet:
    clips, ids, rejected = [], [], []
    for item in files:
        try:
            duration = item.duration_s if item.duration_s is not None else _duration(item.path)
            starts = window_starts(duration, seconds, windows)
            if not starts:
                raise AudioRejected("too_short", f"{duration:.2f} s < {seconds} s")
            for start in starts:
                clip = read_audio(item.path, sample_rate, start, seconds)
                check_not_silent(clip, silence_dbfs)
                clips.append(clip)
                ids.append(item.reference_id)
        except AudioRejected as error:
            rejected.append(
                {
                    "reference_id": item.reference_id,
                    "path": str(item.path),
                    "reason": error.reason,
                    "detail": error.detail,
                }
            )
    if not clips:
        reasons = pd.Series([r["reason"] for r in rejected]).value_counts().to_dict()
        raise ValueError(
            f"evaluate.reference_audio: no usable reference clip in {source} "
            f"({len(files)} file(s), rejected {reasons}); the model generates {seconds:g} s "
            f"(model.latent_seq_len / the codec's frame rate): reference clips need at least "
            f"that much decodable, non-silent audio (evaluate.reference_audio, or the corpus's "
            f"test tracks when it is null)"
        )
    return ReferenceSet(np.stack(clips).astype(np.float32), ids, source, rejected)


def _duration(path: Path) -> float:
    try:
        info = sf.info(path)
    except Exception as error:  # libsndfile reports every bad file as some RuntimeError
        raise AudioRejected("undecodable", f"libsndfile: {error}") from None
    return info.frames / info.samplerate


def corpus_reference_files(corpus_root: Path) -> list[AudioFile]:
    tracks = pd.read_parquet(corpus_root / "tracks.parquet")
    test = tracks[tracks["split"] == "test"].sort_values("track_id")
    return [
        AudioFile(row.track_id, corpus_root / row.audio_path, float(row.duration_s))
        for row in test.itertuples()
    ]


def folder_reference_files(folder: Path, extensions: list[str]) -> list[AudioFile]:
    """Audio files under `folder`; the id is the stem's digits as the baseline names samples
    (00/1085700_instrumental.mp3 -> 1085700), else the stem."""
    if not folder.is_dir():
        raise FileNotFoundError(f"evaluate.reference_audio: {folder} is not a folder")
    wanted = {extension.lower() for extension in extensions}
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in wanted)
    return [AudioFile(numeric_id(path.name), path, None) for path in paths]
