"""Independent, reproducible random streams derived from integers (seed, purpose, index...)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def derived_seed(*parts: int) -> int:
    """One 32-bit seed per tuple of parts: streams of different tuples never collide."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


def derangement(n_items: int, seed: int | Sequence[int]) -> np.ndarray:
    """A seeded permutation of range(n_items) that moves every item (item i is paired with
    order[i] != i): a wrong-caption or wrong-prompt control. Drawn at random rather than the
    next item, whose neighbours often share a genre; rejection sampling accepts a draw with
    probability ~1/e. `seed` may be a sequence (a stream of its own, numpy's SeedSequence)."""
    if n_items < 2:
        raise ValueError(f"a derangement needs at least 2 items, got {n_items}")
    rng = np.random.default_rng(seed)
    while True:
        order = rng.permutation(n_items)
        if not np.any(order == np.arange(n_items)):
            return order
