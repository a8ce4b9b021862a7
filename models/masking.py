"""MDT token masking (paper 003 §4.2; docs/reference.md §C.2), as index bookkeeping.

During training a share r of the audio tokens is hidden from the encoder blocks: each
sample keeps a random subset of int(T·(1 − r)) frames, in time order, and the encoder runs
on those only. The decoder side puts learnable mask tokens back at the hidden positions.
"""

from __future__ import annotations

import torch
from torch import Tensor


def draw_mask_ratio(mask_ratio: float, jitter: float, generator: torch.Generator) -> float:
    """r ~ U[mask_ratio, mask_ratio + jitter], one draw per batch (QA-MDT: U[0.30, 0.50])."""
    if mask_ratio <= 0.0:
        return 0.0
    return mask_ratio + jitter * float(torch.rand((), generator=generator))


def random_keep_indices(
    batch_size: int, length: int, ratio: float, generator: torch.Generator
) -> Tensor:
    """[batch, kept] frame indices kept visible, sorted so the kept tokens stay in time order
    (the audio stream's kernel-3 convolutions then see their nearest visible neighbours)."""
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"mask ratio must be in (0, 1), got {ratio}")
    kept = max(1, int(length * (1.0 - ratio)))
    scores = torch.rand(batch_size, length, generator=generator, device=generator.device)
    return scores.argsort(dim=1)[:, :kept].sort(dim=1).values


def masked_positions(keep: Tensor, length: int) -> Tensor:
    """[batch, length] bool, True where a frame is hidden from the encoder."""
    visible = torch.zeros(keep.shape[0], length, dtype=torch.bool, device=keep.device)
    return ~visible.scatter(1, keep, True)


def gather_tokens(x: Tensor, keep: Tensor) -> Tensor:
    """x [batch, length, dim] -> the kept tokens [batch, kept, dim]."""
    return x.gather(1, keep[..., None].expand(-1, -1, x.shape[-1]))


def scatter_tokens(kept_tokens: Tensor, keep: Tensor, filler: Tensor) -> Tensor:
    """Put [batch, kept, dim] tokens back at their positions in `filler` [batch, length, dim]."""
    index = keep[..., None].expand(-1, -1, kept_tokens.shape[-1])
    return filler.scatter(1, index, kept_tokens)
