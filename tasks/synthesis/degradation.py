"""Controlled audio degradations with a known quality level (paper 003 §4.1's premise).

Level 5 is the clean render; levels 1..4 apply one degradation whose severity comes from
params `data.degradation` (list index = level - 1), so the quality predictor and the
quality token have a ground truth to learn and to be checked against. The same functions
degrade any clip, not only generated ones: `degraded_copies` and `level_grid` give a real
dataset's own clips known levels (the label-free p-MOS targets of `scorers` and the p-MOS
health check, README "Your own data").
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from scipy import signal

from tasks.params import DegradationParams

CLEAN_LEVEL = 5
DEGRADED_LEVELS = tuple(range(1, CLEAN_LEVEL))  # 1 = worst .. 4 = mild
# (audio, kind, level, rng) -> the audio degraded by `kind` at quality `level`
Degrader = Callable[[np.ndarray, str, int, np.random.Generator], np.ndarray]


def add_noise(audio: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    """White noise scaled to the requested signal-to-noise ratio."""
    signal_power = float(np.mean(audio.astype(np.float64) ** 2))
    noise = rng.normal(0.0, 1.0, audio.shape)
    return audio + noise * np.sqrt(signal_power / 10 ** (snr_db / 10))


def band_limit(audio: np.ndarray, cutoff_hz: float, sample_rate: int) -> np.ndarray:
    """Zero-phase 8th-order Butterworth lowpass: the dull sound of a narrow recording."""
    cutoff = min(cutoff_hz, 0.45 * sample_rate)
    sections = signal.butter(8, cutoff, btype="low", fs=sample_rate, output="sos")
    return signal.sosfiltfilt(sections, audio)


def hard_clip(audio: np.ndarray, drive_db: float) -> np.ndarray:
    """Overdrive into a hard clipper, then back to the original peak."""
    peak = float(np.abs(audio).max()) or 1.0
    driven = np.clip(audio / peak * 10 ** (drive_db / 20), -1.0, 1.0)
    return driven * peak


def bit_crush(audio: np.ndarray, bits: int) -> np.ndarray:
    """Requantise to `bits` bits (mid-tread), the grainy sound of a cheap converter."""
    steps = 2 ** (bits - 1)
    return np.round(audio * steps) / steps


def degrade(
    audio: np.ndarray,
    kind: str,
    level: int,
    params: DegradationParams,
    sample_rate: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """Apply `kind` at quality `level` (1 = worst .. 4 = mild; 5 returns the input)."""
    if level == CLEAN_LEVEL:
        return audio
    if not 1 <= level < CLEAN_LEVEL:
        raise ValueError(f"quality level must be in 1..{CLEAN_LEVEL}, got {level}")
    index = level - 1
    if kind == "noise":
        out = add_noise(audio, params.snr_db[index], rng)
    elif kind == "bandlimit":
        out = band_limit(audio, params.lowpass_hz[index], sample_rate)
    elif kind == "clip":
        out = hard_clip(audio, params.clip_drive_db[index])
    elif kind == "bitcrush":
        out = bit_crush(audio, params.bit_depth[index])
    else:
        raise ValueError(f"unknown degradation kind {kind!r}")
    # Keep headroom for the 16-bit FLAC: never let a degradation clip the file itself.
    peak = float(np.abs(out).max())
    return (out * (0.99 / peak) if peak > 0.99 else out).astype(np.float32)


def make_degrader(params: DegradationParams, sample_rate: int) -> Degrader:
    """`degrade` bound to the corpus's degradation params and a sample rate (callers take a
    `Degrader`, so tests can swap it for a cheap one)."""

    def apply(audio: np.ndarray, kind: str, level: int, rng: np.random.Generator) -> np.ndarray:
        return degrade(audio, kind, level, params, sample_rate, rng)

    return apply


def degraded_copies(
    waveforms: Sequence[np.ndarray],
    copies: int,
    kinds: Sequence[str],
    degrade_fn: Degrader,
    seed: int,
) -> tuple[list[np.ndarray], list[int]]:
    """`copies` degraded versions of each waveform at random kinds and levels 1..4, with
    their levels (seeded: the same inputs give the same copies)."""
    rng = np.random.default_rng(seed)
    audio, levels = [], []
    for waveform in waveforms:
        for _ in range(copies):
            level = int(rng.integers(1, CLEAN_LEVEL))
            audio.append(degrade_fn(waveform, str(rng.choice(kinds)), level, rng))
            levels.append(level)
    return audio, levels


def level_grid(
    clip: np.ndarray, kinds: Sequence[str], degrade_fn: Degrader, rng: np.random.Generator
) -> list[tuple[str, int, np.ndarray]]:
    """(kind, level, degraded clip) for every kind at every level 1..4, kinds outer: a
    balanced set in which every level has the same weight, whatever the data records."""
    return [
        (kind, level, degrade_fn(clip, kind, level, rng))
        for kind in kinds
        for level in DEGRADED_LEVELS
    ]


def snr_db(reference: np.ndarray, test: np.ndarray) -> float:
    """Scale-invariant SNR of `test` against `reference` (the clean render), in dB.

    The reference is first scaled to best match `test`, so a degradation's own gain change
    (the headroom rescale above) does not count as error, only what was added or removed.
    """
    reference = reference.astype(np.float64)
    test = test.astype(np.float64)
    target = reference * (np.dot(test, reference) / max(np.dot(reference, reference), 1e-20))
    error = test - target
    return float(10 * np.log10(np.sum(target**2) / max(np.sum(error**2), 1e-20)))
