"""The order in which training samples are seen, as a pure function of (seed, stage, step).

Epoch e visits a seeded permutation of the split (or, with QA-MDT's quality resampling,
seeded draws in proportion to the acceptance probability); step s reads batch s mod
batches-per-epoch of epoch s // batches-per-epoch. Nothing depends on the history of the
run, so a resumed run reads exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from tasks.common.seeds import derived_seed

STAGE_CODES = {"pretrain": 0, "finetune": 1}


def quality_acceptance(pmos: np.ndarray) -> np.ndarray:
    """QA-MDT's hidden rejection sampling (docs/reference.md §C.3): accept with exp(5·mos)/C, C
    = 623787092.85 (≈ 1 at mos 4.07); as sampling weights, the same law without rejections."""
    return np.minimum(1.0, np.exp(5.0 * np.nan_to_num(pmos, nan=0.0)) / 623_787_092.85)


class BatchPlan:
    """Global batches by step: epoch e = step // batches_per_epoch, drop-last within it."""

    def __init__(
        self, size: int, batch_size: int, seed: int, stage: str, weights: np.ndarray | None
    ) -> None:
        self.batches_per_epoch = size // batch_size
        if self.batches_per_epoch == 0:
            section = "train" if stage == "pretrain" else stage  # params.yaml's key
            raise ValueError(
                f"{section}.optim.batch_size {batch_size} exceeds the {size} {stage} samples "
                f"(fine-tuning reads the captions.finetune_fraction subset of the train split)"
            )
        self.size, self.batch_size, self.seed, self.stage = size, batch_size, seed, stage
        self.weights = weights

    def order(self, epoch: int) -> np.ndarray:
        rng = np.random.default_rng(derived_seed(self.seed, STAGE_CODES[self.stage], epoch))
        if self.weights is None:
            return rng.permutation(self.size)
        p = self.weights / self.weights.sum()
        return rng.choice(self.size, size=self.size, replace=True, p=p)

    def epochs(self, start: int, stop: int) -> Iterator[tuple[int, list[list[int]]]]:
        """(epoch, global batches) covering steps [start, stop)."""
        step = start
        while step < stop:
            epoch, first = divmod(step, self.batches_per_epoch)
            last = min(self.batches_per_epoch, first + stop - step)
            order = self.order(epoch)
            yield (
                epoch,
                [
                    order[j * self.batch_size : (j + 1) * self.batch_size].tolist()
                    for j in range(first, last)
                ],
            )
            step += last - first


def process_slice(batch: Sequence[int], rank: int, processes: int) -> list[int]:
    """This process's share of a global batch (batch_size must divide evenly)."""
    share = len(batch) // processes
    return list(batch[rank * share : (rank + 1) * share])
