"""An ablation table as a figure: each row's difference from base with its Welch interval
and its seed-paired one, one panel per metric and a colour per noise level, filled where
Holm's p < α; so a reader sees at once which intervals leave zero and how wide they are."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib import pyplot
from matplotlib.figure import Figure

from flows.studies import BASE, StudySpec

ARROWS = {"maximize": "↑ better", "minimize": "↓ better"}


def deltas_figure(table: pd.DataFrame, spec: StudySpec) -> Figure | None:
    """Δ against base (at the same noise level) with its interval, per metric; None for a
    table of base alone."""
    rows = table[table["configuration"] != BASE]
    metrics = [metric for metric in spec.metrics if f"{metric}_delta" in rows]
    if rows.empty or not metrics:
        return None
    levels = list(dict.fromkeys(rows["noise"])) if "noise" in rows else [None]
    names = list(dict.fromkeys(rows["configuration"]))
    height = 0.32 * len(names) * max(1, len(levels) // 2 + 1) + 1.6
    figure, axes = pyplot.subplots(
        1, len(metrics), figsize=(3.3 * len(metrics) + 1.8, height), sharey=True, squeeze=False
    )
    offsets = np.linspace(-0.22, 0.22, len(levels)) if len(levels) > 1 else np.zeros(1)
    for axis, metric in zip(axes[0], metrics, strict=True):
        for offset, level, colour in zip(offsets, levels, _colours(len(levels)), strict=True):
            mine = rows if level is None else rows[rows["noise"] == level]
            _panel(axis, mine, metric, names, offset, colour, level)
        axis.axvline(0.0, color="0.5", linewidth=0.8)
        axis.set_title(f"Δ {metric} ({ARROWS[spec.metrics[metric].direction]})", fontsize=9)
        axis.tick_params(labelsize=8)
    axes[0][0].set_yticks(range(len(names)), names)
    axes[0][0].invert_yaxis()
    if len(levels) > 1:
        axes[0][-1].legend(title="noise", fontsize=7, title_fontsize=7, loc="best")
    figure.suptitle(
        f"Δ vs base with {1 - spec.significance_level:.0%} CI: ○ Welch, □ paired by seed; "
        f"filled: Holm p < {spec.significance_level}",
        fontsize=9,
    )
    figure.tight_layout()
    return figure


def _panel(axis, rows: pd.DataFrame, metric: str, names, offset, colour, level) -> None:
    """Welch's interval (circles), then the seed-paired one just below it (squares)."""
    for test, marker, shift in (("", "o", 0.0), ("paired_", "s", 0.18)):
        y = np.asarray([names.index(name) for name in rows["configuration"]], float)
        y += offset + shift
        delta = rows[f"{metric}_{test}delta"].to_numpy(float)
        below = np.nan_to_num(delta - rows[f"{metric}_{test}ci_low"].to_numpy(float))
        above = np.nan_to_num(rows[f"{metric}_{test}ci_high"].to_numpy(float) - delta)
        significant = rows[f"{metric}_{test}significant"].fillna(False).to_numpy(bool)
        axis.errorbar(
            delta, y, xerr=[below, above], fmt=marker, color=colour, mfc="white", ms=4,
            capsize=2, linewidth=1, label=None if test else level,
        )  # fmt: skip
        axis.plot(delta[significant], y[significant], marker, color=colour, ms=4)


def _colours(count: int) -> list:
    palette = pyplot.get_cmap("tab10")
    return [palette(index) for index in range(count)]
