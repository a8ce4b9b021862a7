"""From params (and the latent cache's shapes) to the model and its objective."""

from __future__ import annotations

from typing import NamedTuple

import torch

from models.fluxaudio import FluxAudio, FluxAudioConfig
from models.objective import FlowMatchingModel, ObjectiveConfig, RepaTerm
from models.repa import ProjectionHead
from tasks.latents.dataset import LatentDataset
from tasks.params import ModelParams, QualityParams, TimestepParams


class CacheShapes(NamedTuple):
    """What the latent cache fixes about the model's inputs and REPA targets."""

    frames: int
    latent_dim: int
    text_tokens: int
    text_dim: int
    condition_dim: int  # CLAP text embedding (global condition)
    clap_dim: int  # CLAP audio embedding (REPA-CLAP target)
    teacher_dim: int  # frame-teacher features (REPA-MuQ target)


def cache_shapes(dataset: LatentDataset) -> CacheShapes:
    sample = dataset[0]
    frames, latent_dim = sample["latent"].shape
    text_tokens, text_dim = sample["text"].shape
    return CacheShapes(
        frames=frames,
        latent_dim=latent_dim,
        text_tokens=text_tokens,
        text_dim=text_dim,
        condition_dim=sample["clap_text"].shape[-1],
        clap_dim=sample["clap_target"].shape[-1],
        teacher_dim=sample["teacher_target"].shape[-1],
    )


def backbone_config(
    model: ModelParams, quality: QualityParams, shapes: CacheShapes
) -> FluxAudioConfig:
    """The backbone for these params on this cache; mismatches name their params key."""
    if model.latent_dim != shapes.latent_dim:
        raise ValueError(
            f"model.latent_dim is {model.latent_dim} but the latent cache has "
            f"{shapes.latent_dim} channels (backends.codec)"
        )
    if model.latent_seq_len < shapes.frames:
        raise ValueError(
            f"model.latent_seq_len ({model.latent_seq_len}) < {shapes.frames} cached frames"
        )
    if model.text_seq_len < shapes.text_tokens:
        raise ValueError(
            f"model.text_seq_len ({model.text_seq_len}) < {shapes.text_tokens} cached tokens"
        )
    return FluxAudioConfig(
        latent_dim=model.latent_dim,
        hidden_dim=model.hidden_dim,
        num_heads=model.num_heads,
        depth=model.depth,
        fused_depth=model.fused_depth,
        latent_seq_len=model.latent_seq_len,
        text_seq_len=model.text_seq_len,
        text_dim=shapes.text_dim,
        condition_dim=shapes.condition_dim,
        mlp_ratio=model.mlp_ratio,
        quality_levels=quality.levels if model.quality_token else 0,
        decode_layers=model.masking.decode_layers,
        side_interpolator=model.masking.mask_ratio > 0,
    )


def objective_config(model: ModelParams, timestep: TimestepParams) -> ObjectiveConfig:
    return ObjectiveConfig(
        timestep_law=timestep.law,
        logit_normal_mean=timestep.logit_normal_mean,
        logit_normal_scale=timestep.logit_normal_scale,
        beta_lambda=timestep.beta_lambda,
        mask_ratio=model.masking.mask_ratio,
        mask_ratio_jitter=model.masking.mask_ratio_jitter,
        repa_clap=RepaTerm(model.repa.clap.weight, model.repa.clap.time_weight_exponent),
        repa_frames=RepaTerm(model.repa.muq.weight, model.repa.muq.time_weight_exponent),
    )


def build_model(
    config: FluxAudioConfig, model: ModelParams, shapes: CacheShapes
) -> FlowMatchingModel:
    """Backbone + the REPA heads whose weight is > 0 (a zero weight builds no head)."""
    clap, frames = model.repa.clap, model.repa.muq
    return FlowMatchingModel(
        FluxAudio(config),
        ProjectionHead(config.hidden_dim, clap.projector_dim, shapes.clap_dim)
        if clap.weight > 0
        else None,
        ProjectionHead(config.hidden_dim, frames.projector_dim, shapes.teacher_dim)
        if frames.weight > 0
        else None,
    )


def with_latent_stats(model: FlowMatchingModel, mean: torch.Tensor, std: torch.Tensor) -> None:
    """Per-channel normalisation from the cache's train-split stats (docs/reference.md §A.5)."""
    with torch.no_grad():
        model.backbone.set_latent_stats(mean.float(), std.float())
