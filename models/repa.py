"""REPA alignment heads and losses (paper 000 §II-D, eq. (4)-(5); docs/reference.md §D).

Both heads read the backbone's hidden states after its last block (paper 000 §III-A,
"after the final DiT block"; REPA itself taps an intermediate block, docs/reference.md
pitfall 13). The head is REPA's projector, Linear -> SiLU -> Linear -> SiLU -> Linear; paper
000 does not give its shape. Its output size is the target's: 512 for LAION-CLAP, 1024 for MuQ.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class ProjectionHead(nn.Module):
    def __init__(self, hidden_dim: int, projector_dim: int, target_dim: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(hidden_dim, projector_dim),
            nn.SiLU(),
            nn.Linear(projector_dim, projector_dim),
            nn.SiLU(),
            nn.Linear(projector_dim, target_dim),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.mlp(x)


def clap_alignment_loss(hidden: Tensor, head: ProjectionHead, target: Tensor) -> Tensor:
    """Eq. (4): 1 - cos(φ_CLAP(mean_n h_n), z_CLAP); hidden [B, T, D], target [B, Dc] -> [B]."""
    projected = head(hidden.mean(dim=1))
    return 1.0 - F.cosine_similarity(projected.float(), target.float(), dim=-1)


def frame_alignment_loss(hidden: Tensor, head: ProjectionHead, target: Tensor) -> Tensor:
    """Eq. (5): 1 - mean_n cos(φ_MuQ(h_n), z_MuQ,n); hidden [B, T, D], target [B, T, Dt] -> [B].

    Both sides run at the latent frame rate (25 Hz in paper 000), so frames pair one to one.
    """
    if hidden.shape[1] != target.shape[1]:
        raise ValueError(
            f"frame teacher has {target.shape[1]} frames, the latent {hidden.shape[1]}: "
            "the teacher features must be cached at the latent frame rate"
        )
    projected = head(hidden)
    return 1.0 - F.cosine_similarity(projected.float(), target.float(), dim=-1).mean(dim=1)
