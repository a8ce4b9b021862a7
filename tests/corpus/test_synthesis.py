"""The audio really is what the metadata says: timbre, tempo, sections, degradations."""

from __future__ import annotations

import librosa
import numpy as np
import pytest

from tasks.synthesis.arrangement import TrackSpec, midi_to_hz, render, sample_track_spec
from tasks.synthesis.degradation import degrade, snr_db
from tasks.synthesis.instruments import VOICES
from tasks.synthesis.vocabulary import GENRES

SAMPLE_RATE = 16000


def _spec(genre: str, time_signature: str | None = None, seed: int = 0) -> TrackSpec:
    """The first sampled track of `genre` (and metre), deterministic for the seed."""
    for index in range(2000):
        spec = sample_track_spec("t", np.random.default_rng([seed, index]), 20, 30, 2, 4)
        if spec.genre == genre and time_signature in (None, spec.time_signature):
            return spec
    raise AssertionError(f"no {genre} {time_signature} track sampled")


def _timbre(note: np.ndarray, f0: float) -> np.ndarray:
    """Pitch-normalised timbre: harmonic profile, MFCCs, attack, decay, noisiness, brightness."""
    held = note[: int(0.6 * SAMPLE_RATE)].astype(np.float32)
    hop = 128
    envelope = librosa.feature.rms(y=held, frame_length=512, hop_length=hop)[0]
    peak = int(envelope.argmax())
    tail = np.log(envelope[peak:] + 1e-6)
    decay = np.polyfit(np.arange(len(tail)) * hop / SAMPLE_RATE, tail, 1)[0] if len(tail) > 2 else 0
    magnitude = np.abs(librosa.stft(held, n_fft=2048, hop_length=512))
    spectrum, freqs = magnitude.mean(1), np.fft.rfftfreq(2048, 1 / SAMPLE_RATE)
    harmonics = []
    for k in range(1, 7):
        centre = int(np.abs(freqs - k * f0).argmin())
        harmonics.append(spectrum[centre - 1 : centre + 2].max())
    profile = np.clip(20 * np.log10(np.array(harmonics[1:]) / harmonics[0] + 1e-9), -50, 20)
    mel = librosa.feature.melspectrogram(S=magnitude**2, sr=SAMPLE_RATE, n_mels=40)
    mfcc = librosa.feature.mfcc(S=librosa.power_to_db(mel), n_mfcc=8).mean(1)[1:]
    flatness = librosa.feature.spectral_flatness(S=magnitude)[0].mean()
    centroid = (freqs * spectrum).sum() / spectrum.sum()
    return np.concatenate(
        [
            profile,
            mfcc,
            [
                np.log(peak * hop / SAMPLE_RATE + 1e-3),
                decay / 10,
                np.log(flatness + 1e-9),
                np.log(centroid / f0),
            ],
        ]
    )


def test_instruments_have_distinct_timbres():
    """Leave-one-out 1-nearest-neighbour over two octaves names the instrument >= 90 %."""
    features, labels = [], []
    for name, voice in VOICES.items():
        for midi in (48, 52, 55, 59, 62, 65):
            note = voice(midi_to_hz(midi), 0.6, 1.0, SAMPLE_RATE, np.random.default_rng(midi))
            features.append(_timbre(note, midi_to_hz(midi)))
            labels.append(name)
    table = np.array(features)
    table = (table - table.mean(0)) / (table.std(0) + 1e-9)
    distances = np.linalg.norm(table[:, None] - table[None], axis=-1)
    np.fill_diagonal(distances, np.inf)
    predicted = np.array(labels)[distances.argmin(1)]
    accuracy = float(np.mean(predicted == np.array(labels)))
    assert accuracy >= 0.9, accuracy


def test_noise_and_envelope_separate_instrument_families():
    def note(name: str) -> np.ndarray:
        return VOICES[name](220.0, 0.6, 1.0, SAMPLE_RATE, np.random.default_rng(0))

    def flatness(name: str) -> float:
        return float(librosa.feature.spectral_flatness(y=note(name).astype(np.float32)).mean())

    def sustain(name: str) -> float:
        envelope = librosa.feature.rms(y=note(name).astype(np.float32), hop_length=128)[0]
        return float(envelope[int(0.5 * SAMPLE_RATE / 128)] / envelope.max())

    assert flatness("electric guitar") > 5 * flatness("bass guitar")  # overdrive vs round
    assert sustain("organ") > 2 * sustain("piano")  # held drawbars vs struck strings
    assert sustain("strings") > 2 * sustain("acoustic guitar")  # bowed vs plucked


