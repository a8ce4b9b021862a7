"""The backbone on CUDA (`gpu` marker: skipped where no CUDA device is visible, as in CI).

The same weights and inputs give the same velocity on the GPU as on the CPU in fp32, and a
bf16-autocast forward stays within bf16's precision of it: what `accelerate`'s
`mixed_precision: bf16` relies on at paper scale.
"""

from __future__ import annotations

import pytest
import torch

from tests.models.test_fluxaudio import TINY, inputs, randomised

pytestmark = pytest.mark.gpu


def _velocity(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return model(batch["x"], batch["t"], batch["text"], batch["clap_text"]).velocity


def test_cuda_forward_matches_cpu_and_bf16_stays_close() -> None:
    model, batch = randomised(TINY), inputs(TINY)
    with torch.no_grad():
        reference = _velocity(model, batch)
        cuda_model = model.to("cuda")
        cuda_batch = {key: value.to("cuda") for key, value in batch.items()}
        on_gpu = _velocity(cuda_model, cuda_batch).float().cpu()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            in_bf16 = _velocity(cuda_model, cuda_batch).float().cpu()
    torch.testing.assert_close(on_gpu, reference, rtol=1e-3, atol=1e-4)
    scale = reference.abs().mean()
    assert (in_bf16 - reference).abs().mean() < 0.05 * scale


def _training_setup(mixed_precision: str):
    """The trainer's pieces on a small model: accelerate, AdamW, a fixed batch."""
    from accelerate import Accelerator

    from tasks.params import read_yaml
    from tasks.train.loop import build_optimizer
    from tasks.train.model_factory import objective_config
    from tests.conftest import REPO
    from tests.train.test_speedups import fixed_batch, small_model

    model, params = small_model(read_yaml(REPO / "params.yaml"), mask_ratio=0.0)
    accelerator = Accelerator(mixed_precision=mixed_precision)
    optimizer, _ = build_optimizer(model, params.train.optim)
    wrapped, optimizer = accelerator.prepare(model, optimizer)
    batch = fixed_batch(model.backbone.config.quality_levels)
    batch = type(batch)(*(None if v is None else v.to(accelerator.device) for v in batch))
    objective = objective_config(params.model, params.train.timestep)
    return accelerator, model, wrapped, optimizer, batch, objective


def test_trainer_bf16_autocast_step_on_one_gpu_with_accelerate() -> None:
    """What the pretrain stage runs with `mixed_precision: bf16` on a GPU: accelerate puts
    the model on CUDA, the loss under its autocast is within bf16 precision of fp32's, and
    the fused AdamW step moves every trained weight and keeps it finite."""
    results = {}
    for precision in ("no", "bf16"):
        accelerator, model, wrapped, optimizer, batch, objective = _training_setup(precision)
        assert accelerator.device.type == "cuda"
        before = [p.detach().clone() for p in model.parameters() if p.requires_grad]
        generator = torch.Generator(device=accelerator.device).manual_seed(0)
        with accelerator.autocast():
            terms = wrapped(batch, objective, generator)
        accelerator.backward(terms.total)
        optimizer.step()
        after = [p.detach() for p in model.parameters() if p.requires_grad]
        assert all(torch.isfinite(p).all() for p in after)
        moved = sum(not torch.equal(a, b) for a, b in zip(after, before, strict=True))
        assert moved > 0.9 * len(after)
        results[precision] = float(terms.flow_matching)
    assert abs(results["bf16"] - results["no"]) < 0.05 * abs(results["no"])


def test_cuda_sampling_matches_cpu() -> None:
    """Guided Euler sampling (the evaluate stage's) on CUDA in fp32 matches the CPU's."""
    from models.sampling import guided, solve
    from tasks.common.generation import velocity_of

    model, batch = randomised(TINY), inputs(TINY)
    condition = {"text": batch["text"], "clap_text": batch["clap_text"]}
    null = {key: torch.zeros_like(value) for key, value in condition.items()}
    noise = torch.randn(batch["x"].shape, generator=torch.Generator().manual_seed(3))

    def sample(device: str) -> torch.Tensor:
        backbone = model.to(device).eval()
        on = {key: value.to(device) for key, value in condition.items()}
        off = {key: value.to(device) for key, value in null.items()}
        with torch.inference_mode():
            return solve(guided(velocity_of(backbone), on, off, 3.5), noise.to(device), 10, "euler")

    on_cpu = sample("cpu")
    torch.testing.assert_close(sample("cuda").cpu(), on_cpu, rtol=1e-3, atol=1e-3)
