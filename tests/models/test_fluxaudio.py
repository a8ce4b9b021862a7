"""The backbone and its switches: sizes, masking, quality token, REPA (paper 000 §III-A, Table
II; paper 003 §4.1-4.2)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch import nn

from models.fluxaudio import PRESETS, FluxAudio, FluxAudioConfig, trainable_parameters
from models.masking import masked_positions, random_keep_indices
from models.objective import ObjectiveConfig, RepaTerm, TrainingBatch, training_loss
from models.repa import clap_alignment_loss
from tasks.params import Params, merge, read_yaml
from tasks.train.model_factory import CacheShapes, backbone_config, build_model
from tests.conftest import REPO

TINY = FluxAudioConfig(
    latent_dim=8,
    hidden_dim=32,
    num_heads=2,
    depth=4,
    fused_depth=2,
    latent_seq_len=24,
    text_seq_len=6,
    text_dim=12,
    condition_dim=10,
    mlp_ratio=2.0,
    quality_levels=5,
    decode_layers=2,
    side_interpolator=True,
)
PAPER_SHAPES = CacheShapes(250, 64, 77, 1024, 512, 512, 1024)


def randomised(config: FluxAudioConfig, seed: int = 0) -> FluxAudio:
    """A model whose zero-initialised gates are not zero, so every path carries signal."""
    torch.manual_seed(seed)
    model = FluxAudio(config)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.2)
    return model


def inputs(config: FluxAudioConfig, batch: int = 3, seed: int = 1) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {
        "x": torch.randn(batch, config.latent_seq_len, config.latent_dim, generator=generator),
        "t": torch.rand(batch, generator=generator),
        "text": torch.randn(batch, config.text_seq_len, config.text_dim, generator=generator),
        "clap_text": torch.randn(batch, config.condition_dim, generator=generator),
        "quality_level": torch.tensor([1, 3, 5][:batch]),
    }


# --------------------------------------------------------------------------- sizes
def _count(config: FluxAudioConfig) -> int:
    with torch.device("meta"):
        return trainable_parameters(FluxAudio(config))


def test_table_ii_model_has_449m_parameters() -> None:
    """Paper 000's "≈450M": 896 wide, 7 heads, 12 blocks of which 10 fused (docs/reference.md
    §A.2)."""
    assert _count(PRESETS["table2_450m"]) == pytest.approx(449.1e6, rel=1e-3)


def test_fluxaudio_s_has_the_reference_120m_parameters() -> None:
    assert _count(PRESETS["fluxaudio_s"]) == pytest.approx(120.1e6, rel=1e-3)
    assert _count(PRESETS["fluxaudio_l"]) == pytest.approx(478.4e6, rel=1e-3)


@pytest.mark.parametrize(
    ("overlay", "expected"),
    [("table2_450m.yaml", 449.1e6), ("fluxaudio_s_ablation.yaml", 120.3e6)],
)
def test_params_overlays_build_the_paper_sizes(overlay: str, expected: float) -> None:
    """Through params -> config: the shipped overlays are the paper's models (FluxAudio-S
    with ACE-Step's 64 channels at 250 frames is 0.2M above the baseline's 20-channel one)."""
    raw = read_yaml(REPO / "params.yaml")
    for name in ("paper_scale.yaml", overlay):
        raw = merge(raw, read_yaml(REPO / "params" / name))
    params = Params.from_mapping(raw)
    config = backbone_config(params.model, params.quality, PAPER_SHAPES)
    assert _count(config) == pytest.approx(expected, rel=1e-3)


def test_depth_counts_all_blocks() -> None:
    model = FluxAudio(TINY)
    assert len(model.joint_blocks) == 2 and len(model.fused_blocks) == 2
    assert model.joint_blocks[-1].text.pre_only and not model.joint_blocks[0].text.pre_only


# --------------------------------------------------------------------------- forward
def test_fresh_model_predicts_zero_velocity() -> None:
    """Zero-initialised output layer (docs/reference.md §A.3): training starts from v = 0."""
    model = FluxAudio(TINY)
    out = model(**inputs(TINY))
    assert out.velocity.shape == (3, TINY.latent_seq_len, TINY.latent_dim)
    assert out.hidden.shape == (3, TINY.latent_seq_len, TINY.hidden_dim)
    assert torch.count_nonzero(out.velocity) == 0


def test_quality_token_steers_the_output_and_is_required() -> None:
    model = randomised(TINY)
    batch = inputs(TINY)
    low = model(**{**batch, "quality_level": torch.tensor([1, 1, 1])}).velocity
    high = model(**{**batch, "quality_level": torch.tensor([5, 5, 5])}).velocity
    assert not torch.allclose(low, high)
    with pytest.raises(ValueError, match="quality_level"):
        model(**{**batch, "quality_level": None})


def test_without_quality_token_the_level_is_ignored() -> None:
    config = replace(TINY, quality_levels=0)
    model = randomised(config)
    batch = inputs(config)
    a = model(**batch).velocity
    b = model(**{**batch, "quality_level": None}).velocity
    torch.testing.assert_close(a, b)


def test_stacked_condition_sets_evaluate_x_under_each() -> None:
    """Guidance's call: x and t once, n condition sets stacked set-major, equals x and t
    repeated n times (the audio stem then runs once: models/sampling.py `guided`)."""
    model = randomised(TINY).eval()
    first, second = inputs(TINY, seed=1), inputs(TINY, seed=2)
    stacked = {key: torch.cat([first[key], second[key]]) for key in first}
    shared = model(**{**stacked, "x": first["x"], "t": first["t"]})
    repeated = model(**{**stacked, "x": first["x"].repeat(2, 1, 1), "t": first["t"].repeat(2)})
    torch.testing.assert_close(shared.velocity, repeated.velocity)
    torch.testing.assert_close(shared.hidden, repeated.hidden)
    with pytest.raises(ValueError, match="multiple of x"):
        model(**{**stacked, "x": stacked["x"][:4], "t": stacked["t"][:4]})


def test_longer_latent_than_the_rope_table_is_refused() -> None:
    model = FluxAudio(TINY)
    batch = inputs(TINY)
    batch["x"] = torch.randn(3, TINY.latent_seq_len + 1, TINY.latent_dim)
    with pytest.raises(ValueError, match="latent_seq_len"):
        model(**batch)


# --------------------------------------------------------------------------- MDT masking
def _block_inputs(model: FluxAudio) -> list[torch.Tensor]:
    seen: list[torch.Tensor] = []
    blocks = [*model.joint_blocks, *model.fused_blocks]
    for block in blocks:
        block.register_forward_hook(lambda _m, args, _o: seen.append(args[0].detach().clone()))
    return seen


def test_masked_frames_never_reach_the_encoder_blocks() -> None:
    model = randomised(TINY)
    batch = inputs(TINY)
    keep = random_keep_indices(3, TINY.latent_seq_len, 0.4, torch.Generator().manual_seed(2))
    hidden = masked_positions(keep, TINY.latent_seq_len)
    seen = _block_inputs(model)
    model(**batch, keep=keep)
    clean = list(seen)
    seen.clear()
    perturbed = batch["x"].clone()
    perturbed[hidden] += 100.0 * torch.randn_like(perturbed[hidden])
    model(**{**batch, "x": perturbed}, keep=keep)
    encoder = TINY.depth - TINY.decode_layers
    kept = keep.shape[1]
    for index in range(encoder):  # the quality token + the kept frames only, unchanged
        assert seen[index].shape[1] == 1 + kept
        torch.testing.assert_close(seen[index], clean[index])
    for index in range(encoder, TINY.depth):  # the decoder sees every position, where the
        assert seen[index].shape[1] == 1 + TINY.latent_seq_len  # hidden ones hold mask tokens
        torch.testing.assert_close(seen[index], clean[index])


def test_quality_token_is_never_masked() -> None:
    model = randomised(TINY)
    batch = inputs(TINY)
    keep = random_keep_indices(3, TINY.latent_seq_len, 0.5, torch.Generator().manual_seed(3))
    seen = _block_inputs(model)
    model(**batch, keep=keep)
    token = model.quality_embedding(batch["quality_level"] - 1)
    torch.testing.assert_close(seen[0][:, 0], token)


def test_keeping_every_frame_equals_the_unmasked_model() -> None:
    """Gather, RoPE at the kept frames' own positions and scatter are exact bookkeeping."""
    model = randomised(TINY)
    batch = inputs(TINY)
    everything = torch.arange(TINY.latent_seq_len).expand(3, -1)
    torch.testing.assert_close(
        model(**batch, keep=everything).velocity, model(**batch).velocity, rtol=1e-4, atol=1e-4
    )


