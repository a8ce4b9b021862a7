"""What the text encoder reads and how its output is stored: the one definition that the
`latents` stage (which caches encoder outputs), training (which reads them back) and
generation (which encodes free-text prompts the same way) share.
"""

from __future__ import annotations

import torch

# The caption fine-tuning reads: the LLM-rewritten inference-style one (paper 000 §II-B stage 2).
FINETUNE_COLUMN = "caption_inference"

# `latents.text_dtype` -> the storage dtype of cached encoder outputs; generation encodes
# prompts through the same dtype, because training saw the text through it.
TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def encoder_input(caption: str, prefix: object, use_prefix: bool) -> str:
    """Paper 003 §4.1 / docs/reference.md §C.3: the caption becomes f"{prefix}, {caption}"."""
    return f"{prefix}, {caption}" if use_prefix and isinstance(prefix, str) else caption
