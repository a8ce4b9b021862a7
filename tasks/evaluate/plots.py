"""The evaluation figures, each a PNG with its data as a CSV beside it (DVC plots).

- loss_curves: train / val flow-matching loss of pretrain then finetune (paper 000 Figs. 4-5);
- clap_scores: per-clip CLAP score histograms of generated, reference and random-latent audio
  (the evaluation-side counterpart of paper 000 Fig. 1, whose training-set version is
  reports/curation/clap_score_hist.png);
- beta_densities: Beta(1 + λ(1 - S), 1) densities of the timestep for several S (Fig. 2);
- quality_curve: p-MOS (and FAD, KL) of generations against the requested level (paper 003
  Fig. 3), with the bootstrap interval as a band.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure  # the OO API: Agg canvas, no pyplot global state

from models.flow_matching import beta_alpha, beta_density
from tasks.common.atomic import atomic_path
from tasks.common.bootstrap import BootstrapCI

STAGES = ("pretrain", "finetune")


def save(figure: Figure, table: pd.DataFrame, stem: Path) -> list[Path]:
    figure.tight_layout()
    with atomic_path(stem.with_suffix(".png")) as tmp:
        figure.savefig(tmp, format="png", dpi=110)
    with atomic_path(stem.with_suffix(".csv")) as tmp:
        table.to_csv(tmp, index=False)
    return [stem.with_suffix(".png"), stem.with_suffix(".csv")]


def loss_curves(reports: Path, stem: Path) -> list[Path]:
    """Both training stages on one step axis (finetune continues where pretrain ended)."""
    rows, offset = [], 0
    for stage in STAGES:
        folder = reports / stage
        if not (folder / "train.csv").exists():
            continue
        train = pd.read_csv(folder / "train.csv")
        val = pd.read_csv(folder / "val.csv")
        rows.append(
            pd.DataFrame(
                {
                    "stage": stage,
                    "split": "train",
                    "step": train["step"] + offset,
                    "flow_matching": train["flow_matching"],
                }
            )
        )
        rows.append(
            pd.DataFrame(
                {
                    "stage": stage,
                    "split": "val",
                    "step": val["step"] + offset,
                    "flow_matching": val["val_flow_matching"],
                }
            )
        )
        offset += int(train["step"].max())
    table = (
        pd.concat(rows, ignore_index=True)
        if rows
        else pd.DataFrame(columns=["stage", "split", "step", "flow_matching"])
    )
    figure = Figure(figsize=(6.5, 3.5))
    axis = figure.subplots()
    for (stage, split), part in table.groupby(["stage", "split"], sort=False):
        style = "-" if split == "train" else "o-"
        axis.plot(part["step"], part["flow_matching"], style, label=f"{stage} {split}")
    axis.set(
        xlabel="step (pretrain, then finetune)",
        ylabel="flow-matching loss",
        title="Training and validation loss (paper 000 Figs. 4-5)",
    )
    axis.legend()
    return save(figure, table, stem)


def clap_scores(scores: dict[str, np.ndarray], labels: dict[str, str], stem: Path) -> list[Path]:
    table = pd.concat(
        [pd.DataFrame({"set": name, "clap_score": values}) for name, values in scores.items()],
        ignore_index=True,
    )
    figure = Figure(figsize=(6.5, 3.5))
    axis = figure.subplots()
    bins = np.linspace(
        min(-0.2, table["clap_score"].min()), max(1.0, table["clap_score"].max()), 41
    )
    for name, values in scores.items():
        axis.hist(
            values,
            bins=bins,
            alpha=0.55,
            label=f"{labels.get(name, name)} (mean {np.mean(values):.3f})",
        )
    axis.set(
        xlabel="CLAP score (prompt-audio cosine)",
        ylabel="clips",
        title="CLAP scores of the evaluation clips (cf. paper 000 Fig. 1)",
    )
    axis.legend(fontsize=8)
    return save(figure, table, stem)


def beta_densities(beta_lambda: float, scores: Sequence[float], stem: Path) -> list[Path]:
    """Paper 000 Fig. 2: p(t | S) = Beta(α(S), 1), α = 1 + λ(1 - S), t = 1 is noise."""
    t = np.linspace(0.0, 1.0, 201)
    table = pd.DataFrame({"t": t})
    figure = Figure(figsize=(6.5, 3.5))
    axis = figure.subplots()
    for score in scores:
        alpha = float(beta_alpha(torch.tensor(score), beta_lambda))
        table[f"S={score:.2f}"] = beta_density(t, alpha)
        axis.plot(t, table[f"S={score:.2f}"], label=f"S = {score:.2f} (α = {alpha:.2f})")
    title = f"Score-aware timestep densities, λ = {beta_lambda} (paper 000 Fig. 2)"
    axis.set(xlabel="t (1 = noise)", ylabel="density", title=title)
    axis.legend(fontsize=8)
    return save(figure, table, stem)


def quality_curve(curve: dict[int, dict[str, BootstrapCI]], stem: Path) -> list[Path]:
    titles = {"pmos": "p-MOS ↑", "fad_clap": "FAD (CLAP) ↓", "kl": "KL ↓"}
    rows = []
    for level, metrics in sorted(curve.items()):
        row: dict[str, float] = {"level": level}
        for metric in titles:
            if metric in metrics:
                ci = metrics[metric]
                row.update(
                    {metric: ci.estimate, f"{metric}_low": ci.low, f"{metric}_high": ci.high}
                )
        rows.append(row)
    table = pd.DataFrame(rows)
    figure = Figure(figsize=(9, 3.2))
    axes = figure.subplots(1, len(titles))
    for axis, (metric, title) in zip(axes, titles.items(), strict=True):
        if metric in table:
            axis.plot(table["level"], table[metric], "o-")
            axis.fill_between(
                table["level"], table[f"{metric}_low"], table[f"{metric}_high"], alpha=0.25
            )
        axis.set(xlabel="requested quality level", title=title)
        axis.set_xticks(table["level"])
    figure.suptitle("Quality-level control (paper 003 Fig. 3)")
    return save(figure, table, stem)
