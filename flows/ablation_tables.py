"""The tables a sweep or an ablation table ends with, from its Optuna study (pandas).

`trials_table`: every trial, whatever its state, with its overrides, metrics, pruning step,
failure reason and timing. `table_one`: paper 000 Table I's protocol, base then each switch
alone, every metric as mean ± std over seeds with its delta against base and Welch's
two-sided t-test (unequal variances) of the configuration's seeds against base's; a table run
over noise levels has these rows per level, compared with base at the same level.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence

import numpy as np
import optuna
import pandas as pd
from scipy import stats

from flows.studies import BASE, StudySpec
from tasks.train.pruning import PRUNED_ATTR, report_sign

METRIC_PREFIX = "metric."
TIMING_COLUMNS = ("trial_seconds", "stage_seconds", "training_seconds", "overhead_seconds")


def trials_table(study: optuna.Study, spec: StudySpec) -> pd.DataFrame:
    """One row per trial: number, state, objective value, searched params, metrics, the step
    a pruned trial stopped at, why a failed one failed, its DVC experiment and MLflow run."""
    rows, sign = [], report_sign(study.direction)
    for trial in study.get_trials(deepcopy=False):
        attrs = trial.user_attrs
        pruned = trial.state == optuna.trial.TrialState.PRUNED
        finished = trial.state == optuna.trial.TrialState.COMPLETE
        # A pruned trial's `value` is Optuna's copy of its last intermediate value (a signed
        # validation loss), not the objective: it goes to `pruned_val_loss`, unsigned.
        pruned_step = attrs.get(PRUNED_ATTR, trial.last_step) if pruned else None
        reported = (
            math.nan
            if pruned_step is None
            else trial.intermediate_values.get(pruned_step, math.nan)
        )
        row = {
            "trial": trial.number,
            "state": trial.state.name,
            spec.objective: trial.value if finished and trial.value is not None else math.nan,
        }
        if spec.kind == "table":
            row |= {"configuration": attrs.get("configuration"), "seed": attrs.get("seed")}
            row["noise"] = attrs.get("noise")  # None: no noise axis
        else:
            row |= {key: trial.params.get(key, math.nan) for key in spec.search_space}
        for name in spec.metrics:
            row[name] = attrs.get(f"{METRIC_PREFIX}{name}", row.get(name, math.nan))
        row |= {
            "pruned_at_step": pruned_step,
            "pruned_val_loss": sign * reported if pruned else math.nan,
            "fail_reason": attrs.get("fail_reason"),
            "dvc_experiment": attrs.get("dvc_experiment"),
            "mlflow_run_id": attrs.get("mlflow_run_id"),
            "prefect_flow_run_id": attrs.get("prefect_flow_run_id"),
            "host": attrs.get("host"),
            "cuda_visible_devices": attrs.get("cuda_visible_devices"),
        }
        row |= {column: attrs.get(column, math.nan) for column in TIMING_COLUMNS}
        rows.append(row)
    frame = pd.DataFrame(rows)
    if "pruned_at_step" in frame:  # a step count, not a float, where some trials have none
        frame["pruned_at_step"] = frame["pruned_at_step"].astype("Int64")
    return frame


def _welch(sample: np.ndarray, base: np.ndarray, confidence: float) -> tuple[float, float, float]:
    """Welch's two-sided p and the `confidence` interval of mean(sample) − mean(base)."""
    if len(sample) < 2 or len(base) < 2:
        return math.nan, math.nan, math.nan  # a variance needs two seeds on each side
    delta = float(sample.mean() - base.mean())
    if np.ptp(sample) == 0 and np.ptp(base) == 0:
        return (0.0 if sample[0] != base[0] else 1.0), delta, delta
    result = stats.ttest_ind(sample, base, equal_var=False)
    interval = result.confidence_interval(confidence_level=confidence)
    return float(result.pvalue), float(interval.low), float(interval.high)


