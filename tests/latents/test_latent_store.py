"""The latent cache store: exact round trips, memory-mapped reads, resumption, wiping."""

from __future__ import annotations

import json
import multiprocessing
import pickle
from pathlib import Path

import numpy as np
import pytest
import safetensors
import safetensors.torch
import torch
from safetensors import safe_open

from tasks.latents import store as latent_store
from tasks.latents.store import (
    MANIFEST,
    SEGMENTS,
    ShardedTable,
    channel_stats,
    is_done,
    prepare,
    read_manifest,
    read_stats,
    shard_path,
    shard_ranges,
    update_manifest,
    write_shard,
    write_stats,
)

FINGERPRINT = {"codec": {"name": "mel25", "grid": (1, 64)}, "segments_per_shard": 4}


def shard_tensors(index: int, rows: int) -> dict[str, torch.Tensor]:
    """Deterministic content of shard `index`, of several dtypes the cache uses."""
    generator = torch.Generator().manual_seed(index)
    return {
        "latents": torch.randn(rows, 5, 3, generator=generator),  # [n, T, C] float32
        "sequence": torch.randn(rows, 6, 4, generator=generator).to(torch.bfloat16),
        "half": torch.randn(rows, 2, generator=generator).half(),
        "mask": torch.rand(rows, 6, generator=generator) > 0.5,
        "ids": torch.arange(rows, dtype=torch.int64) + 100 * index,
    }


def write_table(root: Path, counts: list[int]) -> list[dict[str, torch.Tensor]]:
    shards = [shard_tensors(index, rows) for index, rows in enumerate(counts)]
    for index, tensors in enumerate(shards):
        write_shard(root, SEGMENTS, index, tensors, {"first_segment_id": f"s{index}"})
    return shards


def concatenated(shards: list[dict[str, torch.Tensor]], name: str) -> torch.Tensor:
    return torch.cat([shard[name] for shard in shards])


# --------------------------------------------------------------------------- shards
def test_shard_ranges_cover_every_row_once_in_order():
    ranges = shard_ranges(10, 4)
    assert [list(r) for r in ranges] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert shard_ranges(8, 4)[-1] == range(4, 8)
    assert shard_ranges(0, 4) == []
    with pytest.raises(ValueError):
        shard_ranges(3, 0)


def test_rows_round_trip_exactly_across_shard_boundaries(tmp_path):
    shards = write_table(tmp_path, [4, 4, 3])
    table = ShardedTable(tmp_path, SEGMENTS)
    assert len(table) == 11
    assert table.keys == ("half", "ids", "latents", "mask", "sequence")
    rows = [3, 4, 10, 0, 5, 6, 7, 8, 8]  # spans all shards, out of order, repeated
    for name in table.keys:
        got = table.get(name, rows)
        expected = concatenated(shards, name)[rows]
        assert got.dtype == expected.dtype
        assert torch.equal(got, expected), name
    assert table.get("latents", []).shape == (0, 5, 3)
    with pytest.raises(IndexError):
        table.get("latents", [11])
    with pytest.raises(KeyError):
        table.get("nope", [0])


def test_shard_metadata_records_rows_and_plan(tmp_path):
    write_table(tmp_path, [4, 2])
    with safe_open(str(shard_path(tmp_path, SEGMENTS, 1)), framework="pt") as handle:
        assert handle.metadata() == {"first_segment_id": "s1", "rows": "2"}


def test_files_are_valid_safetensors(tmp_path):
    """Our own deterministic header writer must stay readable by the reference reader."""
    shards = write_table(tmp_path, [3])
    loaded = safetensors.torch.load_file(shard_path(tmp_path, SEGMENTS, 0))
    assert loaded.keys() == shards[0].keys()
    assert all(torch.equal(loaded[name], shards[0][name]) for name in loaded)


def test_equal_inputs_give_equal_bytes_whatever_the_metadata_order(tmp_path):
    tensors = shard_tensors(0, 3)
    metadata = {f"key{i}": str(i) for i in range(8)}
    first = write_shard(tmp_path / "a", SEGMENTS, 0, tensors, metadata)
    reordered = dict(reversed(list(metadata.items())))
    second = write_shard(tmp_path / "b", SEGMENTS, 0, dict(reversed(tensors.items())), reordered)
    assert first.read_bytes() == second.read_bytes()


