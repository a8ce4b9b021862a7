"""The two papers' claims, each checked against an ablation table's row: the effect of the
recipe (switched on minus switched off, whichever way the row switches it), its Welch
interval and p-values, and a verdict that only a Holm-significant difference can turn into
"reproduced" or "contradicted" (reports/findings.md quotes this section of the table report).

A leave-one-out row (`no_*`: the recipe off, base has it on) has its delta negated, so that
every effect reads "what the recipe does". A claim the paper states as "no change" (Beta
λ = 0.2 / 1.0 keep the CLAP score) is consistent when no difference is detected, which is
weak evidence at a large minimum detectable difference; the report gives that figure too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import pandas as pd

from flows.ablation_tables import level_label
from flows.power import minimum_detectable_difference
from flows.studies import BASE, StudySpec

Expectation = Literal["better", "worse", "same"]


@dataclass(frozen=True)
class Claim:
    statement: str
    source: str  # paper and section (docs/papers.md)
    configuration: str  # the ablation row that tests it (params.yaml ablation.configurations)
    metric: str  # an ablation.metrics name
    expected: Expectation  # what the recipe does to the metric, per the paper
    paper_effect: str = ""  # the paper's figure, as printed


CLAIMS = (
    Claim("CLAP segment filtering beats the unfiltered data", "000 §II-A",
          "no_clap_filter", "clap_score", "better"),
    Claim("CLAP segment filtering beats the unfiltered data", "000 §II-A",
          "no_clap_filter", "fad_clap", "better"),
    Claim("Fine-tuning on concise rewritten captions raises the CLAP score", "000 §II-B, §IV-A",
          "no_two_stage_captions", "clap_score", "better", "0.304 → 0.317"),
    Claim("Beta λ = 0.2 keeps (slightly raises) the CLAP score", "000 §II-C, Table I",
          "beta_0.2", "clap_score", "same", "0.2755 → 0.2788"),
    Claim("Beta λ = 1.0 keeps the CLAP score", "000 §II-C, Table I",
          "beta_1.0", "clap_score", "same", "0.2755 → 0.2746"),
    Claim("Beta λ = 2.0 lowers the CLAP score", "000 §II-C, Table I",
          "beta_2.0", "clap_score", "worse", "0.2755 → 0.2587"),
    Claim("The Beta schedule regularises: lower validation loss", "000 §III-B, Fig. 5",
          "beta_1.0", "val_flow_matching", "better", "≈ 0.10 lower"),
    Claim("CLAP REPA (normal) raises the CLAP score", "000 §II-D, Table I",
          "clap_repa_normal", "clap_score", "better", "0.2755 → 0.2930"),
    Claim("CLAP REPA (normal) lowers FAD", "000 §II-D, Table I",
          "clap_repa_normal", "fad_clap", "better", "0.2856 → 0.2767"),
    Claim("CLAP REPA (aggressive) raises the CLAP score", "000 §II-D, Table I",
          "clap_repa_aggressive", "clap_score", "better", "0.2755 → 0.2890"),
    Claim("CLAP REPA (aggressive) lowers FAD", "000 §II-D, Table I",
          "clap_repa_aggressive", "fad_clap", "better", "0.2856 → 0.2620"),
    Claim("MuQ REPA lowers the CLAP score within the budget", "000 Table I, §III-B",
          "muq_repa", "clap_score", "worse", "0.2755 → 0.1921"),
    Claim("Quality prefixes raise p-MOS", "003 §4.1, §6.1",
          "no_quality_prefix", "pmos", "better", "3.796 → 4.039"),
    Claim("Quality prefixes lower FAD", "003 §4.1, §6.1",
          "no_quality_prefix", "fad_clap", "better", "5.757 → 5.602"),
    Claim("A quality token on top of the prefixes lowers FAD", "003 §4.1, §6.1 Fig. 3",
          "quality_token", "fad_clap", "better"),
    Claim("Masking (ratio 0.3) helps the transformer learn music latents", "003 §1, §4.2",
          "mdt_mask_0.3", "fad_clap", "better"),
    # validation is unmasked with uniform t (tasks/train/loop.py), so it compares across ratios
    Claim("Masking accelerates convergence: lower validation loss", "003 §1, §4.2",
          "mdt_mask_0.3", "val_flow_matching", "better"),
    Claim("Caption refinement raises the CLAP score", "003 §4.3, §6.2 Table 2",
          "no_caption_refinement", "clap_score", "better", "0.342 → 0.350"),
)  # fmt: skip


def recipe_effect(row: pd.Series, metric: str, test: str = "") -> tuple[float, float, float]:
    """The row's delta and interval (`test` "paired_": the seed-matched ones) as "recipe on
    − recipe off": negated for a `no_*` row."""
    keys = ("delta", "ci_low", "ci_high")
    delta, low, high = (float(row[f"{metric}_{test}{key}"]) for key in keys)
    if str(row["configuration"]).startswith("no_"):
        return -delta, -high, -low
    return delta, low, high


