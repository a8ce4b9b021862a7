"""Rewriter backends: caption rewriting (paper 000 §II-B) and merging (paper 003 §4.3).

- `embedded`: the deterministic text functions of tasks/common/caption_text.py, no model;
- `transformers`: a local instruction-tuned chat LLM (`backends.rewriter.path`, a
  save_pretrained directory with a chat template) behind the LLM protocol of
  tasks/backends/caption_llm.py, greedy decoding so that a rerun writes the same captions.

A registry loader reads the checkpoint; `load_rewriter` then binds the `captions` params
section and the seed. A missing checkpoint raises BackendUnavailable naming the key.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from tasks.backends.base import (
    BackendUnavailable,
    Registry,
    RewriterBackend,
    Rewritten,
    require_package,
    require_path,
)
from tasks.backends.caption_llm import ChatModel, content_rng, merge_all, rewrite_all
from tasks.common.caption_text import concise_rewrite, embedded_merge
from tasks.params import BackendChoice, CaptionParams

RewriterFactory = Callable[[CaptionParams, int], RewriterBackend]
REWRITERS: Registry[RewriterFactory] = Registry("rewriter")


class EmbeddedRewriter:
    """Offline stand-in: keeps the vocabulary's genre / instruments / mood, drops the rest."""

    name = "embedded"

    def rewrite(self, captions: Sequence[str], examples: Sequence[str]) -> list[Rewritten]:
        # `examples` steer an LLM's style; the embedded templates have their own variety.
        return [Rewritten(concise_rewrite(c), self.name, None) for c in captions]

    def merge(self, originals: Sequence[str], generated: Sequence[str]) -> list[Rewritten]:
        return [
            Rewritten(embedded_merge(o, g), self.name, None)
            for o, g in zip(originals, generated, strict=True)
        ]


class LlmRewriter:
    """Any `ChatModel` behind the validated, retried, per-caption-fallback protocol."""

    def __init__(self, chat: ChatModel, settings: CaptionParams, seed: int) -> None:
        self.chat = chat
        self.settings = settings
        self.seed = seed
        self.name = chat.name

    def rewrite(self, captions: Sequence[str], examples: Sequence[str]) -> list[Rewritten]:
        rng = content_rng(self.seed, list(captions))
        return rewrite_all(captions, self.chat, examples, self.settings, rng)

    def merge(self, originals: Sequence[str], generated: Sequence[str]) -> list[Rewritten]:
        return merge_all(originals, generated, self.chat, self.settings)


class TransformersChat:
    """A transformers text-generation pipeline; the tokenizer's chat template formats."""

    name = "transformers"

    def __init__(self, pipeline: Any, max_new_tokens: int, batch_size: int) -> None:
        self.pipeline = pipeline
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size

    def reply(self, conversations: Sequence[list[dict[str, str]]]) -> list[str]:
        if not conversations:
            return []
        outputs = self.pipeline(
            [list(conversation) for conversation in conversations],
            max_new_tokens=self.max_new_tokens,
            do_sample=False,  # greedy: deterministic captions, reruns are no-ops
            return_full_text=False,
            batch_size=self.batch_size,
        )
        return [str(output[0]["generated_text"]) for output in outputs]


def load_text_generation(path: str | None, key: str) -> Any:
    """A local chat LLM as a text-generation pipeline, offline, on the GPU if there is one."""
    directory = require_path(path, key, "instruction LLM directory (save_pretrained)")
    require_package("transformers", key)
    import torch
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(directory, local_files_only=True)
    if getattr(tokenizer, "chat_template", None) is None:
        raise BackendUnavailable(
            f"params `{key}` = {str(directory)!r} has no chat template; it must be an "
            "instruction-tuned chat model"
        )
    tokenizer.padding_side = "left"  # decoder-only batches are padded on the left
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = transformers.AutoModelForCausalLM.from_pretrained(
        directory, local_files_only=True, use_safetensors=True, dtype="auto"
    )
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return transformers.pipeline(
        "text-generation", model=model.eval(), tokenizer=tokenizer, device=device
    )


@REWRITERS.register("embedded")
def _embedded(choice: BackendChoice, key: str) -> RewriterFactory:
    return lambda captions, seed: EmbeddedRewriter()


@REWRITERS.register("transformers")
def _transformers(choice: BackendChoice, key: str) -> RewriterFactory:
    pipeline = load_text_generation(choice.path, key)

    def bind(captions: CaptionParams, seed: int) -> RewriterBackend:
        # captions.batch_size: conversations per generation batch (one retry round at once)
        chat = TransformersChat(pipeline, captions.llm_max_new_tokens, captions.batch_size)
        return LlmRewriter(chat, captions, seed)

    return bind


def load_rewriter(choice: BackendChoice, captions: CaptionParams, seed: int) -> RewriterBackend:
    return REWRITERS.load(choice)(captions, seed)
