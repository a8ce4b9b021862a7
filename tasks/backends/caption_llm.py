"""The LLM protocol around any chat model: prompts, reply parsing, validation, retries.

Caption rewriting is paper 000 §II-B (its "Caption Rewriting Prompt", verbatim); caption
merging is paper 003 §4.3 step 3 (its merge prompt, verbatim). Captions travel as a JSON
array in the user message, so caption text is data, never part of the instructions; the
reply must be a JSON array of strings in the same order.

Everything that can go wrong with an LLM is caught here: an unparsable reply or a wrong
item count (`BadReply`), and items that break the prompt's rules (`check_rewrite`,
`check_merge`). A failing batch is retried split in halves, up to
`captions.rewrite_max_retries` times; what still fails falls back per caption to the
embedded rewriter / merge (tasks/common/caption_text.py) with the reason recorded in
`Rewritten.fallback`. Captions that read like instructions are never sent at all.
"""

from __future__ import annotations

import json
import re
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from tasks.backends.base import Rewritten
from tasks.common.caption_text import (
    concise_rewrite,
    embedded_merge,
    forbidden_terms,
    looks_like_instruction,
    mentions,
    split_sentences,
)
from tasks.params import CaptionParams

# Paper 000 §II-B, "Caption Rewriting Prompt", word for word; {examples} is filled per batch
# with few-shot demonstrations from the evaluation prompt distribution (its footnote).
REWRITE_PROMPT = """You are a music caption editor. Rewrite captions to include only:
1. Genre / style
2. Instrumentation (specific instruments)
3. Mood, theme, or atmosphere

REMOVE: tempo/BPM, keys, time signatures, chord progressions, structural arcs, \
production/engineering descriptions.

Write 1-2 natural flowing sentences. No bullet points. Vary the openings.
Match this style: {examples}

Respond ONLY with a JSON array of rewritten captions in the same order. No preamble or \
markdown."""

# Paper 003 §5.2, word for word. The quoted "generated caption" / "original tags" name the
# fields of each JSON object in the user message: the paper's wording stays intact while the
# captions stay out of the instruction. Pairs are batched like the rewrites, with paper
# 000's output protocol, so both tasks share one parser, one validation and one retry path.
MERGE_PROMPT = (
    'Merge this music caption "generated caption" with the ground truth tags "original '
    'tags", and do not add any imaginary elements.'
)
MERGE_PROTOCOL = (
    'Each item of the user\'s JSON array is one pair {"generated caption": ..., "original '
    'tags": ...}. Respond ONLY with a JSON array of merged captions in the same order. No '
    "preamble or markdown."
)
GENERATED_KEY, ORIGINAL_KEY = "generated caption", "original tags"

MAX_REWRITE_WORDS = 60  # a concise inference-style prompt is one or two sentences
MAX_GROWTH = 3  # a rewrite strips content: > 3x the input's words means it invented some
MIN_WORD_ALLOWANCE = 12  # room to turn a short tag list into a sentence
MAX_MERGE_WORDS = 120
MAX_SENTENCES = 2  # paper 000 §II-B: "Write 1-2 natural flowing sentences"
FALLBACK_BACKEND = "embedded"
INSTRUCTION_IN_CAPTION = "instruction_in_caption"


@runtime_checkable
class ChatModel(Protocol):
    """A chat LLM: one reply per conversation of {"role", "content"} messages."""

    name: str  # recorded as `Rewritten.backend` for the replies it produced

    def reply(self, conversations: Sequence[list[dict[str, str]]]) -> list[str]: ...