def _paired(
    mine: pd.DataFrame, base: pd.DataFrame, metric: str, confidence: float
) -> dict[str, float]:
    """Seed by seed (the cells of one seed share initial weights, data order and evaluation
    noise): the mean of configuration − base over the seeds both have, the `confidence`
    interval and two-sided p of a one-sample t-test of those differences, their std, count."""
    ours = mine.dropna(subset=[metric]).groupby("seed")[metric].mean()
    theirs = base.dropna(subset=[metric]).groupby("seed")[metric].mean()
    differences = (ours - theirs).dropna().to_numpy(np.float64)
    out = dict.fromkeys(("delta", "ci_low", "ci_high", "p", "std"), math.nan)
    out["pairs"] = float(len(differences))
    if len(differences) < 2:
        return out
    out["delta"] = float(differences.mean())
    out["std"] = float(differences.std(ddof=1))
    if out["std"] == 0:
        out["ci_low"] = out["ci_high"] = out["delta"]
        out["p"] = 1.0 if out["delta"] == 0 else 0.0
        return out
    result = stats.ttest_1samp(differences, 0.0)
    interval = result.confidence_interval(confidence_level=confidence)
    out |= {"p": float(result.pvalue), "ci_low": float(interval.low)}
    out["ci_high"] = float(interval.high)
    return out


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment over one family (a table's rows for one metric at one
    noise level): controls the chance of any false positive among them; NaN stays NaN."""
    order = sorted((p, i) for i, p in enumerate(p_values) if not math.isnan(p))
    adjusted = [math.nan] * len(p_values)
    running = 0.0
    for rank, (p, index) in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * p))
        adjusted[index] = running
    return adjusted


# A table that mixes cells at named noise levels with cells at the corpus as params.yaml
# sets it (a table run without `noise_levels`, then resumed with some) labels the latter so.
PARAMS_LEVEL = "params.yaml"


def noise_levels(trials: pd.DataFrame) -> list[str | None]:
    """The table's noise levels in the order its trials were queued, None for cells at the
    corpus params.yaml sets; [None] without the axis."""
    if "noise" not in trials or trials["noise"].isna().all():
        return [None]
    return list(dict.fromkeys(None if pd.isna(level) else level for level in trials["noise"]))


def at_level(trials: pd.DataFrame, level: str | None) -> pd.DataFrame:
    """The trials at noise `level` (None: those without a level)."""
    if "noise" not in trials:
        return trials
    return trials[trials["noise"].isna()] if level is None else trials[trials["noise"] == level]


def level_label(level: str | None) -> str:
    return PARAMS_LEVEL if level is None else level


def table_one(trials: pd.DataFrame, spec: StudySpec, configurations: Sequence[str]) -> pd.DataFrame:
    """Rows base, then `configurations` in order (per noise level, with a `noise` column,
    when the table has that axis: at each level the configurations that have cells there);
    per metric: mean, std, delta vs base at the same noise level, Welch's p."""
    levels = noise_levels(trials)
    if levels == [None]:
        return pd.DataFrame(_level_rows(trials, spec, configurations))
    rows = []
    for level in levels:
        mine = at_level(trials, level)
        present = set(mine["configuration"])
        chosen = [name for name in configurations if name in present]
        rows += [{"noise": level_label(level), **row} for row in _level_rows(mine, spec, chosen)]
    return pd.DataFrame(rows)


def _level_rows(
    trials: pd.DataFrame, spec: StudySpec, configurations: Sequence[str]
) -> list[dict[str, object]]:
    complete = trials[trials["state"] == "COMPLETE"]
    base = complete[complete["configuration"] == BASE]
    rows = []
    for name in (BASE, *configurations):
        mine = complete[complete["configuration"] == name]
        cells = trials[trials["configuration"] == name]
        row: dict[str, object] = {
            "configuration": name,
            "seeds": len(mine),
            "failed": int((cells["state"] != "COMPLETE").sum()),
        }
        for metric in spec.metrics:
            values = mine[metric].dropna().to_numpy(np.float64)
            reference = base[metric].dropna().to_numpy(np.float64)
            mean = float(values.mean()) if len(values) else math.nan
            row[f"{metric}_mean"] = mean
            row[f"{metric}_std"] = float(values.std(ddof=1)) if len(values) > 1 else math.nan
            if name == BASE:
                continue
            row[f"{metric}_delta"] = mean - float(reference.mean()) if len(reference) else math.nan
            p_value, low, high = _welch(values, reference, 1 - spec.significance_level)
            row[f"{metric}_ci_low"], row[f"{metric}_ci_high"] = low, high
            row[f"{metric}_p"] = p_value
            paired = _paired(mine, base, metric, 1 - spec.significance_level)
            row |= {f"{metric}_paired_{key}": value for key, value in paired.items()}
        rows.append(row)
    compared = [row for row in rows if row["configuration"] != BASE]
    for metric in spec.metrics:  # one family per metric (and test): every row against base
        for test in ("", "paired_"):
            p_values = [float(row[f"{metric}_{test}p"]) for row in compared]  # type: ignore[arg-type]
            for row, p_holm in zip(compared, holm(p_values), strict=True):
                row[f"{metric}_{test}p_holm"] = p_holm
                row[f"{metric}_{test}significant"] = bool(p_holm < spec.significance_level)
    return rows


