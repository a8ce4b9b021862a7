"""Params of the sweep and the ablation table (flows/): what is searched, what is compared.

No DVC stage reads this section, so editing it never makes the DAG stale. Every dotted key
in `search_space`, `base` and `configurations` is checked against the rest of params.yaml
when the file loads (tasks/params/__init__.py), so a typo fails before any trial runs.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, Self

from pydantic import Field, model_validator

from tasks.params.base import Section

Direction = Literal["maximize", "minimize"]
NOISE_PREFIX = "data.noise."  # what a noise level may override
_LEVEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.]*")


class SearchRange(Section):
    """One dimension of the Optuna search space: a float in [low, high]."""

    low: float
    high: float
    log: bool  # sample on a log scale (needs low > 0)

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.low >= self.high:
            raise ValueError("low must be < high")
        if self.log and self.low <= 0:
            raise ValueError("a log-scale range needs low > 0")
        return self


class MetricSpec(Section):
    """A figure the tables report, read from one of a trial's DVC metrics files."""

    file: str  # e.g. reports/metrics.json (the evaluate stage's)
    key: str  # dotted key inside the file, e.g. generated.clap_score.value
    direction: Direction  # which way is better: the sweep's direction, the table's arrows


class PrunerParams(Section):
    """Optuna's MedianPruner on the validation flow-matching loss the trainer reports."""

    name: Literal["median", "none"]
    startup_trials: Annotated[int, Field(ge=0)]  # complete trials before anything is pruned
    warmup_steps: Annotated[int, Field(ge=0)]  # training steps of a trial before it can be


class AblationParams(Section):
    objective: str  # the metric the sweep optimises (a key of `metrics`)
    metrics: dict[str, MetricSpec] = Field(min_length=1)
    search_space: dict[str, SearchRange] = Field(min_length=1)
    sampler: Literal["tpe", "random"]
    pruner: PrunerParams
    # Paper 000 §III-B, Table I: the base configuration disables every optional component;
    # each configuration switches exactly one on, the rest inherited from base.
    base: dict[str, Any]
    configurations: dict[str, dict[str, Any]] = Field(min_length=1)
    # The noise axis: named corpus noise levels (`data.noise.*` overrides) a table can be run
    # over; each level gets its own base, and deltas and tests compare at the same level.
    noise_levels: dict[str, dict[str, Any]]
    significance_level: Annotated[float, Field(gt=0.0, lt=1.0)]
    # params every trial gets under the flows' own overrides (e.g. evaluate.profile: trial)
    trial_overrides: dict[str, Any]

    @model_validator(mode="after")
    def _objective_is_a_metric(self) -> Self:
        if self.objective not in self.metrics:
            raise ValueError(
                f"objective {self.objective!r} is not one of metrics {list(self.metrics)}"
            )
        if "base" in self.configurations:
            raise ValueError("configurations: 'base' is the name of the base row")
        for name, overrides in self.noise_levels.items():
            # the level's name is part of a DVC experiment name (a git ref)
            if not _LEVEL_NAME.fullmatch(name):
                raise ValueError(f"noise_levels.{name}: use letters, digits, '_' and '.'")
            others = sorted(key for key in overrides if not key.startswith(NOISE_PREFIX))
            if others or not overrides:
                raise ValueError(
                    f"noise_levels.{name}: needs {NOISE_PREFIX}* keys only (got {others or '{}'})"
                )
        return self