class BadReply(ValueError):
    """A reply that breaks the output protocol; `reason` is recorded on fallback."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# --------------------------------------------------------------------------- parsing
_THINKING = re.compile(r"<think>.*?</think>", re.DOTALL)


def _top_level_arrays(text: str) -> list[list[Any]]:
    """Every JSON array in `text` that is not inside another one, left to right."""
    decoder, arrays, position = json.JSONDecoder(), [], text.find("[")
    while position != -1:
        try:
            value, end = decoder.raw_decode(text, position)
        except json.JSONDecodeError:
            position = text.find("[", position + 1)
            continue
        arrays.append(value)
        position = text.find("[", end)
    return arrays


def parse_json_array(reply: str, expected: int) -> list[str]:
    """The reply's one JSON array of `expected` non-empty strings, else BadReply.

    Tolerant where the content is unambiguous: markdown fences, prose around the array and
    a reasoning model's <think> block are ignored. Rejected: no array, more than one
    top-level array, a wrong count, non-string or empty items.
    """
    text = _THINKING.sub("", reply)
    if "[" not in text:
        raise BadReply("no_json_array")
    arrays = _top_level_arrays(text)
    if not arrays:
        raise BadReply("invalid_json")
    if len(arrays) > 1:
        raise BadReply(f"ambiguous_reply: {len(arrays)} JSON arrays")
    (items,) = arrays
    if len(items) != expected:
        raise BadReply(f"wrong_count: expected {expected}, got {len(items)}")
    if not all(isinstance(item, str) for item in items):
        raise BadReply("non_string_item")
    if any(not item.strip() for item in items):
        raise BadReply("empty_item")
    return [item.strip() for item in items]


# --------------------------------------------------------------------------- validation
def _common_problem(output: str, max_words: int) -> str | None:
    words = len(output.split())
    if not output.strip():
        return "empty"
    if words > max_words:
        return f"too_long: {words} words > {max_words}"
    if looks_like_instruction(output):
        return "instruction_in_reply"
    if re.search(r"(?m)^\s*(?:[-*•]|\d+[.)])\s", output):
        return "bullet_points"  # paper 000 §II-B: "No bullet points"
    return None


def check_rewrite(caption: str, rewritten: str) -> str | None:
    """Why an LLM rewrite breaks paper 000 §II-B's prompt, or None if it is usable."""
    max_words = min(MAX_REWRITE_WORDS, max(MAX_GROWTH * len(caption.split()), MIN_WORD_ALLOWANCE))
    problem = _common_problem(rewritten, max_words)
    if problem:
        return problem
    sentences = len(split_sentences(rewritten))
    if sentences > MAX_SENTENCES:
        return f"too_many_sentences: {sentences}"
    terms = forbidden_terms(rewritten)
    if terms:
        return "forbidden_terms: " + ", ".join(terms)
    invented = mentions(rewritten).beyond(mentions(caption))
    if invented:  # a rewrite only removes: a new genre / instrument / mood is made up
        return "imaginary_elements: " + ", ".join(invented)
    return None


def check_merge(original: str, generated: str, merged: str) -> str | None:
    """Why an LLM merge breaks paper 003's "do not add any imaginary elements", or None."""
    problem = _common_problem(merged, MAX_MERGE_WORDS)
    if problem:
        return problem
    invented = mentions(merged).beyond(mentions(original).union(mentions(generated)))
    if invented:
        return "imaginary_elements: " + ", ".join(invented)
    return None


# --------------------------------------------------------------------------- conversations
def draw_examples(pool: Sequence[str], count: int, rng: np.random.Generator) -> list[str]:
    """`count` few-shot demonstrations drawn without replacement (paper 000 §II-B fn.)."""
    picks = rng.choice(len(pool), size=min(count, len(pool)), replace=False)
    return [pool[int(i)] for i in picks]


def rewrite_conversation(captions: Sequence[str], examples: Sequence[str]) -> list[dict[str, str]]:
    system = REWRITE_PROMPT.replace("{examples}", json.dumps(list(examples), ensure_ascii=False))
    user = json.dumps(list(captions), ensure_ascii=False)
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def merge_conversation(originals: Sequence[str], generated: Sequence[str]) -> list[dict[str, str]]:
    pairs = [{GENERATED_KEY: g, ORIGINAL_KEY: o} for o, g in zip(originals, generated, strict=True)]
    system = f"{MERGE_PROMPT}\n\n{MERGE_PROTOCOL}"
    user = json.dumps(pairs, ensure_ascii=False)
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


# --------------------------------------------------------------------------- retry engine
@dataclass(frozen=True)
class _Job:
    """What differs between rewriting and merging; items are addressed by index."""

    count: int
    conversation: Callable[[list[int]], list[dict[str, str]]]
    check: Callable[[int, str], str | None]
    fallback: Callable[[int], str]
    unsafe: Callable[[int], bool]


def _halves(indices: list[int]) -> list[list[int]]:
    if len(indices) == 1:
        return [indices]
    middle = (len(indices) + 1) // 2
    return [indices[:middle], indices[middle:]]


