"""The embedded corpus's musical vocabulary: genres, instruments, moods, keys, progressions.

This is the ground truth the captions are written from and that later stages tag against
(zero-shot tagging, attribute accuracy), so every surface word maps to one concept: no
genre or mood word hides inside an instrument phrase (tests/captions/test_caption_text.py checks
it).
"""

from __future__ import annotations

from dataclasses import dataclass

PITCH_CLASSES = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")
MAJOR_SCALE = (0, 2, 4, 5, 7, 9, 11)
NATURAL_MINOR_SCALE = (0, 2, 3, 5, 7, 8, 10)

# Instrument -> words a caption may use for it (the first is the canonical name).
INSTRUMENT_WORDS: dict[str, tuple[str, ...]] = {
    "piano": ("piano", "acoustic piano", "grand piano"),
    "acoustic guitar": ("acoustic guitar", "strummed acoustic guitar", "steel-string guitar"),
    "electric guitar": ("electric guitar", "overdriven guitar", "distorted guitar"),
    "bass guitar": ("bass guitar", "electric bass", "round bass guitar"),
    "synth bass": ("synth bass", "sub bass", "pulsing synth bass"),
    "synth lead": ("synth lead", "lead synth", "soaring synth lead"),
    "synth pad": ("synth pads", "atmospheric pads", "lush pads"),
    "strings": ("strings", "string section", "bowed strings"),
    "flute": ("flute", "airy flute", "breathy flute"),
    "electric piano": ("electric piano", "Rhodes", "vintage electric piano"),
    "organ": ("organ", "Hammond organ", "drawbar organ"),
    "saxophone": ("saxophone", "sax", "smoky saxophone"),
    "drums": ("drums", "drum kit", "punchy drums"),
}
PITCHED_INSTRUMENTS = tuple(name for name in INSTRUMENT_WORDS if name != "drums")

MOOD_WORDS: dict[str, tuple[str, ...]] = {
    "energetic": ("energetic", "driving", "high-energy"),
    "upbeat": ("upbeat", "cheerful", "bright"),
    "melancholic": ("melancholic", "wistful", "sad"),
    "calm": ("calm", "peaceful", "serene"),
    "dreamy": ("dreamy", "ethereal", "hazy"),
    "dark": ("dark", "brooding", "ominous"),
    "romantic": ("romantic", "tender", "warm"),
    "playful": ("playful", "bouncy", "light-hearted"),
    "epic": ("epic", "majestic", "triumphant"),
    "relaxed": ("relaxed", "laid-back", "mellow"),
}
MAJOR_MOODS = frozenset(
    {"energetic", "upbeat", "calm", "dreamy", "romantic", "playful", "epic", "relaxed"}
)
MINOR_MOODS = frozenset({"energetic", "melancholic", "calm", "dreamy", "dark", "epic", "relaxed"})


@dataclass(frozen=True)
class GenreProfile:
    """How a genre is played: tempo range, metres, palettes per role, drum style, moods."""

    words: tuple[str, ...]
    tempo_range: tuple[float, float]
    time_signatures: tuple[str, ...]
    bass: tuple[str, ...]
    harmony: tuple[str, ...]
    melody: tuple[str, ...]
    drum_style: str | None  # key of arrangement.DRUM_PATTERNS; None = no drums
    moods: tuple[str, ...]
    minor_probability: float
    progressions: tuple[tuple[int, ...], ...]  # scale degrees 0..6, one chord per bar
    melody_density: float  # probability that an eighth-note slot starts a note
    swing: float = 0.0  # delay of off-beat eighths, as a fraction of an eighth


