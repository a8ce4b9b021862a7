"""Captioner backends (`backends.captioner`): `embedded` and `transformers` (paper scale).

Step 1 of paper 003 §4.3 re-captions every audio clip with a music captioner (LP-MusicCaps
there; the ATTM captions come from Qwen2-Audio-7B-Instruct and Music Flamingo, docs/reference.md
§B.1). The refinement that follows (CLAP filter, LLM fusion) reads only the strings.

* `embedded`: zero-shot tagging with the CLAP backend it is given (the tiny CLAP of the
  `scorers` stage in the embedded profile) over the corpus vocabulary, then one sentence
  naming the tags. Prompt ensembling as in CLIP / CLAP zero-shot classification: a class
  is the renormalised mean of the unit text embeddings of templates x surface words.
* `transformers`: an audio-language model (Qwen2-Audio, Music Flamingo, ...) from one local
  save_pretrained directory, prompted as the ATTM Qwen2-Audio captions were (docs/reference.md
  §B.2), greedy decoding.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from tasks.backends.base import (
    CaptionerBackend,
    ClapBackend,
    Registry,
    require_path,
    resample,
)
from tasks.params import BackendChoice, CaptionParams
from tasks.synthesis.vocabulary import GENRES, INSTRUMENT_WORDS, MOOD_WORDS, tempo_band

CaptionerLoader = Callable[[ClapBackend, CaptionParams], CaptionerBackend]
# The registry picks *how to build* a captioner; the stage then hands it the CLAP and the
# `captions` params it needs (the embedded one tags with that CLAP).
CAPTIONERS: Registry[CaptionerLoader] = Registry("captioner")

# docs/reference.md §B.2: the Qwen2-Audio captioning prompt of the ATTM-related script.
CAPTION_PROMPT = (
    "Generate a detailed caption for this music piece, primarily focusing on "
    "instrumentation, genre, mood, rhythm, and scenario."
)


# --------------------------------------------------------------------------- vocabulary
def corpus_bpms() -> range:
    """Every whole BPM the corpus genres play at (their tempo ranges' hull)."""
    low = min(profile.tempo_range[0] for profile in GENRES.values())
    high = max(profile.tempo_range[1] for profile in GENRES.values())
    return range(int(np.floor(low)), int(np.ceil(high)) + 1)


def tempo_band_words() -> dict[str, tuple[str, ...]]:
    """Band -> '<bpm> BPM' phrases, grouped by `tempo_band` itself (no copied band edges).

    The concise prompts name the band ("A slow, calm ... piece"), the dense captions the
    BPM ("At 120 BPM ..."). The tiny CLAP tells the bands apart far better from the BPM
    phrases (validation tempo-band accuracy 0.65, vs 0.44 from the band words). Every whole
    BPM is used, not a hand-picked grid: accuracy swung from 0.50 to 0.68 with the grid step.
    """
    bands: dict[str, list[str]] = {}
    for bpm in corpus_bpms():
        bands.setdefault(tempo_band(bpm), []).append(f"{bpm} BPM")
    return {band: tuple(words) for band, words in bands.items()}


GENRE_NAMES = tuple(GENRES)
MOOD_NAMES = tuple(MOOD_WORDS)
INSTRUMENT_NAMES = tuple(INSTRUMENT_WORDS)
TEMPO_BANDS = tuple(tempo_band_words())  # ("slow", "medium", "fast")

# Templates per facet, in the wording of the corpus captions (the CLAP learnt from those).
# Ensembling over templates x synonyms lifts mood (val 0.03 -> 0.25) and instrument
# precision (0.68 -> 0.70) over the bare canonical word; checked on a train-split sample.
GENRE_TEMPLATES = ("This is a {} piece.", "A {} track.", "The music is {} in style.", "{} music")
MOOD_TEMPLATES = ("The mood is {}.", "Overall it feels {}.", "A {} track.", "{} music")
INSTRUMENT_TEMPLATES = (
    "A track featuring {}.",
    "This piece is built around {}.",
    "The {} carries the melody.",
    "music featuring {}",
)
TEMPO_TEMPLATES = ("At {} in 4/4 time.", "This track moves at {}.", "Set at {}.", "a track at {}")


# --------------------------------------------------------------------------- shared helpers
def batches(items: Sequence[Any] | np.ndarray, size: int) -> Iterator[Sequence[Any] | np.ndarray]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.maximum(np.linalg.norm(rows, axis=-1, keepdims=True), 1e-12)


def _check_batch(waveforms: Sequence[np.ndarray]) -> None:
    if len(waveforms) == 0:
        raise ValueError("empty batch")


# --------------------------------------------------------------------------- embedded
def class_embeddings(
    clap: ClapBackend,
    surface_words: Mapping[str, Sequence[str]],
    templates: Sequence[str],
    batch_size: int,
) -> np.ndarray:
    """[classes, dim]: per class, the mean unit embedding of templates x words, renormalised.

    CLIP's prompt ensembling (averaging in embedding space), used by CLAP zero-shot too.
    """
    prompts = [
        [template.format(word) for template in templates for word in words]
        for words in surface_words.values()
    ]
    flat = [prompt for group in prompts for prompt in group]
    embedded = np.concatenate([clap.embed_text(list(chunk)) for chunk in batches(flat, batch_size)])
    embedded = _unit(embedded.astype(np.float64))
    rows, start = [], 0
    for group in prompts:
        rows.append(embedded[start : start + len(group)].mean(axis=0))
        start += len(group)
    return _unit(np.stack(rows)).astype(np.float32)


def _readonly(scores: np.ndarray) -> np.ndarray:
    scores = np.array(scores, dtype=np.float32)
    scores.setflags(write=False)
    return scores


@dataclass(frozen=True)
class Tags:
    """One clip's zero-shot tags; scores are CLAP cosines in the order of the *_NAMES tuples."""

    genre: str
    mood: str
    tempo_band: str
    instruments: tuple[str, ...]  # best first
    genre_scores: np.ndarray = field(compare=False, repr=False)  # [len(GENRE_NAMES)]
    mood_scores: np.ndarray = field(compare=False, repr=False)  # [len(MOOD_NAMES)]
    tempo_scores: np.ndarray = field(compare=False, repr=False)  # [len(TEMPO_BANDS)]
    instrument_scores: np.ndarray = field(compare=False, repr=False)  # [len(INSTRUMENT_NAMES)]


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def _join(words: Sequence[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


# Openings vary so that the captions do not all start alike (the corpus captions do not);
# every slot takes a canonical vocabulary word, no verb has to agree with the instruments.
SENTENCE_TEMPLATES = (
    "{a_mood} {mood} {genre} piece featuring {instruments}, at a {tempo} tempo.",
    "{genre_cap} music with {instruments}, {mood} in mood and {tempo} in tempo.",
    "This {tempo}-tempo {genre} track sounds {mood}, built around {instruments}.",
    "Built around {instruments}, this {mood} {genre} piece moves at a {tempo} tempo.",
    "Featuring {instruments}, this {genre} track feels {mood} at a {tempo} tempo.",
    "{a_mood} {mood}, {tempo}-tempo {genre} track with {instruments}.",
)


def describe_tags(tags: Tags) -> str:
    """One sentence naming the tags with canonical words; template fixed by the tags."""
    key = "|".join((tags.genre, tags.mood, tags.tempo_band, *tags.instruments))
    template = SENTENCE_TEMPLATES[zlib.crc32(key.encode()) % len(SENTENCE_TEMPLATES)]
    return template.format(
        a_mood=_article(tags.mood).capitalize(),
        mood=tags.mood,
        genre=tags.genre,
        genre_cap=tags.genre[:1].upper() + tags.genre[1:],
        tempo=tags.tempo_band,
        # the first surface word, as corpus captions write it ("synth pads", not the key)
        instruments=_join([INSTRUMENT_WORDS[name][0] for name in tags.instruments]),
    )


class EmbeddedCaptioner:
    """Zero-shot CLAP tagging over the corpus vocabulary, written out as one sentence."""

    def __init__(self, clap: ClapBackend, instruments_per_caption: int, batch_size: int) -> None:
        if not 1 <= instruments_per_caption <= len(INSTRUMENT_NAMES):
            raise ValueError(
                f"captions.captioner_instruments = {instruments_per_caption}; the vocabulary "
                f"has {len(INSTRUMENT_NAMES)} instruments"
            )
        self.clap = clap
        self.sample_rate = clap.sample_rate
        self.instruments_per_caption = instruments_per_caption
        self.batch_size = batch_size
        genre_words = {name: GENRES[name].words for name in GENRE_NAMES}
        # Computed once: the classes do not depend on the audio.
        self.genre_classes = class_embeddings(clap, genre_words, GENRE_TEMPLATES, batch_size)
        self.mood_classes = class_embeddings(clap, MOOD_WORDS, MOOD_TEMPLATES, batch_size)
        self.tempo_classes = class_embeddings(clap, tempo_band_words(), TEMPO_TEMPLATES, batch_size)
        self.instrument_classes = class_embeddings(
            clap, INSTRUMENT_WORDS, INSTRUMENT_TEMPLATES, batch_size
        )

    def embed_audio(self, waveforms: Sequence[np.ndarray], sample_rate: int) -> np.ndarray:
        """[N, dim] CLAP audio embeddings, `batch_size` clips per CLAP call."""
        _check_batch(waveforms)
        chunks = [
            self.clap.embed_audio(list(chunk), sample_rate)
            for chunk in batches(waveforms, self.batch_size)
        ]
        return np.concatenate(chunks).astype(np.float32)

    def tags_of(self, audio_embeddings: np.ndarray) -> list[Tags]:
        """Argmax genre, mood and tempo band; the top-k instruments, best first."""
        genre = audio_embeddings @ self.genre_classes.T  # [N, genres]
        mood = audio_embeddings @ self.mood_classes.T  # [N, moods]
        tempo = audio_embeddings @ self.tempo_classes.T  # [N, bands]
        instrument = audio_embeddings @ self.instrument_classes.T  # [N, instruments]
        # A stable sort keeps vocabulary order among ties, so the result is reproducible.
        top = np.argsort(-instrument, axis=1, kind="stable")[:, : self.instruments_per_caption]
        return [
            Tags(
                genre=GENRE_NAMES[int(genre[row].argmax())],
                mood=MOOD_NAMES[int(mood[row].argmax())],
                tempo_band=TEMPO_BANDS[int(tempo[row].argmax())],
                instruments=tuple(INSTRUMENT_NAMES[int(index)] for index in top[row]),
                genre_scores=_readonly(genre[row]),
                mood_scores=_readonly(mood[row]),
                tempo_scores=_readonly(tempo[row]),
                instrument_scores=_readonly(instrument[row]),
            )
            for row in range(len(audio_embeddings))
        ]

    def tag(self, waveforms: Sequence[np.ndarray], sample_rate: int) -> list[Tags]:
        return self.tags_of(self.embed_audio(waveforms, sample_rate))

    def caption(self, waveforms: Sequence[np.ndarray], sample_rate: int) -> list[str]:
        return [describe_tags(tags) for tags in self.tag(waveforms, sample_rate)]


# --------------------------------------------------------------------------- transformers
class TransformersCaptioner:
    """An audio-language model + its processor: chat prompt with one audio item, greedy."""

    def __init__(
        self,
        model: torch.nn.Module,
        processor: Any,
        max_new_tokens: int,
        batch_size: int,
        prompt: str,
    ) -> None:
        self.model: Any = model.eval()  # a transformers model: generate is not nn.Module's
        self.processor = processor
        self.sample_rate = int(processor.feature_extractor.sampling_rate)
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        # Decoder-only generation continues after the last position: a batch must be padded
        # on the left, or the answers of shorter prompts would follow pad tokens.
        self.processor.tokenizer.padding_side = "left"
        conversation = [
            {"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": prompt}]}
        ]
        self.prompt_text = processor.apply_chat_template(
            conversation, add_generation_prompt=True, tokenize=False
        )

    @torch.inference_mode()
    def _caption_batch(self, clips: list[np.ndarray]) -> list[str]:
        inputs = self.processor(
            text=[self.prompt_text] * len(clips),
            audio=clips,
            sampling_rate=self.sample_rate,
            return_tensors="pt",
            padding=True,
        )
        parameter = next(self.model.parameters())
        inputs = inputs.to(parameter.device, parameter.dtype)  # casts float tensors only
        output = self.model.generate(
            **inputs,
            max_new_tokens=self.max_new_tokens,
            do_sample=False,
            num_beams=1,
            pad_token_id=self.processor.tokenizer.pad_token_id,
        )
        new_tokens = output[:, inputs["input_ids"].shape[1] :]  # the answer, not the prompt
        texts = self.processor.batch_decode(new_tokens, skip_special_tokens=True)
        return [text.strip() for text in texts]

    def caption(self, waveforms: Sequence[np.ndarray], sample_rate: int) -> list[str]:
        _check_batch(waveforms)
        clips = []
        for index, waveform in enumerate(waveforms):
            audio = np.asarray(waveform, dtype=np.float32)
            if audio.ndim != 1 or audio.size == 0:
                raise ValueError(f"clip {index}: expected a non-empty mono clip (T,)")
            clips.append(resample(audio, sample_rate, self.sample_rate))
        captions: list[str] = []
        for chunk in batches(clips, self.batch_size):
            captions.extend(self._caption_batch(list(chunk)))
        return captions


def load_transformers_captioner(
    path: str | None, key: str, captions: CaptionParams
) -> TransformersCaptioner:
    """Processor + model from one local directory; the model class comes from its config.

    `AutoModelForSeq2SeqLM` is transformers 5's audio-and-text-to-text mapping: it resolves
    Qwen2-Audio, Audio Flamingo 3 and Music Flamingo to their `*ForConditionalGeneration`.
    `dtype="auto"` keeps the checkpoint's precision (bf16 for the 7B models); the model is
    placed on the GPU when there is one (paper scale), else stays on the CPU.
    """
    import transformers

    what = "audio-language model directory (model + processor save_pretrained)"
    directory = require_path(path, key, what)
    require_path(directory / "config.json", key, what)
    processor = transformers.AutoProcessor.from_pretrained(directory, local_files_only=True)
    model = transformers.AutoModelForSeq2SeqLM.from_pretrained(
        directory, local_files_only=True, use_safetensors=True, dtype="auto"
    )
    if torch.cuda.is_available():
        model = model.to("cuda")
    return TransformersCaptioner(
        model, processor, captions.llm_max_new_tokens, captions.batch_size, CAPTION_PROMPT
    )


# --------------------------------------------------------------------------- registry
@CAPTIONERS.register("embedded")
def _embedded(choice: BackendChoice, key: str) -> CaptionerLoader:
    if choice.path is not None:
        raise ValueError(
            f"params `{key}` = {choice.path!r}: the embedded captioner has no checkpoint (it "
            "tags with `backends.clap`); set it to null"
        )
    return lambda clap, captions: EmbeddedCaptioner(
        clap, captions.captioner_instruments, captions.batch_size
    )


@CAPTIONERS.register("transformers")
def _transformers(choice: BackendChoice, key: str) -> CaptionerLoader:
    require_path(choice.path, key, "audio-language model directory (save_pretrained)")
    return lambda clap, captions: load_transformers_captioner(choice.path, key, captions)


def load_captioner(
    choice: BackendChoice, clap: ClapBackend, captions: CaptionParams
) -> CaptionerBackend:
    """The captioner `backends.captioner` selects, built with the stage's CLAP and params."""
    return CAPTIONERS.load(choice)(clap, captions)


def embedded_vocabulary_texts() -> list[str]:
    """Everything the embedded captioner can write: its sentence templates (slots removed)
    and the words it fills them with. Its health check measures how much of a dataset's
    own caption vocabulary this covers (tasks/common/health.py)."""
    templates = [re.sub(r"\{[^}]*\}", " ", template) for template in SENTENCE_TEMPLATES]
    instruments = [INSTRUMENT_WORDS[name][0] for name in INSTRUMENT_NAMES]
    return [*templates, *GENRE_NAMES, *MOOD_NAMES, *TEMPO_BANDS, *instruments]