def _batches(indices: list[int], size: int) -> list[list[int]]:
    return [indices[start : start + size] for start in range(0, len(indices), size)]


def _outcomes(batch: list[int], reply: str, job: _Job) -> tuple[dict[int, str], dict[int, str]]:
    """(accepted outputs, failure reasons) of one batch's reply, by item index."""
    try:
        outputs = parse_json_array(reply, len(batch))
    except BadReply as error:
        return {}, dict.fromkeys(batch, error.reason)
    accepted, failed = {}, {}
    for index, output in zip(batch, outputs, strict=True):
        reason = job.check(index, output)
        if reason is None:
            accepted[index] = output
        else:
            failed[index] = reason
    return accepted, failed


def _run(job: _Job, chat: ChatModel, settings: CaptionParams) -> list[Rewritten]:
    """Batches of `rewrite_batch_size`; failures retried in halves; then per-item fallback.

    All pending batches of one retry round go to the model in one `reply` call, so a
    backend can run them as one generation batch.
    """
    results: dict[int, Rewritten] = {
        i: Rewritten(job.fallback(i), FALLBACK_BACKEND, INSTRUCTION_IN_CAPTION)
        for i in range(job.count)
        if job.unsafe(i)
    }
    safe = [i for i in range(job.count) if i not in results]
    pending = _batches(safe, settings.rewrite_batch_size)
    for attempt in range(settings.rewrite_max_retries + 1):
        if not pending:
            break
        replies = chat.reply([job.conversation(batch) for batch in pending])
        if len(replies) != len(pending):
            raise RuntimeError(f"{chat.name}: {len(replies)} replies to {len(pending)} prompts")
        retry: list[list[int]] = []
        for batch, reply in zip(pending, replies, strict=True):
            accepted, failed = _outcomes(batch, reply, job)
            results |= {i: Rewritten(text, chat.name, None) for i, text in accepted.items()}
            if failed and attempt < settings.rewrite_max_retries:
                retry += _halves(sorted(failed))
            else:
                results |= {
                    i: Rewritten(job.fallback(i), FALLBACK_BACKEND, reason)
                    for i, reason in failed.items()
                }
        pending = retry
    return [results[i] for i in range(job.count)]


def rewrite_all(
    captions: Sequence[str],
    chat: ChatModel,
    examples: Sequence[str],
    settings: CaptionParams,
    rng: np.random.Generator,
) -> list[Rewritten]:
    """Paper 000 §II-B rewriting of every caption; few-shot examples drawn per batch."""
    if not examples:
        raise ValueError("rewriting needs few-shot examples to fill the prompt's {examples}")
    captions = list(captions)
    job = _Job(
        count=len(captions),
        conversation=lambda batch: rewrite_conversation(
            [captions[i] for i in batch], draw_examples(examples, settings.rewrite_few_shot, rng)
        ),
        check=lambda i, output: check_rewrite(captions[i], output),
        fallback=lambda i: concise_rewrite(captions[i]),
        unsafe=lambda i: looks_like_instruction(captions[i]),
    )
    return _run(job, chat, settings)


def merge_all(
    originals: Sequence[str],
    generated: Sequence[str],
    chat: ChatModel,
    settings: CaptionParams,
) -> list[Rewritten]:
    """Paper 003 §4.3 step 3 merge of every (original, generated) pair."""
    originals, generated = list(originals), list(generated)
    if len(originals) != len(generated):
        raise ValueError(f"{len(originals)} originals but {len(generated)} generated captions")
    job = _Job(
        count=len(originals),
        conversation=lambda batch: merge_conversation(
            [originals[i] for i in batch], [generated[i] for i in batch]
        ),
        check=lambda i, output: check_merge(originals[i], generated[i], output),
        fallback=lambda i: embedded_merge(originals[i], generated[i]),
        unsafe=lambda i: (
            looks_like_instruction(originals[i]) or looks_like_instruction(generated[i])
        ),
    )
    return _run(job, chat, settings)


def content_rng(seed: int, texts: Sequence[str]) -> np.random.Generator:
    """A generator fixed by the seed and the captions: a call's few-shot draws do not
    depend on which calls came before it (crc32, stable across runs)."""
    return np.random.default_rng([seed, zlib.crc32("\x1f".join(texts).encode("utf-8"))])
