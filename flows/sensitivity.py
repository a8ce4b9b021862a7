"""What an ablation table at a given budget can see: each metric's seed-to-seed spread on
base and the minimum detectable difference (flows/power.py) at 3 and 5 seeds, next to the
effects the two papers report against their own base (docs/papers.md), as relative changes.

The papers' figures come from one run per row (paper 000 §III-B reports no seeds or
variance), at scales far beyond this project's embedded profile, so they are the effect
sizes a study here would need to see, not predictions of what it will see.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from flows.ablation_tables import at_level, level_label, noise_levels
from flows.power import minimum_detectable_difference
from flows.studies import BASE


@dataclass(frozen=True)
class PaperEffect:
    """One claim's effect, as the paper printed it: base and switched value of one metric."""

    claim: str
    source: str  # paper and section / table row
    metric: str  # the table metric it corresponds to (ablation.metrics)
    base: float
    switched: float

    @property
    def relative(self) -> float:
        return (self.switched - self.base) / abs(self.base)


# Paper 000 §III-B Table I (CLAP score and FAD over CLAP embeddings, 20k steps, one run per
# row); paper 003 §6.1 (prefix training vs none, FAD and p-MOS) and §6.2 Table 2 (MDT
# column: refined captions vs generated ones, generated vs the original tags).
PAPER_EFFECTS = (
    PaperEffect("CLAP REPA, normal", "000 Table I", "clap_score", 0.2755, 0.2930),
    PaperEffect("CLAP REPA, normal", "000 Table I", "fad_clap", 0.2856, 0.2767),
    PaperEffect("CLAP REPA, aggressive", "000 Table I", "clap_score", 0.2755, 0.2890),
    PaperEffect("CLAP REPA, aggressive", "000 Table I", "fad_clap", 0.2856, 0.2620),
    PaperEffect("MuQ REPA", "000 Table I", "clap_score", 0.2755, 0.1921),
    PaperEffect("Beta λ = 0.2", "000 Table I", "clap_score", 0.2755, 0.2788),
    PaperEffect("Beta λ = 1.0", "000 Table I", "clap_score", 0.2755, 0.2746),
    PaperEffect("Beta λ = 2.0", "000 Table I", "clap_score", 0.2755, 0.2587),
    PaperEffect("quality prefixes", "003 §6.1", "pmos", 3.796, 4.039),
    PaperEffect("quality prefixes", "003 §6.1", "fad_clap", 5.757, 5.602),
    PaperEffect("caption refinement", "003 §6.2 Table 2", "clap_score", 0.342, 0.350),
    PaperEffect("generated captions", "003 §6.2 Table 2", "clap_score", 0.291, 0.342),
)


def spread(base_values: Mapping[str, Sequence[float]], seeds: Sequence[int]) -> pd.DataFrame:
    """Per metric: base's seeds, mean, standard deviation, and the minimum detectable
    difference (α = 0.05, 80 % power) with `seeds` runs per arm, absolute and relative."""
    rows = []
    for metric, values in base_values.items():
        sample = np.asarray([v for v in values if math.isfinite(v)], dtype=np.float64)
        if len(sample) < 2:
            raise ValueError(f"{metric}: a spread needs >= 2 finite base seeds, got {len(sample)}")
        mean, std = float(sample.mean()), float(sample.std(ddof=1))
        row: dict[str, object] = {"metric": metric, "seeds": len(sample), "mean": mean, "std": std}
        for n in seeds:
            detectable = minimum_detectable_difference(std, n) if std > 0 else 0.0
            row[f"mdd_{n}"] = detectable
            row[f"mdd_{n}_relative"] = detectable / abs(mean) if mean else math.nan
        rows.append(row)
    return pd.DataFrame(rows)


def against_papers(table: pd.DataFrame, seeds: Sequence[int]) -> pd.DataFrame:
    """Each paper effect whose metric the table measured, and whether n seeds per arm would
    detect an effect of that relative size here (|relative effect| >= relative MDD)."""
    by_metric = table.set_index("metric")
    rows = []
    for effect in PAPER_EFFECTS:
        if effect.metric not in by_metric.index:
            continue
        row: dict[str, object] = {
            "claim": effect.claim,
            "source": effect.source,
            "metric": effect.metric,
            "paper_relative_effect": effect.relative,
        }
        for n in seeds:
            needed = float(by_metric.loc[effect.metric, f"mdd_{n}_relative"])
            row[f"detectable_with_{n}"] = bool(abs(effect.relative) >= needed)
        rows.append(row)
    return pd.DataFrame(rows)


def base_values(trials: pd.DataFrame, metrics: Sequence[str], level: str | None) -> dict:
    """Each metric's values over base's complete seeds (at noise `level`, if the table has one)."""
    mine = at_level(trials, level)
    base = mine[(mine["configuration"] == BASE) & (mine["state"] == "COMPLETE")]
    return {metric: base[metric].dropna().tolist() for metric in metrics if metric in base}


def report_section(trials: pd.DataFrame, metrics: Sequence[str], seeds: Sequence[int]) -> str:
    """Markdown: per noise level, base's spread and the differences the table could detect,
    then the papers' effects beside them; empty where base has fewer than two seeds."""
    lines = []
    levels = noise_levels(trials)
    for level in levels:
        values = base_values(trials, metrics, level)
        if any(len(v) < 2 for v in values.values()) or not values:
            continue
        table = spread(values, seeds)
        suffix = "" if levels == [None] else f" (noise level {level_label(level)})"
        lines += [
            f"### What this table can detect{suffix}",
            "",
            table.to_markdown(index=False, floatfmt=".4g"),
            "",
            "Base's seed-to-seed std; `mdd_n`: the smallest true difference a two-sided "
            "t-test with n seeds per arm detects with 80 % power at α = 0.05 (absolute, and "
            "relative to base's mean).",
            "",
            against_papers(table, seeds).to_markdown(index=False, floatfmt=".3g"),
            "",
            "The papers' effects (one run per row, at their scale) on the relative scale, "
            "and whether a difference that size relative to this base would be detected.",
            "",
        ]
    return "\n".join(lines)
