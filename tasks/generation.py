"""Text-to-latent-to-audio with a trained backbone: conditions, guided ODE sampling, decoding,
CLAP scoring and QA-MDT's best-of-n reranking (REFERENCE.md §C.4, off by default)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from models.fluxaudio import FluxAudio
from models.sampling import Condition, ConditionalVelocity, guided, solve
from tasks.backends.base import ClapBackend, CodecBackend
from tasks.dataset import LatentDataset
from tasks.params import QualityParams, SampleParams


def velocity_of(backbone: FluxAudio) -> ConditionalVelocity:
    def velocity(x: torch.Tensor, t: torch.Tensor, condition: Condition) -> torch.Tensor:
        level = condition.get("quality_level")
        return backbone(x, t, condition["text"], condition["clap_text"], level).velocity

    return velocity


def quality_levels(quality: QualityParams, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Paper 003 eq. (7): the requested level for the conditional branch; the unconditional
    branch uses `quality.unconditional_level` when set, else the same level."""
    conditional = quality.inference_level
    unconditional = quality.unconditional_level or conditional
    return (
        torch.full((batch,), conditional, dtype=torch.int64),
        torch.full((batch,), unconditional, dtype=torch.int64),
    )


def cached_conditions(
    dataset: LatentDataset, rows: Sequence[int], quality: QualityParams, with_quality: bool
) -> tuple[Condition, Condition, list[str]]:
    """(condition, null condition, text ids) for dataset rows, from the cached encoder outputs
    of each row's first caption variant (the inference caption when fine-tuning)."""
    text_ids = [int(dataset.text_ids[row, 0]) for row in rows]
    empty = [dataset.empty_text_id] * len(rows)

    def encoded(ids: list[int]) -> Condition:
        return {
            "text": dataset.text_table.get("sequence", ids).float(),
            "clap_text": dataset.text_table.get("clap_text", ids).float(),
        }

    condition, null_condition = encoded(text_ids), encoded(empty)
    if with_quality:
        condition["quality_level"], null_condition["quality_level"] = quality_levels(
            quality, len(rows)
        )
    return condition, null_condition, text_ids


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
    per prompt and the best by CLAP score is kept (QA-MDT's inference, REFERENCE.md §C.4)."""
    if sample.best_of > 1 and clap is None:
        raise ValueError("sample.best_of > 1 needs a CLAP backend (backends.clap)")
    best_audio, best_score = None, None
    for _ in range(sample.best_of):
        latents = generate_latents(backbone, condition, null_condition, frames, sample, generator)
        audio = decode(codec, latents)
        if clap is None:
            return audio, None
        score = clap_scores(clap, audio, codec.sample_rate, prompts)
        if best_audio is None:
            best_audio, best_score = audio, score
            continue
        better = score > best_score
        best_audio[better], best_score[better] = audio[better], score[better]
    return best_audio, best_score
