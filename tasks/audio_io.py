"""Reading corpus audio: whole tracks or windows, mono float32, checked, at a given rate.

A file that cannot be used raises `AudioRejected` with a short machine-readable reason
(missing_audio, undecodable, too_short, silent, as in ingest) and a human detail, so that
stages record a rejection instead of crashing or silently scoring garbage.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
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
