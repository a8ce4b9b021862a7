"""FluxAudio, the flow-matching DiT of paper 000 §III-A, with paper 003's switches built in.

Layout (docs/reference.md §A.3, §A.8): the latent goes through a convolutional input projection,
the text-encoder tokens and the global CLAP text embedding through MLPs; `depth` blocks
follow, the first `depth - fused_depth` of them joint MM-DiT blocks (audio and text tokens
in one attention), the rest single-stream ("fused") blocks on audio only; a final adaLN
layer maps back to the latent size. One conditioning vector, timestep embedding + projected
CLAP embedding, drives every adaLN.

Paper 003 on the same backbone (switches 3 and 4 of docs/architecture.md):
- quality token (§4.1): a learned embedding of the quantised p-MOS level prepended to the
  audio tokens, never masked, removed before the output layer;
- MDT masking (§4.2): when `keep` indices are given (training with mask ratio > 0), the
  blocks before the last `decode_layers` see only the kept audio tokens; then a side
  interpolator (one single-stream block) fills learnable mask tokens in at the hidden
  positions, and the last `decode_layers` blocks see the full sequence. MDT's encoder /
  decoder split maps onto FluxAudio's block order: the encoder is the first
  depth - decode_layers blocks (all joint blocks and the first fused ones, so the text is
  read by the encoder), the decoder the last decode_layers fused blocks (QA-MDT: 8 of 28).
  FluxAudio has no U-ViT long skips, so neither does this encoder/decoder.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import NamedTuple, cast

import torch
from torch import Tensor, nn

from models.layers import (
    ChannelLastConv1d,
    FinalLayer,
    JointBlock,
    Rotation,
    StreamBlock,
    SwiGLU,
    TimestepEmbedder,
    rope_rotation,
)
from models.masking import gather_tokens, masked_positions, scatter_tokens


@dataclass(frozen=True)
class FluxAudioConfig:
    latent_dim: int  # codec channels C
    hidden_dim: int
    num_heads: int
    # ALL blocks: depth - fused_depth joint blocks, then fused_depth (docs/reference.md pitfall 1)
    depth: int
    fused_depth: int
    latent_seq_len: int  # frames the RoPE table covers (250 = 10 s at 25 Hz)
    text_seq_len: int  # text-encoder tokens (77, padded)
    text_dim: int  # text-encoder token width (FLAN-T5-large: 1024)
    condition_dim: int  # global CLAP text embedding width (LAION-CLAP: 512)
    mlp_ratio: float
    quality_levels: int  # 0: no quality token
    decode_layers: int  # MDT: blocks after the side interpolator
    side_interpolator: bool  # built when the model is trained with masking

    @property
    def joint_depth(self) -> int:
        return self.depth - self.fused_depth

    @property
    def head_dim(self) -> int:
        return self.hidden_dim // self.num_heads

    def __post_init__(self) -> None:
        if not 0 <= self.fused_depth < self.depth:
            raise ValueError("need 0 <= fused_depth < depth (at least one joint block)")
        if self.hidden_dim % self.num_heads or self.head_dim % 2:
            raise ValueError("hidden_dim / num_heads must be an even integer (RoPE pairs)")
        if self.side_interpolator and not 0 < self.decode_layers < self.depth:
            raise ValueError("masking needs 0 < decode_layers < depth")


_FLUXAUDIO_S = FluxAudioConfig(
    latent_dim=20,
    hidden_dim=448,
    num_heads=7,
    depth=12,
    fused_depth=8,
    latent_seq_len=312,
    text_seq_len=77,
    text_dim=1024,
    condition_dim=512,
    mlp_ratio=4.0,
    quality_levels=0,
    decode_layers=0,
    side_interpolator=False,
)
# Size presets (docs/reference.md §A.2): the baseline's two variants and paper 000's Table II model
# (896 wide, 7 heads of 128, 2 joint + 10 fused blocks, ACE-Step's 64 channels at 25 Hz).
PRESETS: dict[str, FluxAudioConfig] = {
    "fluxaudio_s": _FLUXAUDIO_S,
    "fluxaudio_l": replace(_FLUXAUDIO_S, hidden_dim=896, num_heads=14),
    "table2_450m": replace(
        _FLUXAUDIO_S, latent_dim=64, hidden_dim=896, fused_depth=10, latent_seq_len=250
    ),
}


class FlowOutput(NamedTuple):
    velocity: Tensor  # [batch, frames, latent_dim], normalised latent units
    hidden: Tensor  # [batch, frames, hidden_dim] after the last block (REPA taps here)


class FluxAudio(nn.Module):
    # buffers registered in __init__
    latent_mean: Tensor
    latent_std: Tensor
    audio_rope_cos: Tensor
    audio_rope_sin: Tensor
    text_rope_cos: Tensor
    text_rope_sin: Tensor

    def __init__(self, config: FluxAudioConfig) -> None:
        super().__init__()
        self.config = config
        dim, heads, ratio = config.hidden_dim, config.num_heads, config.mlp_ratio
        self.audio_input = nn.Sequential(
            ChannelLastConv1d(config.latent_dim, dim, kernel_size=7, padding=3),
            nn.SELU(),
            SwiGLU(dim, 4 * dim, kernel_size=7),
        )
        self.text_input = nn.Sequential(nn.Linear(config.text_dim, dim), SwiGLU(dim, 4 * dim))
        self.condition_input = nn.Sequential(
            nn.Linear(config.condition_dim, dim), SwiGLU(dim, 4 * dim)
        )
        self.timestep_embedder = TimestepEmbedder(dim)
        last_joint = config.joint_depth - 1
        self.joint_blocks = nn.ModuleList(
            JointBlock(dim, heads, ratio, pre_only=i == last_joint)
            for i in range(config.joint_depth)
        )
        self.fused_blocks = nn.ModuleList(
            StreamBlock(dim, heads, ratio, kernel_size=3, pre_only=False)
            for _ in range(config.fused_depth)
        )
        self.final_layer = FinalLayer(dim, config.latent_dim)
        self.quality_embedding = (
            nn.Embedding(config.quality_levels, dim) if config.quality_levels else None
        )
        if config.side_interpolator:
            self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
            self.side_interpolator = StreamBlock(dim, heads, ratio, kernel_size=3, pre_only=False)
        # Per-channel latent normalisation (docs/reference.md §A.5), carried in the checkpoint.
        self.register_buffer("latent_mean", torch.zeros(config.latent_dim))
        self.register_buffer("latent_std", torch.ones(config.latent_dim))
        for name, length in (("audio", config.latent_seq_len), ("text", config.text_seq_len)):
            cos, sin = rope_rotation(torch.arange(length), config.head_dim)
            self.register_buffer(f"{name}_rope_cos", cos, persistent=False)
            self.register_buffer(f"{name}_rope_sin", sin, persistent=False)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """The reference's init: Xavier on Linear layers, N(0, 0.02) for the timestep MLP,
        zero adaLN modulations and a zero output layer, so every block starts as identity."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        for layer in self.timestep_embedder.mlp:
            if isinstance(layer, nn.Linear):
                nn.init.normal_(layer.weight, std=0.02)
        for module in self.modules():
            if isinstance(module, StreamBlock | FinalLayer):
                last = cast(nn.Linear, module.modulation[-1])  # nn.Sequential indexes to Module
                nn.init.zeros_(last.weight)
                nn.init.zeros_(last.bias)
        nn.init.zeros_(self.final_layer.conv.weight)
        if self.final_layer.conv.bias is not None:
            nn.init.zeros_(self.final_layer.conv.bias)
        if self.quality_embedding is not None:
            nn.init.normal_(self.quality_embedding.weight, std=0.02)

    # ----------------------------------------------------------------- normalisation
    def set_latent_stats(self, mean: Tensor, std: Tensor) -> None:
        self.latent_mean.copy_(mean)
        self.latent_std.copy_(std)

    def normalise(self, latent: Tensor) -> Tensor:
        return (latent - self.latent_mean) / self.latent_std

    def denormalise(self, x: Tensor) -> Tensor:
        return x * self.latent_std + self.latent_mean

    # ----------------------------------------------------------------- token layout
    @property
    def prefix_length(self) -> int:
        """Tokens before the audio frames: the quality token, when there is one."""
        return 1 if self.quality_embedding is not None else 0

    def _audio_rotation(self, positions: Tensor) -> Rotation:
        """RoPE of the audio stream for frame `positions` ([frames] or [batch, kept]); the
        quality token has no time position and gets the identity rotation. `forward` checks
        the frame count against the table (positions are frames or kept frames)."""
        cos, sin = self.audio_rope_cos[positions], self.audio_rope_sin[positions]
        if self.prefix_length:
            cos = torch.cat([torch.ones_like(cos[..., :1, :]), cos], dim=-2)
            sin = torch.cat([torch.zeros_like(sin[..., :1, :]), sin], dim=-2)
        return _for_heads(cos), _for_heads(sin)

    def _text_rotation(self, length: int) -> Rotation:
        if length > self.text_rope_cos.shape[0]:
            raise ValueError(f"{length} text tokens exceed text_seq_len")
        return _for_heads(self.text_rope_cos[:length]), _for_heads(self.text_rope_sin[:length])

    def _with_prefix(self, audio: Tensor, quality_level: Tensor | None) -> Tensor:
        if self.quality_embedding is None:
            return audio
        if quality_level is None:
            raise ValueError("this model has a quality token: pass quality_level (1..levels)")
        token = self.quality_embedding(quality_level - 1)[:, None]  # levels are 1-based
        return torch.cat([token.to(audio.dtype), audio], dim=1)

    def _fill_masked(
        self, tokens: Tensor, keep: Tensor, frames: int, condition: Tensor, rotation: Rotation
    ) -> Tensor:
        """Paper 003 §4.2 side interpolator: mask tokens at the hidden positions, one block
        over the full sequence, its output taken at the hidden positions only (§C.2)."""
        prefix, kept = tokens[:, : self.prefix_length], tokens[:, self.prefix_length :]
        filler = self.mask_token.to(kept.dtype).expand(kept.shape[0], frames, -1)
        before = torch.cat([prefix, scatter_tokens(kept, keep, filler)], dim=1)
        interpolated = self.side_interpolator(before, condition, rotation)
        hidden = masked_positions(keep, frames)[..., None]
        frames_out = torch.where(
            hidden, interpolated[:, self.prefix_length :], before[:, self.prefix_length :]
        )
        return torch.cat([prefix, frames_out], dim=1)

    # ----------------------------------------------------------------- forward
    def forward(
        self,
        x: Tensor,
        t: Tensor,
        text: Tensor,
        clap_text: Tensor,
        quality_level: Tensor | None = None,
        keep: Tensor | None = None,
    ) -> FlowOutput:
        """x [batch, frames, latent_dim] normalised noisy latent; t [batch] in [0, 1] (1 =
        noise); text [batch, tokens, text_dim]; clap_text [batch, condition_dim];
        quality_level [batch] in 1..levels; keep [batch, kept] visible frames (training with
        MDT masking only, from `models.masking.random_keep_indices`).

        The conditions may stack n condition sets for the same x and t (classifier-free
        guidance's pair, `models.sampling.guided`): x [batch / n, ...], t [batch / n], and
        the outputs are [batch, ...], set-major. The audio stem, which sees x alone, then
        runs once instead of n times (10 % of a guided FluxAudio-S call on CPU).
        """
        frames, sets = x.shape[1], _condition_sets(x, t, text, keep)
        # On the shape, not on the positions' values: a data-dependent check would cost a
        # device sync and a torch.compile graph break on every call.
        if frames > self.audio_rope_cos.shape[0]:
            raise ValueError(
                f"latent of {frames} frames is longer than latent_seq_len "
                f"({self.audio_rope_cos.shape[0]})"
            )
        t = _repeated(t, sets)
        condition = (self.timestep_embedder(t) + self.condition_input(clap_text))[:, None]
        text_tokens = self.text_input(text)  # [batch, tokens, hidden]
        text_rotation = self._text_rotation(text.shape[1])
        all_frames = torch.arange(frames, device=x.device)
        if keep is not None:
            if not self.config.side_interpolator:
                raise ValueError("model built without a side interpolator: cannot mask")
            # Hidden frames are zeroed before the kernel-7 input convolution, which would
            # otherwise carry their content into the visible neighbours' tokens.
            x = x.masked_fill(masked_positions(keep, frames)[..., None], 0.0)
            audio = gather_tokens(self.audio_input(x), keep)
            rotation = self._audio_rotation(keep)
        else:
            audio = _repeated(self.audio_input(x), sets)  # [batch, frames, hidden]
            rotation = self._audio_rotation(all_frames)
        audio = self._with_prefix(audio, quality_level)
        decoder_start = self.config.depth - self.config.decode_layers
        for index, block in enumerate([*self.joint_blocks, *self.fused_blocks]):
            if keep is not None and index == decoder_start:
                rotation = self._audio_rotation(all_frames)
                audio = self._fill_masked(audio, keep, frames, condition, rotation)
            if isinstance(block, JointBlock):
                audio, text_tokens = block(audio, text_tokens, condition, rotation, text_rotation)
            else:
                audio = block(audio, condition, rotation)
        hidden = audio[:, self.prefix_length :]
        return FlowOutput(self.final_layer(hidden, condition), hidden)


def _condition_sets(x: Tensor, t: Tensor, text: Tensor, keep: Tensor | None) -> int:
    """How many condition sets the conditions stack for each x (1 in training)."""
    sets, rest = divmod(text.shape[0], x.shape[0])
    if rest or t.shape[0] != x.shape[0] or (keep is not None and sets != 1):
        raise ValueError(
            f"the conditions' batch ({text.shape[0]}) must be a multiple of x's "
            f"({x.shape[0]}), t's batch x's, and without masking when it is not x's"
        )
    return sets


def _repeated(tensor: Tensor, sets: int) -> Tensor:
    """`sets` copies along the batch, set-major; the tensor itself (no copy) for one set."""
    return tensor if sets == 1 else tensor.repeat(sets, *[1] * (tensor.dim() - 1))


def _for_heads(table: Tensor) -> Tensor:
    """[tokens, d] or [batch, tokens, d] -> broadcastable to [batch, tokens, heads, d]."""
    return table[None, :, None] if table.dim() == 2 else table[:, :, None]


def trainable_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
