"""`latents` stage: everything training reads, cached once as sharded safetensors.

Per kept segment (data/curated + data/captions): codec latents [T, C], the CLAP audio
embedding (REPA-CLAP target, paper 000 eq. (4)), frame-teacher features aligned to the
latent frames (REPA-MuQ target, eq. (5)), S, the CLAP score and the quality level; per
distinct text that training uses (every caption variant of `captions.pretrain_columns`,
the inference-style caption, and "" for classifier-free guidance): the text encoder's
sequence + mask and the CLAP text embedding of the caption (the global condition).
With `quality.use_prefix` the encoder reads "{prefix}, {caption}" (paper 003 §4.1,
docs/reference.md §C.3); the CLAP text embedding is of the caption alone.

Resumable: the cache is built in `<latents.root>.partial`, beside the output and outside
DVC's outputs, with shards written atomically in a fixed plan; a rerun after a kill skips the
finished shards, and a different input fingerprint wipes them (tasks/latents/store.py). The
index tables and the train-split latent statistics are written last, then the finished
folder is renamed to `latents.root`. The output itself is an ordinary one (no `persist`), so
DVC's run-cache restores it for any trial whose latents inputs an earlier run already had.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import torch

from tasks.backends.base import (
    ClapBackend,
    CodecBackend,
    FrameTeacherBackend,
    TextEncoderBackend,
    checkpoint_identity,
)
from tasks.backends.clap import load_clap
from tasks.backends.codec import codec_identity, load_codec
from tasks.backends.frame_teacher import load_frame_teacher
from tasks.backends.text_encoder import load_text_encoder
from tasks.common import schema
from tasks.common.atomic import write_parquet
from tasks.common.audio_io import segment_windows
from tasks.common.preflight import caption_table_problems, require
from tasks.common.schema import CAPTION_COLUMNS, corpus_sample_rate
from tasks.common.score_cache import CachedScorer, ScoreCache, backend_identity, cache_directory
from tasks.common.text_conditioning import FINETUNE_COLUMN, TORCH_DTYPES, encoder_input
from tasks.common.tracking import stage_run
from tasks.latents import store
from tasks.params import Params, load_stage_params
from tasks.params.tracked import tracked_params

SEGMENT_META = ["score_normalised", "clap_score", "pmos", "quality_level", "quality_prefix"]


@dataclass
class Encoders:
    codec: CodecBackend
    clap: ClapBackend
    clap_audio: CachedScorer  # the CLAP audio tower through the content cache
    teacher: FrameTeacherBackend
    text: TextEncoderBackend


# --------------------------------------------------------------------------- plan
def segment_table(segments: pd.DataFrame, captions: pd.DataFrame) -> pd.DataFrame:
    """Kept segments joined with their captions, in segment_id order (the shard plan)."""
    kept = segments[segments["kept"]]
    columns = ["segment_id", "start_s", "end_s", *SEGMENT_META]
    table = captions.merge(kept[columns], on="segment_id", how="left", validate="one_to_one")
    if table["start_s"].isna().any():
        raise ValueError("captions.parquet lists segments that data/curated did not keep")
    return table.sort_values("segment_id", ignore_index=True)


def caption_columns(params: Params) -> list[str]:
    return list(dict.fromkeys([*params.captions.pretrain_columns, FINETUNE_COLUMN]))


def text_table(table: pd.DataFrame, params: Params) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(distinct texts with text_id, table with one text_id.<column> per caption variant)."""
    pairs = {("", "")}  # the empty text of classifier-free guidance
    inputs: dict[str, list[tuple[str, str]]] = {}
    for column in caption_columns(params):
        inputs[column] = [
            (encoder_input(c, p, params.quality.use_prefix), c)
            for c, p in zip(table[column], table["quality_prefix"], strict=True)
        ]
        pairs |= set(inputs[column])
    texts = pd.DataFrame(sorted(pairs), columns=["text", "caption"])
    texts.insert(0, "text_id", np.arange(len(texts), dtype=np.int64))
    row = {pair: i for i, pair in enumerate(sorted(pairs))}
    indexed = table.copy()
    for column, column_pairs in inputs.items():
        indexed[f"text_id.{column}"] = np.array([row[p] for p in column_pairs], dtype=np.int64)
    return texts, indexed


