"""Text-to-latent-to-audio with a trained backbone: conditions, guided ODE sampling, decoding,
CLAP scoring and QA-MDT's best-of-n reranking (docs/reference.md §C.4, off by default)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from models.fluxaudio import FluxAudio
from models.sampling import Condition, ConditionalVelocity, guided, solve
from tasks.backends.base import ClapBackend, CodecBackend, TextEncoderBackend
from tasks.common.quality_levels import level_centre, quality_prefix
from tasks.common.text_conditioning import encoder_input
from tasks.params import QualityParams, SampleParams


def velocity_of(backbone: FluxAudio, share_input: bool = True) -> ConditionalVelocity:
    """The backbone as a conditional velocity (`models.sampling.ConditionalVelocity`).

    `share_input=False` repeats x and t to the conditions' batch before the call, so the
    audio stem runs once per condition set, as the sampler did before it was shared: the
    baseline of benchmarks/training_throughput.py and of its equality test."""

    def velocity(x: torch.Tensor, t: torch.Tensor, condition: Condition) -> torch.Tensor:
        level = condition.get("quality_level")
        if not share_input:
            sets = condition["text"].shape[0] // x.shape[0]
            x, t = x.repeat(sets, 1, 1), t.repeat(sets)
        return backbone(x, t, condition["text"], condition["clap_text"], level).velocity

    return velocity


def quality_levels(
    quality: QualityParams, batch: int, level: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Paper 003 eq. (7): the requested level (default `quality.inference_level`) for the
    conditional branch; the unconditional branch uses `quality.unconditional_level` when set,
    else the same level."""
    conditional = quality.inference_level if level is None else level
    unconditional = quality.unconditional_level or conditional
    return (
        torch.full((batch,), conditional, dtype=torch.int64),
        torch.full((batch,), unconditional, dtype=torch.int64),
    )


def level_prefix(quality: QualityParams, level: int) -> str:
    """The text prefix a requested quality level implies: that of the level's bin centre
    (paper 003 §4.1). Both bins are in std units around one mean, so the mapping does not
    depend on the p-MOS moments: level 5 -> "high quality", as at paper 003's inference."""
    centre = level_centre(level, 0.0, 1.0, quality.level_edges_std)
    prefix = quality_prefix(
        np.array([centre]), 0.0, 1.0, quality.prefix_edges_std, quality.prefixes
    )
    return str(prefix[0])


@dataclass(frozen=True)
class PromptEncoders:
    """What turns a free-text prompt into the backbone's condition (as the latents stage)."""

    text: TextEncoderBackend
    clap: ClapBackend
    text_dtype: torch.dtype  # the cache's storage dtype: training saw the text through it


def encode_texts(encoders: PromptEncoders, texts: Sequence[str], captions: Sequence[str]):
    sequence, _ = encoders.text.encode(list(texts))
    stored = torch.from_numpy(sequence).to(encoders.text_dtype).float()
    clap_text = torch.from_numpy(np.asarray(encoders.clap.embed_text(list(captions)), np.float32))
    return {"text": stored, "clap_text": clap_text}


def prompt_conditions(
    prompts: Sequence[str],
    encoders: PromptEncoders,
    quality: QualityParams,
    with_quality_token: bool,
    level: int | None = None,
) -> tuple[Condition, Condition]:
    """(condition, null condition) for free-text prompts at a requested quality level.

    As the latents stage built the training text: the encoder reads "{prefix}, {prompt}" when
    `quality.use_prefix`, the CLAP text embedding is the prompt's alone; the null branch is
    the empty text of classifier-free guidance.
    """
    level = quality.inference_level if level is None else level
    prefix = level_prefix(quality, level) if quality.use_prefix else None
    texts = [encoder_input(prompt, prefix, quality.use_prefix) for prompt in prompts]
    condition = encode_texts(encoders, texts, prompts)
    null_condition = encode_texts(encoders, [""] * len(prompts), [""] * len(prompts))
    if with_quality_token:
        condition["quality_level"], null_condition["quality_level"] = quality_levels(
            quality, len(prompts), level
        )
    return condition, null_condition


@torch.no_grad()
def generate_latents(
    backbone: FluxAudio,
    condition: Condition,
    null_condition: Condition,
    frames: int,
    sample: SampleParams,
    generator: torch.Generator,
) -> torch.Tensor:
    """Noise at t = 1 -> guided ODE -> t = 0; returns raw (denormalised) latents [B, T, C]."""
    device = next(backbone.parameters()).device
    batch = condition["text"].shape[0]
    noise = torch.randn(
        (batch, frames, backbone.config.latent_dim), generator=generator, device=generator.device
    ).to(device)
    condition = {k: v.to(device) for k, v in condition.items()}
    null_condition = {k: v.to(device) for k, v in null_condition.items()}
    velocity = guided(velocity_of(backbone), condition, null_condition, sample.cfg_scale)
    return backbone.denormalise(solve(velocity, noise, sample.steps, sample.solver))


def decode(codec: CodecBackend, latents: torch.Tensor) -> np.ndarray:
    return codec.decode(latents.float().cpu().numpy())


def clap_scores(
    clap: ClapBackend, audio: np.ndarray, sample_rate: int, prompts: Sequence[str]
) -> np.ndarray:
    """Cosine of each clip's CLAP audio embedding with its prompt's text embedding."""
    audio_embedding = torch.from_numpy(clap.embed_audio(list(audio), sample_rate))
    text_embedding = torch.from_numpy(clap.embed_text(list(prompts)))
    return F.cosine_similarity(audio_embedding, text_embedding, dim=-1).numpy()


def generate_audio(
    backbone: FluxAudio,
    *,
    condition: Condition,
    null_condition: Condition,
    prompts: Sequence[str],
    frames: int,
    sample: SampleParams,
    codec: CodecBackend,
    clap: ClapBackend | None,
    generator: torch.Generator,
) -> tuple[np.ndarray, np.ndarray | None]:
    """(audio [B, samples], CLAP score [B] or None); with sample.best_of = n > 1, n candidates
    per prompt and the best by CLAP score is kept (QA-MDT's inference, docs/reference.md §C.4)."""
    if sample.best_of > 1 and clap is None:
        raise ValueError("sample.best_of > 1 needs a CLAP backend (backends.clap)")
    best: tuple[np.ndarray, np.ndarray] | None = None
    for _ in range(sample.best_of):
        latents = generate_latents(backbone, condition, null_condition, frames, sample, generator)
        audio = decode(codec, latents)
        if clap is None:
            return audio, None
        score = clap_scores(clap, audio, codec.sample_rate, prompts)
        if best is None:
            best = audio, score
            continue
        better = score > best[1]
        best[0][better], best[1][better] = audio[better], score[better]
    assert best is not None  # sample.best_of >= 1
    return best
