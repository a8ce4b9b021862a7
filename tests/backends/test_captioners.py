"""tasks/backends/captioner.py: the `embedded` zero-shot captioner and `transformers`.

`embedded` is checked against `ConceptClap`, a CLAP double with a perfect text tower: a
prompt embeds to the one-hot of the vocabulary concept it names (longest surface word
wins, "<n> BPM" names its tempo band), and a clip embeds to a vector chosen by the test
(keyed by its first sample). The captioner must then recover exactly the concepts the
test put in. One test runs the real `EmbeddedClap` (random TinyClap + tiny BERT) for the
plumbing. `transformers` runs a tiny random Qwen2-Audio saved with save_pretrained.
"""

from __future__ import annotations

import itertools
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers

from models.scorers import MelConfig, TinyClap, TinyClapConfig
from tasks.backends.base import BackendUnavailable, CaptionerBackend, resample
from tasks.backends.captioner import (
    CAPTION_PROMPT,
    CAPTIONERS,
    GENRE_NAMES,
    INSTRUMENT_NAMES,
    MOOD_NAMES,
    SENTENCE_TEMPLATES,
    TEMPO_BANDS,
    EmbeddedCaptioner,
    Tags,
    TransformersCaptioner,
    class_embeddings,
    describe_tags,
    load_captioner,
    tempo_band_words,
)
from tasks.backends.embedded import EmbeddedClap
from tasks.backends.text_encoder import HfTextEncoder
from tasks.common.caption_text import mentions
from tasks.params import BackendChoice, CaptionParams, Params
from tasks.synthesis.vocabulary import GENRES, INSTRUMENT_WORDS, MOOD_WORDS, tempo_band
from tests.tiny_models import save_tiny_qwen2_audio, tiny_word_tokenizer

RATE = 16000
EMBEDDED = BackendChoice(name="embedded", path=None)

# --------------------------------------------------------------------------- the CLAP double
CONCEPTS: list[tuple[str, str]] = [
    *(("genre", name) for name in GENRE_NAMES),
    *(("mood", name) for name in MOOD_NAMES),
    *(("tempo", name) for name in TEMPO_BANDS),
    *(("instrument", name) for name in INSTRUMENT_NAMES),
]
SURFACE_WORDS: dict[tuple[str, str], tuple[str, ...]] = {
    **{("genre", g): (g, *GENRES[g].words) for g in GENRE_NAMES},
    **{("mood", m): MOOD_WORDS[m] for m in MOOD_NAMES},
    **{("tempo", b): (b,) for b in TEMPO_BANDS},
    **{("instrument", i): (i, *INSTRUMENT_WORDS[i]) for i in INSTRUMENT_NAMES},
}


def word_pattern(word: str) -> re.Pattern[str]:
    return re.compile(rf"\b{re.escape(word)}\b", re.IGNORECASE)


