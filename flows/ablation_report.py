"""The report a sweep or table ends with: tables to MLflow (parent run) and to reports/.

`reports/ablations/<study>.{md,html}` hold one study each (with Optuna's figures, or a
table's differences from base, beside them as PNG); `reports/ablations.md` is rebuilt from
all of them, newest first, so it lists every sweep and table run in this repository.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import mlflow
import optuna
import pandas as pd
from matplotlib.figure import Figure

from flows import (
    ablation_figures,
    ablation_tables,
    findings,
    mlflow_runs,
    mlflow_views,
    sensitivity,
)
from flows.studies import StudySpec
from tasks.common.atomic import atomic_path

REPORTS = Path("reports")
INDEX = "ablations.md"
FIGURE_LINK = re.compile(r"\]\(([^)/]+\.png)\)")
# Seeds per arm at which a table's report gives the minimum detectable differences (issue 18:
# the papers' protocols at 3 seeds, and the 5 a sensitivity study runs on base).
DETECTABLE_AT_SEEDS = (3, 5)


def _state_counts(trials: pd.DataFrame) -> dict[str, int]:
    return trials["state"].value_counts().to_dict() if len(trials) else {}


def _timed(trials: pd.DataFrame) -> pd.DataFrame:
    """The trials that recorded their time split (a crashed flow run records none)."""
    return trials.dropna(subset=["trial_seconds"]) if len(trials) else trials


def summary_of(study: optuna.Study, spec: StudySpec, trials: pd.DataFrame) -> dict[str, object]:
    counts = _state_counts(trials)
    summary: dict[str, object] = {
        "study": study.study_name,
        "kind": spec.kind,
        "objective": f"{spec.objective} ({spec.direction})",
        "trials": len(trials),
        "states": ", ".join(f"{state} {count}" for state, count in sorted(counts.items())),
        "fixed overrides": spec.fixed_overrides or "none",
        "MLflow parent run": spec.mlflow_parent_run_id,
    }
    if spec.kind == "sweep" and counts.get("COMPLETE"):
        best = study.best_trial
        summary["best trial"] = f"{best.number}: {spec.objective} {best.value:.4f}, {best.params}"
    timed = _timed(trials)
    if len(timed):
        overhead = timed["overhead_seconds"].sum() / timed["trial_seconds"].sum()
        summary["orchestration overhead"] = (
            f"{timed['overhead_seconds'].mean():.1f} s per trial = {overhead:.1%} of trial wall "
            f"time (training {timed['training_seconds'].mean():.1f} s per trial)"
        )
    return summary


def summary_metrics(
    study: optuna.Study, spec: StudySpec, trials: pd.DataFrame, table: pd.DataFrame | None
) -> dict[str, float]:
    """The parent run's metrics, so sweeps and tables compare in the MLflow runs list: trial
    counts per state, the best objective (sweep) or each configuration's mean (table), and
    the orchestration's share of the trials' wall time."""
    metrics = {f"trials_{state.lower()}": float(n) for state, n in _state_counts(trials).items()}
    if spec.kind == "sweep" and "trials_complete" in metrics:
        metrics[f"best_{spec.objective}"] = float(study.best_value)
    if table is not None:
        levels = table["noise"] if "noise" in table else [None] * len(table)
        means = table[f"{spec.objective}_mean"]
        for level, name, mean in zip(levels, table["configuration"], means, strict=True):
            if pd.notna(mean):
                row = name if level is None else f"{level}/{name}"
                metrics[f"{row}/{spec.objective}_mean"] = float(mean)
    timed = _timed(trials)
    if len(timed):
        metrics["overhead_fraction"] = float(
            timed["overhead_seconds"].sum() / timed["trial_seconds"].sum()
        )
        metrics["trial_seconds_mean"] = float(timed["trial_seconds"].mean())
    return metrics


def _table_figures(table: pd.DataFrame, spec: StudySpec) -> dict[str, Figure]:
    figure = ablation_figures.deltas_figure(table, spec)
    return {} if figure is None else {"deltas": figure}


def write_index(reports: Path) -> Path:
    studies = sorted(
        (reports / "ablations").glob("*.md"), key=lambda path: path.stat().st_mtime, reverse=True
    )
    header = (
        "# Ablations\n\nEvery sweep (`ablation-sweep`) and ablation table (`ablation-table`) "
        "run in this repository, newest first. The same tables are on each study's MLflow "
        "parent run.\n\n"
    )
    index = reports / INDEX
    with atomic_path(index) as tmp:
        # the studies' figures lie in ablations/, beside their reports
        text = "\n".join(FIGURE_LINK.sub(r"](ablations/\1)", path.read_text()) for path in studies)
        tmp.write_text(header + text)
    return index


def publish(
    study: optuna.Study,
    spec: StudySpec,
    repo: Path,
    client: mlflow.MlflowClient,
    configurations: Sequence[str] = (),
) -> tuple[Path, str]:
    """Build the tables, write them under reports/, log them on the parent run; returns the
    study's Markdown path and text."""
    trials = ablation_tables.trials_table(study, spec)
    table = (
        ablation_tables.table_one(trials, spec, configurations) if spec.kind == "table" else None
    )
    summary = summary_of(study, spec, trials)
    title = f"{'Sweep' if spec.kind == 'sweep' else 'Ablation table'} `{study.study_name}`"
    markdown = ablation_tables.markdown_report(title, summary, trials, table, spec)
    if table is not None:  # how small a difference these seeds could see, against the papers'
        markdown += sensitivity.report_section(trials, list(spec.metrics), DETECTABLE_AT_SEEDS)
        markdown += findings.report_section(table, spec)
    folder = repo / REPORTS / "ablations"
    folder.mkdir(parents=True, exist_ok=True)
    figures = mlflow_runs.optuna_figures(study) if table is None else _table_figures(table, spec)
    markdown += "".join(f"\n![{name}]({study.study_name}_{name}.png)\n" for name in figures)
    # What a reader looks at first (MLflow lists artifacts by name: `compact` comes first),
    # then every column; an empty cell where a value doesn't exist, never `null`.
    compact = (
        ablation_tables.compact_trials(trials, spec)
        if table is None
        else ablation_tables.table_one_display(table, spec)
    )
    tables = {"compact": compact, "trials": ablation_tables.empty_where_missing(trials)}
    if table is not None:
        tables["table_one"] = ablation_tables.empty_where_missing(table)
    files = {"md": folder / f"{study.study_name}.md", "html": folder / f"{study.study_name}.html"}
    with atomic_path(files["md"]) as tmp:
        tmp.write_text(markdown)
    shown = {"summary": compact, "trials": ablation_tables.trials_display(trials)}
    with atomic_path(files["html"]) as tmp:
        images = [f"{study.study_name}_{name}.png" for name in figures]
        tmp.write_text(ablation_tables.html_report(title, summary, shown, images))
    for name, figure in figures.items():
        with atomic_path(folder / f"{study.study_name}_{name}.png") as tmp:
            figure.savefig(tmp, format="png", dpi=110)
    metrics = summary_metrics(study, spec, trials, table)
    mlflow_runs.log_report(client, spec.mlflow_parent_run_id, tables, files, figures, metrics)
    # the runs list's "Sweeps and tables" view: these figures as columns, beside the trials'
    columns = [*metrics, spec.objective, *spec.metrics]
    mlflow_views.save_view(client, spec.mlflow_parent_run_id, columns, spec.objective)
    write_index(repo / REPORTS)
    return files["md"], markdown
