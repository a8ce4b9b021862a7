"""benchmarks/training_throughput.py's profile summary: the share of a step in GEMM-bound
kernels, the ceiling the README quotes for fusion and layout changes."""

from __future__ import annotations

import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks.training_throughput import gemm_bound_share


def _share(function) -> float:
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        function()
    return gemm_bound_share(list(profiler.key_averages()))


def test_gemm_bound_share_counts_matmuls_and_not_elementwise_ops() -> None:
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(256, 256, generator=generator)

    assert _share(lambda: (a * 2 + 1).exp()) == 0.0
    assert _share(lambda: [a @ a for _ in range(8)]) > 0.9
    mixed = _share(lambda: (a @ a, [a.exp() for _ in range(8)]))
    assert 0.0 < mixed < 1.0
