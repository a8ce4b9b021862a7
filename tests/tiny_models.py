"""Tiny random stand-ins for pretrained checkpoints, written with each library's own classes.

Each helper builds a model from its library's config class with random weights and saves
it the way a real checkpoint is stored (save_pretrained / torch.save), so that a backend
loads it through exactly the code path a downloaded checkpoint takes. CPU only, offline.
"""

from __future__ import annotations

from pathlib import Path

import torch
import transformers
from tokenizers import Tokenizer, models, pre_tokenizers, processors

ROBERTA_SPECIAL = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}


def byte_level_alphabet() -> list[str]:
    """GPT-2 / RoBERTa's byte -> printable unicode mapping (256 symbols)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += range(ord("®"), ord("ÿ") + 1)
    symbols, extra = [], 0
    for byte in range(256):
        if byte in printable:
            symbols.append(chr(byte))
        else:
            symbols.append(chr(256 + extra))
            extra += 1
    return symbols


def tiny_roberta_tokenizer() -> transformers.RobertaTokenizerFast:
    """A byte-level BPE tokenizer in roberta-base's format with a 264-entry vocabulary."""
    vocab = dict(ROBERTA_SPECIAL)
    for symbol in [*byte_level_alphabet(), "Ġa", "Ġd", "in", "<mask>"]:
        vocab.setdefault(symbol, len(vocab))
    return transformers.RobertaTokenizerFast(
        vocab=vocab, merges=[("Ġ", "a"), ("Ġ", "d"), ("i", "n")]
    )


def save_tiny_roberta(directory: Path, seed: int = 0) -> Path:
    """A save_pretrained roberta-base stand-in (model + tokenizer), hidden size 768.

    768 because LAION-CLAP's text projection hard-codes `nn.Linear(768, 512)`.
    """
    tokenizer = tiny_roberta_tokenizer()
    tokenizer.save_pretrained(directory)
    config = transformers.RobertaConfig(
        vocab_size=len(tokenizer),
        hidden_size=768,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=80,  # 77 tokens + RoBERTa's padding_idx offset of 2
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
    )
    torch.manual_seed(seed)
    transformers.RobertaModel(config).save_pretrained(directory)
    return directory


def tiny_word_tokenizer(words: list[str]) -> transformers.PreTrainedTokenizerFast:
    """A whitespace WordLevel tokenizer in T5's conventions: <pad>=0, </s>=1 appended, <unk>=2."""
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    for word in words:
        vocab.setdefault(word, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(
        single="$A </s>", special_tokens=[("</s>", 1)]
    )
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )


# ChatML, the template Qwen2-Instruct ships: what a pipeline applies to chat messages.
CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CHAT_SPECIAL = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")


def tiny_chat_tokenizer() -> transformers.PreTrainedTokenizerFast:
    """A byte-level tokenizer (any text round-trips, 259 entries) with a ChatML template."""
    from tokenizers import decoders

    vocab = {token: index for index, token in enumerate(CHAT_SPECIAL)}
    for symbol in byte_level_alphabet():
        vocab.setdefault(symbol, len(vocab))
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=list(CHAT_SPECIAL[1:]),
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def save_tiny_chat_lm(directory: Path, seed: int = 0) -> Path:
    """A save_pretrained instruction-LLM stand-in: random 1-layer Qwen2 (hidden 16) + ChatML."""
    tokenizer = tiny_chat_tokenizer()
    tokenizer.save_pretrained(directory)
    config = transformers.Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=8192,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )
    torch.manual_seed(seed)
    transformers.Qwen2ForCausalLM(config).save_pretrained(directory)
    return directory


QWEN2_AUDIO_SPECIAL = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|AUDIO|>",
    "<|audio_bos|>",
    "<|audio_eos|>",
)


def tiny_qwen2_tokenizer() -> transformers.Qwen2Tokenizer:
    """Qwen2's byte-level BPE with no merges (262 tokens) and Qwen2-Audio's special tokens."""
    vocab: dict[str, int] = {}
    for symbol in [*QWEN2_AUDIO_SPECIAL, *byte_level_alphabet()]:
        vocab.setdefault(symbol, len(vocab))
    tokenizer = transformers.Qwen2Tokenizer(vocab=vocab, merges=[])
    tokenizer.add_special_tokens({"additional_special_tokens": list(QWEN2_AUDIO_SPECIAL[1:])})
    return tokenizer


def save_tiny_qwen2_audio(directory: Path, seed: int = 0, chunk_seconds: int = 2) -> Path:
    """A save_pretrained Qwen2-Audio stand-in: model + `Qwen2AudioProcessor`, 16 kHz.

    The Whisper feature extractor pads every clip to `chunk_seconds` (30 s in the real
    one); the encoder's `max_source_positions` is half those mel frames, as in Qwen2-Audio
    (3000 frames -> 1500 positions). The processor keeps its Qwen2-Audio chat template.
    Weights are drawn with std 0.2 instead of 0.02: at 0.02 the random LM's greedy text
    ignores the audio (every clip gets the same string); at 0.2 different clips differ.
    """
    tokenizer = tiny_qwen2_tokenizer()
    feature_extractor = transformers.WhisperFeatureExtractor(
        feature_size=16, sampling_rate=16000, hop_length=160, chunk_length=chunk_seconds
    )
    processor = transformers.Qwen2AudioProcessor(
        feature_extractor=feature_extractor, tokenizer=tokenizer
    )
    config = transformers.Qwen2AudioConfig(
        audio_config={
            "num_mel_bins": 16,
            "encoder_layers": 1,
            "encoder_attention_heads": 2,
            "encoder_ffn_dim": 32,
            "d_model": 16,
            "max_source_positions": feature_extractor.nb_max_frames // 2,
        },
        text_config={
            "model_type": "qwen2",
            "vocab_size": len(tokenizer),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "max_position_embeddings": 1024,
            "eos_token_id": tokenizer.convert_tokens_to_ids("<|im_end|>"),
            "pad_token_id": tokenizer.pad_token_id,
        },
        audio_token_index=processor.audio_token_id,
        initializer_range=0.2,
    )
    config.text_config.initializer_range = config.audio_config.initializer_range = 0.2
    torch.manual_seed(seed)
    transformers.Qwen2AudioForConditionalGeneration(config).save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory
