"""What the `curate` stage reports: tier / level tables, ground truth, Fig. 1, histogram.

reports/curation.json holds the DVC metrics, reports/curation.md the same as prose and
tables, reports/curation/ the tables as CSV, the paper 000 Fig. 1 sample (one random
candidate per validation file, `clap_scores_val.csv`) and the score histogram.

Ground truth (embedded corpus only: `caption_noise` known) asks paper 000 §II-A's
question directly: does the filter drop the wrong captions and keep the clean ones?
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import cast

import numpy as np
import pandas as pd
from matplotlib.figure import Figure  # the OO API: Agg canvas, no pyplot global state

from tasks.common.atomic import atomic_path, write_json, write_text
from tasks.common.rank_metrics import roc_auc
from tasks.common.reporting import Report, json_safe, markdown_table, nested_records, value_counts
from tasks.curate.health import markdown as health_markdown
from tasks.curate.segments import LOW, STATUSES, TIERS, Curation, fig1_sample
from tasks.params import Params

REPORT_JSON = Path("reports/curation.json")
REPORT_MD = Path("reports/curation.md")
FIGURES = Path("reports/curation")
NOISE_KINDS = ("clean", "partial", "wrong")
SCOPES = {"train": ("train",), "train_val": ("train", "val")}


# --------------------------------------------------------------------------- tables
def with_truth(segments: pd.DataFrame, tracks: pd.DataFrame) -> pd.DataFrame:
    """Segments + the track's recorded caption noise and quality level (`recorded_level`)."""
    truth = tracks[["track_id", "caption_noise", "quality_level"]].rename(
        columns={"quality_level": "recorded_level"}
    )
    return segments.merge(truth, on="track_id", how="left", validate="many_to_one")


# `curate.clap_filter: false`: the report says so where it counts what was kept
UNFILTERED = ", unfiltered: drawn at random whatever their tier, curate.clap_filter is false"


def tier_table(segments: pd.DataFrame) -> pd.DataFrame:
    """Per split (and all): candidates by tier and by status, tracks with a kept segment."""
    rows = []
    for split in [*sorted(segments["split"].unique()), "all"]:
        part = segments if split == "all" else segments[segments["split"] == split]
        tiers = part["tier"].value_counts()
        statuses = part["status"].value_counts()
        kept = part.groupby("track_id")["kept"].sum()
        rows.append(
            {
                "split": split,
                "candidates": len(part),
                **{tier: int(tiers.get(tier, 0)) for tier in TIERS},
                **{status: int(statuses.get(status, 0)) for status in STATUSES},
                "kept": int(part["kept"].sum()),
                "tracks": int(part["track_id"].nunique()),
                "tracks_with_kept": int((kept > 0).sum()),
                "kept_per_track": round(float(kept.mean()), 3) if len(kept) else math.nan,
            }
        )
    return pd.DataFrame(rows)


def level_table(truth: pd.DataFrame) -> pd.DataFrame:
    """Kept segments: predicted quality level x recorded level (paper 003 §4.1 levels)."""
    kept = truth[truth["kept"]]
    if kept.empty:
        return pd.DataFrame()
    if kept["recorded_level"].isna().all():
        counts = kept["quality_level"].value_counts().sort_index()
        return counts.rename("segments").rename_axis("quality_level").reset_index()
    table = pd.crosstab(
        kept["quality_level"].astype(int),
        kept["recorded_level"].astype("Int64").astype(str).replace("<NA>", "unknown"),
        margins=True,
        margins_name="all",
    )
    table.columns = [f"recorded_{c}" for c in table.columns]
    return table.rename_axis("quality_level").reset_index().astype({"quality_level": str})


def _share(numerator: float, denominator: float) -> float:
    return float(numerator / denominator) if denominator else math.nan


def _outcome(group: pd.DataFrame) -> dict[str, float]:
    """What the filter did to a group of scored candidates, per candidate and per file."""
    files = group.groupby("track_id")["kept"].sum()
    return {
        "files": len(files),
        "candidates": len(group),
        "mean_score": float(group["clap_score"].mean()) if len(group) else math.nan,
        "kept": _share(group["kept"].sum(), len(group)),
        "dropped": _share((~group["kept"]).sum(), len(group)),
        "low_tier": _share((group["tier"] == LOW).sum(), len(group)),
        "not_low": _share((group["tier"] != LOW).sum(), len(group)),
        "files_dropped_entirely": _share((files == 0).sum(), len(files)),
        "files_with_kept": _share((files > 0).sum(), len(files)),
    }


