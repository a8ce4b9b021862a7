"""Pure caption text functions: attribute mentions, forbidden low-level terms, the embedded
rewriter (paper 000 §II-B) and the embedded merge (paper 003 §4.3 step 3).

Everything here is deterministic and reads only the corpus vocabulary
(tasks/synthesis/vocabulary.py): `mentions` is what the captions stage measures attribute
accuracy with, `forbidden_terms` and `looks_like_instruction` validate LLM output
(tasks/backends/caption_llm.py), and `concise_rewrite` / `embedded_merge` are the offline stand-ins
for the LLM that the `embedded` rewriter backend uses and that the LLM path falls back to.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass

from tasks.synthesis.vocabulary import GENRES, INSTRUMENT_WORDS, MOOD_WORDS

NEUTRAL_CAPTION = "A piece of music."  # what is left when a caption states nothing usable


# --------------------------------------------------------------------------- mentions
@dataclass(frozen=True)
class Mentions:
    """Canonical vocabulary names a text states, by attribute."""

    genres: frozenset[str] = frozenset()
    instruments: frozenset[str] = frozenset()
    moods: frozenset[str] = frozenset()

    @property
    def empty(self) -> bool:
        return not (self.genres or self.instruments or self.moods)

    def beyond(self, other: Mentions) -> list[str]:
        """Names stated here that `other` does not state (sorted)."""
        return sorted(
            (self.genres - other.genres)
            | (self.instruments - other.instruments)
            | (self.moods - other.moods)
        )

    def union(self, other: Mentions) -> Mentions:
        return Mentions(
            self.genres | other.genres,
            self.instruments | other.instruments,
            self.moods | other.moods,
        )


@dataclass(frozen=True)
class _Match:
    kind: str  # "genres" | "instruments" | "moods", the Mentions field
    canonical: str
    phrase: str  # the vocabulary spelling of the matched words


def _phrase_table() -> dict[str, tuple[str, str, str]]:
    """lowercased phrase -> (kind, canonical name, vocabulary spelling)."""
    table: dict[str, tuple[str, str, str]] = {}
    for kind, words in (
        ("genres", {name: profile.words for name, profile in GENRES.items()}),
        ("instruments", INSTRUMENT_WORDS),
        ("moods", MOOD_WORDS),
    ):
        for canonical, phrases in words.items():
            for phrase in phrases:
                table[phrase.lower()] = (kind, canonical, phrase)
    return table


_PHRASES = _phrase_table()
# Longest phrase first, so that "synth bass" is never also read as "bass guitar"'s parts and
# "atmospheric ambient" wins over a shorter reading; word boundaries on both sides.
_PHRASE_PATTERN = re.compile(
    r"\b(?:"
    + "|".join(re.escape(p) for p in sorted(_PHRASES, key=lambda p: (-len(p), p)))
    + r")\b",
    re.IGNORECASE,
)


def _matches(text: str) -> list[_Match]:
    """Vocabulary phrases in order of appearance, non-overlapping."""
    return [_Match(*_PHRASES[m.group(0).lower()]) for m in _PHRASE_PATTERN.finditer(text)]


def mentions(text: str) -> Mentions:
    """The canonical genres, instruments and moods `text` names (case-insensitive)."""
    found: dict[str, set[str]] = {"genres": set(), "instruments": set(), "moods": set()}
    for match in _matches(text):
        found[match.kind].add(match.canonical)
    return Mentions(**{kind: frozenset(names) for kind, names in found.items()})


# --------------------------------------------------------------------------- forbidden terms
# Paper 000 §II-B, the rewriting prompt's "REMOVE: tempo/BPM, keys, time signatures, chord
# progressions, structural arcs, production/engineering descriptions". Coarse tempo words
# (slow / fast) stay allowed: the evaluation prompts themselves use them.
_NOTE = r"[A-G][#♯b♭]?"
_CHORD_QUALITY = r"(?:maj7|maj|min|m7b5|m7|m|dim7|dim|aug|sus2|sus4|add9|7|9|°)"
_NUMERAL = r"(?:VII|VI|IV|V|III|II|I|vii|vi|iv|v|iii|ii|i)°?"
_DASH = r"\s*[-–—]\s*"
_FORBIDDEN_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (category, re.compile(pattern))
    for category, pattern in (
        ("tempo", r"\b\d+(?:\.\d+)?\s*(?i:bpm|beats per minute)\b"),
        ("tempo", r"(?i:\bbpm\b|\bbeats per minute\b|\b(?:up|mid|down)?-?tempo\b)"),
        # A bare number in the tempo range is a BPM with its unit dropped ("at 120");
        # decades ("80s"), counts ("12-string") and small numbers are left alone.
        ("tempo", r"(?<![\w./])(?:[4-9]\d|1\d\d|2[0-4]\d)(?:\.\d+)?(?![\w'’/-])"),
        ("key", rf"(?<![\w#♯♭]){_NOTE}\s*(?i:major|minor)\b"),
        ("key", r"(?i:\bkeys? of\b|\b(?:major|minor) (?:key|mode|tonality|scale)\b)"),
        ("key", r"(?i:\btonality\b|\bmodulat\w*)"),
        ("time_signature", r"(?<![\w/])\d{1,2}/(?:1|2|4|8|16)(?![\w/])"),
        ("time_signature", r"(?i:\btime signatures?\b|\bmetre\b|\bmeter\b|\bwaltz time\b)"),
        ("chords", rf"(?<![\w]){_NUMERAL}(?:{_DASH}{_NUMERAL})+(?![\w])"),
        (
            "chords",
            rf"(?<![\w#♯♭]){_NOTE}{_CHORD_QUALITY}?(?:{_DASH}{_NOTE}{_CHORD_QUALITY}?)+"
            r"(?![\w#♯♭])",
        ),
        (
            "chords",
            rf"(?<![\w#♯♭])(?:[A-G][#♯b♭]{_CHORD_QUALITY}?|[A-G]{_CHORD_QUALITY})"
            r"(?![\w#♯♭])",
        ),
        ("chords", r"(?i:\b(?:chord )?progressions?\b|\bchord changes\b|\bcadences?\b)"),
        (
            "structure",
            r"(?i:\b(?:pre-?)?chorus(?:es)?\b|\bintros?\b|\bverses?\b|\bbridges?\b"
            r"|\boutros?\b|\brefrains?\b|\bbreakdowns?\b|\bbuild-?ups?\b"
            r"|\bbuilds? (?:up )?to\b|\bcrescendos?\b|\bfades? (?:in|out)\b|\barcs?\b"
            r"|\bstructure\b|(?<!string )\bsections?\b|\b(?:the|a) drop\b)",
        ),
        (
            "production",
            r"(?i:\bmix(?:ing|down)\b|\bmix\b(?! of\b)|\bmixed\b(?! with\b)"
            r"|\bmaster(?:ed|ing)\b|\breverb\w*|\bcompress(?:ed|ion|or)\b|\bstereo\b"
            r"|\bmono\b|\bpann(?:ed|ing)\b|\beq\b|\bequali[sz](?:ed|ation)\b"
            r"|\bside-?chain(?:ed)?\b|\bproduction\b|\bproduced\b|\bproducer\b"
            r"|\bengineer(?:ed|ing)\b|\brecord(?:ed|ing)\b|\bstudio\b|\bdelay\b|\bLUFS\b"
            r"|\bloudness\b|\blimiter\b|\bsaturation\b|\b(?:high-)?fidelity\b)",
        ),
    )
)


def forbidden_terms(text: str) -> list[str]:
    """Low-level terms paper 000 §II-B removes, as they appear in `text`, in order."""
    spans = sorted(
        (match.start(), -match.end(), match.group(0))
        for _, pattern in _FORBIDDEN_PATTERNS
        for match in pattern.finditer(text)
    )
    terms, covered_until = [], -1
    for start, negative_end, term in spans:
        if start >= covered_until:  # the longest match at a position hides those inside it
            terms.append(term)
            covered_until = -negative_end
    return terms


# --------------------------------------------------------------------------- injection
_INSTRUCTION_PATTERN = re.compile(
    r"\b(?:ignore|disregard|forget)\b.{0,40}?\b(?:instructions?|prompts?|rules|above"
    r"|previous|prior|everything)\b"
    r"|\b(?:respond|reply|answer|output|return|print)\s+(?:only\s+)?(?:with|in)\b"
    r"|\bsystem\s+(?:prompt|message)\b|\byou\s+are\b|\byou're\s+(?:a|an|now)\b"
    r"|\b(?:assistant|system|user)\s*:|```|<\|[^|]*\|>|\[/?INST\]|</?s>|<<SYS>>"
    r"|\bas an ai\b|\blanguage model\b|\binstructions?\b|\bprompts?\b|\bjson\b|\bmarkdown\b"
    r"|\bcaption editor\b|\brewrite\b|^\s*[\[{]",
    re.IGNORECASE,
)


def looks_like_instruction(text: str) -> bool:
    """Whether a caption reads like a prompt injection or a chat-protocol fragment."""
    return _INSTRUCTION_PATTERN.search(text) is not None


# --------------------------------------------------------------------------- sentences
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def split_sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_END.split(text.strip()) if s.strip()]


def _as_sentence(text: str) -> str:
    text = text.strip().rstrip(",;:")
    text = text[:1].upper() + text[1:]
    return text if text.endswith((".", "!", "?")) else text + "."


def _join(words: list[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def _capitalise(text: str) -> str:
    return text[:1].upper() + text[1:]


# --------------------------------------------------------------------------- rewrite
@dataclass(frozen=True)
class _Parts:
    genre: str | None
    mood: str | None
    instruments: str | None
    noun: str

    @property
    def descriptor(self) -> str:
        return " ".join(part for part in (self.mood, self.genre) if part)


def _first_phrases(matches: list[_Match], kind: str) -> list[str]:
    """The first spelling used for each canonical name of `kind`, in caption order."""
    seen: dict[str, str] = {}
    for match in matches:
        if match.kind == kind:
            seen.setdefault(match.canonical, match.phrase)
    return list(seen.values())


def _a(phrase: str) -> str:
    return f"{_article(phrase)} {phrase}"


def _templates(p: _Parts) -> list[str]:
    """Every opening that the caption's attributes allow (paper 000: "Vary the openings")."""
    d, n, i, m, g = p.descriptor, p.noun, p.instruments, p.mood, p.genre
    options: list[str | None] = [
        f"{_capitalise(_a(f'{d} {n}'.strip()))}" + (f" with {i}." if i else "."),
        f"This {d} {n} features {i}." if i and g else None,
        f"Built around {i}, this {g + ' ' if g else ''}{n} has {_a(m)} feel." if i and m else None,
        f"Featuring {i}, this {g + ' ' if g else ''}{n} feels {m}." if i and m else None,
        f"{_capitalise(g)} {n} with {i}." + (f" The mood is {m}." if m else "")
        if g and i
        else None,
        f"{_capitalise(m)} {g + ' ' if g else ''}{n}" + (f" with {i}." if i else ".")
        if m
        else None,
        f"Here is {_a(d)} {n}" + (f" with {i}." if i else ".") if d else None,
        f"With {i} up front, this {g + ' ' if g else ''}{n} sounds {m}." if i and m else None,
        f"{_capitalise(_a(d))} {n} carried by {i}." if g and i else None,
    ]
    return [option for option in options if option]


