"""Per-clip scores of generated and reference audio: embeddings, tags, p-MOS, attributes.

Every set of clips (generations, reference windows, a baseline) goes through `score_clips`
once; the set-level metrics and their intervals are computed from these arrays
(tasks/evaluate/summary.py). The classifier of paper 003's KL / IS (PANNs over AudioSet in
audioldm_eval, docs/reference.md §F.3) is here the CLAP backend's zero-shot tag distribution over
the corpus vocabulary (genres, instruments, moods): softmax(cos / T) over all tags, with
CLIP's prompt ensembling as in the embedded captioner.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import special

from tasks.backends.base import ClapBackend, FrameTeacherBackend, QualityBackend
from tasks.backends.captioner import (
    GENRE_TEMPLATES,
    INSTRUMENT_TEMPLATES,
    MOOD_TEMPLATES,
    batches,
    class_embeddings,
)
from tasks.common.caption_text import mentions
from tasks.evaluate.metrics.attributes import tempo_hits
from tasks.evaluate.metrics.music_analysis import (
    KeyEstimate,
    estimate_key,
    estimate_tempo,
    mode_hits,
)
from tasks.synthesis.vocabulary import GENRES, INSTRUMENT_WORDS, MOOD_WORDS

GROUPS = ("genre", "instrument", "mood")


@dataclass(frozen=True)
class TagVocabulary:
    """K zero-shot tags: names "genre:rock", ..., unit text embeddings [K, D], group slices."""

    names: list[str]
    embeddings: np.ndarray
    groups: dict[str, slice]

    def labels(self, group: str) -> list[str]:
        return [name.split(":", 1)[1] for name in self.names[self.groups[group]]]


def tag_vocabulary(clap: ClapBackend, batch_size: int) -> TagVocabulary:
    sources = {
        "genre": ({name: profile.words for name, profile in GENRES.items()}, GENRE_TEMPLATES),
        "instrument": (INSTRUMENT_WORDS, INSTRUMENT_TEMPLATES),
        "mood": (MOOD_WORDS, MOOD_TEMPLATES),
    }
    names, blocks, groups, start = [], [], {}, 0
    for group in GROUPS:
        words, templates = sources[group]
        blocks.append(class_embeddings(clap, words, templates, batch_size))
        names += [f"{group}:{name}" for name in words]
        groups[group] = slice(start, start + len(words))
        start += len(words)
    return TagVocabulary(names, np.concatenate(blocks), groups)


@dataclass(frozen=True)
class Scorers:
    clap: ClapBackend
    quality: QualityBackend
    teacher: FrameTeacherBackend
    tags: TagVocabulary
    tag_temperature: float
    batch_size: int


@dataclass(frozen=True)
class ClipScores:
    """One row per clip. `tempo_bpm` / `keys` only where music analysis was asked for."""

    clap_audio: np.ndarray  # [N, D] unit CLAP audio embeddings
    teacher: np.ndarray  # [N, Dt] frame-teacher features mean-pooled over time
    tag_cosine: np.ndarray  # [N, K] cosine with each tag's text embedding
    tag_probabilities: np.ndarray  # [N, K] softmax(cos / T): KL and IS read these
    pmos: np.ndarray  # [N]
    tempo_bpm: np.ndarray | None
    keys: list[KeyEstimate] | None

    def __len__(self) -> int:
        return len(self.pmos)

    def take(self, rows: np.ndarray) -> ClipScores:
        keys = None if self.keys is None else [self.keys[i] for i in rows]
        return ClipScores(
            clap_audio=self.clap_audio[rows],
            teacher=self.teacher[rows],
            tag_cosine=self.tag_cosine[rows],
            tag_probabilities=self.tag_probabilities[rows],
            pmos=self.pmos[rows],
            tempo_bpm=None if self.tempo_bpm is None else self.tempo_bpm[rows],
            keys=keys,
        )


def _batched(function, audio: np.ndarray, sample_rate: int, batch_size: int) -> np.ndarray:
    return np.concatenate(
        [np.asarray(function(list(chunk), sample_rate)) for chunk in batches(audio, batch_size)]
    )


def score_clips(
    audio: np.ndarray, sample_rate: int, scorers: Scorers, analyse_music: bool
) -> ClipScores:
    """Scores of clips [N, samples] at `sample_rate`; music analysis (tempo, key) is the slow
    part (beat tracking and chroma), so a set can skip it."""
    clap_audio = _batched(scorers.clap.embed_audio, audio, sample_rate, scorers.batch_size)
    frames = _batched(scorers.teacher.features, audio, sample_rate, scorers.batch_size)
    cosine = clap_audio.astype(np.float64) @ scorers.tags.embeddings.T.astype(np.float64)
    return ClipScores(
        clap_audio=clap_audio,
        teacher=frames.mean(axis=1),
        tag_cosine=cosine,
        tag_probabilities=special.softmax(cosine / scorers.tag_temperature, axis=1),
        pmos=_batched(scorers.quality.predict, audio, sample_rate, scorers.batch_size),
        tempo_bpm=np.array([estimate_tempo(clip, sample_rate) for clip in audio])
        if analyse_music
        else None,
        keys=[estimate_key(clip, sample_rate) for clip in audio] if analyse_music else None,
    )


# --------------------------------------------------------------------------- attributes
def predicted_genres(scores: ClipScores, tags: TagVocabulary) -> list[str]:
    labels = tags.labels("genre")
    return [labels[i] for i in scores.tag_cosine[:, tags.groups["genre"]].argmax(axis=1)]


def top_instruments(scores: ClipScores, tags: TagVocabulary, counts: Sequence[int]) -> list[set]:
    """Per clip, the `counts[i]` instruments with the highest zero-shot score."""
    labels = tags.labels("instrument")
    order = np.argsort(-scores.tag_cosine[:, tags.groups["instrument"]], axis=1)
    return [{labels[j] for j in row[:count]} for row, count in zip(order, counts, strict=True)]


def attribute_hits(
    scores: ClipScores, tags: TagVocabulary, prompts: Sequence[str], truth: Sequence[dict]
) -> dict[str, np.ndarray]:
    """Per clip 1/0 (NaN: not checkable) for each attribute its prompt states.

    genre: the top zero-shot genre is one the prompt names; instruments: recall@k of the
    top-k zero-shot instruments against the k instruments the prompt names; tempo: MIREX Acc2
    (±4 %, octave errors allowed) against the prompt's known BPM; mode: the key finder's mode
    against the prompt's known mode, where the clip is tonal enough to measure. The prompt's
    wording is read with the corpus vocabulary (tasks/common/caption_text.py), so this works on any
    prompt file; tempo and mode need the attribute columns of the embedded prompt set.
    """
    stated = [mentions(prompt) for prompt in prompts]
    genres = predicted_genres(scores, tags)
    genre = [
        float(g in s.genres) if s.genres else np.nan for g, s in zip(genres, stated, strict=True)
    ]
    counts = [max(1, len(s.instruments)) for s in stated]
    top = top_instruments(scores, tags, counts)
    instruments = [
        len(t & s.instruments) / len(s.instruments) if s.instruments else np.nan
        for t, s in zip(top, stated, strict=True)
    ]
    hits = {"genre": np.array(genre), "instruments": np.array(instruments)}
    if scores.tempo_bpm is not None:
        bpm = np.array([_number(row.get("tempo_bpm")) for row in truth])
        known = np.isfinite(bpm)
        tempo = np.full(len(bpm), np.nan)
        if known.any():
            tempo[known] = tempo_hits(scores.tempo_bpm[known], bpm[known]).astype(float)
        hits["tempo"] = tempo
    if scores.keys is not None:
        modes = [row.get("mode") for row in truth]
        known = [i for i, mode in enumerate(modes) if isinstance(mode, str)]
        mode = np.full(len(modes), np.nan)
        if known:
            mode[known] = mode_hits([scores.keys[i] for i in known], [modes[i] for i in known])
        hits["mode"] = mode
    return hits


def _number(value: object) -> float:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return float("nan")
