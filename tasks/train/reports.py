"""A training stage's DVC metrics and plots: train.csv, val.csv, loss.png and metrics.json
under reports/<stage>/, the same tables for MLflow."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure  # the OO API: Agg canvas, no pyplot global state

from tasks.common.atomic import atomic_path
from tasks.common.reporting import Report, json_safe
from tasks.train.loop import TrainResult


def loss_figure(train_rows: pd.DataFrame, val_rows: pd.DataFrame, path: Path, stage: str):
    figure = Figure(figsize=(6, 3.5))
    axis = figure.subplots()
    axis.plot(train_rows["step"], train_rows["flow_matching"], label="train flow matching")
    axis.plot(train_rows["step"], train_rows["loss"], label="train total (eq. 6)", alpha=0.6)
    axis.plot(val_rows["step"], val_rows["val_flow_matching"], "o-", label="val flow matching")
    axis.set(xlabel="step", ylabel="loss", title=f"{stage} (paper 000 Figs. 4-5)")
    axis.legend()
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=120)


# Wall-clock figures vary from run to run: they go to MLflow only, so the DVC files of a
# rerun are byte-identical (a fresh clone's `dvc repro` leaves git clean).
TIMINGS = ("wall_seconds", "samples_per_second")


def write_reports(result: TrainResult, folder: Path, stage: str, summary: dict) -> Report:
    folder.mkdir(parents=True, exist_ok=True)
    tables = {
        "train": pd.DataFrame(result.history.train),
        "val": pd.DataFrame(result.history.validation),
    }
    for name, table in tables.items():
        with atomic_path(folder / f"{name}.csv") as tmp:
            table.drop(columns=list(TIMINGS), errors="ignore").to_csv(tmp, index=False)
    loss_figure(tables["train"], tables["val"], folder / "loss.png", stage)
    reproducible = {key: value for key, value in summary.items() if key not in TIMINGS}
    with atomic_path(folder / "metrics.json") as tmp:
        tmp.write_text(json.dumps(json_safe(reproducible), indent=2) + "\n")
    artifacts = [folder / "metrics.json", folder / "loss.png"]
    return Report(summary=summary, tables=tables, artifacts=artifacts)
