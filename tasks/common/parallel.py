"""Process-parallel map shared by the corpus builders: results in input order, always."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


def ordered_map(
    function: Callable[[Item], Result], items: Sequence[Item], workers: int
) -> list[Result]:
    """`[function(item) for item in items]`, over `workers` processes when there are several.

    `function` must be a module-level function (it is pickled); the output order, and so
    every table built from it, does not depend on the worker count.
    """
    if workers == 1 or len(items) < 2:
        return [function(item) for item in items]
    chunk = max(1, len(items) // (workers * 8))
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(function, items, chunksize=chunk))
