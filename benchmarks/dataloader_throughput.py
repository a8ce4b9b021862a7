"""Training input speed: `python -m benchmarks.dataloader_throughput [--root data/latents]`.

Reads the latent cache at `--root` (default `latents.root`) through `LatentDataset` and a
DataLoader (pretraining, train split, shuffled, batch `latents.batch_size`) and prints
samples/s with 0 and 2 workers, timed after warm-up batches, then the cache's size per
hour of audio. Without a cache at the root it builds a synthetic one in a temporary
directory with the embedded profile's shapes (`SyntheticShapes`). `write_synthetic_cache`
is also the tests' cache and a worked example of the stage-side contract of
tasks/latents/store.py: prepare, skip done shards, write shards, indexes, stats, manifest.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, RandomSampler

from tasks.common.atomic import write_parquet
from tasks.latents.dataset import LatentDataset, collate
from tasks.latents.store import (
    MANIFEST,
    SEGMENT_INDEX,
    SEGMENTS,
    TEXT_INDEX,
    TEXTS,
    ShardedTable,
    channel_stats,
    prepare,
    read_manifest,
    update_manifest,
    write_missing_shards,
    write_stats,
)
from tasks.params import Params, load_params

CAPTION_COLUMNS = ("caption_refined", "caption_dense", "caption_inference")
FINETUNE_COLUMN = "caption_inference"  # only the fine-tuning rows have one
PREFIXES = ("low quality", "medium quality", "high quality")


def quality_prefix_index(level: int) -> int:
    """Levels 1-2 low, 3-4 medium, 5 high: a stand-in for the p-MOS prefix rule."""
    return (level - 1) * 3 // 5


@dataclass(frozen=True)
class SyntheticShapes:
    """Defaults: 10 s at 25 Hz x 64 (mel25), MiniLM text, the embedded CLAP and teacher."""

    segments: int = 1200
    frames: int = 250  # T
    latent_dim: int = 64  # C
    text_length: int = 77  # L
    text_dim: int = 384  # D
    clap_dim: int = 128  # Dc
    teacher_dim: int = 96  # Dt
    per_shard: int = 64
    segments_per_track: int = 6
    text_dtype: str = "float16"
    grid: tuple[int, int] = (1, 64)
    frame_rate: int = 25


def synthetic_index(shapes: SyntheticShapes, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(segments, texts) tables: every 5th track is `val`, 40 % of segments fine-tune.

    Text 0 is the empty text (CFG dropout); each segment then has a refined and a dense
    caption, and a concise one when it is a fine-tuning segment (else text id -1).
    """
    rng = np.random.default_rng((seed, 2))
    count = shapes.segments
    track = np.arange(count) // shapes.segments_per_track
    level = rng.integers(1, 6, count)
    finetune = rng.random(count) < 0.4
    texts: list[tuple[str, str]] = [("", "")]
    ids = {column: np.full(count, -1, dtype=np.int64) for column in CAPTION_COLUMNS}
    for segment in range(count):
        prefix = PREFIXES[quality_prefix_index(int(level[segment]))]
        for column in CAPTION_COLUMNS:
            if column == FINETUNE_COLUMN and not finetune[segment]:
                continue
            caption = f"{column} of segment {segment}"
            ids[column][segment] = len(texts)
            texts.append((f"{prefix}, {caption}", caption))
    shard, row = np.divmod(np.arange(count), shapes.per_shard)
    segments = pd.DataFrame(
        {
            "segment_id": [
                f"t{t:05d}-{i % shapes.segments_per_track:02d}" for i, t in enumerate(track)
            ],
            "track_id": [f"t{t:05d}" for t in track],
            "split": np.where(track % 5 == 4, "val", "train"),
            "finetune": finetune,
            "shard": shard,
            "row": row,
            "clap_score": rng.uniform(0.1, 0.7, count),
            "score_normalised": rng.uniform(0.0, 1.0, count),
            "pmos": rng.normal(3.8, 0.25, count),
            "quality_level": level.astype(np.int64),
            "quality_prefix": [PREFIXES[quality_prefix_index(int(value))] for value in level],
        }
        | {f"text_id.{column}": ids[column] for column in CAPTION_COLUMNS}
    )
    text_shard, text_row = np.divmod(np.arange(len(texts)), shapes.per_shard)
    text_frame = pd.DataFrame(
        {
            "text_id": np.arange(len(texts), dtype=np.int64),
            "text": [text for text, _ in texts],
            "caption": [caption for _, caption in texts],
            "shard": text_shard,
            "row": text_row,
        }
    )
    return segments, text_frame


def _unit_rows(rng: np.random.Generator, rows: int, dim: int) -> np.ndarray:
    values = rng.standard_normal((rows, dim), dtype=np.float32)
    return values / np.linalg.norm(values, axis=1, keepdims=True)


def synthetic_segment_shard(
    shapes: SyntheticShapes, seed: int, first_row: int, rows: int
) -> dict[str, np.ndarray]:
    """Per-segment tensors of one shard; channel offsets/scales make the stats non-trivial."""
    rng = np.random.default_rng((seed, 0, first_row))
    scale = np.linspace(0.5, 2.0, shapes.latent_dim, dtype=np.float32)
    offset = np.linspace(-1.0, 1.0, shapes.latent_dim, dtype=np.float32)
    latents = rng.standard_normal((rows, shapes.frames, shapes.latent_dim), dtype=np.float32)
    return {
        "latents": latents * scale + offset,  # [n, T, C]
        "clap_audio": _unit_rows(rng, rows, shapes.clap_dim),  # [n, Dc]
        "teacher": rng.standard_normal((rows, shapes.frames, shapes.teacher_dim), dtype=np.float32),
    }


