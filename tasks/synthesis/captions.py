"""Captions in the three styles of the ATTM data, written from a track's claimed attributes.

- holistic: Qwen2-Audio style, genre / instrumentation / mood in one pass (paper 000 §II-B);
- dense: MusicFlamingo style, adds tempo, key, time signature, chords and structure
  ("Built on C# major in 4/4 time at 120 BPM, it follows ...", paper 000 §II-B);
- concise: the inference prompt style ("An upbeat EDM track with pulsing synths and
  driving bass.").
Templates and synonyms vary the wording so that text models cannot key on one sentence.
Captions describe *claims*: the true attributes, or corrupted ones for the noisy fraction.
"""

from __future__ import annotations

import copy

import numpy as np

from tasks.synthesis.arrangement import TrackSpec
from tasks.synthesis.vocabulary import (
    GENRES,
    INSTRUMENT_WORDS,
    MOOD_WORDS,
    PITCH_CLASSES,
    PITCHED_INSTRUMENTS,
    chord_name,
    roman_numeral,
    tempo_band,
)

CORRUPTIBLE_ATTRIBUTES = ("genre", "mood", "instrument", "tempo", "key")

SCENES = {
    "energetic": ("a workout video", "a racing game", "a sports montage"),
    "upbeat": ("a travel vlog", "a cheerful commercial", "a summer road trip"),
    "melancholic": ("a rainy evening", "a sad film scene", "a quiet farewell"),
    "calm": ("meditation", "studying", "a spa"),
    "dreamy": ("a night drive", "a nature documentary", "stargazing"),
    "dark": ("a thriller scene", "a video game boss level", "a crime drama"),
    "romantic": ("a candlelit dinner", "a wedding video", "a slow dance"),
    "playful": ("a cartoon", "a children's show", "a quirky advert"),
    "epic": ("a movie trailer", "a sports highlight reel", "a fantasy battle"),
    "relaxed": ("a coffee shop", "a lazy Sunday", "a rooftop sunset"),
}


def claims_of(spec: TrackSpec) -> dict:
    """The attributes a caption states, as a plain JSON-able dict."""
    return {
        **spec.attributes(),
        "progression": list(spec.progression),
        "roles": dict(spec.role_instruments),
        "sections": [
            {"name": s.name, "instruments": spec.section_instruments(s), "dynamics": s.dynamics}
            for s in spec.sections
        ],
    }


def corrupt(claims: dict, attribute: str, rng: np.random.Generator) -> dict:
    """Swap one attribute for a wrong value (the "partly wrong caption" of the corpus)."""
    wrong = copy.deepcopy(claims)
    if attribute == "genre":
        wrong["genre"] = str(rng.choice([g for g in sorted(GENRES) if g != claims["genre"]]))
    elif attribute == "mood":
        wrong["mood"] = str(rng.choice([m for m in sorted(MOOD_WORDS) if m != claims["mood"]]))
    elif attribute == "tempo":
        factor = rng.choice([rng.uniform(0.55, 0.7), rng.uniform(1.4, 1.6)])
        wrong["tempo_bpm"] = float(round(claims["tempo_bpm"] * factor))
    elif attribute == "key":
        tonic = str(rng.choice([k for k in PITCH_CLASSES if k != claims["key"]]))
        wrong["key"], wrong["mode"] = tonic, str(rng.choice(["major", "minor"]))
    elif attribute == "instrument":
        present = set(claims["roles"].values())
        role = str(rng.choice([r for r in sorted(claims["roles"]) if r != "drums"]))
        old = claims["roles"][role]
        new = str(rng.choice([i for i in PITCHED_INSTRUMENTS if i not in present]))
        wrong["roles"][role] = new
        for section in wrong["sections"]:
            section["instruments"] = sorted(new if i == old else i for i in section["instruments"])
    else:
        raise ValueError(f"cannot corrupt attribute {attribute!r}")
    return wrong


def instruments_of(claims: dict) -> list[str]:
    return sorted(set(claims["roles"].values()))


