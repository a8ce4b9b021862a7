"""The backbone on CUDA (`gpu` marker: skipped where no CUDA device is visible, as in CI,
unless TTM_GPU_TESTS_DEVICE=cpu runs the same bodies on the CPU: the dry run of
benchmarks/gpu_check.sh, which checks them end to end before GPU time is spent on them).

The same weights and inputs give the same velocity on the GPU as on the CPU in fp32, and a
bf16-autocast forward stays within bf16's precision of it: what `accelerate`'s
`mixed_precision: bf16` relies on at paper scale.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import torch

from tests.models.test_fluxaudio import TINY, inputs, randomised

pytestmark = pytest.mark.gpu


@pytest.fixture
def device() -> str:
    return "cuda" if torch.cuda.is_available() else os.environ["TTM_GPU_TESTS_DEVICE"]


@pytest.fixture
def exact_fp32() -> Iterator[None]:
    """fp32 on CUDA without TF32: cuDNN convolutions use TF32 by default (10-bit mantissa),
    which the first H200 run measured at 0.016 from the CPU's velocity; the comparisons with
    the CPU are of fp32 arithmetic, so they switch it off."""
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        matmul = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = False
        try:
            yield
        finally:
            torch.backends.cuda.matmul.allow_tf32 = matmul


@pytest.fixture
def fresh_accelerate() -> Iterator[None]:
    """accelerate keeps one state per process: reset it around a test that changes it."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def _velocity(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return model(**batch).velocity  # the quality token's level included


def test_cuda_forward_matches_cpu_and_bf16_stays_close(device: str, exact_fp32: None) -> None:
    model, batch = randomised(TINY), inputs(TINY)
    with torch.no_grad():
        reference = _velocity(model, batch)
        cuda_model = model.to(device)
        cuda_batch = {key: value.to(device) for key, value in batch.items()}
        on_gpu = _velocity(cuda_model, cuda_batch).float().cpu()
        with torch.autocast(device, dtype=torch.bfloat16):
            in_bf16 = _velocity(cuda_model, cuda_batch).float().cpu()
    torch.testing.assert_close(on_gpu, reference, rtol=1e-3, atol=1e-4)
    scale = reference.abs().mean()
    assert (in_bf16 - reference).abs().mean() < 0.05 * scale


def _training_setup(mixed_precision: str, device: str):
    """The trainer's pieces on a small model: accelerate, AdamW, a fixed batch."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    from tasks.params import read_yaml
    from tasks.train.loop import build_optimizer
    from tasks.train.model_factory import objective_config
    from tests.conftest import REPO
    from tests.train.test_speedups import fixed_batch, small_model

    model, params = small_model(read_yaml(REPO / "params.yaml"), mask_ratio=0.0)
    with torch.no_grad():  # adaLN-Zero: zero gates pass no gradient to their blocks at step 0
        for weight in model.parameters():
            if not weight.any():
                weight.normal_(0.0, 0.02, generator=torch.Generator().manual_seed(weight.numel()))
    AcceleratorState._reset_state(reset_partial_state=True)  # one precision per process else
    accelerator = Accelerator(mixed_precision=mixed_precision, cpu=device == "cpu")
    optimizer, _ = build_optimizer(model, params.train.optim)
    wrapped, optimizer = accelerator.prepare(model, optimizer)
    batch = fixed_batch(model.backbone.config.quality_levels)
    batch = type(batch)(*(None if v is None else v.to(accelerator.device) for v in batch))
    objective = objective_config(params.model, params.train.timestep)
    return accelerator, model, wrapped, optimizer, batch, objective


def test_trainer_bf16_autocast_step_on_one_gpu_with_accelerate(
    device: str, fresh_accelerate: None
) -> None:
    """What the pretrain stage runs with `mixed_precision: bf16` on a GPU: accelerate puts
    the model on CUDA, the loss under its autocast is within bf16 precision of fp32's, and
    the fused AdamW step moves the trained weights (all but those no loss reaches: the mask
    token at mask ratio 0) and keeps them finite."""
    results, moved_by = {}, {}
    for precision in ("no", "bf16"):
        accelerator, model, wrapped, optimizer, batch, objective = _training_setup(
            precision, device
        )
        assert accelerator.device.type == device
        before = [p.detach().clone() for p in model.parameters() if p.requires_grad]
        generator = torch.Generator(device=accelerator.device).manual_seed(0)
        with accelerator.autocast():
            terms = wrapped(batch, objective, generator)
        accelerator.backward(terms.total)
        optimizer.step()
        after = [p.detach() for p in model.parameters() if p.requires_grad]
        assert all(torch.isfinite(p).all() for p in after)
        moved = [not torch.equal(a, b) for a, b in zip(after, before, strict=True)]
        assert sum(moved) > 0.9 * len(after)
        results[precision], moved_by[precision] = float(terms.flow_matching.detach()), moved
    assert abs(results["bf16"] - results["no"]) < 0.05 * abs(results["no"])
    assert moved_by["bf16"] == moved_by["no"]  # no gradient lost to bf16


def test_cuda_sampling_matches_cpu(device: str, exact_fp32: None) -> None:
    """Guided Euler sampling (the evaluate stage's) on CUDA in fp32 matches the CPU's."""
    from models.sampling import guided, solve
    from tasks.common.generation import velocity_of

    model, batch = randomised(TINY), inputs(TINY)
    condition = {"text": batch["text"], "clap_text": batch["clap_text"]}
    null = {key: torch.zeros_like(value) for key, value in condition.items()}
    condition["quality_level"] = null["quality_level"] = batch["quality_level"]
    noise = torch.randn(batch["x"].shape, generator=torch.Generator().manual_seed(3))

    def sample(device: str) -> torch.Tensor:
        backbone = model.to(device).eval()
        on = {key: value.to(device) for key, value in condition.items()}
        off = {key: value.to(device) for key, value in null.items()}
        with torch.inference_mode():
            return solve(guided(velocity_of(backbone), on, off, 3.5), noise.to(device), 10, "euler")

    on_cpu = sample("cpu")
    torch.testing.assert_close(sample(device).cpu(), on_cpu, rtol=1e-3, atol=1e-3)
