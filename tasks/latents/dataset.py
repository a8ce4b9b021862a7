"""The training Dataset over the latent cache (tasks/latents/store.py), for both stages.

One sample = one curated segment: its codec latent, the text-encoder sequence and CLAP text
embedding of one of its captions, its CLAP score S (paper 000 §II-C), its quality level
(paper 003 §4.1) and the REPA targets (paper 000 §II-D). Two random decisions are made per
sample from a generator seeded by (seed, epoch, index), so they are reproducible whatever
the worker count or order: which caption variant to use and whether to drop the condition
for classifier-free guidance.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset, default_collate

from tasks.latents.store import (
    SEGMENT_INDEX,
    SEGMENTS,
    TEXT_INDEX,
    TEXTS,
    ShardedTable,
    read_manifest,
    read_stats,
)

Stage = Literal["pretrain", "finetune"]
Sample = dict[str, torch.Tensor]


class LatentStats(NamedTuple):
    """Per-channel latent normalisation over the train split: x = (latent - mean) / std."""

    mean: torch.Tensor  # [C]
    std: torch.Tensor  # [C]


class Draw(NamedTuple):
    variant: int  # index into the stage's caption columns
    dropped: bool  # classifier-free-guidance dropout


def draw(seed: int, epoch: int, index: int, variants: int, cfg_dropout: float) -> Draw:
    """The sample's two random decisions, from a generator seeded by (seed, epoch, index)."""
    rng = np.random.default_rng((seed, epoch, index))
    return Draw(variant=int(rng.integers(variants)), dropped=bool(rng.random() < cfg_dropout))


