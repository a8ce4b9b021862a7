"""The training objective of paper 000 eq. (6), with the randomness of one step made explicit.

One call draws the timesteps (uniform / logit-normal, or the score-aware Beta schedule of
eq. (1)-(2)), the noise and, for MDT, the kept frames (paper 003 §4.2), all from one
`torch.Generator`, so a step is a pure function of (weights, batch, generator state): that is
what lets a killed run resume bit-for-bit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor, nn

from models.flow_matching import (
    TimestepLaw,
    flow_matching_loss,
    interpolate,
    repa_time_weight,
    sample_timesteps,
    target_velocity,
)
from models.fluxaudio import FluxAudio
from models.masking import draw_mask_ratio, random_keep_indices
from models.repa import ProjectionHead, clap_alignment_loss, frame_alignment_loss


@dataclass(frozen=True)
class RepaTerm:
    weight: float  # λ in eq. (6); 0 removes the branch (no head, no graph)
    time_weight_exponent: float  # α in w(t) = (1 - t)^α


@dataclass(frozen=True)
class ObjectiveConfig:
    timestep_law: TimestepLaw  # used when beta_lambda = 0
    logit_normal_mean: float
    logit_normal_scale: float
    beta_lambda: float  # paper 000 eq. (2); 0 = the timestep law alone
    mask_ratio: float  # paper 003 §4.2; 0 = plain DiT
    mask_ratio_jitter: float
    repa_clap: RepaTerm
    repa_frames: RepaTerm


class TrainingBatch(NamedTuple):
    latent: Tensor  # [B, T, C] normalised clean latent x1
    text: Tensor  # [B, L, text_dim]
    clap_text: Tensor  # [B, condition_dim]
    quality_level: Tensor | None  # [B] in 1..levels
    score: Tensor  # [B] S in [0, 1] for the Beta schedule
    clap_target: Tensor  # [B, clap_dim] CLAP audio embedding (REPA-CLAP)
    frame_target: Tensor  # [B, T, teacher_dim] frame-teacher features (REPA-MuQ)


class LossTerms(NamedTuple):
    total: Tensor  # scalar, what is minimised
    flow_matching: Tensor  # scalar, eq. (3)
    repa_clap: Tensor | None  # scalar, eq. (4) unweighted; None when the branch is off
    repa_frames: Tensor | None  # scalar, eq. (5) unweighted
    per_sample: Tensor  # [B] eq. (6) per sample, detached (for validation curves)
    flow_per_sample: Tensor  # [B] eq. (3) per sample, detached


class FlowMatchingModel(nn.Module):
    """What is trained: the backbone plus the REPA heads that are switched on."""

    def __init__(
        self,
        backbone: FluxAudio,
        clap_head: ProjectionHead | None,
        frame_head: ProjectionHead | None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.clap_head = clap_head
        self.frame_head = frame_head

    def forward(
        self, batch: TrainingBatch, config: ObjectiveConfig, generator: torch.Generator
    ) -> LossTerms:
        return training_loss(self, batch, config, generator)


def training_loss(
    model: FlowMatchingModel,
    batch: TrainingBatch,
    config: ObjectiveConfig,
    generator: torch.Generator,
) -> LossTerms:
    """Eq. (6): L_FM + λ_CLAP·w(t)·L_REPA-CLAP + λ_MuQ·w(t)·L_REPA-MuQ, mean over the batch."""
    data = batch.latent
    t = sample_timesteps(
        batch.score,
        config.timestep_law,
        config.beta_lambda,
        config.logit_normal_mean,
        config.logit_normal_scale,
        generator,
    )
    noise = torch.randn(data.shape, generator=generator, device=generator.device).to(data)
    keep = None
    ratio = draw_mask_ratio(config.mask_ratio, config.mask_ratio_jitter, generator)
    if ratio > 0:
        keep = random_keep_indices(data.shape[0], data.shape[1], ratio, generator)
        keep = keep.to(data.device)
    output = model.backbone(
        interpolate(data, noise, t), t, batch.text, batch.clap_text, batch.quality_level, keep
    )
    # Eq. (6) of paper 003: the loss covers every frame, masked or not.
    flow = flow_matching_loss(output.velocity.float(), target_velocity(data, noise).float())
    per_sample = flow
    repa_clap = repa_frames = None
    if model.clap_head is not None and config.repa_clap.weight > 0:
        repa_clap = clap_alignment_loss(output.hidden, model.clap_head, batch.clap_target)
        weight = config.repa_clap.weight * repa_time_weight(
            t, config.repa_clap.time_weight_exponent
        )
        per_sample = per_sample + weight * repa_clap
    if model.frame_head is not None and config.repa_frames.weight > 0:
        repa_frames = frame_alignment_loss(output.hidden, model.frame_head, batch.frame_target)
        exponent = config.repa_frames.time_weight_exponent
        weight = config.repa_frames.weight * repa_time_weight(t, exponent)
        per_sample = per_sample + weight * repa_frames
    return LossTerms(
        total=per_sample.mean(),
        flow_matching=flow.mean(),
        repa_clap=None if repa_clap is None else repa_clap.mean(),
        repa_frames=None if repa_frames is None else repa_frames.mean(),
        per_sample=per_sample.detach(),
        flow_per_sample=flow.detach(),
    )
