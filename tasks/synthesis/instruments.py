"""Instrument voices synthesised in numpy: additive, FM, subtractive, Karplus-Strong, noise.

Each voice returns one note as float32 mono, `duration` seconds plus its own release.
The families are chosen so timbres differ in measurable ways (spectral centroid,
flatness, harmonicity, attack and decay), which tests/corpus/test_synthesis.py checks.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import signal

Voice = Callable[[float, float, float, int, np.random.Generator], np.ndarray]


def _time(seconds: float, sample_rate: int) -> np.ndarray:
    return np.arange(int(seconds * sample_rate)) / sample_rate


def _adsr(
    n: int,
    sample_rate: int,
    attack: float,
    decay: float,
    sustain: float,
    release: float,
    hold_samples: int,
) -> np.ndarray:
    """Attack-decay-sustain envelope held for `hold_samples`, then a linear release."""
    t = np.arange(n) / sample_rate
    rising = np.minimum(t / attack, 1.0)
    settling = 1.0 - (1.0 - sustain) * np.clip((t - attack) / decay, 0.0, 1.0)
    held = np.where(t < attack, rising, settling)
    release_start = hold_samples / sample_rate
    level = np.interp(release_start, t, held) if n else 0.0
    released = level * np.clip(1.0 - (t - release_start) / release, 0.0, 1.0)
    return np.where(t < release_start, held, released)


def _vibrato(t: np.ndarray, rate: float, depth_semitones: float) -> np.ndarray:
    """Instantaneous frequency multiplier for a slow sinusoidal vibrato."""
    return 2.0 ** (depth_semitones / 12.0 * np.sin(2 * np.pi * rate * t))


def _phase(frequency: float | np.ndarray, sample_rate: int, n: int) -> np.ndarray:
    inst = np.broadcast_to(np.asarray(frequency, dtype=float), (n,))
    return 2 * np.pi * np.cumsum(inst) / sample_rate


def _saw(phase: np.ndarray) -> np.ndarray:
    return 2.0 * ((phase / (2 * np.pi)) % 1.0) - 1.0


def _one_pole_lowpass(x: np.ndarray, cutoff_hz: float, sample_rate: int) -> np.ndarray:
    coefficient = np.exp(-2 * np.pi * min(cutoff_hz, 0.45 * sample_rate) / sample_rate)
    return signal.lfilter([1 - coefficient], [1, -coefficient], x)


def _karplus_strong(
    frequency: float,
    n: int,
    sample_rate: int,
    rng: np.random.Generator,
    brightness: float,
    feedback: float,
) -> np.ndarray:
    """Plucked string: a noise burst through a comb with an averaging loop filter."""
    delay = max(2, round(sample_rate / frequency))
    burst = rng.uniform(-1, 1, delay)
    burst = _one_pole_lowpass(burst, brightness * sample_rate / 2, sample_rate)
    excitation = np.zeros(n)
    excitation[:delay] = burst[: min(delay, n)]
    denominator = np.zeros(delay + 2)
    denominator[0] = 1.0
    denominator[delay] = denominator[delay + 1] = -0.5 * feedback
    return signal.lfilter([1.0], denominator, excitation)


def piano(frequency, duration, velocity, sample_rate, rng):
    """Additive, slightly inharmonic partials; high partials die first; hammer click."""
    t = _time(duration + 0.8, sample_rate)
    out = np.zeros_like(t)
    inharmonicity = 1e-4
    for k in range(1, 13):
        fk = k * frequency * np.sqrt(1 + inharmonicity * k * k)
        if fk > 0.45 * sample_rate:
            break
        out += k**-1.3 * np.exp(-t * (2.5 + 1.2 * k)) * np.sin(2 * np.pi * fk * t)
    click = rng.normal(0, 1, min(len(t), int(0.004 * sample_rate)))
    out[: len(click)] += 0.3 * click
    hold = int(duration * sample_rate)
    return velocity * out * _adsr(len(t), sample_rate, 0.002, 0.01, 1.0, 0.25, hold)


def acoustic_guitar(frequency, duration, velocity, sample_rate, rng):
    n = int((duration + 0.6) * sample_rate)
    pluck = _karplus_strong(frequency, n, sample_rate, rng, brightness=0.5, feedback=0.996)
    return velocity * pluck * _adsr(n, sample_rate, 0.001, 0.01, 1.0, 0.3, n - 1)


def electric_guitar(frequency, duration, velocity, sample_rate, rng):
    """Karplus-Strong through a tanh overdrive: dense odd harmonics, sustained."""
    n = int((duration + 0.2) * sample_rate)
    pluck = _karplus_strong(frequency, n, sample_rate, rng, brightness=0.8, feedback=0.999)
    driven = np.tanh(6.0 * pluck / (np.abs(pluck).max() + 1e-9))
    hold = int(duration * sample_rate)
    return 0.6 * velocity * driven * _adsr(n, sample_rate, 0.002, 0.05, 0.8, 0.15, hold)


def bass_guitar(frequency, duration, velocity, sample_rate, rng):
    """Round fingered bass: strong fundamental, weak 2nd/3rd, a dull thump, steady decay."""
    t = _time(duration + 0.15, sample_rate)
    tone = (
        np.sin(2 * np.pi * frequency * t)
        + 0.35 * np.sin(4 * np.pi * frequency * t) * np.exp(-t * 6.0)
        + 0.1 * np.sin(6 * np.pi * frequency * t) * np.exp(-t * 10.0)
    )
    thump = _one_pole_lowpass(rng.normal(0, 1, len(t)), 400.0, sample_rate) * np.exp(-t * 60.0)
    hold = int(duration * sample_rate)
    return (
        0.8
        * velocity
        * (tone * np.exp(-t * 2.0) + thump)
        * _adsr(len(t), sample_rate, 0.004, 0.05, 0.9, 0.08, hold)
    )


def synth_bass(frequency, duration, velocity, sample_rate, rng):
    """Square wave through a lowpass whose cutoff snaps shut after the attack (a 'pluck')."""
    n = int((duration + 0.1) * sample_rate)
    raw = np.sign(np.sin(_phase(frequency, sample_rate, n)))
    t = np.arange(n) / sample_rate
    bright = _one_pole_lowpass(raw, 3000.0, sample_rate)
    dark = _one_pole_lowpass(raw, 300.0, sample_rate)
    sweep = np.exp(-t * 20.0)
    hold = int(duration * sample_rate)
    return (
        0.7
        * velocity
        * (sweep * bright + (1 - sweep) * dark)
        * _adsr(n, sample_rate, 0.003, 0.05, 1.0, 0.04, hold)
    )


def synth_lead(frequency, duration, velocity, sample_rate, rng):
    """Two detuned saws and a square: bright, buzzy, with vibrato."""
    n = int((duration + 0.15) * sample_rate)
    t = np.arange(n) / sample_rate
    vibrato = _vibrato(t, 5.5, 0.12)
    wave = (
        _saw(_phase(frequency * 1.006 * vibrato, sample_rate, n))
        + _saw(_phase(frequency * 0.994 * vibrato, sample_rate, n))
        + 0.6 * np.sign(np.sin(_phase(frequency * vibrato, sample_rate, n)))
    )
    hold = int(duration * sample_rate)
    return 0.3 * velocity * wave * _adsr(n, sample_rate, 0.01, 0.1, 0.7, 0.12, hold)


def synth_pad(frequency, duration, velocity, sample_rate, rng):
    """Four detuned saws, very slow attack and release, softened by a lowpass: a swell."""
    n = int((duration + 0.8) * sample_rate)
    wave = sum(
        _saw(_phase(frequency * ratio, sample_rate, n) + rng.uniform(0, 2 * np.pi))
        for ratio in (0.99, 0.997, 1.004, 1.011)
    )
    wave = _one_pole_lowpass(wave, 700.0, sample_rate)
    hold = int(duration * sample_rate)
    return 0.4 * velocity * wave * _adsr(n, sample_rate, 0.6, 0.3, 0.9, 0.7, hold)


def strings(frequency, duration, velocity, sample_rate, rng):
    """Additive sawtooth-like partials with vibrato, bow noise and a bowed attack."""
    n = int((duration + 0.4) * sample_rate)
    t = np.arange(n) / sample_rate
    phase = _phase(frequency * _vibrato(t, 5.2, 0.15), sample_rate, n)
    wave = sum(np.sin(k * phase) / k for k in range(1, 9) if k * frequency < 0.45 * sample_rate)
    bow = _one_pole_lowpass(rng.normal(0, 0.05, n), 3000.0, sample_rate)
    hold = int(duration * sample_rate)
    return 0.5 * velocity * (wave + bow) * _adsr(n, sample_rate, 0.18, 0.2, 0.85, 0.3, hold)


def flute(frequency, duration, velocity, sample_rate, rng):
    """Nearly sinusoidal with weak harmonics plus band-limited breath noise."""
    n = int((duration + 0.15) * sample_rate)
    t = np.arange(n) / sample_rate
    phase = _phase(frequency * _vibrato(t, 4.8, 0.08), sample_rate, n)
    tone = np.sin(phase) + 0.12 * np.sin(2 * phase) + 0.05 * np.sin(3 * phase)
    breath = signal.lfilter(
        *signal.butter(
            2,
            [0.5 * frequency, min(4 * frequency, 0.45 * sample_rate)],
            btype="band",
            fs=sample_rate,
        ),
        rng.normal(0, 1, n),
    )
    hold = int(duration * sample_rate)
    return (
        0.6 * velocity * (tone + 0.15 * breath) * _adsr(n, sample_rate, 0.07, 0.1, 0.9, 0.1, hold)
    )


def electric_piano(frequency, duration, velocity, sample_rate, rng):
    """FM tine: a 1:1 modulator whose index dies fast (bark, then sine) plus a 14:1 bell."""
    t = _time(duration + 0.6, sample_rate)
    index = 1.5 * np.exp(-t * 12.0)
    tone = np.sin(2 * np.pi * frequency * t + index * np.sin(2 * np.pi * frequency * t))
    tine = 0.25 * np.sin(2 * np.pi * 14 * frequency * t) * np.exp(-t * 30.0)
    hold = int(duration * sample_rate)
    decay = np.exp(-t * 3.0)
    return (
        0.7
        * velocity
        * (tone + tine)
        * decay
        * _adsr(len(t), sample_rate, 0.002, 0.01, 1.0, 0.2, hold)
    )


def organ(frequency, duration, velocity, sample_rate, rng):
    """Drawbars 16', 8', 5 1/3', 4', 2 2/3', 2' at full level, key click, and a rotary
    speaker (tremolo plus Doppler vibrato); no decay while the key is held."""
    t = _time(duration + 0.05, sample_rate)
    rotary = _vibrato(t, 6.5, 0.08)
    wave = sum(
        level * np.sin(_phase(ratio * frequency * rotary, sample_rate, len(t)))
        for ratio, level in ((0.5, 0.8), (1, 1.0), (1.5, 0.9), (2, 0.8), (3, 0.7), (4, 0.7))
        if ratio * frequency < 0.45 * sample_rate
    )
    click = rng.normal(0, 1, len(t)) * np.exp(-t * 400.0)
    tremolo = 1.0 + 0.3 * np.sin(2 * np.pi * 6.5 * t)
    hold = int(duration * sample_rate)
    return (
        0.25
        * velocity
        * (wave * tremolo + 0.5 * click)
        * _adsr(len(t), sample_rate, 0.005, 0.01, 1.0, 0.04, hold)
    )


def saxophone(frequency, duration, velocity, sample_rate, rng):
    """Reedy FM through a 1.5 kHz formant, brightness following the breath, with vibrato."""
    n = int((duration + 0.12) * sample_rate)
    t = np.arange(n) / sample_rate
    hold = int(duration * sample_rate)
    env = _adsr(n, sample_rate, 0.06, 0.15, 0.8, 0.1, hold)
    phase = _phase(frequency * _vibrato(t, 5.0, 0.15 * np.clip(t - 0.15, 0, 1)), sample_rate, n)
    reed = np.sin(phase + 2.0 * env * np.sin(2 * phase))
    formant = signal.lfilter(
        *signal.butter(2, [1100, min(2200, 0.45 * sample_rate)], btype="band", fs=sample_rate), reed
    )
    breath = _one_pole_lowpass(rng.normal(0, 0.15, n), 2500.0, sample_rate)
    return 0.8 * velocity * (0.5 * reed + 1.5 * formant + breath) * env


VOICES: dict[str, Voice] = {
    "piano": piano,
    "acoustic guitar": acoustic_guitar,
    "electric guitar": electric_guitar,
    "bass guitar": bass_guitar,
    "synth bass": synth_bass,
    "synth lead": synth_lead,
    "synth pad": synth_pad,
    "strings": strings,
    "flute": flute,
    "electric piano": electric_piano,
    "organ": organ,
    "saxophone": saxophone,
}


# --------------------------------------------------------------------------- drums
def kick(sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    t = _time(0.35, sample_rate)
    frequency = 45.0 + 110.0 * np.exp(-t * 30.0)
    body = np.sin(_phase(frequency, sample_rate, len(t))) * np.exp(-t * 9.0)
    click = rng.normal(0, 1, len(t)) * np.exp(-t * 300.0)
    return body + 0.2 * click


def snare(sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    t = _time(0.25, sample_rate)
    noise = signal.lfilter(
        *signal.butter(2, [1500, min(7000, 0.45 * sample_rate)], btype="band", fs=sample_rate),
        rng.normal(0, 1, len(t)),
    )
    tone = np.sin(2 * np.pi * 185.0 * t)
    return 0.9 * noise * np.exp(-t * 18.0) + 0.5 * tone * np.exp(-t * 25.0)


def hat(sample_rate: int, rng: np.random.Generator, decay: float) -> np.ndarray:
    t = _time(max(0.05, 4 * decay), sample_rate)
    noise = signal.lfilter(
        *signal.butter(2, min(7000, 0.42 * sample_rate), btype="high", fs=sample_rate),
        rng.normal(0, 1, len(t)),
    )
    return 0.5 * noise * np.exp(-t / decay)


def ride(sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """Metallic: inharmonic square partials (the 808 cymbal recipe) over hissing noise."""
    t = _time(0.9, sample_rate)
    partials = sum(np.sign(np.sin(2 * np.pi * f * t)) for f in (205, 304, 370, 523, 540, 800))
    metal = signal.lfilter(
        *signal.butter(2, min(5000, 0.42 * sample_rate), btype="high", fs=sample_rate),
        partials / 6 + 0.3 * rng.normal(0, 1, len(t)),
    )
    return 0.35 * metal * np.exp(-t * 4.0)


def clap(sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    t = _time(0.2, sample_rate)
    bursts = sum(
        np.exp(-np.clip(t - delay, 0, None) * 60.0) * (t >= delay) for delay in (0.0, 0.011, 0.022)
    )
    noise = signal.lfilter(
        *signal.butter(2, [900, min(5000, 0.45 * sample_rate)], btype="band", fs=sample_rate),
        rng.normal(0, 1, len(t)),
    )
    return 0.8 * noise * bursts


def drum_kit(sample_rate: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """One set of drum samples per track (peak-normalised), reused for every hit."""
    kit = {
        "kick": kick(sample_rate, rng),
        "snare": snare(sample_rate, rng),
        "closed_hat": hat(sample_rate, rng, decay=0.012),
        "open_hat": hat(sample_rate, rng, decay=0.07),
        "ride": ride(sample_rate, rng),
        "clap": clap(sample_rate, rng),
    }
    return {name: sound / np.abs(sound).max() for name, sound in kit.items()}
