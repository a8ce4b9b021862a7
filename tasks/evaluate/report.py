"""The evaluate stage's reports: metrics.json, tables in the papers' shape, plots, listening page.

Every file is written atomically; plots are PNG with their data as CSV (DVC plots), and all
of it is logged to the stage's MLflow run. Wall-clock figures stay out of the DVC files, so a
rerun writes the same bytes (the generation and the bootstrap are seeded).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import soundfile as sf
from mlflow.utils.validation import MAX_TAG_VAL_LENGTH

from tasks.common.atomic import atomic_path
from tasks.common.bootstrap import BootstrapCI
from tasks.common.reporting import Report, json_safe, log_report, markdown_table
from tasks.evaluate import plots as eval_plots
from tasks.evaluate.generated import GeneratedSet
from tasks.evaluate.inputs import PromptSet, ReferenceSet
from tasks.evaluate.listening_page import Clip, PromptEntry, render_page, write_page
from tasks.evaluate.sanity import SanityFlag, markdown_lines, run_description, sanity_flags
from tasks.evaluate.scoring import TagVocabulary, predicted_genres
from tasks.evaluate.summary import LOWER_IS_BETTER, SET_LABELS, ScoredSet, interval_record
from tasks.params import Params

REPORTS = Path("reports")
FOLDER = REPORTS / "evaluate"
LISTENING = REPORTS / "listening"
CCS_NOTE = (
    "CCS (Concept Coverage Score) is not reported: the ATTM challenge calls it a 'novel "
    "Concept Coverage Score' (arXiv 2605.21538, abstract), but its definition is not in the "
    "challenge's published material we could read, and we do not invent one."
)


@dataclass(frozen=True)
class EvaluationResult:
    prompts: PromptSet
    reference: ReferenceSet
    sets: dict[str, ScoredSet]
    audio: dict[str, GeneratedSet]
    clap_scores: dict[str, np.ndarray]  # per clip, by set
    metrics: dict[str, dict[str, BootstrapCI]]
    curve: dict[int, dict[str, BootstrapCI]]
    tags: TagVocabulary
    sample_rate: int
    paired_rows: np.ndarray  # [P] each prompt's reference window, -1 where it has none


# --------------------------------------------------------------------------- tables
def fmt(ci: BootstrapCI | None) -> str:
    if ci is None:
        return "–"
    return f"{ci.estimate:.3f} [{ci.low:.3f}, {ci.high:.3f}]"


ATTRIBUTE_ACCURACIES = ("genre", "instruments", "tempo", "mode")


def unmeasured_attributes(result: EvaluationResult) -> dict[str, str]:
    """Attribute accuracies no set has: no prompt states the attribute (an ingested corpus's
    prompts are its captions, with no recorded genre, instruments, tempo or key)."""
    return {
        f"{name}_accuracy": f"not measurable on this data: no prompt states a {name}"
        for name in ATTRIBUTE_ACCURACIES
        if all(f"{name}_accuracy" not in metrics for metrics in result.metrics.values())
    }


def metrics_json(result: EvaluationResult, params: Params, flags: list[SanityFlag]) -> dict:
    generated = result.audio["generated"]
    return {
        "sanity_flag_count": len(flags),  # a number, so `dvc metrics diff` shows it
        "sanity_flags": [flag.record() for flag in flags],
        "not_measurable": unmeasured_attributes(result),
        "prompts": len(result.prompts.table),
        "generations_per_prompt": params.evaluate.generations_per_prompt,
        "generated_clips": len(generated.audio),
        "reference_clips": len(result.reference.clips),
        "reference_rejected": len(result.reference.rejected),
        "confidence": params.evaluate.confidence,
        **{
            name: {metric: interval_record(ci) for metric, ci in metrics.items()}
            for name, metrics in result.metrics.items()
        },
        "quality_curve": {
            f"level_{level}": {metric: interval_record(ci) for metric, ci in metrics.items()}
            for level, metrics in result.curve.items()
        },
    }


def metrics_table(result: EvaluationResult) -> pd.DataFrame:
    rows = [
        {
            "set": name,
            "metric": metric,
            "value": ci.estimate,
            "low": ci.low,
            "high": ci.high,
            "prompts": ci.n,
            "lower_is_better": metric in LOWER_IS_BETTER,
        }
        for name, metrics in result.metrics.items()
        for metric, ci in metrics.items()
    ]
    return pd.DataFrame(rows)


def paper_tables(result: EvaluationResult, params: Params) -> dict[str, pd.DataFrame]:
    """Paper 000 Table I's columns for this run; paper 003 Tables 1 / A.3's; attributes."""
    gen = result.metrics["generated"]
    model = params.model
    table_i = pd.DataFrame(
        [
            {
                "Configuration": Path(params.evaluate.checkpoint).name,
                "CLAP REPA": model.repa.clap.weight,
                "MuQ REPA": model.repa.muq.weight,
                "Beta λ": params.train.timestep.beta_lambda,
                "mask ratio": model.masking.mask_ratio,
                "CLAP ↑": fmt(gen.get("clap_score")),
                "FAD ↓": fmt(gen.get("fad_clap")),
            }
        ]
    )
    columns = {
        "FAD ↓": "fad_clap",
        "FAD∞ ↓": "fad_clap_infinity",
        "FAD-teacher ↓": "fad_teacher",
        "KL ↓": "kl",
        "IS ↑": "inception_score",
        "CLAP ↑": "clap_score",
        "p-MOS ↑": "pmos",
    }
    attributes = {
        "genre ↑": "genre_accuracy",
        "instruments ↑": "instruments_accuracy",
        "tempo ↑": "tempo_accuracy",
        "mode ↑": "mode_accuracy",
    }

    def rows(metric_columns: dict[str, str], counts: bool = False) -> pd.DataFrame:
        def cell(ci: BootstrapCI | None) -> str:
            return fmt(ci) + (f" (n={ci.n})" if counts and ci is not None else "")

        return pd.DataFrame(
            [
                {
                    "System": SET_LABELS.get(name, name),
                    **{label: cell(metrics.get(key)) for label, key in metric_columns.items()},
                }
                for name, metrics in result.metrics.items()
            ]
        )

    curve = pd.DataFrame(
        [
            {
                "quality level": level,
                **{
                    label: fmt(metrics.get(key))
                    for label, key in {
                        "p-MOS ↑": "pmos",
                        "FAD ↓": "fad_clap",
                        "KL ↓": "kl",
                        "CLAP ↑": "clap_score",
                    }.items()
                },
            }
            for level, metrics in result.curve.items()
        ]
    )
    return {
        "table_i": table_i,
        "objective": rows(columns),
        "attributes": rows(attributes, counts=True),
        "quality_curve": curve,
    }


def markdown(
    result: EvaluationResult,
    params: Params,
    tables: dict[str, pd.DataFrame],
    flags: list[SanityFlag],
) -> str:
    e = params.evaluate
    n = len(result.audio["generated"].audio)
    m = len(result.reference.clips)
    lines = [
        "# Evaluation",
        "",
        *markdown_lines(flags),
        "",
        f"Model `{e.checkpoint}`, {len(result.prompts.table)} prompts from "
        f"`{result.prompts.source}` x {e.generations_per_prompt} seeded generations = N = {n} "
        f"clips; reference: {m} windows of {result.reference.source} (M = {m}). Every value is "
        f"the estimate on all prompts with a {e.confidence:.0%} percentile-bootstrap interval "
        f"over prompts ({e.bootstrap_resamples} resamples, seed {params.seed}). FAD is biased "
        "upward at small N: compare FADs only at equal N and M; FAD∞ extrapolates N (Gui et "
        "al. 2024).",
        "",
        "## Paper 000 Table I (this run's configuration)",
        "",
        markdown_table(tables["table_i"]),
        "",
        "## Objective metrics (paper 003 Table 1 / Table A.3)",
        "",
        markdown_table(tables["objective"]),
        "",
        "FAD over CLAP audio embeddings (paper 000; the challenge's FAD-CLAP) and over the "
        "frame teacher's time-pooled features. KL (paired with each prompt's reference window, "
        "KL(p_ref || p_gen)) and IS (one split) over the CLAP's zero-shot tag distribution "
        f"over {len(result.tags.names)} corpus tags (genres, instruments, moods; "
        f"softmax(cos / {e.tag_temperature})). CLAP scores use the prompt without the quality "
        "prefix (paper 003 §6.3).",
        "",
        f"{CCS_NOTE}",
        "",
        "## Attribute accuracy against the prompt",
        "",
        markdown_table(tables["attributes"]),
        "",
        "genre: the top zero-shot genre is one the prompt names; instruments: recall@k of the "
        "top-k zero-shot instruments for the k the prompt names; tempo: MIREX Acc2 (±4 %, "
        "octave errors allowed) of the beat tracker against the prompt's source-track BPM; mode: "
        "Krumhansl-Schmuckler key finding against its mode, over the clips tonal enough to "
        "measure; n = the prompts an accuracy is over (those whose prompt states the attribute "
        "and, for mode, with a measurable clip). The reference row is the same measurement on "
        "the real audio: the analysers' own ceiling.",
        *(f"\n{key}: {why}." for key, why in unmeasured_attributes(result).items()),
    ]
    if len(tables["quality_curve"]):
        lines += [
            "",
            "## Quality control (paper 003 Fig. 3)",
            "",
            markdown_table(tables["quality_curve"]),
            "",
            "One clip per prompt at each level, the same noise at every level.",
        ]
    if result.reference.rejected:
        lines += [
            "",
            f"{len(result.reference.rejected)} reference file(s) rejected: "
            + ", ".join(
                f"{r['reference_id']} ({r['reason']})" for r in result.reference.rejected[:20]
            ),
        ]
    lines += [
        "",
        "Plots: `reports/evaluate/*.png` (data in the CSV beside each); listening page: "
        "`reports/listening/index.html` (open it from disk).",
    ]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- per clip
def clip_table(result: EvaluationResult) -> pd.DataFrame:
    frames = []
    ids = result.prompts.table["prompt_id"].to_numpy()
    for name, scored in result.sets.items():
        scores = scored.scores
        frame = pd.DataFrame(
            {
                "set": name,
                "prompt_id": ids[scored.prompt_index],
                "clip": np.arange(len(scores)),
                "clap_score": result.clap_scores[name],
                "pmos": scores.pmos,
                "predicted_genre": predicted_genres(scores, result.tags),
            }
        )
        if scores.tempo_bpm is not None:
            frame["tempo_bpm"] = scores.tempo_bpm
        if scores.keys is not None:
            frame["key"] = [f"{k.tonic} {k.mode}" if k.measurable else "" for k in scores.keys]
        for attribute, hits in scored.hits.items():
            frame[f"{attribute}_hit"] = hits
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


# --------------------------------------------------------------------------- listening page
def write_clip(folder: Path, name: str, audio: np.ndarray, sample_rate: int) -> str:
    path = folder / "audio" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        sf.write(tmp, audio, sample_rate, subtype="PCM_16", format="WAV")
    return f"audio/{name}"


def clip_metrics(table: pd.DataFrame, row: int) -> dict[str, float | str]:
    record = table.iloc[row].to_dict()
    keep = ("clap_score", "pmos", "predicted_genre", "tempo_bpm", "key")
    return {k: record[k] for k in keep if k in record and record[k] == record[k]}


def listening_entries(result: EvaluationResult, clips: pd.DataFrame) -> list[PromptEntry]:
    """One entry per prompt: its generations and its reference window, with per-clip metrics."""
    table = result.prompts.table
    generated = result.audio["generated"]
    by_set = {name: clips[clips["set"] == name].reset_index(drop=True) for name in result.sets}
    reference_rows = {p: row for row, p in enumerate(result.sets["reference"].prompt_index)}
    entries = []
    for p, row in enumerate(table.itertuples()):
        gens = []
        for clip in np.flatnonzero(generated.prompt_index == p):
            name = f"{row.prompt_id}_seed{generated.seed_index[clip]}.wav"
            src = write_clip(LISTENING, name, generated.audio[clip], result.sample_rate)
            gens.append(
                Clip(
                    src,
                    f"seed {generated.seed_index[clip]}",
                    clip_metrics(by_set["generated"], clip),
                )
            )
        reference = None
        if p in reference_rows:
            clip = result.reference.clips[result.paired_rows[p]]
            src = write_clip(LISTENING, f"{row.prompt_id}_reference.wav", clip, result.sample_rate)
            reference = Clip(src, "reference", clip_metrics(by_set["reference"], reference_rows[p]))
        attributes = {
            key: (", ".join(value) if isinstance(value, list | np.ndarray) else str(value))
            for key, value in row._asdict().items()
            if key in ("genre", "mood", "tempo_bpm", "key", "mode", "instruments")
        }
        entries.append(
            PromptEntry(str(row.prompt_id), str(row.prompt), attributes, gens, reference)
        )
    return entries


def listening_page(result: EvaluationResult, clips: pd.DataFrame, flags: list[SanityFlag]) -> Path:
    gen = result.metrics["generated"]
    summary = [(metric, fmt(ci)) for metric, ci in gen.items()]
    notes = [
        *(f"Sanity flag ({flag.check}): {flag.message}" for flag in flags),
        f"{len(result.audio['generated'].audio)} generated clips for "
        f"{len(result.prompts.table)} prompts; intervals are bootstrap intervals over prompts.",
        CCS_NOTE,
    ]
    html = render_page(
        "Listening page: evaluation generations", summary, listening_entries(result, clips), notes
    )
    return write_page(LISTENING, html)


# --------------------------------------------------------------------------- stage output
def tag_run(flags: list[SanityFlag]) -> None:
    """The active MLflow run carries the flags where the runs table shows them: a
    `sanity_flags` tag (their count, filterable: tags.sanity_flags != '0'), the checks
    that fired, and the run's description (the UI's note) with every flag's numbers."""
    mlflow.set_tag("sanity_flags", str(len(flags)))
    if flags:
        checks = sorted({flag.check for flag in flags})
        mlflow.set_tag("sanity_checks", ", ".join(checks))
        mlflow.set_tag("mlflow.note.content", run_description(flags, MAX_TAG_VAL_LENGTH))