def test_masking_needs_the_side_interpolator() -> None:
    model = FluxAudio(replace(TINY, side_interpolator=False))
    keep = torch.arange(4).expand(3, -1)
    with pytest.raises(ValueError, match="side interpolator"):
        model(**inputs(TINY), keep=keep)


# --------------------------------------------------------------------------- REPA
SHAPES = CacheShapes(24, 8, 6, 12, 10, 7, 5)


def _model_params(clap_weight: float, muq_weight: float) -> Params:
    raw = merge(
        read_yaml(REPO / "params.yaml"),
        {
            "model": {
                "latent_dim": 8,
                "hidden_dim": 32,
                "num_heads": 2,
                "depth": 4,
                "fused_depth": 2,
                "latent_seq_len": 24,
                "text_seq_len": 6,
                "repa": {
                    "clap": {"weight": clap_weight, "projector_dim": 16},
                    "muq": {"weight": muq_weight, "projector_dim": 16},
                },
            }
        },
    )
    return Params.from_mapping(raw)


def _batch(generator: torch.Generator) -> TrainingBatch:
    return TrainingBatch(
        latent=torch.randn(3, 24, 8, generator=generator),
        text=torch.randn(3, 6, 12, generator=generator),
        clap_text=torch.randn(3, 10, generator=generator),
        quality_level=torch.tensor([1, 2, 5]),
        score=torch.rand(3, generator=generator),
        clap_target=torch.randn(3, 7, generator=generator),
        frame_target=torch.randn(3, 24, 5, generator=generator),
    )