def spectrogram_view(latent: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """[..., T, C] -> [..., channels, T, frequency] with channels * frequency = C, no copy.

    Paper 003 §4.2 patchifies the latent as a 2-D time x frequency image; the codec's
    `grid` says how its C channels fold into (channels, frequency) (tasks/backends/base.py).
    """
    channels, frequency = grid
    if channels * frequency != latent.shape[-1]:
        raise ValueError(f"grid {grid} does not fold {latent.shape[-1]} latent channels")
    return latent.unflatten(-1, (channels, frequency)).transpose(-3, -2)


def stage_rows(segments: pd.DataFrame, split: str, stage: Stage) -> pd.DataFrame:
    """Segments of `split`; fine-tuning trains on its subset only (paper 000 Table II: 40 % of
    the training data) and validates on the whole held-out split, with the same captions."""
    chosen = segments["split"] == split
    if stage == "finetune" and split == "train":
        chosen &= segments["finetune"].astype(bool)
    rows = segments[chosen].reset_index(drop=True)
    if rows.empty:
        raise ValueError(f"no {stage} segments in split {split!r}")
    return rows


def text_id_matrix(rows: pd.DataFrame, columns: Sequence[str], text_count: int) -> np.ndarray:
    """[segments, variants] text ids from the `text_id.<column>` columns, all in range."""
    names = [f"text_id.{column}" for column in columns]
    missing = [name for name in names if name not in rows.columns]
    if missing:
        raise KeyError(
            f"{SEGMENT_INDEX} has no {missing}; caption variants cached: "
            f"{[c for c in rows.columns if c.startswith('text_id.')]}"
        )
    ids = rows[names].to_numpy(dtype=np.int64, na_value=-1)
    if ((ids < 0) | (ids >= text_count)).any():
        raise ValueError(f"{names}: some selected segments have no cached text")
    return ids


class LatentDataset(Dataset[Sample]):
    """Samples of one split for one training stage; see the module docstring.

    Pretraining draws the caption among `pretrain_columns` (paper 000 §II-B: "for each
    sample, one caption style is selected at random"); fine-tuning draws among
    `finetune_columns` (the LLM-rewritten concise caption alone, unless the two-stage
    captions are ablated) on the fine-tuning rows only.
    Call `set_epoch` before each epoch (workers are re-created per epoch unless
    `persistent_workers`, which would keep the old epoch).
    """

    def __init__(
        self,
        root: Path,
        split: str,
        stage: Stage,
        pretrain_columns: Sequence[str],
        finetune_columns: Sequence[str],
        seed: int,
        cfg_dropout: float,
        unconditional_level: int | None,
    ) -> None:
        if not 0.0 <= cfg_dropout <= 1.0:
            raise ValueError(f"cfg_dropout must be in [0, 1], got {cfg_dropout}")
        manifest = read_manifest(root)
        self.segment_table = ShardedTable(root, SEGMENTS)
        self.text_table = ShardedTable(root, TEXTS)
        texts = pd.read_parquet(root / TEXT_INDEX)
        self._check_text_index(texts)
        self.captions = texts["caption"].astype(str).to_numpy()  # without the quality prefix
        self.rows = stage_rows(pd.read_parquet(root / SEGMENT_INDEX), split, stage)
        columns = list(pretrain_columns if stage == "pretrain" else finetune_columns)
        self.columns = columns
        self.text_ids = text_id_matrix(self.rows, columns, len(self.text_table))
        self.segment_rows = self.segment_table.global_rows(self.rows["shard"], self.rows["row"])
        self.score = self.rows["score_normalised"].to_numpy(np.float32)
        self.clap_score = self.rows["clap_score"].to_numpy(np.float32)
        self.quality_level = self.rows["quality_level"].to_numpy(np.int64)
        self.empty_text_id = int(manifest["empty_text_id"])
        self.grid: tuple[int, int] = tuple(manifest["codec"]["grid"])
        self.stats = LatentStats(*read_stats(root))
        self.seed, self.cfg_dropout = seed, cfg_dropout
        self.unconditional_level = unconditional_level
        self.epoch = 0

    def _check_text_index(self, texts: pd.DataFrame) -> None:
        """texts.parquet's text_id must be the text's row in the sharded texts table."""
        rows = self.text_table.global_rows(texts["shard"], texts["row"])
        if not np.array_equal(rows, texts["text_id"].to_numpy(np.int64)):
            raise ValueError(f"{TEXT_INDEX}: text_id is not the global row of (shard, row)")

    def text_table_captions(self, text_ids: Sequence[int]) -> list[str]:
        """The captions behind cached text ids, without quality prefix (for CLAP scores)."""
        return [str(self.captions[i]) for i in text_ids]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.rows)

    def spectrogram_view(self, latent: torch.Tensor) -> torch.Tensor:
        return spectrogram_view(latent, self.grid)

    def __getitem__(self, index: int) -> Sample:
        index = range(len(self))[index]  # IndexError out of range; the seed needs index >= 0
        choice = draw(self.seed, self.epoch, index, len(self.columns), self.cfg_dropout)
        # Classifier-free guidance dropout, once, here: the text, its mask and the global
        # CLAP condition become the empty text's, jointly (docs/reference.md §A.5). The
        # quality token keeps the sample's level (QA-MDT's training never drops the MOS
        # token) unless `unconditional_level` fixes the unconditional branch's level (paper
        # 003 eq. (7), docs/reference.md §C.4: mos = 3): then dropped samples train exactly
        # that branch. Dropping per sample (the FluxAudio rule), not per batch (QA-MDT), keeps
        # every batch mixed.
        text_id = (
            self.empty_text_id if choice.dropped else int(self.text_ids[index, choice.variant])
        )
        level = int(self.quality_level[index])
        if choice.dropped and self.unconditional_level is not None:
            level = self.unconditional_level
        segment = [int(self.segment_rows[index])]
        return {
            "latent": self.segment_table.get("latents", segment)[0].float(),  # [T, C] raw
            "text": self.text_table.get("sequence", [text_id])[0].float(),  # [L, D]
            "text_mask": self.text_table.get("mask", [text_id])[0].bool(),  # [L]
            "clap_text": self.text_table.get("clap_text", [text_id])[0].float(),  # [Dc]
            "score": torch.tensor(self.score[index]),
            "clap_score": torch.tensor(self.clap_score[index]),
            "quality_level": torch.tensor(level, dtype=torch.int64),
            "clap_target": self.segment_table.get("clap_audio", segment)[0].float(),  # [Dc]
            "teacher_target": self.segment_table.get("teacher", segment)[0].float(),  # [T, Dt]
            "dropped": torch.tensor(choice.dropped),
            "text_id": torch.tensor(text_id, dtype=torch.int64),
            "index": torch.tensor(index, dtype=torch.int64),
        }


def collate(samples: Sequence[Sample]) -> Sample:
    """Stack each field along a new batch axis (every field has one shape per dataset)."""
    return default_collate(list(samples))
