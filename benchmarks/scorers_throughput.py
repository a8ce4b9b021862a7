"""Scorer speed for `curate`: `python -m benchmarks.scorers_throughput [--segments N]`.

Times the embedded CLAP audio tower and the p-MOS regressor on N random segments of
`curate.segment_seconds` at `scorers.sample_rate`, in batches of `curate.batch_size`, and
prints segments/s and the real-time factor (seconds of audio scored per wall-clock second)
of each, then the same through the score cache: a cold run (hash + compute + sqlite commit)
and a warm one (hash + lookup only), which is what a `curate` rerun costs. Weights are the
trained ones under artifacts/scorers when present, else random (speed does not depend on
them).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from models.scorers import (
    MelConfig,
    QualityRegressor,
    QualityRegressorConfig,
    TinyClap,
    TinyClapConfig,
)
from tasks.backends.base import stack_clips
from tasks.backends.embedded import load_checkpoint
from tasks.common.score_cache import BatchFunction, CachedScorer, ScoreCache
from tasks.params import Params, load_params

TEXT_INPUT_DIM = 384  # MiniLM-L6's sentence embedding (unused here: audio only)


def build_models(params: Params) -> tuple[TinyClap, QualityRegressor, str]:
    """The scorers at the params sizes: trained checkpoints if present, else random init."""
    clap_path, quality_path = params.backends.clap.path, params.backends.quality.path
    if clap_path and quality_path and Path(clap_path).exists() and Path(quality_path).exists():
        clap, _ = load_checkpoint(clap_path, "backends.clap.path", "tiny_clap")
        quality, _ = load_checkpoint(quality_path, "backends.quality.path", "quality")
        return clap, quality, "trained checkpoints"  # type: ignore[return-value]
    s = params.scorers
    mel = MelConfig(sample_rate=s.sample_rate, n_mels=s.n_mels, frame_rate=s.frame_rate)
    torch.manual_seed(params.seed)
    clap = TinyClap(TinyClapConfig(mel, s.clap_channels, s.embed_dim, TEXT_INPUT_DIM))
    quality = QualityRegressor(QualityRegressorConfig(mel, s.quality_channels))
    return clap.eval(), quality.eval(), "random init"


def as_batch_function(model: TinyClap | QualityRegressor) -> BatchFunction:
    """The embedded backends' audio path: stack (and resample) clips, one forward."""
    rate = model.config.mel.sample_rate
    forward = model.embed_audio if isinstance(model, TinyClap) else model

    @torch.inference_mode()
    def run(waveforms: Sequence[np.ndarray], sample_rate: int) -> np.ndarray:
        return forward(torch.from_numpy(stack_clips(waveforms, sample_rate, rate))).numpy()

    return run


def random_segments(count: int, samples: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [(0.1 * rng.standard_normal(samples)).astype(np.float32) for _ in range(count)]


def timed(function, *args) -> float:
    started = time.perf_counter()
    function(*args)
    return time.perf_counter() - started


def in_batches(function: BatchFunction, segments: list[np.ndarray], rate: int, batch: int) -> None:
    for start in range(0, len(segments), batch):
        function(segments[start : start + batch], rate)


def report(name: str, count: int, seconds: float, audio_seconds: float) -> None:
    print(
        f"{name:<28} {count / seconds:8.1f} segments/s   "
        f"real-time factor {audio_seconds / seconds:8.0f}x   ({seconds:.2f} s)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--segments", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=None, help="default: curate.batch_size")
    args = parser.parse_args()
    params = load_params()
    batch = args.batch_size or params.curate.batch_size
    rate, seconds = params.scorers.sample_rate, params.curate.segment_seconds
    clap, quality, weights = build_models(params)
    segments = random_segments(args.segments, round(seconds * rate), params.seed)
    audio_seconds = args.segments * seconds
    print(
        f"{args.segments} segments of {seconds:g} s at {rate} Hz, batch {batch}, {weights}, "
        f"{torch.get_num_threads()} torch threads"
    )
    for name, model, table in (("clap audio", clap, "clap_audio"), ("p-MOS", quality, "pmos")):
        function = as_batch_function(model)
        function(segments[:batch], rate)  # warm-up: allocator, kernels
        elapsed = timed(in_batches, function, segments, rate, batch)
        report(name, args.segments, elapsed, audio_seconds)
        with tempfile.TemporaryDirectory() as scratch, ScoreCache(Path(scratch)) as cache:
            scorer = CachedScorer(cache, table, "benchmark", function, batch)
            for state in ("cold", "warm"):
                elapsed = timed(scorer.run, segments, rate)
                report(f"{name}, cache {state}", args.segments, elapsed, audio_seconds)


if __name__ == "__main__":
    main()