def noise_table(truth: pd.DataFrame) -> pd.DataFrame:
    """Per scope and caption-noise kind: what the filter kept and dropped."""
    scored = truth[truth["tier"].notna()]
    return pd.DataFrame(
        {"scope": scope, "caption_noise": kind, **_outcome(part[part["caption_noise"] == kind])}
        for scope, splits in SCOPES.items()
        for part in [scored[scored["split"].isin(splits)]]
        for kind in NOISE_KINDS
    )


def audio_quality_table(truth: pd.DataFrame) -> pd.DataFrame:
    """Clean captions on train + val by recorded audio quality level (5 = undegraded).

    The filter is meant to catch caption mismatch; this shows how much degraded audio with
    a correct caption it removes as well (paper 003 would rather keep it, labelled).
    """
    scored = truth[truth["tier"].notna() & truth["split"].isin(SCOPES["train_val"])]
    clean = scored[(scored["caption_noise"] == "clean") & scored["recorded_level"].notna()]
    return pd.DataFrame(
        {"recorded_level": int(level), **_outcome(group)}
        for level, group in clean.groupby("recorded_level", sort=True)
    )


def precision_recall(predicted: np.ndarray, actual: np.ndarray) -> tuple[float, float]:
    true_positive = float(np.sum(predicted & actual))
    return _share(true_positive, predicted.sum()), _share(true_positive, actual.sum())


def filter_table(truth: pd.DataFrame) -> pd.DataFrame:
    """The filter as a detector of corrupted captions, against clean tracks only.

    File level: prediction "corrupted" = the file was dropped entirely (0 kept). Segment
    level: prediction = low tier. AUC: clean vs corrupted candidate scores.
    """
    targets = {
        "wrong": ("wrong",),
        "partial": ("partial",),
        "wrong_or_partial": ("wrong", "partial"),
    }
    rows = []
    for scope, splits in SCOPES.items():
        part = truth[truth["split"].isin(splits) & truth["tier"].notna()]
        for name, kinds in targets.items():
            group = part[part["caption_noise"].isin(("clean", *kinds))]
            group = group.assign(positive=group["caption_noise"].isin(kinds))
            positive = group["positive"].to_numpy(dtype=bool)
            files = group.groupby("track_id").agg(
                kept=("kept", "sum"), positive=("positive", "any")
            )
            file_p, file_r = precision_recall(
                (files["kept"] == 0).to_numpy(), files["positive"].to_numpy(dtype=bool)
            )
            seg_p, seg_r = precision_recall((group["tier"] == LOW).to_numpy(), positive)
            scores = group["clap_score"].to_numpy()
            both = positive.any() and (~positive).any()
            rows.append(
                {
                    "scope": scope,
                    "target": name,
                    "positive_files": int(files["positive"].sum()),
                    "clean_files": int((~files["positive"].astype(bool)).sum()),
                    "file_precision": file_p,
                    "file_recall": file_r,
                    "segment_precision": seg_p,
                    "segment_recall": seg_r,
                    "score_auc": roc_auc(scores[~positive], scores[positive]) if both else math.nan,
                }
            )
    return pd.DataFrame(rows)


def tier_split_rate(truth: pd.DataFrame) -> dict[str, float]:
    """Share of tracks whose scored candidates fall in more than one tier (§II-A's premise)."""
    scored = truth[truth["tier"].notna()]
    tiers = scored.groupby("track_id")["tier"].nunique()
    noise = scored.groupby("track_id")["caption_noise"].first()
    rates = {"all": _share((tiers > 1).sum(), len(tiers))}
    for kind in NOISE_KINDS:
        members = tiers[noise == kind]
        if len(members):
            rates[kind] = _share((members > 1).sum(), len(members))
    return rates


# --------------------------------------------------------------------------- figure
def plot_scores(
    segments: pd.DataFrame, sample: pd.DataFrame, curation: Curation, path: Path
) -> None:
    """Histogram of candidate CLAP scores (all, and the Fig. 1 val sample), tiers drawn."""
    scores = segments["clap_score"].dropna().to_numpy()
    figure = Figure(figsize=(7.0, 4.0))
    axis = figure.add_subplot()
    # matplotlib's stubs type `bins` as a Sequence, not an array; it takes either
    bins: int | Sequence[float] = (
        cast(Sequence[float], np.histogram_bin_edges(scores, bins=40)) if scores.size else 10
    )
    axis.hist(scores, bins=bins, density=True, alpha=0.45, label="all candidates")
    if len(sample):
        axis.hist(
            sample["clap_score"],
            bins=bins,
            density=True,
            histtype="step",
            linewidth=2.0,
            label=f"val, one random segment per file (n={len(sample)})",
        )
    thresholds = curation.thresholds
    for value, name, style in ((thresholds.high, "high", "-"), (thresholds.medium, "medium", "--")):
        axis.axvline(value, color="black", linestyle=style, label=f"{name} {value:.3f}")
    axis.set_xlabel("CLAP score (audio-caption cosine)")
    axis.set_ylabel("density")
    axis.set_title(f"CLAP score distribution ({thresholds.mode} thresholds)")
    axis.legend(fontsize=8)
    figure.tight_layout()
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=120)