class ConceptClap:
    """A `ClapBackend` whose text tower names concepts perfectly (see the module docstring)."""

    sample_rate = RATE
    embedding_dim = len(CONCEPTS) + 1  # + a shared direction, so no text row is one-hot

    def __init__(self, clips: Sequence[np.ndarray]) -> None:
        self.clips = [np.asarray(c, dtype=np.float64) for c in clips]
        self.audio_batches: list[int] = []
        self.text_batches: list[int] = []
        self.prompts: list[str] = []

    def concept_of(self, prompt: str) -> int:
        bpm = re.search(r"(\d+) BPM", prompt)
        if bpm:
            return CONCEPTS.index(("tempo", tempo_band(int(bpm.group(1)))))
        matches = [
            (len(word), CONCEPTS.index(concept))
            for concept, words in SURFACE_WORDS.items()
            for word in words
            if word_pattern(word).search(prompt)
        ]
        assert matches, f"prompt names no vocabulary concept: {prompt!r}"
        return max(matches)[1]

    def embed_text(self, captions: Sequence[str]) -> np.ndarray:
        self.text_batches.append(len(captions))
        self.prompts.extend(captions)
        rows = np.zeros((len(captions), self.embedding_dim))
        for row, prompt in enumerate(captions):
            rows[row, self.concept_of(prompt)] = 1.0
        rows[:, -1] = 0.1
        return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)

    def embed_audio(self, waveforms: Sequence[np.ndarray], sample_rate: int) -> np.ndarray:
        assert sample_rate == RATE
        self.audio_batches.append(len(waveforms))
        rows = np.stack([self.clips[int(w[0])] for w in waveforms])
        return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def clip_vector(
    genre: str, mood: str, band: str, instruments: dict[str, float], noise: np.ndarray
) -> np.ndarray:
    """An audio embedding that 'sounds like' the given concepts (instrument weights < 1)."""
    vector = np.abs(noise) * 0.05  # every concept a little, so ties never decide
    vector[-1] = 0.0
    for concept in (("genre", genre), ("mood", mood), ("tempo", band)):
        vector[CONCEPTS.index(concept)] = 1.0
    for name, weight in instruments.items():
        vector[CONCEPTS.index(("instrument", name))] = weight
    return vector


def keyed_clips(count: int, seconds: float = 0.25) -> list[np.ndarray]:
    """Clip i starts with the sample value i (the double's key); one length for all."""
    clips = [np.zeros(round(seconds * RATE), dtype=np.float32) for _ in range(count)]
    for index, clip in enumerate(clips):
        clip[0] = index
    return clips


def captions_params(params: Params, **update: object) -> CaptionParams:
    return params.captions.model_copy(update=update)


@pytest.fixture(scope="module")
def scene() -> tuple[list[np.ndarray], list[Tags]]:
    """12 clips with known genre, mood, tempo band and instrument ranking."""
    rng = np.random.default_rng(0)
    vectors, truth = [], []
    for index in range(12):
        genre = GENRE_NAMES[index % len(GENRE_NAMES)]
        mood = MOOD_NAMES[(3 * index) % len(MOOD_NAMES)]
        band = TEMPO_BANDS[index % len(TEMPO_BANDS)]
        ranked = tuple(str(n) for n in rng.choice(INSTRUMENT_NAMES, size=4, replace=False))
        weights = dict(zip(ranked, (0.9, 0.8, 0.7, 0.6), strict=True))
        vectors.append(clip_vector(genre, mood, band, weights, rng.normal(size=len(CONCEPTS) + 1)))
        empty = np.zeros(0, dtype=np.float32)
        truth.append(Tags(genre, mood, band, ranked, empty, empty, empty, empty))
    return vectors, truth


def embedded_captioner(
    tiny_params: Params, vectors: list[np.ndarray], **update: object
) -> tuple[EmbeddedCaptioner, ConceptClap]:
    clap = ConceptClap(vectors)
    captioner = load_captioner(EMBEDDED, clap, captions_params(tiny_params, **update))
    assert isinstance(captioner, EmbeddedCaptioner)
    return captioner, clap


# --------------------------------------------------------------------------- embedded
def test_tags_are_the_concepts_the_clap_scores_highest(tiny_params: Params, scene) -> None:
    vectors, truth = scene
    captioner, _ = embedded_captioner(tiny_params, vectors, captioner_instruments=3)
    assert isinstance(captioner, CaptionerBackend)
    tags = captioner.tag(keyed_clips(len(vectors)), RATE)
    for got, want in zip(tags, truth, strict=True):
        assert (got.genre, got.mood, got.tempo_band) == (want.genre, want.mood, want.tempo_band)
        assert got.instruments == want.instruments[:3]  # top-k, best first
        assert got.genre_scores.shape == (len(GENRE_NAMES),)
        assert got.mood_scores.shape == (len(MOOD_NAMES),)
        assert got.tempo_scores.shape == (len(TEMPO_BANDS),)
        assert got.instrument_scores.shape == (len(INSTRUMENT_NAMES),)
        assert GENRE_NAMES[int(got.genre_scores.argmax())] == got.genre
        assert not got.genre_scores.flags.writeable  # frozen tags, frozen scores


