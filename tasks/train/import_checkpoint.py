"""Start from the challenge baseline's weights: `python -m tasks.train.import_checkpoint SRC OUT`.

The ATTM baseline (MeanAudio's FluxAudio-S/L, docs/reference.md §A.2–§A.3) publishes trained
checkpoints. Its network computes the same function as `models.fluxaudio.FluxAudio` at equal
configuration, with two differences in how the weights are stored (docs/reference.md §A.10):
- module names: `audio_input_proj` / `text_input_proj` / `text_cond_proj` / `t_embed`,
  `latent_block` / `text_block`, `adaLN_modulation`, `attn.qkv`, `linear1`;
- the rows of every qkv projection are ordered (head, head_dim, q/k/v) (its einops pattern
  `b n (h d j) -> b h n d j`, j = 3) where ours are (q/k/v, head, head_dim).
This converts such a checkpoint into a stage output (`model.safetensors` + `model.json`, the
format `tasks.train.checkpoints.load_backbone` and `train.init_from` read), and refuses,
naming the keys, anything it cannot map: a MeanAudio (mean-flow) checkpoint's second time
embedding, a missing block, a shape that no FluxAudio configuration explains.
"""

from __future__ import annotations

import argparse
import hashlib
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import Tensor, nn

from models.fluxaudio import PRESETS, FluxAudio, FluxAudioConfig
from tasks.train import checkpoints

# Non-persistent tables that older reference checkpoints still carry; recomputed here.
RECOMPUTED = ("t_embed.freqs", "r_embed.freqs", "latent_rot", "text_rot", "_extra_state")
# The reference keeps the text encoders' features of "" inside the network (§A.4); this
# pipeline encodes the empty caption with its own encoders when it builds the latent cache.
UNUSED = ("empty_string_feat", "empty_string_feat_c")
EMA_PREFIX = "ema_model."  # the reference's post-hoc EMA weights
MAX_NAMED = 12  # keys listed in an error before "... and N more"

_TOP_LEVEL = {
    "audio_input_proj.": "audio_input.",
    "text_input_proj.": "text_input.",
    "text_cond_proj.": "condition_input.",
    "t_embed.": "timestep_embedder.",
    "final_layer.adaLN_modulation.": "final_layer.modulation.",
    "final_layer.conv.": "final_layer.conv.",
}
_IN_BLOCK = {
    "adaLN_modulation.": "modulation.",
    "attn.qkv.": "qkv.",
    "attn.q_norm.": "q_norm.",
    "attn.k_norm.": "k_norm.",
    "linear1.": "out_proj.",
    "ffn.": "ffn.",
}
_JOINT = re.compile(r"joint_blocks\.(\d+)\.(latent_block|text_block)\.(.+)")
_FUSED = re.compile(r"fused_blocks\.(\d+)\.(.+)")
_STREAMS = {"latent_block": "audio", "text_block": "text"}


class CheckpointImportError(ValueError):
    """A reference checkpoint this importer cannot map; the message names the keys."""


def _renamed(name: str, table: Mapping[str, str]) -> str | None:
    for old, new in table.items():
        if name.startswith(old):
            return new + name.removeprefix(old)
    return None


def project_name(reference_name: str) -> str | None:
    """The project's parameter name for a reference one; None where there is no counterpart."""
    if reference_name in ("latent_mean", "latent_std"):
        return reference_name
    if joint := _JOINT.fullmatch(reference_name):
        index, stream, rest = joint.groups()
        inner = _renamed(rest, _IN_BLOCK)
        return None if inner is None else f"joint_blocks.{index}.{_STREAMS[stream]}.{inner}"
    if fused := _FUSED.fullmatch(reference_name):
        index, rest = fused.groups()
        inner = _renamed(rest, _IN_BLOCK)
        return None if inner is None else f"fused_blocks.{index}.{inner}"
    return _renamed(reference_name, _TOP_LEVEL)


def qkv_rows_from_reference(tensor: Tensor, num_heads: int) -> Tensor:
    """Reorder qkv rows (weight or bias) from (head, head_dim, q/k/v) to (q/k/v, head, head_dim)."""
    rows = tensor.shape[0]
    head_dim = rows // (3 * num_heads)
    split = tensor.reshape(num_heads, head_dim, 3, *tensor.shape[1:])
    return split.movedim(2, 0).reshape(rows, *tensor.shape[1:]).contiguous()


def reference_state(raw: Mapping[str, object]) -> dict[str, Tensor]:
    """The network weights out of what the reference saves: a bare state dict (`*_last.pth`,
    `*_ema_final.pth`) or a training checkpoint's `weights`; EMA prefixes stripped."""
    state = raw.get("weights", raw)
    if not isinstance(state, Mapping):
        raise CheckpointImportError("the checkpoint's 'weights' entry is not a state dict")
    tensors = {str(key).removeprefix(EMA_PREFIX): value for key, value in state.items()}
    not_tensors = sorted(key for key, value in tensors.items() if not isinstance(value, Tensor))
    if not_tensors:
        raise CheckpointImportError(f"not a state dict: non-tensor entries {_named(not_tensors)}")
    return {key: value for key, value in tensors.items() if key not in RECOMPUTED}


def _block_indices(state: Mapping[str, Tensor], pattern: re.Pattern[str]) -> set[int]:
    return {int(match.group(1)) for key in state if (match := pattern.fullmatch(key))}