def verdict(effect: float, significant: bool | None, expected: Expectation, maximize: bool) -> str:
    """Reproduced / contradicted only on a Holm-significant difference; otherwise the
    point estimate's direction, marked as not detected. `significant` None: no test (fewer
    than two seeds on a side)."""
    if math.isnan(effect):
        return "not measured"
    if significant is None:
        return "not tested (< 2 seeds)"
    improves = effect > 0 if maximize else effect < 0
    if expected == "same":
        return "differs (significant)" if significant else "consistent: no difference detected"
    agrees = improves == (expected == "better")
    if significant:
        return "reproduced" if agrees else "contradicted"
    return f"not detected ({'same' if agrees else 'opposite'} direction)"


def claims_table(table: pd.DataFrame, spec: StudySpec) -> pd.DataFrame:
    """One row per (claim, noise level) whose configuration and metric the table has."""
    rows = []
    base = table[table["configuration"] == BASE]
    for claim in CLAIMS:
        if claim.metric not in spec.metrics:
            continue
        mine = table[table["configuration"] == claim.configuration]
        for _, row in mine.iterrows():
            level = row.get("noise")
            reference = base if level is None else base[base["noise"] == level]
            metric = claim.metric
            effect, low, high = recipe_effect(row, metric)
            paired, paired_low, paired_high = recipe_effect(row, metric, "paired_")
            maximize = spec.metrics[metric].direction == "maximize"
            seeds = int(min(row["seeds"], reference["seeds"].min()))
            spread = float(reference[f"{metric}_std"].iloc[0])
            pairs = int(row[f"{metric}_paired_pairs"])
            rows.append(
                {
                    "claim": claim.statement,
                    "source": claim.source,
                    "row": claim.configuration,
                    "noise": level,
                    "metric": metric,
                    "paper": claim.paper_effect,
                    "base": float(reference[f"{metric}_mean"].iloc[0]),
                    "effect": effect,
                    "ci_low": low,
                    "ci_high": high,
                    "p": float(row[f"{metric}_p"]),
                    "p_holm": float(row[f"{metric}_p_holm"]),
                    "mdd": _detectable(spread, seeds, paired=False),
                    "verdict": verdict(
                        effect, _significant(row, metric, "", spec), claim.expected, maximize
                    ),
                    "paired_effect": paired,
                    "paired_ci_low": paired_low,
                    "paired_ci_high": paired_high,
                    "paired_p_holm": float(row[f"{metric}_paired_p_holm"]),
                    "paired_mdd": _detectable(
                        float(row[f"{metric}_paired_std"]), pairs, paired=True
                    ),
                    "paired_verdict": verdict(
                        paired, _significant(row, metric, "paired_", spec), claim.expected, maximize
                    ),
                }
            )
    frame = pd.DataFrame(rows)
    if "noise" in frame and frame["noise"].isna().all():
        frame = frame.drop(columns="noise")
    return frame


def _significant(row: pd.Series, metric: str, test: str, spec: StudySpec) -> bool | None:
    p_holm = float(row[f"{metric}_{test}p_holm"])
    return None if math.isnan(p_holm) else p_holm < spec.significance_level


def _detectable(spread: float, seeds: int, paired: bool) -> float:
    if seeds < 2 or not math.isfinite(spread) or spread <= 0:
        return math.nan
    return minimum_detectable_difference(spread, seeds, paired=paired)


def report_section(table: pd.DataFrame, spec: StudySpec) -> str:
    """Markdown: the claims this table tests, with effect, interval, p-values and verdict."""
    claims = claims_table(table, spec)
    if claims.empty:
        return ""
    shown = claims.copy()
    if "noise" in shown:
        shown["noise"] = [level_label(level) for level in shown["noise"]]
    level = f"{1 - spec.significance_level:.0%}"
    for test in ("", "paired_"):
        bounds = zip(shown[f"{test}ci_low"], shown[f"{test}ci_high"], strict=True)
        shown[f"{test}ci_low"] = [f"[{low:+.3g}, {high:+.3g}]" for low, high in bounds]
    shown = shown.drop(columns=["ci_high", "paired_ci_high"])
    shown = shown.rename(columns={"ci_low": f"{level} CI", "paired_ci_low": f"paired {level} CI"})
    order = ["claim", "source", "row", "noise", "metric", "paper", "base", "effect", f"{level} CI"]
    order += ["p", "p_holm", "mdd", "verdict", "paired_effect", f"paired {level} CI"]
    order += ["paired_p_holm", "paired_mdd", "paired_verdict"]
    shown = shown[[column for column in order if column in shown]]
    return "\n".join(
        [
            "### The papers' claims against this table",
            "",
            shown.to_markdown(index=False, floatfmt=".3g"),
            "",
            "effect: the recipe on minus off (a `no_*` row's delta negated); base: base's mean "
            "at that level; p: Welch, p_holm: Holm over the table's rows of that metric and "
            "level; mdd: the smallest true difference these seeds detect with 80 % power "
            "(base's std). `reproduced`/`contradicted` need p_holm < "
            f"{spec.significance_level}; otherwise the point estimate's direction is shown as "
            "not detected. paired_*: the same from the seed-matched differences (mdd from "
            "their std, n − 1 degrees of freedom).",
            "",
        ]
    )
