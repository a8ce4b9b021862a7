"""Importing the ATTM baseline's FluxAudio weights (docs/reference.md §A.10) and starting a
training stage from them (`train.init_from`, `finetune.init_from`)."""

from __future__ import annotations

import math
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from models.fluxaudio import PRESETS, FluxAudio, FluxAudioConfig
from tasks.params import Params, merge
from tasks.train import checkpoints
from tasks.train import stage as training_stage
from tasks.train.import_checkpoint import (
    CheckpointImportError,
    import_checkpoint,
    qkv_rows_from_reference,
)
from tasks.train.model_factory import backbone_config, cache_shapes
from tests.models.test_fluxaudio import inputs, randomised

# FluxAudio-S at the test's size (its mlp_ratio 4, no paper-003 modules): 2 joint + 2 fused
# blocks, heads of 8 channels.
SMALL = replace(
    PRESETS["fluxaudio_s"],
    latent_dim=6,
    hidden_dim=32,
    num_heads=4,
    depth=4,
    fused_depth=2,
    latent_seq_len=20,
    text_seq_len=7,
    text_dim=12,
    condition_dim=10,
)


# --------------------------------------------------------------------------- the reference
def swiglu_width(dim: int) -> int:
    """The reference `MLP(dim, 4·dim)` / `ConvMLP`: int(2·4D/3) rounded up to 256."""
    return 256 * math.ceil(int(2 * 4 * dim / 3) / 256)