def fingerprint(params: Params, inputs: Sequence[Path]) -> dict:
    """What the cache depends on: input tables, the params that shape it, checkpoints."""
    digests = {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in inputs}
    backends = params.backends
    checkpoints: dict[str, object] = {"codec": codec_identity(backends.codec, params.latents.mel25)}
    checkpoints |= {
        part: checkpoint_identity(choice.path)["sha256"] if choice.path else None
        for part, choice in (
            ("clap", backends.clap),
            ("frame_teacher", backends.frame_teacher),
            ("text_encoder", backends.text_encoder),
        )
    }
    return {
        "inputs": digests,
        "checkpoints": checkpoints,
        "params": tracked_params(params, "latents"),
    }


# --------------------------------------------------------------------------- encoding
def align_frames(features: np.ndarray, source_rate: float, frames: int, rate: float) -> np.ndarray:
    """Resample teacher features [N, F, D] onto `frames` latent frames at `rate` Hz.

    Frame i of either grid sits at time i / rate (centred STFT frames); linear
    interpolation in time, holding the last teacher frame past its end. Equal grids pass
    through untouched (the embedded teacher and MuQ are both 25 Hz, docs/reference.md §F.2).
    """
    if features.shape[1] == frames and source_rate == rate:
        return features
    target = np.arange(frames) * (source_rate / rate)
    source = np.arange(features.shape[1])
    out = np.empty((features.shape[0], frames, features.shape[2]), dtype=np.float32)
    for n in range(features.shape[0]):
        for d in range(features.shape[2]):
            out[n, :, d] = np.interp(target, source, features[n, :, d])
    return out


def encode_segments(
    rows: pd.DataFrame, tracks: pd.DataFrame, params: Params, encoders: Encoders
) -> dict[str, np.ndarray]:
    """Latents, CLAP audio embeddings and aligned teacher features of one shard's rows."""
    rate, size = corpus_sample_rate(tracks), params.latents.batch_size
    windows = list(segment_windows(rows, tracks, Path(params.data.root), rate))
    latents, clap, teacher = [], [], []
    for start in range(0, len(windows), size):
        batch = windows[start : start + size]
        codes = encoders.codec.encode(batch, rate)
        latents.append(codes)
        clap.append(np.stack(encoders.clap_audio.run(batch, rate)))
        features = encoders.teacher.features(batch, rate)
        teacher.append(
            align_frames(
                features, encoders.teacher.frame_rate, codes.shape[1], encoders.codec.frame_rate
            )
        )
    return {
        "latents": np.concatenate(latents).astype(np.float32),
        "clap_audio": np.concatenate(clap).astype(np.float32),
        "teacher": np.concatenate(teacher).astype(np.float32),
    }


def encode_texts(rows: pd.DataFrame, params: Params, encoders: Encoders) -> dict[str, torch.Tensor]:
    sequence, mask = encoders.text.encode(rows["text"].tolist())
    clap_text = encoders.clap.embed_text(rows["caption"].tolist())
    return {
        "sequence": torch.from_numpy(sequence).to(TORCH_DTYPES[params.latents.text_dtype]),
        "mask": torch.from_numpy(mask).bool(),
        "clap_text": torch.from_numpy(np.asarray(clap_text, dtype=np.float32)),
    }


# --------------------------------------------------------------------------- stage


def load_encoders(params: Params, cache: ScoreCache) -> Encoders:
    b = params.backends
    clap = load_clap(b.clap)
    audio = CachedScorer(
        cache,
        "clap_audio",
        backend_identity("clap", b.clap),
        clap.embed_audio,
        params.latents.batch_size,
    )
    return Encoders(
        load_codec(b.codec, params.latents.mel25),
        clap,
        audio,
        load_frame_teacher(b.frame_teacher),
        load_text_encoder(b.text_encoder),
    )


def partial_root(root: Path) -> Path:
    """Where the cache is built until it is complete. Not `root` itself: DVC's run-cache never
    serves a stage with a `persist` output, and without `persist` DVC deletes `root` before
    it runs the stage, so the finished shards of a killed run must live elsewhere."""
    return root.with_name(f"{root.name}.partial")