# --------------------------------------------------------------------------- rendering
def _number(value: object, digits: int = 4) -> str:
    """`digits` significant digits, in scientific notation where small or large, so that a
    REPA weight of 2.3e-05 does not print as 0; "–" where there is no value."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:#.{digits}g}"
    return str(value)


def _signed(value: float, digits: int = 4) -> str:
    return "–" if math.isnan(value) else f"{value:+#.{digits}g}"


def short_names(keys: Sequence[str]) -> dict[str, str]:
    """Each dotted params key as its shortest dotted suffix that no other key shares
    (`train.timestep.beta_lambda` → `beta_lambda`, `model.repa.clap.weight` → `clap.weight`)."""
    names = {}
    for key in keys:
        parts = key.split(".")
        for length in range(1, len(parts) + 1):
            suffix = ".".join(parts[-length:])
            if not any(other != key and other.endswith(f".{suffix}") for other in keys):
                names[key] = suffix
                break
    return names


def _note(row: Mapping[str, object]) -> str:
    """Why a trial has no objective: its failure, or where the pruner stopped it."""
    if row["state"] == "PRUNED" and not pd.isna(row.get("pruned_at_step")):
        return (
            f"pruned at step {row['pruned_at_step']} (val loss {_number(row['pruned_val_loss'])})"
        )
    reason = row.get("fail_reason")
    return str(reason) if isinstance(reason, str) else ""


def compact_trials(trials: pd.DataFrame, spec: StudySpec) -> pd.DataFrame:
    """The trials table people read first: the trial, what it varied (searched params under
    short names, or configuration and seed), objective and metrics at 4 significant digits,
    state, minutes, its DVC experiment (when kept) and a note; empty cells where a value
    doesn't exist."""
    if spec.kind == "table":
        varied = {"configuration": "configuration", "seed": "seed"}
        if noise_levels(trials) != [None]:
            varied = {"configuration": "configuration", "noise": "noise", "seed": "seed"}
    else:
        varied = short_names([key for key in spec.search_space if key in trials])
    metrics = [spec.objective, *(name for name in spec.metrics if name != spec.objective)]
    rows = []
    for _, trial in trials.iterrows():
        row: dict[str, str] = {"trial": str(trial["trial"])}
        row |= {short: _number(trial[key]) for key, short in varied.items()}
        if "noise" in varied and pd.isna(trial["noise"]):
            row["noise"] = PARAMS_LEVEL
        row |= {name: _number(trial[name]) for name in metrics}
        minutes = trial.get("trial_seconds", math.nan)
        row |= {"state": str(trial["state"]), "minutes": _number(minutes / 60, 3)}
        kept = trial.get("dvc_experiment")
        row["experiment"] = kept if isinstance(kept, str) else ""  # for `dvc exp apply`
        row["note"] = _note(trial)
        rows.append(row)
    return pd.DataFrame(rows).replace("–", "")


