"""Seeded train/val/test assignment, shared by the generated and the ingested corpus."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def assign_splits(
    track_ids: Sequence[str], val_fraction: float, test_fraction: float, seed: int
) -> dict[str, str]:
    """Shuffle with `seed`, then take test first, val next, the rest is train.

    Counts are rounded but never zero for a non-zero fraction, so a tiny corpus still has
    a val and a test track; the assignment depends only on the ids and the seed.
    """
    ordered = sorted(track_ids)
    order = np.random.default_rng(seed).permutation(len(ordered))
    shuffled = [ordered[i] for i in order]

    def count(fraction: float) -> int:
        return 0 if fraction == 0 else max(1, round(fraction * len(shuffled)))

    n_test, n_val = count(test_fraction), count(val_fraction)
    if n_test + n_val >= len(shuffled):
        raise ValueError(
            f"{len(shuffled)} tracks are too few for val_fraction={val_fraction} "
            f"and test_fraction={test_fraction}: no training track would be left"
        )
    splits = {track: "test" for track in shuffled[:n_test]}
    splits |= {track: "val" for track in shuffled[n_test : n_test + n_val]}
    splits |= {track: "train" for track in shuffled[n_test + n_val :]}
    return splits
