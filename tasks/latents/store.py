"""The sharded, resumable latent cache under `latents.root`: pure I/O, no codec knowledge.

Layout (the contract between the `latents` stage, which writes, and training, which reads):

    manifest.json                      fingerprint + format, written first; codec, dims, ...
    segments/shard-00000.safetensors   latents [n, T, C], clap_audio [n, Dc], teacher [n, T, Dt]
    texts/shard-00000.safetensors      sequence [m, L, D], mask [m, L], clap_text [m, Dc]
    segments.parquet, texts.parquet    one row per segment / unique text (shard, row, ids)
    stats.safetensors                  latent_mean [C], latent_std [C] over the train split

Resumption: `prepare` keeps the directory when the manifest's fingerprint is the one asked
for and wipes it otherwise; the stage then skips every shard `is_done` accepts. Shards are
written atomically (temporary sibling, fsync, `os.replace`) with deterministic bytes, so a
killed-then-resumed cache is byte-identical to an uninterrupted one.

Reading is memory-mapped through `safetensors.safe_open`: `ShardedTable.get` reads only the
requested rows' bytes, and its handles are reopened in each process (DataLoader workers).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from safetensors import SafetensorError, safe_open

from tasks.common.atomic import atomic_path, write_json

FORMAT = 1
MANIFEST = "manifest.json"
SEGMENTS = "segments"  # table of per-segment tensors
TEXTS = "texts"  # table of per-unique-text tensors
SEGMENT_INDEX = "segments.parquet"
TEXT_INDEX = "texts.parquet"
STATS = "stats.safetensors"
SHARD_PREFIX = "shard-"
LAYOUT = (MANIFEST, SEGMENTS, TEXTS, SEGMENT_INDEX, TEXT_INDEX, STATS)

_DTYPE_CODES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}


def _as_tensor(value: torch.Tensor | np.ndarray) -> torch.Tensor:
    tensor = (
        torch.from_numpy(np.ascontiguousarray(value)) if isinstance(value, np.ndarray) else value
    )
    return tensor.detach().cpu().contiguous()


def write_safetensors(
    path: Path, tensors: Mapping[str, torch.Tensor | np.ndarray], metadata: Mapping[str, str]
) -> None:
    """A safetensors file with deterministic bytes, written durably.

    safetensors' own writer (0.8) serialises `__metadata__` from a Rust HashMap, whose
    order changes from call to call; equal inputs must give equal bytes here (a resumed
    cache is byte-identical to a clean one), so the header is built with sorted keys. The format
    is the documented one: u64 little-endian header size, JSON header padded with spaces to
    8-byte alignment, then the tensors' raw little-endian bytes back to back.
    """
    if sys.byteorder != "little":
        raise RuntimeError("safetensors stores little-endian bytes; this host is big-endian")
    header: dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = {str(key): str(metadata[key]) for key in sorted(metadata)}
    payloads, offset = [], 0
    for name in sorted(tensors):
        tensor = _as_tensor(tensors[name])
        if tensor.dtype not in _DTYPE_CODES:
            raise TypeError(f"{name}: dtype {tensor.dtype} cannot be stored")
        size = tensor.numel() * tensor.element_size()
        header[name] = {
            "dtype": _DTYPE_CODES[tensor.dtype],
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + size],
        }
        payloads.append(tensor)
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    with atomic_path(path) as temporary, open(temporary, "wb") as handle:
        handle.write(len(encoded).to_bytes(8, "little"))
        handle.write(encoded)
        for tensor in payloads:
            handle.write(tensor.reshape(-1).view(torch.uint8).numpy().data)


# --------------------------------------------------------------------------- manifest
def _canonical(payload: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON round trip of `payload`, so tuples/lists and int keys compare as stored."""
    return json.loads(json.dumps(dict(payload), sort_keys=True))


def read_manifest(root: Path) -> dict[str, Any]:
    return json.loads((root / MANIFEST).read_text())


