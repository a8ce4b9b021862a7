"""Reading corpus audio: whole tracks or windows, mono float32, checked, at a given rate.

A file that cannot be used raises `AudioRejected` with a short machine-readable reason
(missing_audio, undecodable, too_short, silent, as in ingest) and a human detail, so that
stages record a rejection instead of crashing or silently scoring garbage.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf

from tasks.backends.base import resample


class AudioRejected(ValueError):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def dbfs(audio: np.ndarray) -> float:
    rms = float(np.sqrt(np.mean(np.square(audio, dtype=np.float64)))) if audio.size else 0.0
    return 20.0 * float(np.log10(max(rms, 1e-10)))


def read_audio(
    path: Path, sample_rate: int, start_s: float = 0.0, seconds: float | None = None
) -> np.ndarray:
    """Mono float32 at `sample_rate`; `seconds` from `start_s` (None: to the end)."""
    if not path.is_file():
        raise AudioRejected("missing_audio", f"{path} does not exist")
    try:
        with sf.SoundFile(path) as handle:
            rate = handle.samplerate
            start = round(start_s * rate)
            frames = -1 if seconds is None else round(seconds * rate)
            if start + max(frames, 0) > handle.frames:
                raise AudioRejected(
                    "too_short",
                    f"{handle.frames / rate:.2f} s, window needs {start_s + (seconds or 0):.2f} s",
                )
            handle.seek(start)
            audio = handle.read(frames, dtype="float32", always_2d=True)
    except AudioRejected:
        raise
    except Exception as error:  # libsndfile reports every bad file as some RuntimeError
        raise AudioRejected("undecodable", f"libsndfile: {error}") from None
    mono = audio.mean(axis=1)
    if not np.isfinite(mono).all():
        raise AudioRejected("undecodable", "decoded samples are not finite")
    return resample(mono, rate, sample_rate)


def check_not_silent(audio: np.ndarray, silence_dbfs: float) -> None:
    level = dbfs(audio)
    if level < silence_dbfs:
        raise AudioRejected("silent", f"RMS {level:.1f} dBFS < silence_dbfs {silence_dbfs} dBFS")


def segment_windows(
    rows: pd.DataFrame, tracks: pd.DataFrame, corpus_root: Path, sample_rate: int
) -> Iterator[np.ndarray]:
    """The windows [start_s, end_s) of `rows`, in row order, each track decoded once.

    Rows must be grouped by track (consecutive), as segment tables are.
    """
    paths = dict(zip(tracks["track_id"], tracks["audio_path"], strict=True))
    ids = rows["track_id"].to_numpy(dtype=str)
    if len(ids) and int((ids[1:] != ids[:-1]).sum()) + 1 != len(set(ids)):
        raise ValueError("segment rows must be grouped by track")
    for track_id, group in rows.groupby("track_id", sort=False):
        audio = read_audio(corpus_root / paths[track_id], sample_rate)
        for start_s, end_s in zip(group["start_s"], group["end_s"], strict=True):
            start, length = round(start_s * sample_rate), round((end_s - start_s) * sample_rate)
            if start + length > audio.size:
                raise AudioRejected("too_short", f"{track_id} ends before {end_s:.2f} s")
            yield audio[start : start + length]