def table_one_display(table: pd.DataFrame, spec: StudySpec) -> pd.DataFrame:
    """Table I as people read it: `mean ± std`, `Δ` with a `*` where Holm's p < α, its
    interval, Welch's p and Holm's."""
    arrows = {"maximize": "↑", "minimize": "↓"}
    keys = ["noise"] if "noise" in table else []
    shown = table[[*keys, "configuration", "seeds", "failed"]].copy()
    for metric, metric_spec in spec.metrics.items():
        mean, std = table[f"{metric}_mean"], table[f"{metric}_std"]
        shown[f"{metric} {arrows[metric_spec.direction]}"] = [
            f"{_number(m)} ± {_number(s)}" for m, s in zip(mean, std, strict=True)
        ]
        if f"{metric}_delta" in table:
            is_base = table["configuration"] == BASE
            shown[f"Δ {metric}"] = [
                "" if base else f"{_signed(d)}{'*' if sig else ''}"
                for base, d, sig in zip(
                    is_base, table[f"{metric}_delta"], table[f"{metric}_significant"], strict=True
                )
            ]
            shown[f"CI {metric}"] = [
                "" if base else f"[{_signed(low, 3)}, {_signed(high, 3)}]"
                for base, low, high in zip(
                    is_base, table[f"{metric}_ci_low"], table[f"{metric}_ci_high"], strict=True
                )
            ]
            shown[f"p {metric} (Holm)"] = [
                "" if base else f"{_number(p, 3)} ({_number(p_holm, 3)})"
                for base, p, p_holm in zip(
                    is_base, table[f"{metric}_p"], table[f"{metric}_p_holm"], strict=True
                )
            ]
            paired = zip(
                is_base,
                table[f"{metric}_paired_delta"],
                table[f"{metric}_paired_significant"],
                table[f"{metric}_paired_p_holm"],
                strict=True,
            )
            shown[f"paired Δ {metric} (Holm p)"] = [
                "" if base else f"{_signed(d)}{'*' if sig else ''} ({_number(p_holm, 3)})"
                for base, d, sig, p_holm in paired
            ]
    return shown


def empty_where_missing(frame: pd.DataFrame) -> pd.DataFrame:
    """Numbers stay numbers; a missing value becomes an empty cell (JSON `""`, not `null`)."""
    return frame.astype(object).where(frame.notna(), "")


def trials_display(trials: pd.DataFrame) -> pd.DataFrame:
    shown = trials.drop(columns=["prefect_flow_run_id"], errors="ignore").copy()
    for column in shown.columns:
        if pd.api.types.is_float_dtype(shown[column]):
            shown[column] = shown[column].map(_number)
    return shown.astype(object).fillna("")  # object first: "" is no Int64 value


def markdown_report(
    title: str,
    summary: Mapping[str, object],
    trials: pd.DataFrame,
    table: pd.DataFrame | None,
    spec: StudySpec,
) -> str:
    lines = [f"## {title}", ""]
    lines += [f"- {key}: {value}" for key, value in summary.items()]
    if table is not None:
        lines += [
            "",
            "### Table I protocol (paper 000 §III-B): base, then each switch alone",
            "",
            table_one_display(table, spec).to_markdown(index=False),
            "",
            "Mean ± sample std over seeds; Δ against base (at the same noise level) with "
            f"its {1 - spec.significance_level:.0%} Welch interval; p: Welch's two-sided "
            "t-test (seeds of the configuration vs seeds of base; needs two seeds on each "
            "side), in brackets Holm-adjusted over the rows of that metric (and level); `*`: "
            f"Holm-adjusted p < {spec.significance_level}. Paired Δ: the mean per-seed "
            "difference from base over the seeds both have (a seed's cells share initial "
            "weights, data order and evaluation noise), its one-sample t-test Holm-adjusted "
            "the same way; `*` likewise.",
        ]
    compact = compact_trials(trials, spec).to_markdown(index=False)
    lines += ["", "### Trials", "", compact, ""]
    lines += ["Every column of every trial: the HTML report beside this file and MLflow.", ""]
    return "\n".join(lines)


def html_report(
    title: str,
    markdown_summary: Mapping[str, object],
    tables: Mapping[str, pd.DataFrame],
    images: Sequence[str] = (),
) -> str:
    items = "".join(
        f"<li>{html.escape(str(k))}: {html.escape(str(v))}</li>"
        for k, v in markdown_summary.items()
    )
    sections = "".join(
        f"<h2>{html.escape(name)}</h2>{frame.to_html(index=False, na_rep='–', border=0)}"
        for name, frame in tables.items()
    )
    sections += "".join(f"<p><img src='{html.escape(image)}' alt=''></p>" for image in images)
    style = (
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{padding:4px 8px;border-bottom:1px solid #ddd;text-align:right}"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{style}</style></head><body><h1>{html.escape(title)}</h1><ul>{items}</ul>"
        f"{sections}</body></html>\n"
    )