def _existing_manifest(root: Path) -> dict[str, Any] | None:
    try:
        manifest = read_manifest(root)
    except (OSError, ValueError):  # absent, or unreadable JSON: nothing to resume
        return None
    return manifest if isinstance(manifest, dict) else None


def update_manifest(root: Path, **fields: Any) -> dict[str, Any]:
    """Merge `fields` into the manifest (atomically); the fingerprint is `prepare`'s alone."""
    if {"fingerprint", "format"} & fields.keys():
        raise ValueError("fingerprint and format are set by prepare(), not update_manifest()")
    manifest = read_manifest(root) | _canonical(fields)
    write_json(root / MANIFEST, manifest)
    return manifest


def _is_temporary(name: str) -> bool:
    """Leftovers of a killed writer: `*.tmp*`, or atomic_path's `.<final name>.<random>`."""
    if ".tmp" in name:
        return True
    return name.startswith(".") and name[1:].startswith((SHARD_PREFIX, *LAYOUT))


def _remove_temporaries(root: Path) -> None:
    for directory in (root, root / SEGMENTS, root / TEXTS):
        if directory.is_dir():
            for entry in directory.iterdir():
                if entry.is_file() and _is_temporary(entry.name):
                    entry.unlink()


def _wipe(root: Path) -> None:
    """Remove the cache's own entries only: a mistyped root never loses foreign files."""
    for name in LAYOUT:
        entry = root / name
        if entry.is_dir():
            shutil.rmtree(entry)
        else:
            entry.unlink(missing_ok=True)


def prepare(root: Path, fingerprint: Mapping[str, Any]) -> bool:
    """Ready `root` for writing; True when the work of an earlier run is being resumed.

    A manifest with another fingerprint or format (or no manifest at all) means the files
    present were made for another plan: they are wiped and the manifest is rewritten.
    """
    root.mkdir(parents=True, exist_ok=True)
    wanted = _canonical(fingerprint)
    manifest = _existing_manifest(root)
    resumed = (
        manifest is not None
        and manifest.get("format") == FORMAT
        and manifest.get("fingerprint") == wanted
    )
    if not resumed:
        _wipe(root)
    _remove_temporaries(root)
    if not resumed:
        write_json(root / MANIFEST, {"fingerprint": wanted, "format": FORMAT})
    return resumed


# --------------------------------------------------------------------------- shards
def shard_ranges(count: int, per_shard: int) -> list[range]:
    """Consecutive row ranges of at most `per_shard` rows covering 0..count-1."""
    if per_shard < 1:
        raise ValueError(f"per_shard must be >= 1, got {per_shard}")
    return [range(start, min(start + per_shard, count)) for start in range(0, count, per_shard)]


def shard_path(root: Path, table: str, index: int) -> Path:
    return root / table / f"{SHARD_PREFIX}{index:05d}.safetensors"


def _common_rows(tensors: Mapping[str, torch.Tensor | np.ndarray]) -> int:
    rows = {name: int(value.shape[0]) for name, value in tensors.items()}
    if not rows or len(set(rows.values())) != 1:
        raise ValueError(f"a shard needs tensors with one common row count, got {rows}")
    return next(iter(rows.values()))


def write_shard(
    root: Path,
    table: str,
    index: int,
    tensors: Mapping[str, torch.Tensor | np.ndarray],
    metadata: Mapping[str, str],
) -> Path:
    """Write one shard atomically; `rows` is added to its metadata (checked by `is_done`)."""
    rows = _common_rows(tensors)
    if "rows" in metadata and metadata["rows"] != str(rows):
        raise ValueError(f"metadata rows={metadata['rows']} but the tensors hold {rows} rows")
    path = shard_path(root, table, index)
    write_safetensors(path, tensors, {**metadata, "rows": str(rows)})
    return path


def _shard_holds(path: Path, rows: int, expected: Mapping[str, str]) -> bool:
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            names = handle.keys()
            lengths = {handle.get_slice(name).get_shape()[0] for name in names}
    except (SafetensorError, OSError, ValueError):
        return False  # truncated or corrupt: safe_open checks the header covers the file
    matches = all(metadata.get(key) == value for key, value in expected.items())
    return matches and metadata.get("rows") == str(rows) and lengths == {rows}


