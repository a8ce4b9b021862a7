"""Generation during training: the sample check after a stage (CLAP score of generations for
val captions against decoded random and true latents) and the WAVs logged at each
evaluation, both from the latent store's cached text encodings.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import mlflow
import numpy as np
import soundfile as sf
import torch

from models.objective import FlowMatchingModel
from models.sampling import Condition
from tasks.common.generation import clap_scores, decode, generate_audio, quality_levels
from tasks.latents.dataset import LatentDataset
from tasks.params import Params, QualityParams


def cached_conditions(
    dataset: LatentDataset, rows: Sequence[int], quality: QualityParams, with_quality: bool
) -> tuple[Condition, Condition, list[int]]:
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


def audio_frames(val_set: LatentDataset) -> int:
    return val_set[0]["latent"].shape[0]


def generate_for_val(
    backbone, val_set: LatentDataset, count: int, params: Params, codec, generator
) -> tuple[np.ndarray, list[str]]:
    """Audio for the first `count` val rows from their cached captions (quality-aware
    guidance when the model has a quality token), with the captions as prompts."""
    rows = list(range(count))
    with_quality = backbone.quality_embedding is not None
    condition, null, text_ids = cached_conditions(val_set, rows, params.quality, with_quality)
    prompts = val_set.text_table_captions(text_ids)
    audio, _ = generate_audio(
        backbone,
        condition=condition,
        null_condition=null,
        prompts=prompts,
        frames=audio_frames(val_set),
        sample=params.sample,
        codec=codec,
        clap=None,
        generator=generator,
    )
    return audio, prompts


def sample_check(
    model: FlowMatchingModel, val_set: LatentDataset, params: Params, codec, clap
) -> dict[str, float]:
    """Paper-free sanity figure: CLAP score of generations for held-out val captions against
    the same prompts' decoded random latents (the trivial baseline) and decoded true latents
    (the codec's ceiling)."""
    count = min(params.train.sample_check_prompts, len(val_set))
    if count == 0:
        return {}
    backbone = model.backbone
    generator = torch.Generator().manual_seed(params.seed)
    audio, prompts = generate_for_val(backbone, val_set, count, params, codec, generator)
    frames = audio_frames(val_set)
    random_latents = backbone.denormalise(
        torch.randn((count, frames, backbone.config.latent_dim), generator=generator)
    )
    reference = torch.stack([val_set[row]["latent"] for row in range(count)])
    rate = codec.sample_rate
    return {
        "clap_score_generated": float(clap_scores(clap, audio, rate, prompts).mean()),
        "clap_score_random_latents": float(
            clap_scores(clap, decode(codec, random_latents), rate, prompts).mean()
        ),
        "clap_score_reference": float(
            clap_scores(clap, decode(codec, reference), rate, prompts).mean()
        ),
        "prompts": count,
    }


def audio_logger(val_set: LatentDataset, params: Params, codec, stage: str, reports: Path):
    """Evaluation hook: the first `train.log_samples` val prompts as WAV + text in MLflow."""
    count = min(params.train.log_samples, len(val_set))

    def log_samples(step: int, model: FlowMatchingModel) -> None:
        if count == 0:
            return
        generator = torch.Generator().manual_seed(params.seed)
        audio, prompts = generate_for_val(model.backbone, val_set, count, params, codec, generator)
        folder = reports / stage / "samples"
        folder.mkdir(parents=True, exist_ok=True)
        for row, (clip, prompt) in enumerate(zip(audio, prompts, strict=True)):
            path = folder / f"step{step:07d}_{row}.wav"
            sf.write(path, clip, codec.sample_rate)
            mlflow.log_artifact(str(path), artifact_path=f"samples/step{step:07d}")
            mlflow.log_text(prompt, f"samples/step{step:07d}/{row}.txt")

    return log_samples