def _vocabulary_rewrite(caption: str, matches: list[_Match]) -> str:
    digest = zlib.crc32(caption.encode("utf-8"))  # stable across runs, unlike hash()
    instruments = _first_phrases(matches, "instruments")
    genres, moods = _first_phrases(matches, "genres"), _first_phrases(matches, "moods")
    parts = _Parts(
        genre=_join(genres) if genres else None,
        mood=_join(moods) if moods else None,
        instruments=_join(instruments) if instruments else None,
        noun=("track", "piece", "song", "tune")[(digest >> 8) % 4],
    )
    options = _templates(parts)
    return options[digest % len(options)]


_TRAILING_PREPOSITION = (
    r"\s+(?:in|at|with|on|over|through|around|near)\s+(?:the\s+|a\s+|an\s+)?(?:key\s+of\s+)?"
)


def _without_trailing_term(clause: str) -> str:
    """ "a deep kick in E minor" -> "a deep kick": a forbidden term that ends the clause
    goes with its preposition; anywhere else it takes the clause with it."""
    for term in reversed(forbidden_terms(clause)):
        clause = re.sub(_TRAILING_PREPOSITION + re.escape(term) + r"(?:\s+time)?\s*$", "", clause)
    return "" if forbidden_terms(clause) else clause.strip()


