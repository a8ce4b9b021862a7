"""What every stage's report shares: JSON-safe summaries, Markdown tables, MLflow logging.

A stage writes its DVC metrics JSON, a Markdown page and CSV tables under reports/, and
logs the same to its MLflow run: numeric summary values as metrics, tables with
`mlflow.log_table` (browsable in the UI), files as artifacts.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, overload

import mlflow
import numpy as np
import pandas as pd

from tasks.params import flatten


@dataclass(frozen=True)
class Report:
    summary: dict  # = the stage's reports/<stage>.json (DVC metrics)
    tables: dict[str, pd.DataFrame]  # name -> table (also CSV under reports/<stage>/)
    artifacts: list[Path]  # files to log to MLflow


@overload
def json_safe(value: dict[Any, Any]) -> dict[str, Any]: ...
@overload
def json_safe(value: object) -> object: ...
def json_safe(value: object) -> object:
    """JSON-safe: NaN -> None, numpy scalars -> Python, recursively."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def value_counts(values: pd.Series) -> dict[str, int]:
    return {str(k): int(v) for k, v in values.dropna().value_counts().sort_index().items()}


def nested_records(table: pd.DataFrame, keys: list[str]) -> dict:
    """Nested {key1: {key2: {column: value}}} for DVC's flattened metrics."""
    nested: dict = {}
    for row in table.to_dict("records"):
        node = nested
        for key in keys[:-1]:
            node = node.setdefault(str(row.pop(key)), {})
        node[str(row.pop(keys[-1]))] = row
    return nested


def markdown_table(table: pd.DataFrame) -> str:
    def cell(value: object) -> str:
        if isinstance(value, float | np.floating):
            return "–" if not math.isfinite(value) else f"{value:.3f}"
        return str(value)

    lines = ["| " + " | ".join(map(str, table.columns)) + " |"]
    lines.append("|" + " --- |" * len(table.columns))
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(False)]
    return "\n".join(lines)


def numeric_items(summary: dict, prefix: str = "") -> dict[str, float]:
    """The numeric leaves of a nested summary, as flat MLflow metric names."""
    head = f"{prefix}." if prefix else ""
    return {
        head + key: float(value)
        for key, value in flatten(summary)
        if isinstance(value, int | float) and not isinstance(value, bool)
    }


def log_report(report: Report, table_dir: str) -> None:
    """Numeric summary values as metrics, tables as MLflow tables, files as artifacts."""
    mlflow.log_metrics(numeric_items(report.summary))
    for name, table in report.tables.items():
        with warnings.catch_warnings():  # mlflow's own select_dtypes call under pandas 3
            warnings.filterwarnings("ignore", "For backward compatibility, 'str' dtypes")
            if len(table):
                mlflow.log_table(table, artifact_file=f"{table_dir}/{name}.json")
    for path in report.artifacts:
        mlflow.log_artifact(str(path), artifact_path=str(path.parent))