# --------------------------------------------------------------------------- wording
def _pick(rng: np.random.Generator, options) -> str:
    return str(options[rng.integers(len(options))])


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def _join(words: list[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def _instrument_words(names: list[str], rng: np.random.Generator) -> list[str]:
    return [_pick(rng, INSTRUMENT_WORDS[name]) for name in names]


def _salient(claims: dict) -> list[str]:
    """Instruments in the order a listener would name them: melody, harmony, bass, drums."""
    order = [claims["roles"].get(r) for r in ("melody", "harmony", "bass", "drums")]
    return list(dict.fromkeys(i for i in order if i))


def _capitalise(text: str) -> str:
    return text[:1].upper() + text[1:]


def holistic(claims: dict, rng: np.random.Generator) -> str:
    genre = _pick(rng, GENRES[claims["genre"]].words)
    mood = _pick(rng, MOOD_WORDS[claims["mood"]])
    instruments = _join(_instrument_words(_salient(claims), rng))
    scene = _pick(rng, SCENES[claims["mood"]])
    roles = {r: _pick(rng, INSTRUMENT_WORDS[i]) for r, i in claims["roles"].items()}
    role_sentence = _pick(
        rng,
        [
            f"The {roles['melody']} carries the melody while the {roles['bass']} holds down the "
            "low end.",
            f"The {roles['harmony']} lays down the harmony beneath a {roles['melody']} line.",
            f"{_capitalise(_article(roles['melody']))} {roles['melody']} melody floats over "
            f"{roles['harmony']} chords.",
        ],
    )
    piece = _pick(rng, ["piece", "track", "song", "composition"])
    templates = [
        f"This is {_article(mood)} {mood} {genre} {piece} featuring {instruments}. "
        f"{role_sentence} It could be used as background music for {scene}.",
        f"{_capitalise(_article(genre))} {genre} {piece} built around {instruments}, with a "
        f"{mood} feel throughout. {role_sentence}",
        f"The music is {genre} in style, with {instruments} creating a {mood} atmosphere. "
        f"{role_sentence} It would suit {scene}.",
        f"{_capitalise(instruments)} shape this {mood} {genre} {piece}. The overall vibe is "
        f"{mood}, a good fit for {scene}.",
    ]
    return _pick(rng, templates)


def _section_phrase(section: dict, previous: set[str], rng: np.random.Generator) -> str:
    added = [i for i in section["instruments"] if i not in previous]
    words = _join(_instrument_words(added or section["instruments"], rng))
    if not previous:
        return f"{_article(section['dynamics'])} {section['dynamics']} {section['name']} of {words}"
    verb = "adding" if added else "returning to"
    return f"{_article(section['dynamics'])} {section['dynamics']} {section['name']} {verb} {words}"


def dense(claims: dict, rng: np.random.Generator) -> str:
    genre = _pick(rng, GENRES[claims["genre"]].words)
    mood = _pick(rng, MOOD_WORDS[claims["mood"]])
    key, mode, metre = claims["key"], claims["mode"], claims["time_signature"]
    bpm = f"{claims['tempo_bpm']:.0f} BPM"
    form = "–".join(s["name"] for s in claims["sections"])
    opening = _pick(
        rng,
        [
            f"Built on {key} {mode} in {metre} time at {bpm}, this {genre} piece follows "
            f"{_article(form)} {form} form.",
            f"Set in {key} {mode} at {bpm} and in {metre}, the {genre} track moves through "
            f"{_article(form)} {form} arc.",
            f"At {bpm} in {metre} time and the key of {key} {mode}, this {genre} track unfolds as "
            f"{form}.",
        ],
    )
    phrases: list[str] = []
    heard: set[str] = set()
    for section in claims["sections"]:
        phrases.append(_section_phrase(section, heard, rng))
        heard |= set(section["instruments"])
    structure = f"It opens with {phrases[0]}" + (
        ", then " + ", then ".join(phrases[1:]) + "." if len(phrases) > 1 else "."
    )
    degrees = claims["progression"]
    numerals = "–".join(roman_numeral(d, mode) for d in degrees)
    chords = "–".join(chord_name(key, d, mode) for d in degrees)
    harmony = _pick(
        rng,
        [
            f"The harmony cycles through {numerals} ({chords}).",
            f"A {numerals} progression ({chords}) repeats throughout.",
            f"Underneath, the chords loop {chords}, a {numerals} pattern.",
        ],
    )
    closing = _pick(
        rng,
        [
            f"The mood is {mood}.",
            f"Overall it feels {mood}.",
            f"The result sounds {mood} and cohesive.",
        ],
    )
    return " ".join([opening, structure, harmony, closing])


def concise(claims: dict, rng: np.random.Generator) -> str:
    genre = _pick(rng, GENRES[claims["genre"]].words)
    mood = _pick(rng, MOOD_WORDS[claims["mood"]])
    words = _instrument_words(_salient(claims)[:3], rng)
    band = tempo_band(claims["tempo_bpm"])
    templates = [
        f"{_capitalise(_article(mood))} {mood} {genre} track with {_join(words[:2])}.",
        f"{_capitalise(mood)} {genre} featuring {_join(words)}.",
        f"A {band}, {mood} {genre} piece with {words[0]}.",
        f"{_capitalise(genre)} tune with {_join(words[:2])}, {mood} in mood.",
    ]
    return _pick(rng, templates)


def describe(claims: dict, rng: np.random.Generator) -> dict[str, str]:
    """All three caption styles for one set of claims."""
    return {
        "caption_holistic": holistic(claims, rng),
        "caption_dense": dense(claims, rng),
        "prompt_concise": concise(claims, rng),
    }