def write_reports(result: EvaluationResult, params: Params) -> dict:
    """Every report file, then the same in the active MLflow run; returns metrics.json."""
    FOLDER.mkdir(parents=True, exist_ok=True)
    flags = sanity_flags(result.metrics, params.evaluate.min_prompts_for_rates)
    summary = json_safe(metrics_json(result, params, flags))
    with atomic_path(REPORTS / "metrics.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=2) + "\n")
    tables = paper_tables(result, params)
    with atomic_path(REPORTS / "evaluation.md") as tmp:
        tmp.write_text(markdown(result, params, tables, flags))
    clips = clip_table(result)
    long = metrics_table(result)
    for name, table in {"clips": clips, "metrics": long}.items():
        with atomic_path(FOLDER / f"{name}.csv") as tmp:
            table.to_csv(tmp, index=False)
    artifacts = [REPORTS / "metrics.json", REPORTS / "evaluation.md"]
    artifacts += eval_plots.loss_curves(REPORTS, FOLDER / "loss_curves")
    artifacts += eval_plots.clap_scores(result.clap_scores, SET_LABELS, FOLDER / "clap_scores")
    artifacts += eval_plots.beta_densities(
        params.train.timestep.beta_lambda,
        params.evaluate.beta_density_scores,
        FOLDER / "beta_densities",
    )
    if result.curve:
        artifacts += eval_plots.quality_curve(result.curve, FOLDER / "quality_curve")
    page = listening_page(result, clips, flags)
    log_report(Report(summary, {"clips": clips, "metrics": long, **tables}, artifacts), "tables")
    mlflow.log_artifacts(str(page.parent), artifact_path=str(page.parent))
    tag_run(flags)
    return summary
