"""Audio for an evaluation prompt set: seeded, chunked, at any requested quality level.

The noise of chunk c of seed s comes from a generator seeded by (seed, level, s, c), so a
rerun reproduces every clip, and the quality-level curve of paper 003 Fig. 3 uses the same
noise at every level (the level is the only thing that changes between its points).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from models.fluxaudio import FluxAudio
from tasks.backends.base import ClapBackend, CodecBackend
from tasks.common.generation import PromptEncoders, decode, generate_audio, prompt_conditions
from tasks.common.seeds import derived_seed
from tasks.params import Params


@dataclass(frozen=True)
class GeneratedSet:
    audio: np.ndarray  # [N, samples]
    prompt_index: np.ndarray  # [N]
    seed_index: np.ndarray  # [N]
    level: int | None  # the requested quality level (None: the model has no quality input)


def requested_level(backbone: FluxAudio, params: Params, level: int | None) -> int | None:
    """The level that reaches the model (token and/or prefix), or None where neither exists."""
    if backbone.quality_embedding is None and not params.quality.use_prefix:
        return None
    return params.quality.inference_level if level is None else level


def generate_set(
    backbone: FluxAudio,
    prompts: Sequence[str],
    *,
    encoders: PromptEncoders,
    codec: CodecBackend,
    clap: ClapBackend,
    params: Params,
    seeds: Sequence[int],
    level: int | None = None,
) -> GeneratedSet:
    """len(seeds) clips per prompt, seed-major; QA-MDT's best-of-n reranking by CLAP score
    applies when `sample.best_of` > 1 (docs/reference.md §C.4)."""
    level = requested_level(backbone, params, level)
    with_token = backbone.quality_embedding is not None
    frames = backbone.config.latent_seq_len
    batch = params.evaluate.batch_size
    reranker = clap if params.sample.best_of > 1 else None
    clips, prompt_index, seed_index = [], [], []
    for seed in seeds:
        for chunk, start in enumerate(range(0, len(prompts), batch)):
            part = list(prompts[start : start + batch])
            condition, null = prompt_conditions(part, encoders, params.quality, with_token, level)
            generator = torch.Generator().manual_seed(
                derived_seed(params.seed, level or 0, seed, chunk)
            )
            audio, _ = generate_audio(
                backbone,
                condition=condition,
                null_condition=null,
                prompts=part,
                frames=frames,
                sample=params.sample,
                codec=codec,
                clap=reranker,
                generator=generator,
            )
            clips.append(audio)
            prompt_index.append(np.arange(start, start + len(part)))
            seed_index.append(np.full(len(part), seed))
    return GeneratedSet(
        np.concatenate(clips).astype(np.float32),
        np.concatenate(prompt_index),
        np.concatenate(seed_index),
        level,
    )


def random_latent_set(
    backbone: FluxAudio, prompt_count: int, codec: CodecBackend, seed: int
) -> GeneratedSet:
    """The floor of every metric: decoded N(0, I) latents in the model's normalised space,
    one per prompt (the trivial baseline of the training stages' sample check)."""
    generator = torch.Generator().manual_seed(derived_seed(seed, 0, 10**6))
    noise = torch.randn(
        (prompt_count, backbone.config.latent_seq_len, backbone.config.latent_dim),
        generator=generator,
    )
    with torch.no_grad():
        audio = decode(codec, backbone.denormalise(noise))
    return GeneratedSet(
        audio.astype(np.float32), np.arange(prompt_count), np.zeros(prompt_count, int), None
    )
