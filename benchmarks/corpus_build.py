"""Corpus generation speed: `python -m benchmarks.corpus_build [--tracks N]`.

Prints wall time, the real-time factor (seconds of audio made per wall-clock second) and
the parallel speed-up of 2 workers over 1 — ratios, since these machines are shared.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from tasks.corpus.stage import build_corpus
from tasks.params import Params, merge, read_yaml


def measure(params: Params, workers: int) -> tuple[float, float]:
    data = params.data.model_copy(update={"workers": workers})
    with tempfile.TemporaryDirectory() as scratch:
        started = time.perf_counter()
        corpus = build_corpus(data, params.seed, params.curate.segment_seconds, Path(scratch))
        elapsed = time.perf_counter() - started
    return elapsed, float(corpus.tracks["duration_s"].sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracks", type=int, default=240, help="corpus size (default: params)")
    args = parser.parse_args()
    raw = merge(read_yaml(Path("params.yaml")), {"data": {"num_tracks": args.tracks}})
    params = Params.from_mapping(raw)
    results = {workers: measure(params, workers) for workers in (1, 2)}
    for workers, (elapsed, audio_seconds) in results.items():
        print(
            f"workers={workers}: {args.tracks} tracks, {audio_seconds / 3600:.2f} h of audio "
            f"in {elapsed:.1f} s -> real-time factor {audio_seconds / elapsed:.0f}x"
        )
    print(f"speed-up 2 workers / 1 worker: {results[1][0] / results[2][0]:.2f}x")


if __name__ == "__main__":
    main()
