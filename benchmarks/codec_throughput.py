"""Codec speed for `latents`: `python -m benchmarks.codec_throughput [--ace-step DIR] ...`.

For each codec: windows of `curate.segment_seconds` of rendered corpus tracks at
`data.sample_rate` (what the `latents` stage feeds it, resampling included), encoded in
batches of `latents.batch_size` (segments/s, median of `--repeats` batches after a
warm-up); decode seconds per segment (median over `--decode-segments`, one per call);
the real-time factors of both (seconds of audio per wall-clock second: the
machine-relative figure, as in the other benchmarks, since these machines are shared);
float32 latent bytes per hour of audio; and the round-trip error encode -> decode ->
encode in units of the latents' per-channel standard deviation (the scale the `latents`
stage normalises to). `mel25` always runs; `ace-step` and `audioldm2` need a local
checkpoint directory.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from tasks.backends.base import CodecBackend
from tasks.backends.codec import load_codec
from tasks.params import BackendChoice, Params, load_params
from tasks.synthesis.arrangement import render, sample_track_spec

FLOAT32_BYTES = 4


@dataclass(frozen=True)
class Workload:
    seconds: float
    sample_rate: int
    batch_size: int
    repeats: int
    decode_segments: int
    seed: int


def corpus_segments(count: int, workload: Workload) -> list[np.ndarray]:
    """One window of `seconds` from each of `count` freshly rendered corpus tracks."""
    samples = round(workload.seconds * workload.sample_rate)
    segments = []
    for index in range(count):
        rng = np.random.default_rng([workload.seed, index])
        longer = workload.seconds + 2.0
        spec = sample_track_spec(f"bench{index}", rng, longer, longer + 4.0, 1, 3)
        audio = render(spec, workload.sample_rate)
        segments.append(audio[workload.sample_rate : workload.sample_rate + samples])
    return segments


def median_seconds(function: Callable[[], object], repeats: int) -> float:
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        timings.append(time.perf_counter() - started)
    return statistics.median(timings)


def round_trip_error(codec: CodecBackend, latents: np.ndarray, audio: np.ndarray) -> float:
    """Mean |z' - z| over the per-channel std of z, where z' encodes the decoded audio."""
    again = codec.encode(list(audio), codec.sample_rate)
    frames = min(again.shape[1], latents.shape[1])
    std = latents.reshape(-1, latents.shape[-1]).std(axis=0) + 1e-8
    return float(np.mean(np.abs(again[:, :frames] - latents[:, :frames]) / std))


def benchmark(name: str, codec: CodecBackend, workload: Workload) -> None:
    batch = corpus_segments(workload.batch_size, workload)
    rate = workload.sample_rate
    codec.encode(batch, rate)  # warm-up: allocator, kernels, filterbanks
    encode_s = median_seconds(lambda: codec.encode(batch, rate), workload.repeats)
    latents = codec.encode(batch[: workload.decode_segments], rate)
    decode_timings, decoded = [], []
    for index in range(workload.decode_segments):
        started = time.perf_counter()
        decoded.append(codec.decode(latents[index : index + 1])[0])
        decode_timings.append(time.perf_counter() - started)
    decode_s = statistics.median(decode_timings)
    bytes_per_hour = codec.frame_rate * 3600 * codec.latent_dim * FLOAT32_BYTES
    segments_per_s = workload.batch_size / encode_s
    error = round_trip_error(codec, latents, np.stack(decoded))
    print(
        f"{name:<10} latents {codec.frame_rate:g} Hz x {codec.latent_dim} (grid {codec.grid})\n"
        f"  encode  {segments_per_s:8.2f} segments/s  real-time factor "
        f"{segments_per_s * workload.seconds:8.1f}x  ({encode_s:.3f} s per batch)\n"
        f"  decode  {decode_s:8.3f} s/segment   real-time factor "
        f"{workload.seconds / decode_s:8.1f}x\n"
        f"  cache   {bytes_per_hour / 1e6:8.2f} MB of float32 latents per hour of audio\n"
        f"  round trip  mean |z' - z| = {error:.3f} per-channel std"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ace-step", metavar="DIR", help="ACE-Step 1.5 VAE directory")
    parser.add_argument("--audioldm2", metavar="DIR", help="AudioLDM2 pipeline directory")
    parser.add_argument("--batch-size", type=int, default=None, help="default: latents.batch_size")
    parser.add_argument("--repeats", type=int, default=3, help="timed encode batches")
    parser.add_argument("--decode-segments", type=int, default=3)
    args = parser.parse_args()
    params: Params = load_params()
    batch_size = args.batch_size or params.latents.batch_size
    workload = Workload(
        seconds=params.curate.segment_seconds,
        sample_rate=params.data.sample_rate,
        batch_size=batch_size,
        repeats=args.repeats,
        decode_segments=min(args.decode_segments, batch_size),
        seed=params.seed,
    )
    print(
        f"{workload.seconds:g} s segments at {workload.sample_rate} Hz, encode batch "
        f"{workload.batch_size}, {torch.get_num_threads()} torch threads"
    )
    for name, path in (("mel25", None), ("ace-step", args.ace_step), ("audioldm2", args.audioldm2)):
        if name != "mel25" and path is None:
            print(f"{name:<10} skipped: needs a local checkpoint (--{name} DIR)")
            continue
        codec = load_codec(BackendChoice(name=name, path=path), params.latents.mel25)
        benchmark(name, codec, workload)


if __name__ == "__main__":
    main()
