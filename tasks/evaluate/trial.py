"""The `trial` evaluation profile (`evaluate.profile: trial`, issue 18): what ranks a trial.

A sweep or an ablation table compares configurations by a few metrics of the generated set
(params.yaml `ablation.metrics`: CLAP score, FAD over CLAP, p-MOS). The trial profile runs the
same generator and the same scorers as the full evaluation (tasks/evaluate/stage.py) on
`evaluate.trial.prompts` prompts x `evaluate.trial.generations_per_prompt` seeds, and computes
only `evaluate.trial.metrics`, with the same bootstrap intervals, under the same keys of
reports/metrics.json (`generated.<metric>`), so tables and sweeps read it unchanged.

Left out, because no ranking reads them: the floor (decoded random latents) and ceiling
(reference) rows, the attribute analysis (beat tracking, key finding), the p-MOS quality curve
(paper 003 Fig. 3), the plots and the listening page's audio. The reference windows are still
scored (FAD's reference set). Generation still decodes through the codec (Griffin-Lim for the
mel25 codec): every scorer takes a waveform, whatever the codec.

Every file the stage declares in dvc.yaml is written, and each says it is a trial evaluation.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pandas as pd

from tasks.common.atomic import atomic_path
from tasks.common.bootstrap import BootstrapCI
from tasks.common.reporting import Report, json_safe, log_report, markdown_table
from tasks.evaluate.inputs import PromptSet
from tasks.evaluate.listening_page import render_page, write_page
from tasks.evaluate.loading import load, load_prompts
from tasks.evaluate.report import FOLDER, LISTENING, REPORTS, fmt, tag_run
from tasks.evaluate.sanity import SanityFlag, markdown_lines, sanity_flags
from tasks.evaluate.scoring import score_clips
from tasks.evaluate.summary import (
    LOWER_IS_BETTER,
    MODEL,
    BootstrapSettings,
    Reference,
    ScoredSet,
    Summariser,
    interval_record,
)
from tasks.params import Params

PROFILE = "trial"
NOTE = (
    "Trial evaluation (evaluate.profile: trial): only the metrics that rank a trial, on "
    "evaluate.trial's prompts and seeds. Not the full evaluation: no floor/ceiling rows, "
    "attribute accuracies, quality curve, plots or listening audio; run the stage with "
    "evaluate.profile: full for those."
)


@dataclass(frozen=True)
class TrialResult:
    prompts: PromptSet
    generated_clips: int
    reference_clips: int
    reference_rejected: int
    metrics: dict[str, BootstrapCI]  # generated set only


def trial_prompts(prompts: PromptSet, count: int | None) -> PromptSet:
    """The first `count` prompts (all when None or fewer exist): the same prompts in every
    trial, so trials compare on one set."""
    if count is None or count >= len(prompts.table):
        return prompts
    table = prompts.table.head(count).reset_index(drop=True)
    return PromptSet(table, f"{prompts.source} (first {count}, evaluate.trial.prompts)")


def run_trial(params: Params) -> TrialResult:
    e, trial = params.evaluate, params.evaluate.trial
    loaded = load(params, trial_prompts(load_prompts(params), trial.prompts))
    context = loaded.context
    generated = loaded.generate(params, range(trial.generations_per_prompt))
    # no music analysis: tempo and key only feed the attribute accuracies
    reference = score_clips(context.reference.clips, context.sample_rate, context.scorers, False)
    scores = score_clips(generated.audio, context.sample_rate, context.scorers, False)
    summariser = Summariser(
        np.asarray(loaded.clap.embed_text(context.prompts.prompts), dtype=np.float64),
        Reference(reference, context.paired_rows()),
        BootstrapSettings(e.confidence, e.bootstrap_resamples, params.seed),
        e.fad_infinity,
    )
    scored = ScoredSet(MODEL, scores, generated.prompt_index, {})
    return TrialResult(
        prompts=context.prompts,
        generated_clips=len(generated.audio),
        reference_clips=len(context.reference.clips),
        reference_rejected=len(context.reference.rejected),
        metrics=summariser.summarise(scored, only=trial.metrics),
    )


def trial_metrics_json(result: TrialResult, params: Params, flags: list[SanityFlag]) -> dict:
    """The full profile's metrics.json keys that a trial has, plus `profile` and `note`."""
    return {
        "profile": PROFILE,
        "note": NOTE,
        "sanity_flag_count": len(flags),
        "sanity_flags": [flag.record() for flag in flags],
        "prompts": len(result.prompts.table),
        "generations_per_prompt": params.evaluate.trial.generations_per_prompt,
        "generated_clips": result.generated_clips,
        "reference_clips": result.reference_clips,
        "reference_rejected": result.reference_rejected,
        "confidence": params.evaluate.confidence,
        MODEL: {metric: interval_record(ci) for metric, ci in result.metrics.items()},
    }


def trial_table(result: TrialResult) -> pd.DataFrame:
    """reports/evaluate/metrics.csv in the full profile's long form."""
    return pd.DataFrame(
        [
            {
                "set": MODEL,
                "metric": metric,
                "value": ci.estimate,
                "low": ci.low,
                "high": ci.high,
                "prompts": ci.n,
                "lower_is_better": metric in LOWER_IS_BETTER,
            }
            for metric, ci in result.metrics.items()
        ]
    )


def trial_markdown(result: TrialResult, params: Params, flags: list[SanityFlag]) -> str:
    e = params.evaluate
    table = pd.DataFrame(
        [{"metric": metric, "generated": fmt(ci)} for metric, ci in result.metrics.items()]
    )
    return (
        "\n".join(
            [
                "# Evaluation (trial profile)",
                "",
                NOTE,
                "",
                *markdown_lines(flags),
                "",
                f"Model `{e.checkpoint}`, {len(result.prompts.table)} prompts from "
                f"`{result.prompts.source}` x {e.trial.generations_per_prompt} seeded generations "
                f"= N = {result.generated_clips} clips; reference: M = {result.reference_clips} "
                f"windows. {e.confidence:.0%} percentile-bootstrap intervals over prompts "
                f"({e.bootstrap_resamples} resamples, seed {params.seed}). FAD is biased upward at "
                "small N: compare FADs only between evaluations of the same profile.",
                "",
                markdown_table(table),
            ]
        )
        + "\n"
    )


def write_trial_reports(result: TrialResult, params: Params) -> dict:
    """metrics.json, evaluation.md, evaluate/metrics.csv and a listening page that says
    why it has no audio (every output dvc.yaml declares), then the same in MLflow."""
    FOLDER.mkdir(parents=True, exist_ok=True)
    flags = sanity_flags({MODEL: result.metrics}, params.evaluate.min_prompts_for_rates)
    summary = json_safe(trial_metrics_json(result, params, flags))
    with atomic_path(REPORTS / "metrics.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=2) + "\n")
    with atomic_path(REPORTS / "evaluation.md") as tmp:
        tmp.write_text(trial_markdown(result, params, flags))
    long = trial_table(result)
    with atomic_path(FOLDER / "metrics.csv") as tmp:
        long.to_csv(tmp, index=False)
    summary_rows = [(metric, fmt(ci)) for metric, ci in result.metrics.items()]
    page = render_page("Trial evaluation: no listening audio", summary_rows, [], [NOTE])
    write_page(LISTENING, page)
    artifacts = [REPORTS / "metrics.json", REPORTS / "evaluation.md"]
    log_report(Report(summary, {"metrics": long}, artifacts), "tables")
    tag_run(flags)
    return summary