@pytest.mark.parametrize(
    ("genre", "metre"),
    [
        ("electronic", None),
        ("rock", None),
        ("hip hop", None),
        ("jazz", None),
        ("folk", "4/4"),
        ("folk", "3/4"),
    ],
)
def test_rendered_tempo_matches_requested(genre, metre):
    spec = _spec(genre, metre)
    audio = render(spec, SAMPLE_RATE).astype(np.float64)
    hop = 128  # 8 ms frames: fine enough for a 2 % tempo resolution
    onset = librosa.onset.onset_strength(y=audio, sr=SAMPLE_RATE, hop_length=hop)
    _, beats = librosa.beat.beat_track(onset_envelope=onset, sr=SAMPLE_RATE, hop_length=hop)
    seconds = librosa.frames_to_time(beats, sr=SAMPLE_RATE, hop_length=hop)
    estimated = 60.0 / float(np.median(np.diff(seconds)))
    assert abs(estimated - spec.tempo_bpm) / spec.tempo_bpm < 0.04, (estimated, spec.tempo_bpm)


def test_sections_change_dynamics_inside_a_track():
    """A soft intro is quieter than the loud chorus of the same track (paper 000 §II-A)."""
    checked = 0
    for index in range(200):
        spec = sample_track_spec("t", np.random.default_rng([3, index]), 20, 40, 2, 4)
        names = [s.name for s in spec.sections]
        if "intro" not in names or "chorus" not in names:
            continue
        audio = render(spec, SAMPLE_RATE)
        level = {}
        for section in spec.sections:
            start = int(section.start_bar * spec.bar_seconds * SAMPLE_RATE)
            stop = int((section.start_bar + section.bars) * spec.bar_seconds * SAMPLE_RATE)
            level[section.name] = float(np.sqrt(np.mean(audio[start:stop] ** 2)))
        assert level["intro"] < 0.8 * level["chorus"], level
        intro, chorus = spec.sections[0], next(s for s in spec.sections if s.name == "chorus")
        assert set(spec.section_instruments(intro)) < set(spec.section_instruments(chorus))
        checked += 1
        if checked == 3:
            break
    assert checked == 3


def test_track_specs_respect_the_configured_ranges():
    for index in range(100):
        spec = sample_track_spec("t", np.random.default_rng([5, index]), 20, 40, 2, 4)
        assert 20 - 1e-6 <= spec.duration_s <= 40 + 1e-6
        assert 2 <= len(spec.sections) <= 4
        low, high = GENRES[spec.genre].tempo_range
        assert low <= spec.tempo_bpm <= high
        assert len(spec.instruments) >= 2


def test_rendering_is_deterministic():
    spec = _spec("jazz")
    first, second = render(spec, SAMPLE_RATE), render(spec, SAMPLE_RATE)
    assert np.array_equal(first, second)
    assert len(first) == round(spec.duration_s * SAMPLE_RATE)
    assert 0.85 < np.abs(first).max() <= 0.9 + 1e-6


@pytest.mark.parametrize("kind", ["noise", "bandlimit", "clip", "bitcrush"])
def test_degradation_lowers_snr_monotonically_with_level(tiny_params, kind):
    clean = render(_spec("rock"), SAMPLE_RATE)
    levels = [
        snr_db(
            clean,
            degrade(
                clean,
                kind,
                level,
                tiny_params.data.degradation,
                SAMPLE_RATE,
                np.random.default_rng(level),
            ),
        )
        for level in (1, 2, 3, 4)
    ]
    assert levels == sorted(levels) and levels[0] < levels[-1], levels
    assert levels[-1] < 40.0, levels  # even the mildest level is measurable
    assert np.array_equal(
        degrade(
            clean, kind, 5, tiny_params.data.degradation, SAMPLE_RATE, np.random.default_rng(0)
        ),
        clean,
    )


def test_noise_degradation_hits_the_requested_snr(tiny_params):
    clean = render(_spec("folk"), SAMPLE_RATE)
    for level, target in enumerate(tiny_params.data.degradation.snr_db, start=1):
        noisy = degrade(
            clean,
            "noise",
            level,
            tiny_params.data.degradation,
            SAMPLE_RATE,
            np.random.default_rng(level),
        )
        assert abs(snr_db(clean, noisy) - target) < 0.5