def _clean_clauses(sentence: str) -> list[str]:
    clauses = (_without_trailing_term(c) for c in re.split(r"[,;:()]|\s[-–—]\s", sentence))
    return [c for c in clauses if c]


def _stripped_rewrite(caption: str) -> str:
    """Real captions outside the vocabulary: drop the sentences (then clauses) that hold
    forbidden terms or instructions; keep at most two sentences (paper 000 §II-B: 1-2)."""
    sentences = [s for s in split_sentences(caption) if not looks_like_instruction(s)]
    clean = [s for s in sentences if not forbidden_terms(s)]
    if clean:
        return " ".join(_as_sentence(s) for s in clean[:2])
    clauses = [c for s in sentences for c in _clean_clauses(s.rstrip(".!?"))]
    words = [c for c in clauses if re.search(r"[A-Za-z]{3,}", c)]
    return _as_sentence(", ".join(words[:3])) if words else NEUTRAL_CAPTION


def concise_rewrite(caption: str) -> str:
    """The embedded rewriter: genre, instrumentation and mood in 1-2 sentences (§II-B)."""
    matches = _matches(caption)
    if matches:
        return _vocabulary_rewrite(caption, matches)
    return _stripped_rewrite(caption)


# --------------------------------------------------------------------------- merge
def _original_pieces(original: str) -> list[str]:
    """Sentences, or the single tags of a tag list ("rock, guitar, energetic")."""
    text = original.strip()
    if "," in text and not re.search(r"[.!?]\s", text):
        return [tag.strip() for tag in text.rstrip(".!?").split(",") if tag.strip()]
    return split_sentences(text)


def _normalised(text: str) -> str:
    return re.sub(r"\W+", " ", text.lower()).strip()


def embedded_merge(original: str, generated: str) -> str:
    """Paper 003 §4.3 step 3 without an LLM: "do not add any imaginary elements".

    The generated caption (it passed the CLAP filter, the original did not match it) comes
    first; each sentence (or tag) of the original follows if every genre, mood and
    instrument it names is also named by the generated caption. Pieces that name none of
    them (a usage scene, a vocal description) are kept; conflicting ones are dropped.
    """
    if not generated.strip():
        return _as_sentence(original) if original.strip() else NEUTRAL_CAPTION
    verified = mentions(generated)
    already = {_normalised(s) for s in split_sentences(generated)}
    pieces = [
        piece
        for piece in _original_pieces(original)
        if not mentions(piece).beyond(verified) and _normalised(piece) not in already
    ]
    is_tag_list = len(pieces) > 1 and all(not p.endswith((".", "!", "?")) for p in pieces)
    tail = [_as_sentence(", ".join(pieces))] if is_tag_list else [_as_sentence(p) for p in pieces]
    return " ".join([_as_sentence(generated), *tail])
