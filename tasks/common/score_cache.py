"""A content-addressed cache of per-window scorer outputs, so a killed `curate` run resumes.

Key = sha256(backend identity digest + the window's float32 bytes + its sample rate): the
same audio scored by the same checkpoint is never computed twice, whatever the track order,
the candidate count or the thresholds; a retrained scorer (new checkpoint bytes) gets new
keys. Values live in one sqlite3 file (WAL journal) with a table per output kind:
`clap_audio` (the L2-normalised CLAP audio embedding as float32 bytes; the CLAP score is
computed from it and the caption's text embedding, so caption edits cost no audio work)
and `pmos` (one float). `CachedScorer` commits after every backend batch, so what a run
finished survives an interruption.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import numpy as np

from tasks.backends.base import checkpoint_identity
from tasks.params import BackendChoice

CACHE_FILE = "scores.sqlite"
# Where a sweep's trials keep the cache: they run in `dvc exp run --temp` copies of the
# repository, where the relative `curate.cache_dir` would be a new, empty cache every time;
# the trial flow (flows/trial.py) names the repository's own here. Entries are content-
# addressed, so a shared cache never changes a result, only what is computed again.
SHARED_CACHE_ENV = "TTM_SCORE_CACHE"
TABLES = ("clap_audio", "pmos")

# waveforms [N, T] at `sample_rate` -> [N] or [N, D] float32
BatchFunction = Callable[[Sequence[np.ndarray], int], np.ndarray]


def backend_identity(part: str, choice: BackendChoice) -> str:
    """Digest of what a backend's audio output depends on: its kind, name and checkpoint.

    For CLAP only the audio tower matters for cached audio embeddings, so the separate text
    model (`text_model_path`) is deliberately left out.
    """
    if choice.path is None:
        raise ValueError(f"params `backends.{part}.path` is null: nothing to identify")
    checkpoint = checkpoint_identity(choice.path)["sha256"]
    return hashlib.sha256(f"{part}\0{choice.name}\0{checkpoint}".encode()).hexdigest()


def window_key(identity: str, window: np.ndarray, sample_rate: int) -> str:
    digest = hashlib.sha256(identity.encode())
    digest.update(np.ascontiguousarray(window, dtype=np.float32).tobytes())
    digest.update(int(sample_rate).to_bytes(8, "little"))
    return digest.hexdigest()


def cache_directory(configured: str) -> Path:
    """`curate.cache_dir`, unless $TTM_SCORE_CACHE names a shared one."""
    return Path(os.environ.get(SHARED_CACHE_ENV) or configured)


class ScoreCache:
    """sqlite3 key -> float32 vector store; `put` commits, so every batch is durable."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / CACHE_FILE
        self.connection = sqlite3.connect(self.path)
        self.connection.execute("PRAGMA journal_mode=WAL")
        self.connection.execute("PRAGMA synchronous=NORMAL")
        for table in TABLES:
            self.connection.execute(
                f"CREATE TABLE IF NOT EXISTS {table} (key TEXT PRIMARY KEY, value BLOB NOT NULL)"
            )
        self.connection.commit()

    def get(self, table: str, keys: Sequence[str]) -> dict[str, np.ndarray]:
        found: dict[str, np.ndarray] = {}
        _check_table(table)
        for start in range(0, len(keys), 500):  # sqlite's bound-parameter limit
            chunk = list(keys[start : start + 500])
            marks = ",".join("?" * len(chunk))
            rows = self.connection.execute(
                f"SELECT key, value FROM {table} WHERE key IN ({marks})", chunk
            )
            found.update((key, np.frombuffer(value, dtype=np.float32)) for key, value in rows)
        return found

    def put(self, table: str, items: Iterable[tuple[str, np.ndarray]]) -> None:
        _check_table(table)
        rows = [(key, np.asarray(v, dtype=np.float32).tobytes()) for key, v in items]
        with self.connection:  # one transaction, committed on exit
            self.connection.executemany(
                f"INSERT OR REPLACE INTO {table} (key, value) VALUES (?, ?)", rows
            )

    def count(self, table: str) -> int:
        _check_table(table)
        return int(self.connection.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])

    def close(self) -> None:
        self.connection.close()

    def __enter__(self) -> ScoreCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _check_table(table: str) -> None:
    if table not in TABLES:
        raise ValueError(f"unknown cache table {table!r}; known: {', '.join(TABLES)}")


@dataclass
class CachedScorer:
    """Run `compute` on the windows the cache lacks, `batch_size` at a time, in order.

    Lookups happen as windows stream in; misses queue up and go to the backend in full
    batches (so a partly filled cache costs ceil(missing / batch_size) calls), and each
    batch is committed before the next starts.

    A cached value depends on its window alone, never on the run that computed it: CPU
    kernels pick their blocking by the batch's size, so a window embedded in a batch of 2
    differs from the same window in a batch of 16 (by 7e-8 for the embedded CLAP), while at
    one batch size the result is bit-identical whatever the other rows are. So every batch
    goes to the backend at `batch_size` (a short last batch padded with copies of its first
    window, whose outputs are dropped), and the batch size is part of the key. Otherwise the
    cache's history (which stage, trial or corpus filled an entry first) would leak into
    the bytes of the stages' outputs, and from there into their DVC hashes.
    """

    cache: ScoreCache
    table: str
    identity: str
    compute: BatchFunction
    batch_size: int
    backend_calls: int = 0
    computed: int = 0
    hits: int = 0
    _pending: list[tuple[int, str, np.ndarray]] = field(default_factory=list, repr=False)

    def run(self, windows: Iterable[np.ndarray], sample_rate: int) -> list[np.ndarray]:
        """One output vector per window (a 1-element vector for scalar outputs)."""
        results: list[np.ndarray | None] = []
        lookup: list[tuple[int, str, np.ndarray]] = []
        for window in windows:
            results.append(None)
            key = window_key(f"{self.identity}|batch={self.batch_size}", window, sample_rate)
            lookup.append((len(results) - 1, key, window))
            if len(lookup) >= self.batch_size:
                self._resolve(lookup, results, sample_rate)
                lookup = []
        self._resolve(lookup, results, sample_rate)
        self._flush(results, sample_rate)
        missing = sum(r is None for r in results)
        if missing:
            raise RuntimeError(f"{missing} windows were never scored")
        return cast(list[np.ndarray], results)  # no None left: checked just above

    def _resolve(
        self, lookup: list[tuple[int, str, np.ndarray]], results: list, sample_rate: int
    ) -> None:
        found = self.cache.get(self.table, [key for _, key, _ in lookup])
        for index, key, window in lookup:
            if key in found:
                results[index] = found[key]
                self.hits += 1
            else:
                self._pending.append((index, key, window))
                if len(self._pending) >= self.batch_size:
                    self._flush(results, sample_rate)

    def _flush(self, results: list, sample_rate: int) -> None:
        if not self._pending:
            return
        batch, self._pending = self._pending, []
        windows = [w for _, _, w in batch]
        padded = windows + [windows[0]] * (self.batch_size - len(windows))
        outputs = np.asarray(self.compute(padded, sample_rate), np.float32)
        outputs = outputs.reshape(len(padded), -1)[: len(batch)]
        self.backend_calls += 1
        self.computed += len(batch)
        self.cache.put(
            self.table, [(key, out) for (_, key, _), out in zip(batch, outputs, strict=True)]
        )
        for (index, _, _), out in zip(batch, outputs, strict=True):
            results[index] = out

    def stats(self) -> dict[str, int]:
        return {"backend_calls": self.backend_calls, "computed": self.computed, "hits": self.hits}