def synthetic_text_shard(
    shapes: SyntheticShapes, seed: int, first_row: int, rows: int
) -> dict[str, torch.Tensor]:
    rng = np.random.default_rng((seed, 1, first_row))
    sequence = rng.standard_normal((rows, shapes.text_length, shapes.text_dim), dtype=np.float32)
    lengths = rng.integers(1, shapes.text_length + 1, rows)
    return {
        "sequence": torch.from_numpy(sequence).to(getattr(torch, shapes.text_dtype)),  # [m, L, D]
        "mask": torch.from_numpy(np.arange(shapes.text_length) < lengths[:, None]),  # [m, L]
        "clap_text": torch.from_numpy(_unit_rows(rng, rows, shapes.clap_dim)),  # [m, Dc]
    }


def write_synthetic_cache(root: Path, shapes: SyntheticShapes, seed: int) -> bool:
    """A complete cache at `root`, written like the stage does; True if it resumed."""
    resumed = prepare(root, {"synthetic": asdict(shapes), "seed": seed})
    segments, texts = synthetic_index(shapes, seed)
    write_missing_shards(
        root,
        SEGMENTS,
        segments,
        "segment_id",
        shapes.per_shard,
        lambda part: synthetic_segment_shard(shapes, seed, part.index[0], len(part)),
    )
    write_missing_shards(
        root,
        TEXTS,
        texts,
        "text_id",
        shapes.per_shard,
        lambda part: synthetic_text_shard(shapes, seed, part.index[0], len(part)),
    )
    write_parquet(root / SEGMENT_INDEX, segments)
    write_parquet(root / TEXT_INDEX, texts)
    train_rows = np.flatnonzero(segments["split"].to_numpy() == "train")
    write_stats(root, *channel_stats(ShardedTable(root, SEGMENTS), "latents", train_rows))
    update_manifest(
        root,
        empty_text_id=0,
        codec={
            "name": "synthetic",
            "sample_rate": 16000,
            "frame_rate": shapes.frame_rate,
            "grid": list(shapes.grid),
        },
        frames=shapes.frames,
        dims={
            "latent": shapes.latent_dim,
            "text": shapes.text_dim,
            "text_length": shapes.text_length,
            "clap": shapes.clap_dim,
            "teacher": shapes.teacher_dim,
        },
        counts={"segments": len(segments), "texts": len(texts)},
        text_dtype=shapes.text_dtype,
    )
    return resumed


# --------------------------------------------------------------------------- benchmark
def directory_bytes(directory: Path) -> int:
    return sum(path.stat().st_size for path in directory.rglob("*") if path.is_file())


def endless(loader: DataLoader) -> Iterator[dict[str, torch.Tensor]]:
    while True:
        yield from loader


def samples_per_second(
    dataset: LatentDataset, batch_size: int, workers: int, samples: int, seed: int
) -> float:
    """Shuffled batches like training, timed once the start-up and prefetched batches are
    consumed (the DataLoader prefetches 2 batches per worker), so the rate is steady state."""
    sampler = RandomSampler(dataset, generator=torch.Generator().manual_seed(seed))
    loader = DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, collate_fn=collate
    )
    batches = endless(loader)
    for _ in range(2 * workers + 2):
        next(batches)
    started, counted = time.perf_counter(), 0
    while counted < samples:
        counted += len(next(batches)["index"])
    elapsed = time.perf_counter() - started
    batches.close()  # shuts the workers down
    return counted / elapsed


def report_size(root: Path, dataset: LatentDataset) -> None:
    manifest = read_manifest(root)
    segments = len(dataset.segment_table)
    frames = dataset.segment_table.get("latents", [0]).shape[1]
    hours = segments * frames / manifest["codec"]["frame_rate"] / 3600
    for part in (SEGMENTS, TEXTS):
        size = directory_bytes(root / part)
        print(
            f"{part:<9} {size / 2**20:9.1f} MiB   {size / hours / 2**20:8.1f} MiB per hour of audio"
        )
    total = directory_bytes(root)
    print(
        f"{'total':<9} {total / 2**20:9.1f} MiB   {total / hours / 2**20:8.1f} MiB per hour of "
        f"audio ({segments} segments of {frames / manifest['codec']['frame_rate']:g} s, "
        f"{len(dataset.text_table)} texts)"
    )


def benchmark(root: Path, params: Params, samples: int) -> None:
    batch = params.latents.batch_size
    dataset = LatentDataset(
        root,
        split="train",
        stage="pretrain",
        pretrain_columns=params.captions.pretrain_columns,
        finetune_columns=[FINETUNE_COLUMN],
        seed=params.seed,
        cfg_dropout=params.train.cfg_dropout,
        unconditional_level=params.quality.unconditional_level,
    )
    print(
        f"{root}: {len(dataset)} train segments, batch {batch}, {samples} samples timed, "
        f"{torch.get_num_threads()} torch threads"
    )
    for workers in (0, 2):
        rate = samples_per_second(dataset, batch, workers, samples, params.seed)
        print(f"num_workers={workers}   {rate:8.1f} samples/s   {rate / batch:6.1f} batches/s")
    report_size(root, dataset)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=None, help="default: latents.root")
    parser.add_argument("--samples", type=int, default=1600)
    args = parser.parse_args()
    params = load_params()
    root = args.root or Path(params.latents.root)
    if (root / MANIFEST).exists():
        benchmark(root, params, args.samples)
        return
    with tempfile.TemporaryDirectory() as scratch:
        shapes, started = SyntheticShapes(), time.perf_counter()
        write_synthetic_cache(Path(scratch), shapes, params.seed)
        elapsed = time.perf_counter() - started
        print(f"no cache at {root}: synthetic cache written in {elapsed:.1f} s, {shapes}")
        benchmark(Path(scratch), params, args.samples)


if __name__ == "__main__":
    main()