def _objective(clap: float, muq: float, mask_ratio: float = 0.0) -> ObjectiveConfig:
    return ObjectiveConfig(
        "uniform", 0.0, 1.0, 1.0, mask_ratio, 0.2, RepaTerm(clap, 2.0), RepaTerm(muq, 2.0)
    )


def test_repa_gradient_reaches_the_backbone() -> None:
    params = _model_params(0.2, 0.1)
    model = build_model(backbone_config(params.model, params.quality, SHAPES), params.model, SHAPES)
    for parameter in model.backbone.parameters():
        nn.init.normal_(parameter, std=0.1)
    batch = _batch(torch.Generator().manual_seed(0))
    out = model.backbone(
        batch.latent, torch.rand(3), batch.text, batch.clap_text, batch.quality_level
    )
    clap_alignment_loss(out.hidden, model.clap_head, batch.clap_target).mean().backward()
    first_block = model.backbone.joint_blocks[0].audio.qkv.weight.grad
    assert first_block is not None and first_block.abs().sum() > 0
    assert model.backbone.final_layer.conv.weight.grad is None  # REPA taps before the head
    terms = training_loss(model, batch, _objective(0.2, 0.1), torch.Generator().manual_seed(1))
    assert terms.repa_clap is not None and terms.repa_frames is not None


def test_zero_repa_weight_removes_the_head_from_the_graph() -> None:
    params = _model_params(0.0, 0.0)
    model = build_model(backbone_config(params.model, params.quality, SHAPES), params.model, SHAPES)
    assert model.clap_head is None and model.frame_head is None
    batch = _batch(torch.Generator().manual_seed(0))
    terms = training_loss(model, batch, _objective(0.0, 0.0), torch.Generator().manual_seed(1))
    assert terms.repa_clap is None and terms.repa_frames is None
    torch.testing.assert_close(terms.total, terms.flow_matching)


def test_model_overfits_one_batch_with_every_switch_on() -> None:
    params = _model_params(0.2, 0.1)
    params = Params.from_mapping(
        merge(params.model_dump(), {"model": {"masking": {"mask_ratio": 0.3}}})
    )
    config = backbone_config(params.model, params.quality, SHAPES)
    torch.manual_seed(0)
    model = build_model(config, params.model, SHAPES)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    batch = _batch(torch.Generator().manual_seed(0))
    objective = _objective(0.2, 0.1, mask_ratio=0.3)
    losses = []
    for _ in range(60):
        terms = training_loss(model, batch, objective, torch.Generator().manual_seed(5))
        optimizer.zero_grad()
        terms.total.backward()
        optimizer.step()
        losses.append(terms.total.item())
    assert losses[-1] < 0.3 * losses[0]