def reference_shapes(config: FluxAudioConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor `meanaudio/model/networks.py` FluxAudio saves, with its shape, written
    from the reference's module tree (not from the importer's table)."""
    d, c, w = config.hidden_dim, config.latent_dim, swiglu_width(config.hidden_dim)
    shapes: dict[str, tuple[int, ...]] = {
        "audio_input_proj.0.weight": (d, c, 7),
        "audio_input_proj.0.bias": (d,),
        "audio_input_proj.2.w1.weight": (w, d, 7),
        "audio_input_proj.2.w2.weight": (d, w, 7),
        "audio_input_proj.2.w3.weight": (w, d, 7),
        "t_embed.mlp.0.weight": (d, 256),
        "t_embed.mlp.0.bias": (d,),
        "t_embed.mlp.2.weight": (d, d),
        "t_embed.mlp.2.bias": (d,),
        "final_layer.adaLN_modulation.1.weight": (2 * d, d),
        "final_layer.adaLN_modulation.1.bias": (2 * d,),
        "final_layer.conv.weight": (c, d, 7),
        "final_layer.conv.bias": (c,),
        "latent_mean": (1, 1, c),
        "latent_std": (1, 1, c),
        "empty_string_feat": (config.text_seq_len, config.text_dim),
        "empty_string_feat_c": (config.condition_dim,),
    }
    for prefix, width in (
        ("text_input_proj", config.text_dim),
        ("text_cond_proj", config.condition_dim),
    ):
        shapes |= {
            f"{prefix}.0.weight": (d, width),
            f"{prefix}.0.bias": (d,),
            f"{prefix}.1.w1.weight": (w, d),
            f"{prefix}.1.w2.weight": (d, w),
            f"{prefix}.1.w3.weight": (w, d),
        }

    def block(prefix: str, kernel: int, pre_only: bool) -> None:
        conv = (kernel,) if kernel > 1 else ()
        shapes[f"{prefix}.adaLN_modulation.1.weight"] = ((2 if pre_only else 6) * d, d)
        shapes[f"{prefix}.adaLN_modulation.1.bias"] = ((2 if pre_only else 6) * d,)
        shapes[f"{prefix}.attn.qkv.weight"] = (3 * d, d)
        shapes[f"{prefix}.attn.qkv.bias"] = (3 * d,)
        shapes[f"{prefix}.attn.q_norm.weight"] = (config.head_dim,)
        shapes[f"{prefix}.attn.k_norm.weight"] = (config.head_dim,)
        if not pre_only:
            shapes[f"{prefix}.linear1.weight"] = (d, d, *conv)
            shapes[f"{prefix}.linear1.bias"] = (d,)
            shapes[f"{prefix}.ffn.w1.weight"] = (w, d, *conv)
            shapes[f"{prefix}.ffn.w2.weight"] = (d, w, *conv)
            shapes[f"{prefix}.ffn.w3.weight"] = (w, d, *conv)

    for i in range(config.joint_depth):
        block(f"joint_blocks.{i}.latent_block", 3, pre_only=False)
        block(f"joint_blocks.{i}.text_block", 1, pre_only=i == config.joint_depth - 1)
    for i in range(config.fused_depth):
        block(f"fused_blocks.{i}", 3, pre_only=False)
    return shapes


def to_reference(model: FluxAudio) -> dict[str, torch.Tensor]:
    """Our weights as the reference stores them: renamed, qkv rows (head, head_dim, q/k/v),
    latent stats (1, 1, C), plus the empty-string features the reference carries."""
    config, heads = model.config, model.config.num_heads
    renames = [
        ("audio_input.", "audio_input_proj."),
        ("text_input.", "text_input_proj."),
        ("condition_input.", "text_cond_proj."),
        ("timestep_embedder.", "t_embed."),
        ("final_layer.modulation.", "final_layer.adaLN_modulation."),
        (".audio.", ".latent_block."),
        (".text.", ".text_block."),
        (".modulation.", ".adaLN_modulation."),
        (".qkv.", ".attn.qkv."),
        (".q_norm.", ".attn.q_norm."),
        (".k_norm.", ".attn.k_norm."),
        (".out_proj.", ".linear1."),
    ]
    reference = {}
    for name, tensor in model.state_dict().items():
        for ours, theirs in renames:
            name = name.replace(ours, theirs, 1) if ours in f".{name}" else name
        if name.endswith(("qkv.weight", "qkv.bias")):
            # reference row (h·head_dim + d)·3 + j <- our row j·D + h·head_dim + d
            rows = torch.empty_like(tensor)
            for j in range(3):
                for h in range(heads):
                    for d in range(config.head_dim):
                        ours = j * config.hidden_dim + h * config.head_dim + d
                        rows[(h * config.head_dim + d) * 3 + j] = tensor[ours]
            tensor = rows
        if name in ("latent_mean", "latent_std"):
            tensor = tensor.view(1, 1, -1)
        reference[name] = tensor.clone()
    reference["empty_string_feat"] = torch.randn(config.text_seq_len, config.text_dim)
    reference["empty_string_feat_c"] = torch.randn(config.condition_dim)
    reference["t_embed.freqs"] = torch.ones(128)  # non-persistent tables older code saved
    return reference


def source_model() -> FluxAudio:
    model = randomised(SMALL)
    with torch.no_grad():
        model.latent_mean.copy_(torch.linspace(-1, 1, SMALL.latent_dim))
        model.latent_std.copy_(torch.linspace(0.5, 2, SMALL.latent_dim))
    return model


def _outputs(model: FluxAudio) -> torch.Tensor:
    batch = inputs(model.config)
    del batch["quality_level"]
    with torch.no_grad():
        return model(**batch).velocity


# --------------------------------------------------------------------------- tests
def test_the_reference_layout_has_our_parameter_count() -> None:
    """FluxAudio-S and -L: the reference's tensors (without its empty-string features and
    latent stats) hold exactly as many numbers as our network's parameters."""
    for name in ("fluxaudio_s", "fluxaudio_l"):
        config = PRESETS[name]
        shapes = reference_shapes(config)
        extra = ("empty_string_feat", "empty_string_feat_c", "latent_mean", "latent_std")
        counted = sum(math.prod(shape) for key, shape in shapes.items() if key not in extra)
        with torch.device("meta"):
            ours = sum(p.numel() for p in FluxAudio(config).parameters())
        assert counted == ours


def test_our_weights_written_in_the_reference_layout_have_its_names_and_shapes() -> None:
    reference = to_reference(source_model())
    del reference["t_embed.freqs"]
    assert {k: tuple(v.shape) for k, v in reference.items()} == reference_shapes(SMALL)


def test_the_reference_qkv_split_reads_the_imported_rows_as_ours() -> None:
    """The reference splits with einops `b n (h d j) -> b h n d j` (j = q/k/v): after the row
    permutation, our `(3, heads, head_dim)` split of the same input gives the same q, k, v."""
    heads, head_dim = 4, 8
    weight = torch.randn(3 * heads * head_dim, heads * head_dim)
    x = torch.randn(2, 5, heads * head_dim)
    theirs = (x @ weight.T).unflatten(-1, (heads, head_dim, 3)).permute(4, 0, 2, 1, 3)
    ours_rows = qkv_rows_from_reference(weight, heads)
    ours = (x @ ours_rows.T).unflatten(-1, (3, heads, head_dim)).permute(2, 0, 3, 1, 4)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