@pytest.mark.parametrize("count", [1, 2, 4])
def test_instrument_count_follows_the_params(tiny_params: Params, scene, count: int) -> None:
    vectors, truth = scene
    captioner, _ = embedded_captioner(tiny_params, vectors, captioner_instruments=count)
    tags = captioner.tag(keyed_clips(len(vectors)), RATE)
    assert [t.instruments for t in tags] == [w.instruments[:count] for w in truth]
    assert all(
        f" {t.instruments[-1]}" in c
        for t, c in zip(tags, captioner.caption(keyed_clips(len(vectors)), RATE), strict=True)
    )


def test_too_many_instruments_are_refused(tiny_params: Params) -> None:
    with pytest.raises(ValueError, match="captioner_instruments"):
        embedded_captioner(tiny_params, [], captioner_instruments=len(INSTRUMENT_NAMES) + 1)


def test_caption_names_the_tags_in_canonical_words_only(tiny_params: Params, scene) -> None:
    vectors, _ = scene
    captioner, _ = embedded_captioner(tiny_params, vectors, captioner_instruments=3)
    clips = keyed_clips(len(vectors))
    for tags, caption in zip(
        captioner.tag(clips, RATE), captioner.caption(clips, RATE), strict=True
    ):
        # exactly the tags, in words the caption parser (and the rewriter) recognise
        named = mentions(caption)
        assert named.genres == {tags.genre} and named.moods == {tags.mood}, caption
        assert named.instruments == set(tags.instruments), caption
        assert tags.tempo_band in caption
        assert caption[0].isupper() and caption.endswith(".")


def test_captions_are_deterministic_and_their_openings_vary() -> None:
    empty = np.zeros(0, dtype=np.float32)
    combinations = itertools.product(
        GENRE_NAMES, MOOD_NAMES, TEMPO_BANDS, [("piano",), ("drums", "strings", "flute")]
    )
    tags = [Tags(g, m, b, i, empty, empty, empty, empty) for g, m, b, i in combinations]
    captions = [describe_tags(t) for t in tags]
    assert captions == [describe_tags(t) for t in tags]
    openings = Counter(" ".join(c.split()[:2]) for c in captions)
    assert len(openings) >= len(SENTENCE_TEMPLATES)
    assert max(openings.values()) < 0.3 * len(captions)
    assert len(set(captions)) == len(captions)  # different tags, different sentences


def test_batching_gives_the_result_of_one_call(tiny_params: Params, scene) -> None:
    vectors, _ = scene
    clips = keyed_clips(len(vectors))
    small, small_clap = embedded_captioner(tiny_params, vectors, batch_size=5)
    whole, whole_clap = embedded_captioner(tiny_params, vectors, batch_size=64)
    assert small_clap.audio_batches == [] and max(small_clap.text_batches) <= 5
    small_tags, whole_tags = small.tag(clips, RATE), whole.tag(clips, RATE)
    assert small_clap.audio_batches == [5, 5, 2] and whole_clap.audio_batches == [12]
    assert small_tags == whole_tags
    for a, b in zip(small_tags, whole_tags, strict=True):
        np.testing.assert_allclose(a.instrument_scores, b.instrument_scores, atol=1e-6)
    assert small.caption(clips, RATE) == whole.caption(clips, RATE)


def test_classes_are_computed_once_from_every_template_and_word(tiny_params: Params, scene) -> None:
    vectors, _ = scene
    captioner, clap = embedded_captioner(tiny_params, vectors)
    prompts_at_construction = len(clap.prompts)
    captioner.caption(keyed_clips(3), RATE)
    assert len(clap.prompts) == prompts_at_construction  # no text embedding per call
    bpm_phrases = [p for p in clap.prompts if re.search(r"\d+ BPM", p)]
    assert {tempo_band(int(re.search(r"(\d+) BPM", p).group(1))) for p in bpm_phrases} == set(
        TEMPO_BANDS
    )
    for name, words in INSTRUMENT_WORDS.items():
        assert all(any(w in p for p in clap.prompts) for w in words), name