def reference_config(state: Mapping[str, Tensor], latent_seq_len: int) -> FluxAudioConfig:
    """The FluxAudio configuration the reference weights' shapes imply. The RoPE length
    (`latent_seq_len`) is not stored (its tables are non-persistent): the baseline uses 312."""
    try:
        hidden_dim, latent_dim, _ = state["audio_input_proj.0.weight"].shape
        head_dim = state["joint_blocks.0.latent_block.attn.q_norm.weight"].shape[0]
        text_dim = state["text_input_proj.0.weight"].shape[1]
        condition_dim = state["text_cond_proj.0.weight"].shape[1]
    except KeyError as missing:
        raise CheckpointImportError(f"not a FluxAudio checkpoint: no {missing}") from None
    joint, fused = _block_indices(state, _JOINT), _block_indices(state, _FUSED)
    empty = state.get("empty_string_feat")
    return FluxAudioConfig(
        latent_dim=latent_dim,
        hidden_dim=hidden_dim,
        num_heads=hidden_dim // head_dim,
        depth=len(joint) + len(fused),
        fused_depth=len(fused),
        latent_seq_len=latent_seq_len,
        text_seq_len=empty.shape[0] if empty is not None else 77,
        text_dim=text_dim,
        condition_dim=condition_dim,
        mlp_ratio=PRESETS["fluxaudio_s"].mlp_ratio,  # every baseline variant: 4 (§A.2)
        quality_levels=0,
        decode_layers=0,
        side_interpolator=False,
    )


def _named(keys: list[str]) -> str:
    shown = ", ".join(keys[:MAX_NAMED])
    return shown + (f" ... and {len(keys) - MAX_NAMED} more" if len(keys) > MAX_NAMED else "")


def convert_state(state: Mapping[str, Tensor], config: FluxAudioConfig) -> dict[str, Tensor]:
    """Reference weights -> this project's FluxAudio state dict, every key and shape checked."""
    converted: dict[str, Tensor] = {}
    unexpected = []
    for name, tensor in state.items():
        if name in UNUSED:
            continue
        target = project_name(name)
        if target is None:
            unexpected.append(name)
            continue
        if target.endswith(("qkv.weight", "qkv.bias")):
            tensor = qkv_rows_from_reference(tensor, config.num_heads)
        elif target in ("latent_mean", "latent_std"):
            tensor = tensor.reshape(-1)  # stored (1, 1, channels) there, (channels,) here
        converted[target] = tensor.float().contiguous()
    expected = FluxAudio(config).state_dict()
    missing = sorted(set(expected) - set(converted))
    mismatched = [
        f"{key} {tuple(tensor.shape)} (expected {tuple(expected[key].shape)})"
        for key, tensor in converted.items()
        if key in expected and tensor.shape != expected[key].shape
    ]
    unexpected += [key for key in converted if key not in expected]
    problems = []
    if unexpected:
        meanaudio = any(key.startswith("r_embed.") for key in unexpected)
        hint = " (r_embed: a MeanAudio mean-flow checkpoint)" if meanaudio else ""
        problems.append(f"unexpected keys{hint}: {_named(sorted(unexpected))}")
    if missing:
        problems.append(f"missing keys: {_named(missing)}")
    if mismatched:
        problems.append(f"shapes no FluxAudio configuration explains: {_named(mismatched)}")
    if problems:
        raise CheckpointImportError("cannot import this checkpoint: " + "; ".join(problems))
    if not all(torch.isfinite(converted[key]).all() for key in ("latent_mean", "latent_std")):
        raise CheckpointImportError("the checkpoint's latent_mean / latent_std are not finite")
    return converted


def load_reference_file(path: Path) -> dict[str, Tensor]:
    """A reference checkpoint, loaded safely (safetensors, or torch with weights_only=True)."""
    if path.suffix == ".safetensors":
        return reference_state(load_file(path))
    return reference_state(torch.load(path, map_location="cpu", weights_only=True))


def import_checkpoint(source: Path, out: Path, latent_seq_len: int) -> FluxAudioConfig:
    state = load_reference_file(source)
    config = reference_config(state, latent_seq_len)
    backbone = FluxAudio(config)
    backbone.load_state_dict(convert_state(state, config), strict=True)
    # the stage outputs' layout: backbone.* (the REPA heads exist during training only)
    holder = nn.ModuleDict({"backbone": backbone})
    meta = {
        "stage": "import",
        "source": str(source),
        "source_sha256": hashlib.sha256(source.read_bytes()).hexdigest(),
        "not_imported": {name: "encoded by this pipeline's text encoders" for name in UNUSED},
    }
    out.mkdir(parents=True, exist_ok=True)
    checkpoints.save_final_model(out, holder, config, meta)
    return config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="the reference checkpoint (.pth / .safetensors)")
    parser.add_argument("out", type=Path, help="folder for model.safetensors + model.json")
    parser.add_argument(
        "--latent-seq-len",
        type=int,
        default=PRESETS["fluxaudio_s"].latent_seq_len,
        help="frames the RoPE table covers (the baseline: 312, 10 s of its mel-VAE latents)",
    )
    args = parser.parse_args()
    try:
        config = import_checkpoint(args.source, args.out, args.latent_seq_len)
    except CheckpointImportError as error:
        raise SystemExit(f"{args.source}: {error}") from None
    print(
        f"{args.source} -> {args.out}: FluxAudio {config.hidden_dim} wide, {config.num_heads} "
        f"heads, {config.joint_depth} joint + {config.fused_depth} fused blocks, "
        f"{config.latent_dim}-channel latents; start training from it with "
        f"train.init_from: {args.out}"
    )


if __name__ == "__main__":
    main()
