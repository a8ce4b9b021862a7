"""From attributes to audio: sample a track's ground truth, compose its notes, render it.

A track is a `TrackSpec` (everything a caption may state) plus a render seed; rendering
is a pure function of the spec, so any track can be re-rendered bit for bit (the tests
re-render clean versions of degraded tracks this way).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from tasks.synthesis.instruments import VOICES, drum_kit
from tasks.synthesis.vocabulary import (
    GENRES,
    MAJOR_MOODS,
    MINOR_MOODS,
    PITCH_CLASSES,
    SECTION_ROLES,
    STRUCTURES,
    scale_of,
    triad,
)

ROLE_GAIN = {"bass": 0.8, "harmony": 0.35, "melody": 0.6, "drums": 0.75}
DYNAMICS_GAIN = {"soft": 0.4, "moderate": 0.7, "loud": 1.0}
STEPS_PER_BEAT = 4  # sixteenth-note grid

# Drum patterns on the 16th grid of a 4/4 bar; 3/4 bars keep the steps below 12.
DRUM_PATTERNS: dict[str, dict[str, tuple[int, ...]]] = {
    "four_on_the_floor": {"kick": (0, 4, 8, 12), "clap": (4, 12), "open_hat": (2, 6, 10, 14)},
    "rock": {"kick": (0, 8, 10), "snare": (4, 12), "closed_hat": (0, 2, 4, 6, 8, 10, 12, 14)},
    "jazz": {"ride": (0, 4, 6, 8, 12, 14), "closed_hat": (4, 12), "kick": (0,)},
    "boom_bap": {"kick": (0, 7, 10), "snare": (4, 12), "closed_hat": (0, 2, 4, 6, 8, 10, 12, 14)},
    "folk": {"kick": (0, 8), "snare": (4, 12), "closed_hat": (2, 6, 10, 14)},
}
WALTZ_DRUMS = {"kick": (0,), "snare": (4, 8), "closed_hat": (2, 6, 10)}


@dataclass(frozen=True)
class Section:
    name: str
    start_bar: int
    bars: int
    roles: tuple[str, ...]
    dynamics: str


@dataclass(frozen=True)
class TrackSpec:
    track_id: str
    genre: str
    mood: str
    tempo_bpm: float
    key: str
    mode: str
    time_signature: str
    progression: tuple[int, ...]
    role_instruments: tuple[tuple[str, str], ...]  # (role, instrument), drums included
    sections: tuple[Section, ...]
    render_seed: int

    @property
    def beats_per_bar(self) -> int:
        return int(self.time_signature.split("/")[0])

    @property
    def bar_seconds(self) -> float:
        return self.beats_per_bar * 60.0 / self.tempo_bpm

    @property
    def duration_s(self) -> float:
        return sum(section.bars for section in self.sections) * self.bar_seconds

    @property
    def instruments(self) -> list[str]:
        return sorted({instrument for _, instrument in self.role_instruments})

    def section_instruments(self, section: Section) -> list[str]:
        roles = dict(self.role_instruments)
        return sorted({roles[role] for role in section.roles if role in roles})

    def attributes(self) -> dict:
        """The scalar ground truth shared by the tracks table, captions and prompts."""
        return {
            "genre": self.genre,
            "mood": self.mood,
            "tempo_bpm": self.tempo_bpm,
            "key": self.key,
            "mode": self.mode,
            "time_signature": self.time_signature,
        }

    def section_table(self) -> list[dict]:
        """Sections with their times and instruments, as stored in tracks.parquet."""
        return [
            {
                "name": s.name,
                "start_s": round(s.start_bar * self.bar_seconds, 3),
                "end_s": round((s.start_bar + s.bars) * self.bar_seconds, 3),
                "instruments": self.section_instruments(s),
                "dynamics": s.dynamics,
            }
            for s in self.sections
        ]


def sample_track_spec(
    track_id: str,
    rng: np.random.Generator,
    min_seconds: float,
    max_seconds: float,
    min_sections: int,
    max_sections: int,
) -> TrackSpec:
    """Draw a track's ground truth: genre first, then everything the genre allows."""
    genre = str(rng.choice(sorted(GENRES)))
    profile = GENRES[genre]
    mode = "minor" if rng.random() < profile.minor_probability else "major"
    allowed = MAJOR_MOODS if mode == "major" else MINOR_MOODS
    moods = [m for m in profile.moods if m in allowed] or list(profile.moods)
    tempo = float(round(rng.uniform(*profile.tempo_range)))
    time_signature = str(rng.choice(profile.time_signatures))
    roles = [
        ("bass", str(rng.choice(profile.bass))),
        ("harmony", str(rng.choice(profile.harmony))),
        ("melody", str(rng.choice(profile.melody))),
    ]
    if profile.drum_style:
        roles.append(("drums", "drums"))
    spec = TrackSpec(
        track_id=track_id,
        genre=genre,
        mood=str(rng.choice(moods)),
        tempo_bpm=tempo,
        key=str(rng.choice(PITCH_CLASSES)),
        mode=mode,
        time_signature=time_signature,
        progression=tuple(profile.progressions[rng.integers(len(profile.progressions))]),
        role_instruments=tuple(roles),
        sections=(),
        render_seed=int(rng.integers(2**31)),
    )
    count = int(rng.integers(min_sections, max_sections + 1))
    # A section is at least one bar: a slow tempo in a short track fits fewer sections,
    # and the track length range wins over the section count.
    count = max(1, min(count, int(max_seconds // spec.bar_seconds), max(STRUCTURES)))
    structures = STRUCTURES[count]
    names = structures[rng.integers(len(structures))]
    bars = _bar_count(
        spec.bar_seconds,
        rng.uniform(min_seconds, max_seconds),
        min_seconds,
        max_seconds,
        len(names),
    )
    return replace(spec, sections=_layout(names, bars, rng))


def _bar_count(bar_seconds: float, target: float, low: float, high: float, minimum: int) -> int:
    """Whole bars closest to `target` seconds, inside [low, high] where bars allow it."""
    bars = round(target / bar_seconds)
    bars = min(max(bars, int(np.ceil(low / bar_seconds))), int(high // bar_seconds))
    return max(bars, minimum)


def _layout(names: tuple[str, ...], bars: int, rng: np.random.Generator) -> tuple[Section, ...]:
    """Split `bars` over the sections as evenly as possible, leftovers to random sections."""
    lengths = [bars // len(names)] * len(names)
    for index in rng.permutation(len(names))[: bars % len(names)]:
        lengths[index] += 1
    sections, start = [], 0
    for name, length in zip(names, lengths, strict=True):
        roles, dynamics = SECTION_ROLES[name]
        sections.append(Section(name, start, length, roles, dynamics))
        start += length
    return tuple(sections)


# --------------------------------------------------------------------------- composition
@dataclass(frozen=True)
class Note:
    role: str
    instrument: str
    onset_s: float
    duration_s: float
    midi: int
    velocity: float


def midi_to_hz(midi: int) -> float:
    return 440.0 * 2.0 ** ((midi - 69) / 12.0)


def _chord_midis(spec: TrackSpec, degree: int, base: int) -> list[int]:
    tonic = PITCH_CLASSES.index(spec.key)
    return [base + tonic + offset for offset in triad(degree, spec.mode)]


def _step_time(spec: TrackSpec, bar: int, step: int, swing: float) -> float:
    """Onset of a 16th step; off-beat eighths are delayed by the genre's swing."""
    step_seconds = spec.bar_seconds / (spec.beats_per_bar * STEPS_PER_BEAT)
    delay = swing * 2 * step_seconds if step % 4 == 2 else 0.0
    return bar * spec.bar_seconds + step * step_seconds + delay


def compose(spec: TrackSpec) -> list[Note]:
    """Every note of the track, section by section, bar by bar."""
    rng = np.random.default_rng(spec.render_seed)
    profile = GENRES[spec.genre]
    roles = dict(spec.role_instruments)
    steps_per_bar = spec.beats_per_bar * STEPS_PER_BEAT
    # One melodic rhythm per track (a motif), reused every bar: music repeats.
    motif = [s for s in range(0, steps_per_bar, 2) if rng.random() < profile.melody_density]
    motif = motif or [0]
    beat = 60.0 / spec.tempo_bpm
    notes: list[Note] = []
    melody_pitch = 72 + PITCH_CLASSES.index(spec.key) % 12
    for section in spec.sections:
        for bar in range(section.start_bar, section.start_bar + section.bars):
            degree = spec.progression[bar % len(spec.progression)]
            for role in section.roles:
                if role not in roles:
                    continue
                instrument = roles[role]
                if role == "bass":
                    root = _chord_midis(spec, degree, 36)[0]
                    root -= 12 if root > 45 else 0
                    for step in range(
                        0,
                        steps_per_bar,
                        2 * STEPS_PER_BEAT
                        if spec.genre in ("ambient", "classical")
                        else STEPS_PER_BEAT,
                    ):
                        pitch = root + (7 if (step // STEPS_PER_BEAT) % 2 else 0)
                        notes.append(
                            Note(
                                role,
                                instrument,
                                _step_time(spec, bar, step, 0),
                                0.9 * beat,
                                pitch,
                                0.9,
                            )
                        )
                elif role == "harmony":
                    chord = _chord_midis(spec, degree, 55)
                    sustained = instrument in ("synth pad", "strings", "organ")
                    hits = [0] if sustained else list(range(0, steps_per_bar, STEPS_PER_BEAT))
                    length = spec.bar_seconds if sustained else 0.9 * beat
                    for step in hits:
                        for index, pitch in enumerate(chord):
                            strum = 0.012 * index if instrument == "acoustic guitar" else 0.0
                            notes.append(
                                Note(
                                    role,
                                    instrument,
                                    _step_time(spec, bar, step, 0) + strum,
                                    length,
                                    pitch,
                                    0.8 if step else 1.0,
                                )
                            )
                elif role == "melody":
                    chord_tones = {m % 12 for m in _chord_midis(spec, degree, 0)}
                    scale = [(PITCH_CLASSES.index(spec.key) + s) % 12 for s in scale_of(spec.mode)]
                    for position, step in enumerate(motif):
                        melody_pitch = _next_melody_pitch(
                            melody_pitch, scale, chord_tones, strong=step % 8 == 0, rng=rng
                        )
                        end = motif[position + 1] if position + 1 < len(motif) else steps_per_bar
                        length = (end - step) / STEPS_PER_BEAT * beat * 0.95
                        notes.append(
                            Note(
                                role,
                                instrument,
                                _step_time(spec, bar, step, profile.swing),
                                length,
                                melody_pitch,
                                0.85,
                            )
                        )
                elif role == "drums" and profile.drum_style is not None:
                    notes.extend(_drum_hits(spec, bar, profile.drum_style, profile.swing))
    return notes


def _next_melody_pitch(
    previous: int, scale: list[int], chord_tones: set[int], strong: bool, rng: np.random.Generator
) -> int:
    """A step or skip within the scale, landing on a chord tone on strong beats."""
    candidates = [
        p
        for p in range(previous - 5, previous + 6)
        if p % 12 in (chord_tones if strong else set(scale)) and 64 <= p <= 86
    ]
    if not candidates:
        return min(max(previous, 64), 86)
    weights = np.array([1.0 / (1 + abs(p - previous)) for p in candidates])
    return int(rng.choice(candidates, p=weights / weights.sum()))


def _drum_hits(spec: TrackSpec, bar: int, style: str, swing: float) -> list[Note]:
    pattern = WALTZ_DRUMS if spec.beats_per_bar == 3 else DRUM_PATTERNS[style]
    return [
        Note(
            "drums",
            sound,
            _step_time(spec, bar, step, swing),
            0.0,
            0,
            1.0 if step % STEPS_PER_BEAT == 0 else 0.6,
        )
        for sound, steps in pattern.items()
        for step in steps
    ]


# --------------------------------------------------------------------------- rendering
def render(spec: TrackSpec, sample_rate: int) -> np.ndarray:
    """The clean mix as float32 mono, peak-normalised to 0.9, exactly duration_s long."""
    rng = np.random.default_rng(spec.render_seed + 1)
    length = round(spec.duration_s * sample_rate)
    mix = np.zeros(length + 3 * sample_rate)
    kit = drum_kit(sample_rate, rng)
    cache: dict[tuple[str, int, int], np.ndarray] = {}
    dynamics = _dynamics_by_bar(spec)
    for note in compose(spec):
        bar = min(int(note.onset_s / spec.bar_seconds), len(dynamics) - 1)
        gain = ROLE_GAIN[note.role] * DYNAMICS_GAIN[dynamics[bar]] * note.velocity
        if note.role == "drums":
            sound = kit[note.instrument]
        else:
            # Voices are linear in velocity: render each (instrument, pitch, length) once.
            key = (note.instrument, note.midi, int(note.duration_s * 1000))
            if key not in cache:
                cache[key] = VOICES[note.instrument](
                    midi_to_hz(note.midi), note.duration_s, 1.0, sample_rate, rng
                )
            sound = cache[key]
        start = int(note.onset_s * sample_rate)
        stop = min(start + len(sound), len(mix))
        mix[start:stop] += gain * sound[: stop - start]
    audio = mix[:length]
    fade = min(length, int(0.5 * sample_rate))
    audio[length - fade :] *= np.linspace(1.0, 0.0, fade)
    return (0.9 * audio / max(np.abs(audio).max(), 1e-9)).astype(np.float32)


def _dynamics_by_bar(spec: TrackSpec) -> list[str]:
    return [section.dynamics for section in spec.sections for _ in range(section.bars)]
