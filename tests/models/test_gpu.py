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
