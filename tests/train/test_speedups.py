"""The training and sampling speed-ups change the speed, not the numbers: the channels-last
convolutions, fused AdamW, torch.compile and the guidance pair's shared audio stem against
the reference kernels and the repeated input on fixed inputs."""

from __future__ import annotations

import copy

import pytest
import torch

from models import layers
from models.layers import CHANNELS_LAST_MAX_CHANNELS, ChannelLastConv1d, use_reference_kernels
from models.objective import FlowMatchingModel, TrainingBatch
from models.sampling import guided, solve
from tasks.common.generation import velocity_of
from tasks.params import Params, merge
from tasks.train.loop import build_optimizer
from tasks.train.model_factory import CacheShapes, backbone_config, build_model, objective_config

SHAPES = CacheShapes(
    frames=50, latent_dim=16, text_tokens=7, text_dim=24, condition_dim=12, clap_dim=12,
    teacher_dim=10,
)  # fmt: skip
TOLERANCE = {"rtol": 1e-4, "atol": 1e-5}  # fp32 round-off of reordered sums


def small_model(raw: dict, mask_ratio: float) -> tuple[FlowMatchingModel, Params]:
    overrides = {
        "model": {
            "latent_dim": SHAPES.latent_dim, "hidden_dim": 48, "num_heads": 2, "depth": 3,
            "fused_depth": 1,
            "latent_seq_len": SHAPES.frames, "text_seq_len": SHAPES.text_tokens,
            "masking": {"mask_ratio": mask_ratio},
            "repa": {"clap": {"weight": 0.2}, "muq": {"weight": 0.1}},
        }
    }  # fmt: skip
    params = Params.from_mapping(merge(raw, overrides))
    torch.manual_seed(0)
    config = backbone_config(params.model, params.quality, SHAPES)
    return build_model(config, params.model, SHAPES), params


def fixed_batch(levels: int) -> TrainingBatch:
    generator = torch.Generator().manual_seed(1)

    def normal(*shape: int) -> torch.Tensor:
        return torch.randn(shape, generator=generator)

    return TrainingBatch(
        latent=normal(4, SHAPES.frames, SHAPES.latent_dim),
        text=normal(4, SHAPES.text_tokens, SHAPES.text_dim),
        clap_text=normal(4, SHAPES.condition_dim),
        quality_level=torch.randint(1, levels + 1, (4,), generator=generator) if levels else None,
        score=torch.rand(4, generator=generator),
        clap_target=normal(4, SHAPES.clap_dim),
        frame_target=normal(4, SHAPES.frames, SHAPES.teacher_dim),
    )


def two_steps(model: FlowMatchingModel, params: Params, fused: bool, compiled: bool):
    """Losses of two AdamW steps on one batch, and the weights after them."""
    model = copy.deepcopy(model)
    optimizer, _ = build_optimizer(model, params.train.optim, fused=fused)
    forward = torch.compile(model) if compiled else model
    objective = objective_config(params.model, params.train.timestep)
    batch = fixed_batch(model.backbone.config.quality_levels)
    losses = []
    for step in range(2):
        terms = forward(batch, objective, torch.Generator().manual_seed(step))
        terms.total.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(torch.stack([terms.total, terms.flow_matching]).detach())
    return torch.stack(losses), torch.cat([p.detach().flatten() for p in model.parameters()])


@pytest.mark.parametrize("mask_ratio", [0.0, 0.3])
def test_channels_last_convolutions_and_fused_adamw_match_the_reference(
    shipped_params: dict, mask_ratio: float
) -> None:
    model, params = small_model(shipped_params, mask_ratio)
    assert any(m.channels_last_2d for m in model.modules() if isinstance(m, ChannelLastConv1d))
    fast_losses, fast_weights = two_steps(model, params, fused=True, compiled=False)
    use_reference_kernels(model)
    assert not any(m.channels_last_2d for m in model.modules() if isinstance(m, ChannelLastConv1d))
    slow_losses, slow_weights = two_steps(model, params, fused=False, compiled=False)
    torch.testing.assert_close(fast_losses, slow_losses, **TOLERANCE)
    torch.testing.assert_close(fast_weights, slow_weights, **TOLERANCE)
    assert not torch.equal(fast_weights, torch.cat([p.flatten() for p in model.parameters()]))


@pytest.mark.slow
def test_compiled_training_step_matches_eager(shipped_params: dict) -> None:
    model, params = small_model(shipped_params, 0.0)
    eager_losses, eager_weights = two_steps(model, params, fused=True, compiled=False)
    compiled_losses, compiled_weights = two_steps(model, params, fused=True, compiled=True)
    torch.testing.assert_close(compiled_losses, eager_losses, **TOLERANCE)
    torch.testing.assert_close(compiled_weights, eager_weights, **TOLERANCE)


@pytest.mark.parametrize("narrow_up_to", [CHANNELS_LAST_MAX_CHANNELS, 0])  # 0: all wide
def test_sampling_speed_ups_match_the_reference(
    shipped_params: dict, monkeypatch: pytest.MonkeyPatch, narrow_up_to: int
) -> None:
    """Channels-last convolutions (wide ones too: no autograd) and the audio stem shared by
    the guidance pair, against the plain Conv1d on x repeated for each condition set."""
    monkeypatch.setattr(layers, "CHANNELS_LAST_MAX_CHANNELS", narrow_up_to)
    model, params = small_model(shipped_params, 0.0)
    backbone = model.backbone.eval()
    torch.nn.init.normal_(backbone.final_layer.conv.weight, std=0.02)  # zero-init: not trivial
    batch = fixed_batch(backbone.config.quality_levels)
    condition = {"text": batch.text, "clap_text": batch.clap_text}
    null = {"text": torch.zeros_like(batch.text), "clap_text": torch.zeros_like(batch.clap_text)}
    if batch.quality_level is not None:
        condition["quality_level"] = null["quality_level"] = batch.quality_level
    noise = torch.randn(batch.latent.shape, generator=torch.Generator().manual_seed(2))

    def sample(share_input: bool) -> torch.Tensor:
        velocity_fn = velocity_of(backbone, share_input)
        velocity = guided(velocity_fn, condition, null, params.sample.cfg_scale)
        with torch.inference_mode():
            return solve(velocity, noise, 5, params.sample.solver)

    fast = sample(share_input=True)
    use_reference_kernels(backbone)
    torch.testing.assert_close(sample(share_input=False), fast, **TOLERANCE)
    assert fast.abs().max() > 0


def test_stacked_condition_sets_must_divide_the_batch(shipped_params: dict) -> None:
    model, _ = small_model(shipped_params, 0.0)
    batch = fixed_batch(model.backbone.config.quality_levels)
    with pytest.raises(ValueError, match="multiple of x"):
        model.backbone(batch.latent[:3], torch.rand(3), batch.text, batch.clap_text)


def test_the_backbone_compiles_as_one_graph(shipped_params: dict) -> None:
    """`train.compile` pays only if Dynamo captures the backbone whole: a data-dependent check
    (e.g. on the RoPE positions' values) would split it and sync the device on every call."""
    model, _ = small_model(shipped_params, 0.0)
    batch = fixed_batch(model.backbone.config.quality_levels)
    t = torch.rand(batch.latent.shape[0], generator=torch.Generator().manual_seed(0))
    explained = torch._dynamo.explain(model.backbone)(
        batch.latent, t, batch.text, batch.clap_text, batch.quality_level
    )
    assert explained.graph_break_count == 0, [b.reason for b in explained.break_reasons]