def test_class_embedding_is_the_renormalised_mean_of_unit_prompts() -> None:
    clap = ConceptClap([])
    words = {"calm": ("calm", "serene"), "dark": ("dark",)}
    templates = ("{} music", "The mood is {}.")
    classes = class_embeddings(clap, words, templates, batch_size=3)
    assert classes.shape == (2, clap.embedding_dim)
    np.testing.assert_allclose(np.linalg.norm(classes, axis=1), 1.0, atol=1e-6)
    expected = clap.embed_text([t.format(w) for t in templates for w in words["calm"]]).mean(0)
    np.testing.assert_allclose(classes[0], expected / np.linalg.norm(expected), atol=1e-6)
    assert clap.text_batches[:2] == [3, 3]  # 6 prompts in batches of 3


def test_tempo_bands_are_named_by_the_vocabulary() -> None:
    bands = tempo_band_words()
    assert tuple(bands) == TEMPO_BANDS == ("slow", "medium", "fast")
    for band, phrases in bands.items():
        assert all(tempo_band(int(p.split()[0])) == band for p in phrases)


def test_real_embedded_clap_tower_runs_through_the_captioner(tiny_params: Params) -> None:
    """Random TinyClap + tiny BERT via `EmbeddedClap`: the scores are the CLAP's cosines."""
    words = sorted({w for ws in SURFACE_WORDS.values() for p in ws for w in p.split()})
    tokenizer = tiny_word_tokenizer(words)
    torch.manual_seed(0)
    bert = transformers.BertModel(
        transformers.BertConfig(
            vocab_size=len(tokenizer),
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
            max_position_embeddings=80,
        )
    )
    mel = MelConfig(sample_rate=RATE, n_mels=16, frame_rate=25)
    clap = EmbeddedClap(
        TinyClap(TinyClapConfig(mel, channels=8, embed_dim=8, text_input_dim=16)),
        HfTextEncoder(bert, tokenizer, max_length=77),
    )
    captioner = load_captioner(EMBEDDED, clap, captions_params(tiny_params, batch_size=64))
    rng = np.random.default_rng(0)
    clips = [rng.normal(scale=0.1, size=RATE // 2).astype(np.float32) for _ in range(3)]
    tags = captioner.tag(clips, RATE)
    audio = clap.embed_audio(clips, RATE)
    np.testing.assert_allclose(
        np.stack([t.genre_scores for t in tags]),
        audio @ captioner.genre_classes.T,
        atol=1e-5,
    )
    captions = captioner.caption(clips, RATE)
    assert len(captions) == 3 and all(tags[i].genre in captions[i] for i in range(3))


def test_embedded_refuses_a_checkpoint_path(tiny_params: Params) -> None:
    choice = BackendChoice(name="embedded", path="somewhere")
    with pytest.raises(ValueError, match=r"backends\.captioner\.path"):
        load_captioner(choice, ConceptClap([]), tiny_params.captions)


def test_unknown_captioner_lists_the_known_names(tiny_params: Params) -> None:
    assert {"embedded", "transformers"} <= set(CAPTIONERS.names)
    with pytest.raises(ValueError, match=r"backends\.captioner\.name.*embedded, transformers"):
        choice = BackendChoice(name="lp-musiccaps", path=None)
        load_captioner(choice, ConceptClap([]), tiny_params.captions)


# --------------------------------------------------------------------------- transformers
@pytest.fixture(scope="module")
def qwen2_audio_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_qwen2_audio(tmp_path_factory.mktemp("qwen2-audio-tiny"))


@pytest.fixture(scope="module")
def qwen2_captioner(qwen2_audio_dir: Path, tiny_params: Params) -> TransformersCaptioner:
    choice = BackendChoice(name="transformers", path=str(qwen2_audio_dir))
    captions = captions_params(tiny_params, batch_size=2, llm_max_new_tokens=6)
    captioner = load_captioner(choice, ConceptClap([]), captions)
    assert isinstance(captioner, TransformersCaptioner)
    return captioner


def noise_clips(count: int, seconds: float, rate: int = RATE) -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    return [
        rng.normal(scale=0.1, size=round(seconds * rate)).astype(np.float32) for _ in range(count)
    ]


def test_qwen2_audio_loads_through_the_auto_classes(qwen2_captioner: TransformersCaptioner) -> None:
    assert type(qwen2_captioner.model).__name__ == "Qwen2AudioForConditionalGeneration"
    assert qwen2_captioner.sample_rate == 16000
    assert CAPTION_PROMPT in qwen2_captioner.prompt_text
    assert "<|AUDIO|>" in qwen2_captioner.prompt_text
    assert qwen2_captioner.prompt_text.endswith("<|im_start|>assistant\n")  # answer follows


def test_qwen2_audio_captions_one_string_per_clip(
    qwen2_captioner: TransformersCaptioner, monkeypatch: pytest.MonkeyPatch
) -> None:
    generated: list[tuple[int, int]] = []
    generate = qwen2_captioner.model.generate

    def recording_generate(**inputs):
        output = generate(**inputs)
        assert inputs["max_new_tokens"] == 6 and inputs["do_sample"] is False
        generated.append((output.shape[0], output.shape[1] - inputs["input_ids"].shape[1]))
        return output

    monkeypatch.setattr(qwen2_captioner.model, "generate", recording_generate)
    clips = noise_clips(3, seconds=1.0)
    captions = qwen2_captioner.caption(clips, RATE)
    assert len(captions) == 3 and all(isinstance(c, str) for c in captions)
    assert [batch for batch, _ in generated] == [2, 1]  # captions.batch_size = 2
    assert all(0 < new <= 6 for _, new in generated)
    assert all(c == c.strip() and CAPTION_PROMPT not in c for c in captions)
    assert qwen2_captioner.caption(clips, RATE) == captions  # greedy: deterministic


def test_qwen2_audio_hears_the_audio_and_pads_batches_on_the_left(
    qwen2_captioner: TransformersCaptioner,
) -> None:
    """Clips of different lengths get different audio-token counts, so a batch is padded:
    on the right, generation would continue after pad tokens and the strings would change."""
    rng = np.random.default_rng(2)
    clips = [rng.normal(scale=0.1, size=n).astype(np.float32) for n in (16000, 8000, 30000)]
    one_by_one = [qwen2_captioner.caption([clip], RATE)[0] for clip in clips]
    assert len(set(one_by_one)) == 3  # the audio reaches the language model
    assert qwen2_captioner.caption(clips, RATE) == one_by_one  # batches of 2, ragged


def test_qwen2_audio_resamples_to_the_feature_extractor_rate(
    qwen2_captioner: TransformersCaptioner,
) -> None:
    clips_8k = noise_clips(2, seconds=1.0, rate=8000)
    at_16k = [resample(c, 8000, 16000) for c in clips_8k]
    assert qwen2_captioner.caption(clips_8k, 8000) == qwen2_captioner.caption(at_16k, RATE)


def test_transformers_missing_path_names_the_key(tiny_params: Params, tmp_path: Path) -> None:
    for path in (None, str(tmp_path / "absent")):
        choice = BackendChoice(name="transformers", path=path)
        with pytest.raises(BackendUnavailable, match=r"backends\.captioner\.path"):
            load_captioner(choice, ConceptClap([]), tiny_params.captions)
    with pytest.raises(BackendUnavailable, match=r"backends\.captioner\.path"):
        load_captioner(
            BackendChoice(name="transformers", path=str(tmp_path)),  # exists, no config.json
            ConceptClap([]),
            tiny_params.captions,
        )