@pytest.mark.parametrize("wrapped", ["bare", "ema", "training_checkpoint"])
def test_an_imported_checkpoint_computes_what_the_unpermuted_weights_compute(
    tmp_path: Path, wrapped: str
) -> None:
    model = source_model()
    reference = to_reference(model)
    saved = {
        "bare": reference,
        "ema": {f"ema_model.{k}": v for k, v in reference.items()},
        "training_checkpoint": {"it": 7, "weights": reference, "optimizer": {}},
    }[wrapped]
    torch.save(saved, tmp_path / "fluxaudio_s_ema_final.pth")
    out = tmp_path / "imported"
    config = import_checkpoint(tmp_path / "fluxaudio_s_ema_final.pth", out, SMALL.latent_seq_len)
    assert config == SMALL
    imported = checkpoints.load_backbone(out)
    torch.testing.assert_close(_outputs(imported), _outputs(model), rtol=0, atol=0)
    torch.testing.assert_close(imported.latent_std, model.latent_std)
    meta = checkpoints.read_final_meta(out)
    assert meta["stage"] == "import" and len(meta["source_sha256"]) == 64


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (
            lambda s: s.update({"r_embed.mlp.0.weight": torch.zeros(32, 256)}),
            "r_embed.mlp.0.weight",
        ),
        (lambda s: s.pop("fused_blocks.1.ffn.w2.weight"), "fused_blocks.1.ffn.w2.weight"),
        (lambda s: s.update({"joint_blocks.0.cross_attn.weight": torch.zeros(1)}), "cross_attn"),
        (lambda s: s.update({"final_layer.conv.bias": torch.zeros(9)}), "final_layer.conv.bias"),
        (lambda s: s.update({"latent_std": torch.full((1, 1, 6), math.nan)}), "latent_std"),
    ],
    ids=["meanaudio", "missing", "unexpected", "shape", "nan-stats"],
)
def test_what_cannot_be_mapped_is_refused_by_name(tmp_path: Path, change, named: str) -> None:
    reference = to_reference(source_model())
    change(reference)
    torch.save(reference, tmp_path / "model.pth")
    with pytest.raises(CheckpointImportError, match=named.replace(".", r"\.")):
        import_checkpoint(tmp_path / "model.pth", tmp_path / "out", SMALL.latent_seq_len)
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_init_from_fits_paper_003_modules_around_the_source(tmp_path: Path) -> None:
    model = source_model()
    torch.save(to_reference(model), tmp_path / "model.pth")
    import_checkpoint(tmp_path / "model.pth", tmp_path / "imported", SMALL.latent_seq_len)
    with_switches = replace(
        SMALL, quality_levels=5, side_interpolator=True, decode_layers=2, latent_seq_len=40
    )
    target = FluxAudio(with_switches)
    checkpoints.load_initial_backbone(target, tmp_path / "imported", "train.init_from")
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(target.state_dict()[name], tensor, rtol=0, atol=0)

    wider = FluxAudio(replace(SMALL, hidden_dim=48, num_heads=6))
    with pytest.raises(ValueError, match=r"finetune\.init_from: .*hidden_dim 32 there, 48 here"):
        checkpoints.load_initial_backbone(wider, tmp_path / "imported", "finetune.init_from")
    with pytest.raises(FileNotFoundError, match=r"train\.init_from: .*no trained model"):
        checkpoints.load_initial_backbone(target, tmp_path / "nowhere", "train.init_from")


@pytest.mark.slow
def test_pretrain_starts_from_init_from(latent_workspace, tmp_path: Path) -> None:
    """With a learning rate too small to move an fp32 weight (params require lr > 0),
    pretraining from `train.init_from` ends on the source's weights, bit for bit: the stage
    loaded them, latent statistics included."""
    source_dir, raw = latent_workspace
    root = tmp_path / "ws"
    shutil.copytree(source_dir, root)
    frozen = merge(raw, {"train": {"init_from": str(tmp_path / "start")}})
    frozen = merge(frozen, {"train": {"optim": {"learning_rate": 1e-30}}})
    params = Params.from_mapping(frozen)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        train_set, _ = training_stage.datasets(params, "pretrain")
        config = backbone_config(params.model, params.quality, cache_shapes(train_set))
        start = randomised(config, seed=3)
        checkpoints.save_final_model(
            tmp_path / "start", nn.ModuleDict({"backbone": start}), config, {"stage": "test"}
        )
        training_stage.run(params, "pretrain")
    trained = load_file(root / "checkpoints/pretrain/model.safetensors")
    for name, tensor in start.state_dict().items():
        torch.testing.assert_close(trained[f"backbone.{name}"], tensor, rtol=0, atol=0)