def is_done(
    root: Path, table: str, index: int, rows: int, expected: Mapping[str, str] | None = None
) -> bool:
    """Whether shard `index` is complete: it opens, holds `rows` rows and carries `expected`
    metadata (e.g. its first/last segment_id from the plan). A final file that fails the
    check (truncated, corrupt, from another plan) is removed so the shard is rewritten.
    """
    path = shard_path(root, table, index)
    if not path.exists():
        return False
    if _shard_holds(path, rows, expected or {}):
        return True
    path.unlink()
    return False


def write_missing_shards(
    root: Path,
    name: str,
    table: pd.DataFrame,
    id_column: str,
    per_shard: int,
    encode: Callable[[pd.DataFrame], Mapping[str, torch.Tensor | np.ndarray]],
) -> tuple[int, int]:
    """(written, skipped): encode and write every shard of the plan not already done.

    A shard counts as done only if it holds its planned rows, first to last id.
    """
    written = skipped = 0
    for index, rows in enumerate(shard_ranges(len(table), per_shard)):
        part = table.iloc[rows.start : rows.stop]
        ids = part[id_column].astype(str)
        plan = {"first": ids.iloc[0], "last": ids.iloc[-1]}
        if is_done(root, name, index, len(part), plan):
            skipped += 1
            continue
        write_shard(root, name, index, encode(part), plan)
        written += 1
    return written, skipped


# --------------------------------------------------------------------------- reading
def _shard_files(directory: Path) -> list[Path]:
    """The shards of a table; they must be numbered 0..n-1 without a gap."""
    paths = sorted(directory.glob(f"{SHARD_PREFIX}*.safetensors"))
    names = [path.name for path in paths]
    wanted = [f"{SHARD_PREFIX}{index:05d}.safetensors" for index in range(len(paths))]
    if names != wanted:
        raise FileNotFoundError(f"{directory}: shards are not numbered 0..{len(paths) - 1}")
    if not paths:
        raise FileNotFoundError(f"{directory}: no shards (has the latents stage run?)")
    return paths


class ShardedTable:
    """Read-only, memory-mapped view of one table's shards as one row-indexed table."""

    def __init__(self, root: Path, table: str) -> None:
        self.directory = root / table
        self.paths = _shard_files(self.directory)
        counts: list[int] = []
        keys: set[tuple[str, ...]] = set()
        for path in self.paths:  # headers only: safe_open maps, it reads no tensor data
            with safe_open(str(path), framework="pt") as handle:
                names = tuple(sorted(handle.keys()))
                counts.append(handle.get_slice(names[0]).get_shape()[0])
                keys.add(names)
        if len(keys) != 1:
            raise ValueError(f"{self.directory}: shards hold different tensors {sorted(keys)}")
        self.keys: tuple[str, ...] = keys.pop()
        self.offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)  # [shards + 1]
        self._handles: dict[int, Any] = {}
        self._pid = os.getpid()

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getstate__(self) -> dict[str, Any]:
        # safe_open handles cannot be pickled (spawned DataLoader workers): reopen lazily.
        return {**self.__dict__, "_handles": {}, "_pid": None}

    def _handle(self, shard: int) -> Any:
        if self._pid != os.getpid():  # a forked worker must not share the parent's maps
            self._handles, self._pid = {}, os.getpid()
        if shard not in self._handles:
            self._handles[shard] = safe_open(str(self.paths[shard]), framework="pt")
        return self._handles[shard]

    def global_rows(self, shards: Sequence[int], rows: Sequence[int]) -> np.ndarray:
        """Table rows of (shard, row-in-shard) pairs, checked against the shard sizes."""
        shards_array = np.asarray(shards, dtype=np.int64)
        rows_array = np.asarray(rows, dtype=np.int64)
        sizes = np.diff(self.offsets)
        if ((shards_array < 0) | (shards_array >= len(sizes))).any():
            raise IndexError(f"{self.directory}: shard index out of range")
        if ((rows_array < 0) | (rows_array >= sizes[shards_array])).any():
            raise IndexError(f"{self.directory}: row out of its shard's range")
        return self.offsets[shards_array] + rows_array

    def get(self, name: str, rows: Sequence[int]) -> torch.Tensor:
        """Rows `rows` (in that order, any shards) of tensor `name`, as a fresh tensor."""
        if name not in self.keys:
            raise KeyError(f"{self.directory}: no tensor {name!r}; has {list(self.keys)}")
        indices = np.asarray(rows, dtype=np.int64).reshape(-1)
        if ((indices < 0) | (indices >= len(self))).any():
            raise IndexError(f"{self.directory}: rows out of range 0..{len(self) - 1}")
        if indices.size == 0:
            return self._handle(0).get_slice(name)[0:0].clone()
        shards = np.searchsorted(self.offsets, indices, side="right") - 1
        local = indices - self.offsets[shards]
        # One slice per run of consecutive rows in one shard: a batch of neighbours is one read.
        breaks = np.flatnonzero((np.diff(shards) != 0) | (np.diff(local) != 1)) + 1
        starts, ends = np.concatenate([[0], breaks]), np.concatenate([breaks, [indices.size]])
        pieces = [
            self._handle(int(shards[start])).get_slice(name)[
                int(local[start]) : int(local[end - 1]) + 1
            ]
            for start, end in zip(starts, ends, strict=True)
        ]
        # A slice is a view of the handle's private mapping: writing into it would change
        # what later reads of this handle return, so the caller always gets a copy.
        return torch.cat(pieces) if len(pieces) > 1 else pieces[0].clone()


