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