def test_write_shard_rejects_ragged_rows(tmp_path):
    with pytest.raises(ValueError, match="row count"):
        write_shard(tmp_path, SEGMENTS, 0, {"a": torch.zeros(3, 2), "b": torch.zeros(2)}, {})
    with pytest.raises(ValueError, match="rows"):
        write_shard(tmp_path, SEGMENTS, 0, {"a": torch.zeros(3, 2)}, {"rows": "4"})


def test_numpy_and_torch_inputs_store_the_same_bytes(tmp_path):
    values = np.arange(12, dtype=np.float32).reshape(4, 3)
    first = write_shard(tmp_path / "a", SEGMENTS, 0, {"x": values}, {})
    second = write_shard(tmp_path / "b", SEGMENTS, 0, {"x": torch.from_numpy(values)}, {})
    assert first.read_bytes() == second.read_bytes()


# --------------------------------------------------------------------------- reading
def test_get_reads_slices_through_safe_open_never_whole_files(tmp_path, monkeypatch):
    shards = write_table(tmp_path, [4, 4])
    calls: list[str] = []

    class SpyHandle:
        def __init__(self, handle):
            self.handle = handle

        def get_slice(self, name):
            calls.append("get_slice")
            return self.handle.get_slice(name)

        def get_tensor(self, name):
            calls.append("get_tensor")
            return self.handle.get_tensor(name)

    def refuse(*args, **kwargs):
        raise AssertionError("the cache must never be loaded whole")

    table = ShardedTable(tmp_path, SEGMENTS)  # reads the shard headers only
    monkeypatch.setattr(safetensors.torch, "load_file", refuse)
    monkeypatch.setattr(safetensors.torch, "load", refuse)
    monkeypatch.setattr(latent_store, "safe_open", lambda *a, **k: SpyHandle(safe_open(*a, **k)))
    got = table.get("latents", [5])
    assert torch.equal(got[0], shards[1]["latents"][1])
    assert calls == ["get_slice"]


def test_returned_rows_are_copies_not_views_of_the_map(tmp_path):
    shards = write_table(tmp_path, [4])
    table = ShardedTable(tmp_path, SEGMENTS)
    table.get("latents", [1]).fill_(123.0)  # e.g. an in-place normalisation downstream
    assert torch.equal(table.get("latents", [1])[0], shards[0]["latents"][1])


def _read_in_child(table: ShardedTable, queue) -> None:
    queue.put(table.get("ids", [0, 6]).tolist())


def test_table_is_usable_after_fork_and_pickling(tmp_path):
    write_table(tmp_path, [4, 4])
    table = ShardedTable(tmp_path, SEGMENTS)
    table.get("ids", [0])  # the parent holds an open handle before forking
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_read_in_child, args=(table, queue))
    child.start()
    assert queue.get(timeout=30) == [0, 102]
    child.join(timeout=30)
    assert child.exitcode == 0
    clone = pickle.loads(pickle.dumps(table))
    assert clone.get("ids", [7]).tolist() == [103]


# --------------------------------------------------------------------------- resumption
def test_is_done_accepts_complete_shards_and_removes_broken_ones(tmp_path):
    write_table(tmp_path, [4, 4])
    assert is_done(tmp_path, SEGMENTS, 0, 4, {"first_segment_id": "s0"})
    assert not is_done(tmp_path, SEGMENTS, 5, 4)  # never written
    path = shard_path(tmp_path, SEGMENTS, 1)
    path.write_bytes(path.read_bytes()[:-7])  # truncated, e.g. a disk-full or pre-fsync crash
    assert not is_done(tmp_path, SEGMENTS, 1, 4)
    assert not path.exists()
    write_table(tmp_path, [4])
    assert not is_done(tmp_path, SEGMENTS, 0, 3)  # another plan's row count
    write_table(tmp_path, [4])
    assert not is_done(tmp_path, SEGMENTS, 0, 4, {"first_segment_id": "other"})
    shard_path(tmp_path, SEGMENTS, 0).write_bytes(b"\x00" * 64)  # garbage
    assert not is_done(tmp_path, SEGMENTS, 0, 4)