# --------------------------------------------------------------------------- statistics
def channel_stats(
    table: ShardedTable, name: str, rows: Sequence[int] | np.ndarray, chunk_rows: int = 256
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel (last axis) mean and population std of `name` over `rows`, in float64.

    Streams shard by shard and merges chunk moments with Chan et al.'s parallel update, so
    memory stays one chunk and the sum of squares never cancels catastrophically.
    """
    ordered = np.unique(np.asarray(rows, dtype=np.int64))  # sorted: runs within shards
    if ordered.size == 0:
        raise ValueError("channel_stats needs at least one row")
    shards = np.searchsorted(table.offsets, ordered, side="right") - 1
    count, mean, m2 = 0, torch.zeros(0, dtype=torch.float64), torch.zeros(0, dtype=torch.float64)
    for shard in np.unique(shards):
        in_shard = ordered[shards == shard]
        for start in range(0, in_shard.size, chunk_rows):
            values = table.get(name, in_shard[start : start + chunk_rows]).to(torch.float64)
            values = values.reshape(-1, values.shape[-1])  # [rows * frames, channels]
            chunk_mean = values.mean(dim=0)
            chunk_m2 = ((values - chunk_mean) ** 2).sum(dim=0)
            if count == 0:
                count, mean, m2 = values.shape[0], chunk_mean, chunk_m2
                continue
            total = count + values.shape[0]
            delta = chunk_mean - mean
            mean = mean + delta * (values.shape[0] / total)
            m2 = m2 + chunk_m2 + delta**2 * (count * values.shape[0] / total)
            count = total
    return mean, (m2 / count).sqrt()


def write_stats(root: Path, mean: torch.Tensor, std: torch.Tensor) -> Path:
    """stats.safetensors: latent_mean, latent_std [C] float32 (the model's normaliser)."""
    if mean.shape != std.shape or mean.ndim != 1:
        raise ValueError(f"mean {tuple(mean.shape)} and std {tuple(std.shape)} must be [C]")
    path = root / STATS
    tensors = {"latent_mean": mean.to(torch.float32), "latent_std": std.to(torch.float32)}
    write_safetensors(path, tensors, {"channels": str(mean.shape[0])})
    return path


def read_stats(root: Path) -> tuple[torch.Tensor, torch.Tensor]:
    with safe_open(str(root / STATS), framework="pt") as handle:
        return handle.get_tensor("latent_mean").clone(), handle.get_tensor("latent_std").clone()
