"""LatentDataset over a tiny synthetic cache: values, seeded caption choice, CFG dropout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader

from benchmarks.dataloader_throughput import (
    FINETUNE_COLUMN,
    SyntheticShapes,
    synthetic_segment_shard,
    synthetic_text_shard,
    write_synthetic_cache,
)
from tasks.latents.dataset import LatentDataset, collate, spectrogram_view
from tasks.latents.store import SEGMENT_INDEX, shard_ranges

SHAPES = SyntheticShapes(
    segments=40,
    frames=8,
    latent_dim=6,
    text_length=5,
    text_dim=4,
    clap_dim=3,
    teacher_dim=2,
    per_shard=16,
    segments_per_track=4,
    text_dtype="float16",
    grid=(2, 3),
)
SEED = 7
PRETRAIN_COLUMNS = ["caption_refined", "caption_dense"]
EMPTY_TEXT_ID = 0  # write_synthetic_cache's empty_text_id
KEYS = {
    "latent",
    "text",
    "text_mask",
    "clap_text",
    "score",
    "clap_score",
    "quality_level",
    "clap_target",
    "teacher_target",
    "dropped",
    "text_id",
    "index",
}


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("latents")
    write_synthetic_cache(directory, SHAPES, SEED)
    return directory


def make(root: Path, stage: str = "pretrain", cfg_dropout: float = 0.0, seed: int = 3):
    return LatentDataset(
        root,
        split="train",
        stage=stage,  # type: ignore[arg-type]
        pretrain_columns=PRETRAIN_COLUMNS,
        finetune_columns=[FINETUNE_COLUMN],
        seed=seed,
        cfg_dropout=cfg_dropout,
        unconditional_level=3,
    )


def expected_segment(table_row: int) -> dict[str, np.ndarray]:
    """What write_synthetic_cache generated for segment `table_row`, regenerated."""
    shard, row = divmod(table_row, SHAPES.per_shard)
    size = len(shard_ranges(SHAPES.segments, SHAPES.per_shard)[shard])
    tensors = synthetic_segment_shard(SHAPES, SEED, table_row - row, size)
    return {k: v[row] for k, v in tensors.items()}


def expected_text(text_id: int, text_count: int) -> dict[str, torch.Tensor]:
    shard, row = divmod(text_id, SHAPES.per_shard)
    size = len(shard_ranges(text_count, SHAPES.per_shard)[shard])
    return {k: v[row] for k, v in synthetic_text_shard(SHAPES, SEED, text_id - row, size).items()}


def test_a_sample_carries_the_cached_values_of_its_segment_and_caption(root):
    dataset = make(root)
    segments = pd.read_parquet(root / SEGMENT_INDEX)
    for index in (0, 15, len(dataset) - 1):  # shards 0 and 1 at least
        sample = dataset[index]
        assert sample.keys() == KEYS
        segment = segments[segments.segment_id == dataset.rows.segment_id[index]].iloc[0]
        truth = expected_segment(int(segment.name))
        assert torch.equal(sample["latent"], torch.from_numpy(truth["latents"]))
        assert torch.equal(sample["clap_target"], torch.from_numpy(truth["clap_audio"]))
        assert torch.equal(sample["teacher_target"], torch.from_numpy(truth["teacher"]))
        text_id = int(sample["text_id"])
        assert text_id in {segment["text_id.caption_refined"], segment["text_id.caption_dense"]}
        text = expected_text(text_id, len(dataset.text_table))
        assert torch.equal(sample["text"], text["sequence"].float())
        assert torch.equal(sample["text_mask"], text["mask"])
        assert torch.equal(sample["clap_text"], text["clap_text"])
        assert sample["quality_level"].item() == segment.quality_level
        assert sample["score"].item() == pytest.approx(segment.score_normalised)
        assert sample["clap_score"].item() == pytest.approx(segment.clap_score)
    sample = dataset[0]
    assert sample["latent"].shape == (SHAPES.frames, SHAPES.latent_dim)
    assert sample["text"].dtype == torch.float32  # stored as float16
    assert sample["text_mask"].dtype == torch.bool
    assert sample["quality_level"].dtype == torch.int64
    assert sample["score"].dtype == torch.float32


def test_only_the_requested_split_is_read(root):
    dataset = make(root)
    assert set(dataset.rows.split) == {"train"}
    assert len(dataset) == 32  # tracks 4 and 9 of 10 are val
    with pytest.raises(IndexError):
        dataset[len(dataset)]


def variant_choices(dataset: LatentDataset, epoch: int) -> list[int]:
    dataset.set_epoch(epoch)
    return [int(dataset[i]["text_id"] == dataset.text_ids[i, 1]) for i in range(len(dataset))]


def test_caption_variant_is_seeded_by_seed_epoch_and_index(root):
    dataset = make(root)
    first = variant_choices(dataset, 0)
    assert variant_choices(make(root), 0) == first  # reproducible across instances
    assert variant_choices(dataset, 1) != first  # a new epoch redraws
    assert variant_choices(make(root, seed=4), 0) != first
    draws = [c for epoch in range(40) for c in variant_choices(dataset, epoch)]  # 1280 draws
    assert np.mean(draws) == pytest.approx(0.5, abs=0.05)  # paper 000 §II-B: uniform choice


def test_finetuning_reads_only_finetune_rows_and_their_concise_caption(root):
    segments = pd.read_parquet(root / SEGMENT_INDEX)
    dataset = make(root, stage="finetune")
    train = segments[segments.split == "train"]
    assert set(dataset.rows.segment_id) == set(train.segment_id[train.finetune])
    assert 0 < len(dataset) < len(train)
    assert dataset.columns == [FINETUNE_COLUMN]
    for epoch in range(3):
        dataset.set_epoch(epoch)
        got = [int(dataset[i]["text_id"]) for i in range(len(dataset))]
        assert got == dataset.rows[f"text_id.{FINETUNE_COLUMN}"].tolist()


def test_cfg_dropout_rate_and_unconditional_sample(root):
    dataset = make(root, cfg_dropout=0.25)
    empty = expected_text(EMPTY_TEXT_ID, len(dataset.text_table))
    dropped = []
    for epoch in range(30):  # 960 draws
        dataset.set_epoch(epoch)
        for index in range(len(dataset)):
            sample = dataset[index]
            dropped.append(bool(sample["dropped"]))
            if sample["dropped"]:  # paper 003 / docs/reference.md §C.4: empty text and mos = 3
                assert sample["text_id"].item() == EMPTY_TEXT_ID
                assert torch.equal(sample["text"], empty["sequence"].float())
                assert torch.equal(sample["text_mask"], empty["mask"])
                assert torch.equal(sample["clap_text"], empty["clap_text"])
                assert sample["quality_level"].item() == 3
            else:
                assert sample["text_id"].item() in dataset.text_ids[index]
                assert sample["quality_level"].item() == dataset.quality_level[index]
    assert np.mean(dropped) == pytest.approx(0.25, abs=0.04)
    assert any(level != 3 for level in dataset.quality_level)  # the override is visible
    never = make(root, cfg_dropout=0.0)
    assert not any(bool(never[i]["dropped"]) for i in range(len(never)))


def batches(dataset: LatentDataset, workers: int) -> list[dict[str, torch.Tensor]]:
    loader = DataLoader(dataset, batch_size=5, num_workers=workers, collate_fn=collate)
    return list(loader)


def test_two_workers_give_the_same_batches_as_none(root):
    dataset = make(root, cfg_dropout=0.3)
    dataset.segment_table.get("latents", [0])  # handles opened in the parent before forking
    for epoch in (0, 1):
        dataset.set_epoch(epoch)
        serial, parallel = batches(dataset, 0), batches(dataset, 2)
        assert len(serial) == len(parallel) == 7
        for one, two in zip(serial, parallel, strict=True):
            assert one.keys() == two.keys() == KEYS
            assert all(torch.equal(one[key], two[key]) for key in KEYS)
    assert serial[0]["latent"].shape == (5, SHAPES.frames, SHAPES.latent_dim)


def test_spectrogram_view_is_a_view_in_channel_time_frequency_order(root):
    dataset = make(root)
    latent = dataset[0]["latent"]  # [T, C]
    view = dataset.spectrogram_view(latent)
    channels, frequency = dataset.grid
    assert dataset.grid == (2, 3)
    assert view.shape == (channels, SHAPES.frames, frequency)
    assert view.untyped_storage().data_ptr() == latent.untyped_storage().data_ptr()
    assert view[1, 4, 2] == latent[4, 1 * frequency + 2]
    latent[4, 5] = 42.0
    assert view[1, 4, 2] == 42.0
    batch = torch.zeros(3, SHAPES.frames, SHAPES.latent_dim)
    assert spectrogram_view(batch, (2, 3)).shape == (3, 2, SHAPES.frames, 3)
    with pytest.raises(ValueError):
        spectrogram_view(batch, (4, 3))


def test_stats_are_the_train_split_channel_moments(root):
    dataset = make(root)
    segments = pd.read_parquet(root / SEGMENT_INDEX)
    train = np.flatnonzero(segments.split.to_numpy() == "train")
    values = np.stack([expected_segment(int(row))["latents"] for row in train])
    values = values.astype(np.float64).reshape(-1, SHAPES.latent_dim)
    np.testing.assert_allclose(dataset.stats.mean.numpy(), values.mean(0), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(dataset.stats.std.numpy(), values.std(0), rtol=1e-6)
    assert dataset.stats.mean.shape == (SHAPES.latent_dim,)


def test_unknown_caption_column_fails_naming_the_cached_ones(root):
    with pytest.raises(KeyError, match="caption_dense"):
        LatentDataset(root, "train", "pretrain", ["caption_missing"], [FINETUNE_COLUMN], 0, 0.1, 3)


def test_rewriting_an_unchanged_cache_resumes_and_changes_no_byte(root):
    before = {p: p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
    assert write_synthetic_cache(root, SHAPES, SEED)  # resumed: every shard is done
    assert {p: p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()} == before