def build(root: Path, counts: list[int], crash_after: int | None = None) -> None:
    """The stage's loop in miniature; `crash_after` = shards finished before a SIGKILL."""
    prepare(root, FINGERPRINT)
    for index, rows in enumerate(counts):
        if crash_after is not None and index == crash_after:
            # A kill mid-write leaves atomic_path's temporary sibling, never the final name.
            half = shard_path(root, SEGMENTS, index).with_name(f".shard-{index:05d}.safetensors.x1")
            half.write_bytes(b"partial")
            (root / SEGMENTS / f"shard-{index:05d}.safetensors.tmp-42").write_bytes(b"partial")
            return
        plan = {"first_segment_id": f"s{index}-0", "last_segment_id": f"s{index}-{rows - 1}"}
        if not is_done(root, SEGMENTS, index, rows, plan):
            write_shard(root, SEGMENTS, index, shard_tensors(index, rows), plan)
    table = ShardedTable(root, SEGMENTS)
    write_stats(root, *channel_stats(table, "latents", range(len(table))))
    update_manifest(root, empty_text_id=0, frames=5)


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_interrupted_then_resumed_cache_is_byte_identical_to_a_clean_run(tmp_path):
    counts = [4, 4, 4, 2]
    build(tmp_path / "clean", counts)
    build(tmp_path / "resumed", counts, crash_after=2)
    before = shard_path(tmp_path / "resumed", SEGMENTS, 0).stat().st_mtime_ns
    assert prepare(tmp_path / "resumed", FINGERPRINT)  # resumes, sweeps the temporaries
    build(tmp_path / "resumed", counts)
    assert shard_path(tmp_path / "resumed", SEGMENTS, 0).stat().st_mtime_ns == before  # skipped
    assert tree_bytes(tmp_path / "resumed") == tree_bytes(tmp_path / "clean")


def test_prepare_wipes_on_a_new_fingerprint_or_format_and_keeps_foreign_files(tmp_path):
    assert not prepare(tmp_path, FINGERPRINT)
    write_table(tmp_path, [4])
    (tmp_path / "notes.txt").write_text("not the cache's")
    assert prepare(tmp_path, {**FINGERPRINT, "codec": {"grid": [1, 64], "name": "mel25"}})
    assert shard_path(tmp_path, SEGMENTS, 0).exists()
    assert not prepare(tmp_path, {**FINGERPRINT, "segments_per_shard": 8})
    assert not (tmp_path / SEGMENTS).exists()
    assert read_manifest(tmp_path)["fingerprint"]["segments_per_shard"] == 8
    assert (tmp_path / "notes.txt").exists()
    manifest = read_manifest(tmp_path) | {"format": 999}
    (tmp_path / MANIFEST).write_text(json.dumps(manifest))
    write_table(tmp_path, [4])
    assert not prepare(tmp_path, {**FINGERPRINT, "segments_per_shard": 8})
    assert not (tmp_path / SEGMENTS).exists()


def test_update_manifest_merges_fields_but_never_the_fingerprint(tmp_path):
    prepare(tmp_path, FINGERPRINT)
    update_manifest(tmp_path, empty_text_id=7, codec={"grid": (1, 64)})
    update_manifest(tmp_path, frames=250)
    manifest = read_manifest(tmp_path)
    assert manifest["empty_text_id"] == 7 and manifest["frames"] == 250
    assert manifest["codec"] == {"grid": [1, 64]}
    with pytest.raises(ValueError):
        update_manifest(tmp_path, fingerprint={})
    assert not list(tmp_path.glob(".*"))  # no temporary left behind


# --------------------------------------------------------------------------- statistics
def test_channel_stats_match_numpy_over_the_chosen_rows(tmp_path):
    shards = write_table(tmp_path, [4, 4, 3])
    table = ShardedTable(tmp_path, SEGMENTS)
    rows = [9, 0, 1, 5, 6, 10]  # several shards, unsorted
    mean, std = channel_stats(table, "latents", rows, chunk_rows=2)
    values = concatenated(shards, "latents")[sorted(rows)].double().reshape(-1, 3).numpy()
    np.testing.assert_allclose(mean.numpy(), values.mean(axis=0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(std.numpy(), values.std(axis=0), rtol=1e-12, atol=1e-12)
    write_stats(tmp_path, mean, std)
    stored_mean, stored_std = read_stats(tmp_path)
    assert stored_mean.dtype == torch.float32 and torch.equal(stored_mean, mean.float())
    assert torch.equal(stored_std, std.float())