GENRES: dict[str, GenreProfile] = {
    "electronic": GenreProfile(
        words=("electronic", "EDM", "electronic dance"),
        tempo_range=(118.0, 132.0),
        time_signatures=("4/4",),
        bass=("synth bass",),
        harmony=("synth pad", "electric piano"),
        melody=("synth lead",),
        drum_style="four_on_the_floor",
        moods=("energetic", "upbeat", "dark", "epic"),
        minor_probability=0.5,
        progressions=((5, 3, 0, 4), (0, 5, 3, 4), (0, 0, 5, 4)),
        melody_density=0.6,
    ),
    "rock": GenreProfile(
        words=("rock", "guitar rock", "hard-hitting rock"),
        tempo_range=(100.0, 144.0),
        time_signatures=("4/4",),
        bass=("bass guitar",),
        harmony=("electric guitar", "organ"),
        melody=("electric guitar",),
        drum_style="rock",
        moods=("energetic", "dark", "epic", "upbeat"),
        minor_probability=0.4,
        progressions=((0, 4, 5, 3), (0, 3, 4, 3), (0, 6, 3, 0)),
        melody_density=0.5,
    ),
    "jazz": GenreProfile(
        words=("jazz", "jazzy", "swing jazz"),
        tempo_range=(96.0, 150.0),
        time_signatures=("4/4",),
        bass=("bass guitar",),
        harmony=("piano", "electric piano"),
        melody=("saxophone", "piano"),
        drum_style="jazz",
        moods=("relaxed", "romantic", "playful", "melancholic"),
        minor_probability=0.35,
        progressions=((1, 4, 0, 5), (1, 4, 0, 0), (0, 5, 1, 4)),
        melody_density=0.55,
        swing=0.33,
    ),
    "classical": GenreProfile(
        words=("classical", "orchestral", "chamber"),
        tempo_range=(64.0, 100.0),
        time_signatures=("4/4", "3/4"),
        bass=("strings",),
        harmony=("strings", "piano"),
        melody=("flute", "piano"),
        drum_style=None,
        moods=("romantic", "melancholic", "epic", "calm"),
        minor_probability=0.45,
        progressions=((0, 3, 4, 0), (0, 5, 1, 4), (0, 4, 5, 2)),
        melody_density=0.45,
    ),
    "ambient": GenreProfile(
        words=("ambient", "atmospheric ambient", "new age"),
        tempo_range=(60.0, 84.0),
        time_signatures=("4/4",),
        bass=("synth bass",),
        harmony=("synth pad", "strings"),
        melody=("electric piano", "flute"),
        drum_style=None,
        moods=("calm", "dreamy", "melancholic"),
        minor_probability=0.5,
        progressions=((0, 3, 0, 3), (0, 5, 3, 0), (5, 3, 0, 4)),
        melody_density=0.2,
    ),
    "hip hop": GenreProfile(
        words=("hip hop", "hip-hop", "boom-bap"),
        tempo_range=(84.0, 98.0),
        time_signatures=("4/4",),
        bass=("synth bass", "bass guitar"),
        harmony=("electric piano", "piano"),
        melody=("flute", "saxophone", "synth lead"),
        drum_style="boom_bap",
        moods=("relaxed", "dark", "melancholic", "playful"),
        minor_probability=0.65,
        progressions=((0, 5, 3, 4), (0, 3, 0, 3), (1, 4, 0, 0)),
        melody_density=0.35,
        swing=0.2,
    ),
    "folk": GenreProfile(
        words=("folk", "acoustic folk", "rustic folk"),
        tempo_range=(88.0, 124.0),
        time_signatures=("4/4", "3/4"),
        bass=("bass guitar",),
        harmony=("acoustic guitar",),
        melody=("flute", "strings", "piano"),
        drum_style="folk",
        moods=("upbeat", "melancholic", "romantic", "playful", "calm"),
        minor_probability=0.35,
        progressions=((0, 3, 0, 4), (0, 4, 5, 3), (0, 3, 4, 4)),
        melody_density=0.5,
    ),
}

# Section names in order of a typical arc, with the roles that play and the dynamics.
SECTION_ROLES: dict[str, tuple[tuple[str, ...], str]] = {
    "intro": (("harmony",), "soft"),
    "verse": (("bass", "harmony", "drums"), "moderate"),
    "chorus": (("bass", "harmony", "melody", "drums"), "loud"),
    "bridge": (("harmony", "melody"), "soft"),
    "outro": (("harmony", "melody"), "soft"),
}
STRUCTURES: dict[int, tuple[tuple[str, ...], ...]] = {
    1: (("chorus",),),
    2: (("verse", "chorus"), ("intro", "chorus")),
    3: (("intro", "verse", "chorus"), ("verse", "chorus", "outro"), ("verse", "bridge", "chorus")),
    4: (("intro", "verse", "chorus", "outro"), ("verse", "chorus", "bridge", "chorus")),
}


def tempo_band(tempo_bpm: float) -> str:
    """Coarse tempo words used by prompts and taggers."""
    if tempo_bpm < 90:
        return "slow"
    return "fast" if tempo_bpm >= 120 else "medium"


def scale_of(mode: str) -> tuple[int, ...]:
    return MAJOR_SCALE if mode == "major" else NATURAL_MINOR_SCALE


def triad(degree: int, mode: str) -> tuple[int, int, int]:
    """Semitone offsets from the tonic of the diatonic triad on `degree` (0-based)."""
    scale = scale_of(mode)

    def offset(step: int) -> int:
        return scale[(degree + step) % 7] + 12 * ((degree + step) // 7)

    return offset(0), offset(2), offset(4)


def roman_numeral(degree: int, mode: str) -> str:
    root, third, fifth = triad(degree, mode)
    numeral = ("I", "II", "III", "IV", "V", "VI", "VII")[degree]
    if third - root == 3:
        numeral = numeral.lower()
        if fifth - root == 6:
            numeral += "°"
    return numeral


SHARP_NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
FLAT_NAMES = ("C", "Db", "D", "Eb", "E", "F", "Gb", "G", "Ab", "A", "Bb", "B")
# Keys whose signature has flats (majors, and the minors relative to flat majors).
FLAT_KEYS = {"major": {"F", "Bb", "Eb", "Ab"}, "minor": {"D", "G", "C", "F", "Bb", "Eb"}}


def chord_name(tonic: str, degree: int, mode: str) -> str:
    """Chord symbol spelled with the key signature's accidentals (G#m in C# minor)."""
    root, third, fifth = triad(degree, mode)
    names = FLAT_NAMES if tonic in FLAT_KEYS[mode] else SHARP_NAMES
    name = names[(PITCH_CLASSES.index(tonic) + root) % 12]
    if third - root == 3:
        return name + ("dim" if fifth - root == 6 else "m")
    return name
