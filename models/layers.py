"""FluxAudio's building blocks (paper 000 §III-A; docs/reference.md §A.3): embedders, SwiGLU MLPs,
RoPE, the adaLN-modulated stream block, the joint (MM-DiT) block and the final layer.

Tensors are channel-last, `[batch, tokens, hidden]`, everywhere; convolutions transpose
internally. The composition of these blocks is `models/fluxaudio.py`.
"""

from __future__ import annotations

import math
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Rotation = tuple[
    Tensor, Tensor
]  # (cos, sin), each broadcastable to [batch, tokens, heads, head_dim / 2]


def swiglu_hidden_dim(hidden_dim: int, multiple_of: int = 256) -> int:
    """The reference's SwiGLU width: 2/3 of the requested size, rounded up to `multiple_of`."""
    width = int(2 * hidden_dim / 3)
    return multiple_of * math.ceil(width / multiple_of)


# Widest convolution (in or out channels) for which the channels-last conv2d pays on CPU
# with autograd (forward + backward); without autograd it pays at every width.
CHANNELS_LAST_MAX_CHANNELS = 512


class ChannelLastConv1d(nn.Conv1d):
    """A Conv1d over the token axis of a `[batch, tokens, channels]` tensor.

    Run as a conv2d over `[batch, channels, 1, tokens]` in channels-last memory format, which
    is exactly the `[batch, tokens, channels]` layout: oneDNN's NHWC kernels read the input
    and write the output in place, where a Conv1d on the transposed view copies both ways.
    Measured on 2 CPU cores (kernel 3, 250 tokens), channels-last vs Conv1d at 96 <-> 256
    channels: inference 1.5x at batch 2, 2.6x at 8, 3.2x at 32; forward + backward 1.1x, 1.5x,
    1.8x. At 448 <-> 1280 channels (FluxAudio-S) forward + backward at batch 2 is 0.8-1.1x,
    so wider convolutions than `CHANNELS_LAST_MAX_CHANNELS` take it only without autograd
    (sampling: 1.1-1.45x at batch 8-32, where these convolutions are most of the time). The
    choice does not depend on the batch size, so a sample is computed the same way in any
    batch. `use_reference_kernels` forces the plain Conv1d everywhere (the speed-ups'
    baseline). A fused SwiGLU gate/up map (one convolution on the concatenated weights) was
    tried and did not pay: 0.97x per training step.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # nn.Conv1d's arguments
        super().__init__(*args, **kwargs)
        if self.padding_mode != "zeros" or isinstance(self.padding, str):
            raise ValueError("ChannelLastConv1d supports integer zero padding only")
        self.channels_last_2d = True  # False: the plain Conv1d (`use_reference_kernels`)
        self.narrow = max(self.in_channels, self.out_channels) <= CHANNELS_LAST_MAX_CHANNELS

    def forward(self, x: Tensor) -> Tensor:
        if not (self.channels_last_2d and (self.narrow or not torch.is_grad_enabled())):
            return super().forward(x.transpose(1, 2)).transpose(1, 2)
        image = x.transpose(1, 2).unsqueeze(2)  # a view: channels-last strides already
        out = F.conv2d(
            image,
            self.weight.unsqueeze(2),  # oneDNN reorders weights itself: no copy here
            self.bias,
            stride=(1, self.stride[0]),
            padding=(0, cast(int, self.padding[0])),  # integer: checked in __init__
            dilation=(1, self.dilation[0]),
            groups=self.groups,
        )
        return out.squeeze(2).transpose(1, 2)


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
        if torch.is_grad_enabled():
            return self.w2(F.silu(self.w1(x)) * self.w3(x))
        # Without autograd no intermediate is kept for a backward pass: in place, two fewer
        # [batch, tokens, width] tensors to allocate and fill per call (sampling).
        return self.w2(F.silu(self.w1(x), inplace=True).mul_(self.w3(x)))


def use_reference_kernels(module: nn.Module, reference: bool = True) -> None:
    """Switch every `ChannelLastConv1d` in `module` to the plain Conv1d (or back): the
    speed-ups' baseline in benchmarks/training_throughput.py and their equality test."""
    for child in module.modules():
        if isinstance(child, ChannelLastConv1d):
            child.channels_last_2d = not reference


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
    """Rotate consecutive channel pairs of x [batch, tokens, heads, head_dim].

    Each pair (even, odd) times cos + i sin as one complex product, as Flux's `apply_rope`:
    the same float32 results as the real form (even cos - odd sin, even sin + odd cos) in
    one kernel instead of six and a stack (2-7x faster, forward and backward, on CPU).
    """
    cos, sin = rotation
    if torch.compiler.is_compiling():  # inductor fuses the real form; it has no complex codegen
        even, odd = x.float().unflatten(-1, (-1, 2)).unbind(-1)
        rotated = torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1)
        return rotated.flatten(-2).type_as(x)
    pairs = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)).contiguous())
    return torch.view_as_real(pairs * torch.complex(cos, sin)).flatten(-2).type_as(x)


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """x * (1 + scale) + shift in one kernel over x (two with a temporary before)."""
    return torch.addcmul(shift, x, 1 + scale)


def gated(x: Tensor, update: Tensor, gate: Tensor) -> Tensor:
    """The gated residual x + update * gate, in one kernel."""
    return torch.addcmul(x, update, gate)


def attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """[batch, tokens, heads, head_dim] x3 -> [batch, tokens, hidden].

    Tokens before heads, as the qkv map lays them out: SDPA reads the head-major views as they
    are and writes its output in the same layout, so neither the inputs nor the output are
    copied to change layouts (the joint blocks' concatenation is the only copy).
    No mask and no forced backend, so PyTorch picks its fastest kernel (flash /
    memory-efficient on GPU); the reference forces the math kernel only for MeanFlow's JVP
    (docs/reference.md pitfall 7), which plain flow matching does not need.
    """
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
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
        qkv = self.qkv(h).unflatten(-1, (3, self.num_heads, -1))  # [batch, tokens, 3, heads, d]
        q = apply_rope(self.q_norm(qkv[:, :, 0]), rotation)
        k = apply_rope(self.k_norm(qkv[:, :, 1]), rotation)
        return q, k, qkv[:, :, 2], list(modulation[2:])

    def post_attention(self, x: Tensor, attended: Tensor, modulation: list[Tensor]) -> Tensor:
        gate, shift, scale, gate_mlp = modulation
        x = gated(x, self.out_proj(attended), gate)
        return gated(x, self.ffn(modulate(self.norm2(x), shift, scale)), gate_mlp)

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
            torch.cat([qa, qt], dim=1), torch.cat([ka, kt], dim=1), torch.cat([va, vt], dim=1)
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
