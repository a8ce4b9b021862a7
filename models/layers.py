"""FluxAudio's building blocks (paper 000 §III-A; docs/reference.md §A.3): embedders, SwiGLU MLPs,
RoPE, the adaLN-modulated stream block, the joint (MM-DiT) block and the final layer.

Tensors are channel-last, `[batch, tokens, hidden]`, everywhere; convolutions transpose
internally. The composition of these blocks is `models/fluxaudio.py`.
"""

from __future__ import annotations

import math
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Rotation = tuple[
    Tensor, Tensor
]  # (cos, sin), each broadcastable to [batch, heads, tokens, head_dim / 2]


def swiglu_hidden_dim(hidden_dim: int, multiple_of: int = 256) -> int:
    """The reference's SwiGLU width: 2/3 of the requested size, rounded up to `multiple_of`."""
    width = int(2 * hidden_dim / 3)
    return multiple_of * math.ceil(width / multiple_of)


class ChannelLastConv1d(nn.Conv1d):
    """A Conv1d over the token axis of a `[batch, tokens, channels]` tensor."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.transpose(1, 2)).transpose(1, 2)


class SwiGLU(nn.Module):
    """w2(silu(w1 x) * w3 x), no biases; kernel_size > 1 makes the three maps convolutions."""

    def __init__(self, dim: int, hidden_dim: int, kernel_size: int = 1) -> None:
        super().__init__()
        width = swiglu_hidden_dim(hidden_dim)
        self.w1: nn.Linear | ChannelLastConv1d
        self.w2: nn.Linear | ChannelLastConv1d
        self.w3: nn.Linear | ChannelLastConv1d
        if kernel_size == 1:
            self.w1 = nn.Linear(dim, width, bias=False)
            self.w2 = nn.Linear(width, dim, bias=False)
            self.w3 = nn.Linear(dim, width, bias=False)
        else:
            padding = kernel_size // 2
            self.w1 = ChannelLastConv1d(dim, width, kernel_size, padding=padding, bias=False)
            self.w2 = ChannelLastConv1d(width, dim, kernel_size, padding=padding, bias=False)
            self.w3 = ChannelLastConv1d(dim, width, kernel_size, padding=padding, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class TimestepEmbedder(nn.Module):
    """Sinusoid of t in [0, 1] (not scaled by 1000, as the reference) -> MLP -> hidden."""

    frequencies: Tensor  # a buffer

    def __init__(self, dim: int, frequency_dim: int = 256, max_period: float = 10_000.0) -> None:
        super().__init__()
        half = frequency_dim // 2
        frequencies = torch.exp(-math.log(max_period) * torch.arange(half) / half)
        self.register_buffer("frequencies", frequencies, persistent=False)
        self.mlp = nn.Sequential(nn.Linear(frequency_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: Tensor) -> Tensor:  # [batch] -> [batch, dim]
        angles = t.float()[:, None] * self.frequencies[None]
        embedding = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)
        first = cast(nn.Linear, self.mlp[0])  # nn.Sequential indexes to a plain Module
        return self.mlp(embedding.to(first.weight.dtype))


def rope_rotation(positions: Tensor, head_dim: int, theta: float = 10_000.0) -> Rotation:
    """RoPE tables for integer positions [..., tokens] -> cos, sin [..., tokens, head_dim / 2]."""
    exponents = torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32)
    frequencies = theta ** (-exponents / head_dim)
    angles = positions.float()[..., None] * frequencies
    return torch.cos(angles), torch.sin(angles)


def apply_rope(x: Tensor, rotation: Rotation) -> Tensor:
    """Rotate consecutive channel pairs of x [batch, heads, tokens, head_dim]."""
    cos, sin = rotation
    even, odd = x.float().unflatten(-1, (-1, 2)).unbind(-1)
    rotated = torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1)
    return rotated.flatten(-2).type_as(x)


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    return x * (1 + scale) + shift


def attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """[batch, heads, tokens, head_dim] x3 -> [batch, tokens, hidden].

    No mask and no forced backend, so PyTorch picks its fastest kernel (flash /
    memory-efficient on GPU); the reference forces the math kernel only for MeanFlow's JVP
    (docs/reference.md pitfall 7), which plain flow matching does not need.
    """
    out = F.scaled_dot_product_attention(q, k, v)
    return out.transpose(1, 2).flatten(2)


class StreamBlock(nn.Module):
    """One stream of an MM-DiT block (the reference `MMDitSingleBlock`).

    adaLN (LayerNorm without affine, shift/scale/gate from the conditioning vector, zero-
    initialised) -> qkv -> per-head RMSNorm on q, k -> RoPE; after attention a gated output
    map and a gated SwiGLU, both convolutional (kernel 3) on the audio stream. `pre_only`
    streams (the text stream of the last joint block) contribute keys and values only.
    """

    def __init__(
        self, dim: int, num_heads: int, mlp_ratio: float, kernel_size: int, pre_only: bool
    ) -> None:
        super().__init__()
        self.num_heads, self.pre_only = num_heads, pre_only
        head_dim = dim // num_heads
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, (2 if pre_only else 6) * dim))
        self.qkv = nn.Linear(dim, 3 * dim)
        self.q_norm = nn.RMSNorm(head_dim, eps=1e-6)
        self.k_norm = nn.RMSNorm(head_dim, eps=1e-6)
        if pre_only:
            return
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        if kernel_size == 1:
            self.out_proj: nn.Module = nn.Linear(dim, dim)
        else:
            self.out_proj = ChannelLastConv1d(dim, dim, kernel_size, padding=kernel_size // 2)
        self.ffn = SwiGLU(dim, int(dim * mlp_ratio), kernel_size)

    def pre_attention(
        self, x: Tensor, condition: Tensor, rotation: Rotation
    ) -> tuple[Tensor, Tensor, Tensor, list[Tensor]]:
        """x [batch, tokens, dim], condition [batch, 1, dim] -> q, k, v, post-attention gates."""
        modulation = self.modulation(condition).chunk(2 if self.pre_only else 6, dim=-1)
        h = modulate(self.norm1(x), modulation[0], modulation[1])
        q, k, v = self.qkv(h).unflatten(-1, (3, self.num_heads, -1)).permute(2, 0, 3, 1, 4)
        q = apply_rope(self.q_norm(q), rotation)
        k = apply_rope(self.k_norm(k), rotation)
        return q, k, v, list(modulation[2:])

    def post_attention(self, x: Tensor, attended: Tensor, modulation: list[Tensor]) -> Tensor:
        gate, shift, scale, gate_mlp = modulation
        x = x + self.out_proj(attended) * gate
        return x + self.ffn(modulate(self.norm2(x), shift, scale)) * gate_mlp

    def forward(self, x: Tensor, condition: Tensor, rotation: Rotation) -> Tensor:
        """A single-stream ("fused") block: self-attention over x alone."""
        q, k, v, modulation = self.pre_attention(x, condition, rotation)
        return self.post_attention(x, attention(q, k, v), modulation)


class JointBlock(nn.Module):
    """MM-DiT block: audio and text tokens attend together in ONE attention, unmasked (the
    reference pads T5 to 77 and attends the padding, docs/reference.md pitfall 4); paper 000
    §III-A calls this the "cross-attention" to the T5 sequence."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, pre_only: bool) -> None:
        super().__init__()
        self.audio = StreamBlock(dim, num_heads, mlp_ratio, kernel_size=3, pre_only=False)
        self.text = StreamBlock(dim, num_heads, mlp_ratio, kernel_size=1, pre_only=pre_only)

    def forward(
        self,
        audio: Tensor,
        text: Tensor,
        condition: Tensor,
        audio_rotation: Rotation,
        text_rotation: Rotation,
    ) -> tuple[Tensor, Tensor]:
        qa, ka, va, audio_modulation = self.audio.pre_attention(audio, condition, audio_rotation)
        qt, kt, vt, text_modulation = self.text.pre_attention(text, condition, text_rotation)
        attended = attention(
            torch.cat([qa, qt], dim=2), torch.cat([ka, kt], dim=2), torch.cat([va, vt], dim=2)
        )
        audio_attended, text_attended = attended.split([audio.shape[1], text.shape[1]], dim=1)
        audio = self.audio.post_attention(audio, audio_attended, audio_modulation)
        if not self.text.pre_only:
            text = self.text.post_attention(text, text_attended, text_modulation)
        return audio, text


class FinalLayer(nn.Module):
    """adaLN (shift, scale) -> LayerNorm -> Conv1d(k=7) to the latent size; both zero-init."""

    def __init__(self, dim: int, latent_dim: int) -> None:
        super().__init__()
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.conv = ChannelLastConv1d(dim, latent_dim, kernel_size=7, padding=3)

    def forward(self, x: Tensor, condition: Tensor) -> Tensor:
        shift, scale = self.modulation(condition).chunk(2, dim=-1)
        return self.conv(modulate(self.norm(x), shift, scale))