# --------------------------------------------------------------------------- summary
def summarize(
    curation: Curation,
    tracks: pd.DataFrame,
    truth: pd.DataFrame,
    sample: pd.DataFrame,
    tables: dict[str, pd.DataFrame],
    params: Params,
) -> dict:
    """reports/curation.json: the DVC metrics (empty groups give null, not an error)."""
    segments, kept = curation.segments, truth[truth["kept"]]
    s = segments.loc[segments["kept"] & (segments["split"] == "train"), "score_normalised"]
    known = kept[kept["recorded_level"].notna()]
    fitted = curation.pmos_moments_fitted or (math.nan, math.nan)
    summary = {
        "tracks": len(tracks),
        "tracks_scored": int(segments["track_id"].nunique()),
        "rejects": len(curation.rejects),
        "reject_reasons": value_counts(curation.rejects["reason"]),
        "candidates": len(segments),
        "kept": int(segments["kept"].sum()),
        "tier_counts": value_counts(segments["tier"]),
        "status_counts": value_counts(segments["status"]),
        "per_split": nested_records(tables["tiers"].drop(columns=["candidates"]), ["split"]),
        "thresholds": curation.thresholds.as_dict(),
        "score_clip": {
            "percentile": params.train.timestep.score_clip_percentile,
            "value": curation.score_clip,
            "mean_s_train_kept": float(s.mean()),
            "share_s_one_train_kept": float((s >= 1.0).mean()),
        },
        "fig1_val": {
            "files": len(sample),
            "mean": float(sample["clap_score"].mean()),
            "std": float(sample["clap_score"].std()),
            "share_high": float((sample["tier"] == "high").mean()),
            "share_low": float((sample["tier"] == LOW).mean()),
        },
        "pmos": {
            "mean_used": curation.pmos_moments[0],
            "std_used": curation.pmos_moments[1],
            "mean_fitted_train_kept": fitted[0],
            "std_fitted_train_kept": fitted[1],
        },
        "quality_levels": value_counts(kept["quality_level"].astype("Int64")),
        "quality_prefixes": value_counts(kept["quality_prefix"]),
        "level_accuracy": float((known["quality_level"] == known["recorded_level"]).mean())
        if len(known)
        else None,
        "ground_truth": None,
        "not_measurable": not_measurable(known, tables),
    }
    if "noise" in tables:
        summary["ground_truth"] = {
            "noise": nested_records(tables["noise"], ["scope", "caption_noise"]),
            "filter": nested_records(tables["filter"], ["scope", "target"]),
            "tier_split": tier_split_rate(truth),
            "clean_by_quality": nested_records(tables["clean_by_quality"], ["recorded_level"]),
        }
    return json_safe(summary)


NOT_MEASURABLE = "not measurable on this data"


def not_measurable(known_levels: pd.DataFrame, tables: dict[str, pd.DataFrame]) -> dict[str, str]:
    """The figures that need ground truth this corpus lacks (an ingested one), and why."""
    reasons = {}
    if known_levels.empty:
        reasons["level_accuracy"] = (
            f"{NOT_MEASURABLE}: no kept segment's track has a recorded quality level"
        )
    if "noise" not in tables:
        reasons["ground_truth"] = (
            f"{NOT_MEASURABLE}: no recorded caption noise (caption_noise is not one of "
            f"{', '.join(NOISE_KINDS)} on any track), so the filter cannot be checked against it"
        )
    return reasons


