"""Independent, reproducible random streams derived from integers (seed, purpose, index...)."""

from __future__ import annotations

import numpy as np


def derived_seed(*parts: int) -> int:
    """One 32-bit seed per tuple of parts: streams of different tuples never collide."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])