def publish(partial: Path, root: Path) -> None:
    """The finished cache becomes `root`: DVC has removed `root` before running the stage; a
    `python -m tasks.latents` outside DVC replaces the cache it finds there, and nothing else."""
    if root.exists():
        if any(root.iterdir()) and not (root / store.MANIFEST).is_file():
            raise FileExistsError(
                f"latents.root ({root}) holds files that are not a latents cache: move them "
                "or set latents.root to a folder of its own"
            )
        shutil.rmtree(root)
    os.replace(partial, root)


def build_cache(params: Params, inputs: dict[str, Path]) -> dict:
    """Write the whole cache, in `partial_root` and then at `latents.root`; returns counts
    for the log."""
    target = Path(params.latents.root)
    root = partial_root(target)
    tracks = pd.read_parquet(inputs["tracks"])
    captions = pd.read_parquet(inputs["captions"])
    schema.check_columns(captions, CAPTION_COLUMNS, "captions.parquet")
    # the text encoder would fail on a missing caption without naming it: say which, first
    columns = caption_columns(params)
    require(caption_table_problems(captions, columns, "captions.parquet"), "latents")
    table = segment_table(pd.read_parquet(inputs["segments"]), captions)
    texts, table = text_table(table, params)
    resumed = store.prepare(root, fingerprint(params, list(inputs.values())))
    per_shard = params.latents.segments_per_shard
    with ScoreCache(cache_directory(params.curate.cache_dir)) as cache:
        encoders = load_encoders(params, cache)
        segments = store.write_missing_shards(
            root,
            "segments",
            table,
            "segment_id",
            per_shard,
            lambda part: encode_segments(part, tracks, params, encoders),
        )
        text_shards = store.write_missing_shards(
            root,
            "texts",
            texts,
            "text_id",
            per_shard,
            lambda part: encode_texts(part, params, encoders),
        )
    table["shard"], table["row"] = np.divmod(np.arange(len(table)), per_shard)
    texts["shard"], texts["row"] = np.divmod(np.arange(len(texts)), per_shard)
    train_rows = np.flatnonzero((table["split"] == "train").to_numpy())
    latents = store.ShardedTable(root, "segments")
    mean, std = store.channel_stats(latents, "latents", train_rows)
    store.write_stats(root, mean, std)
    write_parquet(root / "texts.parquet", texts)
    write_parquet(root / "segments.parquet", table.drop(columns=["start_s", "end_s"]))
    codec = encoders.codec
    store.update_manifest(
        root,
        complete=True,
        empty_text_id=int(texts.loc[texts["text"] == "", "text_id"].iloc[0]),
        caption_columns=caption_columns(params),
        codec={
            "name": params.backends.codec.name,
            "sample_rate": codec.sample_rate,
            "frame_rate": codec.frame_rate,
            "grid": list(codec.grid),
        },
        segments=len(table),
        texts=len(texts),
    )
    publish(root, target)
    return {
        "resumed": resumed,
        "segment_shards_written": segments[0],
        "segment_shards_skipped": segments[1],
        "text_shards_written": text_shards[0],
        "text_shards_skipped": text_shards[1],
        "segments": len(table),
        "texts": len(texts),
    }


def run(params: Params) -> dict:
    started = time.perf_counter()
    inputs = {
        "tracks": Path(params.data.root) / "tracks.parquet",
        "segments": Path("data/curated/segments.parquet"),
        "captions": Path("data/captions/captions.parquet"),
    }
    with stage_run(params, "latents"):
        counts = build_cache(params, inputs)
        counts["stage_seconds"] = time.perf_counter() - started
        mlflow.log_metrics({k: float(v) for k, v in counts.items()})
    return counts


def main() -> None:
    counts = run(load_stage_params())
    print(
        f"latents: {counts['segments']} segments, {counts['texts']} texts; shards written "
        f"{counts['segment_shards_written']} + {counts['text_shards_written']}, skipped "
        f"{counts['segment_shards_skipped']} + {counts['text_shards_skipped']} "
        f"({counts['stage_seconds']:.1f} s)"
    )