# --------------------------------------------------------------------------- markdown
def markdown(summary: dict, tables: dict[str, pd.DataFrame], params: Params) -> str:
    t, clip, fig1, pmos = (summary[k] for k in ("thresholds", "score_clip", "fig1_val", "pmos"))
    curate = params.curate
    calibrated = f", on {t['calibration_scores']} val candidates" if t["calibration_scores"] else ""
    parts = [
        "# Curation (paper 000 §II-A, paper 003 §4.1)",
        health_markdown(summary["health"], params),
        f"{summary['tracks']} tracks, {summary['rejects']} rejected"
        f"{' ' + str(summary['reject_reasons']) if summary['rejects'] else ''}; "
        f"{summary['candidates']} candidates "
        f"({curate.candidates_per_track} x {curate.segment_seconds:g} s per track), "
        f"{summary['kept']} kept (at most {curate.keep_per_track} per track"
        f"{'' if curate.clap_filter else UNFILTERED}).",
        "## Tiers",
        f"Thresholds ({t['mode']}{calibrated}): "
        f"high >= {t['high']:.4f}, medium >= {t['medium']:.4f}.",
        markdown_table(tables["tiers"]),
        "## Validation scores (paper 000 Fig. 1)",
        f"One random candidate per val file: n = {fig1['files']}, mean {_f(fig1['mean'])}, "
        f"std {_f(fig1['std'])}, high {_f(fig1['share_high'])}, low {_f(fig1['share_low'])} "
        "(paper, LAION-CLAP: mean ~0.33 on 1,000 files). "
        "![CLAP scores](curation/clap_score_hist.png)",
        "## S for the Beta timestep schedule (paper 000 §II-C)",
        f"S = clip((score - {t['medium']:.4f}) / ({clip['value']:.4f} - {t['medium']:.4f}), 0, 1)"
        f": the medium threshold is S = 0, the {clip['percentile']:g}th percentile of kept "
        f"train scores S = 1. Mean S of kept train segments {_f(clip['mean_s_train_kept'])}, "
        f"share at S = 1 {_f(clip['share_s_one_train_kept'])}.",
        "## Quality levels (paper 003 §4.1)",
        f"μ = {pmos['mean_used']:.3f}, σ = {pmos['std_used']:.3f} used; fitted on kept train "
        f"p-MOS: μ = {_f(pmos['mean_fitted_train_kept'])}, "
        f"σ = {_f(pmos['std_fitted_train_kept'])}. Level accuracy vs recorded level: "
        + (
            f"{_f(summary['level_accuracy'])}. Rows: predicted level, columns: recorded level."
            if summary["level_accuracy"] is not None
            else f"{summary['not_measurable']['level_accuracy']}. Rows: predicted level."
        ),
        markdown_table(tables["quality_levels"]) if len(tables["quality_levels"]) else "",
    ]
    if summary["ground_truth"]:
        split = summary["ground_truth"]["tier_split"]
        parts += [
            "## Ground truth: does the filter drop wrong captions?",
            "Shares of scored candidates (kept, dropped, low tier, not low) and of files "
            "(dropped entirely = 0 kept; with kept = at least one).",
            markdown_table(tables["noise"]),
            "Filter as a detector of corrupted captions, each target against clean tracks: "
            "file level predicts 'corrupted' when a file is dropped entirely, segment level "
            "when a candidate is in the low tier; AUC of clean vs corrupted candidate scores.",
            markdown_table(tables["filter"]),
            "Clean captions (train + val) by recorded audio quality level (5 = undegraded): "
            "how much correctly captioned but degraded audio the CLAP filter removes too.",
            markdown_table(tables["clean_by_quality"]),
            "Tracks whose scored candidates fall in more than one tier: "
            + ", ".join(f"{k} {_f(v)}" for k, v in split.items())
            + ".",
        ]
    else:
        parts.append(
            "## Ground truth: does the filter drop wrong captions?\n\n"
            f"{summary['not_measurable']['ground_truth']}."
        )
    return "\n\n".join(p for p in parts if p) + "\n"


def _f(value: float | None) -> str:
    """A figure, or "–" where there is none (no member of the group: never "nan")."""
    return "–" if value is None or math.isnan(value) else f"{value:.3f}"


# --------------------------------------------------------------------------- writing
def write_reports(curation: Curation, tracks: pd.DataFrame, params: Params, health: dict) -> Report:
    truth = with_truth(curation.segments, tracks)
    sample = fig1_sample(curation.segments, params.seed)
    tables = {"tiers": tier_table(curation.segments), "quality_levels": level_table(truth)}
    if truth["caption_noise"].isin(NOISE_KINDS).any():
        tables |= {
            "noise": noise_table(truth),
            "filter": filter_table(truth),
            "clean_by_quality": audio_quality_table(truth),
        }
    summary = summarize(curation, tracks, truth, sample, tables, params) | {"health": health}
    FIGURES.mkdir(parents=True, exist_ok=True)
    artifacts = [REPORT_JSON, REPORT_MD, FIGURES / "clap_scores_val.csv"]
    write_json(REPORT_JSON, summary)
    write_text(REPORT_MD, markdown(summary, tables, params))
    write_text(FIGURES / "clap_scores_val.csv", sample.to_csv(index=False))
    for name, table in tables.items():
        write_text(FIGURES / f"{name}.csv", table.to_csv(index=False))
        artifacts.append(FIGURES / f"{name}.csv")
    plot_scores(curation.segments, sample, curation, FIGURES / "clap_score_hist.png")
    artifacts.append(FIGURES / "clap_score_hist.png")
    return Report(summary, tables, artifacts)
