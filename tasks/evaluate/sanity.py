"""Sanity flags: the evaluation's own figures contradicting each other, said out loud.

The ceiling (the reference audio) and the floor (decoded random latents) frame every number;
a model above its ceiling, a floor above the model, a wrong prompt scoring like the right
one, or an accuracy on a handful of prompts each means the figure does not measure what its
name says on this data (a scorer that does not know the music, a reference that is off, or
too few prompts), not that the model is that good or that bad. Each check compares point
estimates and reports the bootstrap intervals beside them, so a reader can tell a flag
inside the noise (overlapping intervals) from one outside it.

Pure functions over the metric dicts of tasks/evaluate/summary.py (set -> metric -> interval);
the report (tasks/evaluate/report.py) writes the flags at the top of reports/evaluation.md,
as a list in reports/metrics.json, and on the stage's MLflow run.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from tasks.common.bootstrap import BootstrapCI
from tasks.evaluate.summary import CEILING, CONTROLS, FLOOR, LOWER_IS_BETTER, MODEL, SET_LABELS

Metrics = Mapping[str, Mapping[str, BootstrapCI]]  # set -> metric -> interval

# Sets whose CLAP score must beat the wrong-prompt control: the floor carries no prompt, so
# its right and wrong prompts score alike by design.
PROMPTED_SETS = (MODEL, CEILING)

# What each check means, for the report's headings (order = the report's order).
CHECKS = {
    "above_ceiling": (
        "Generated audio scores above the reference ceiling: no model sounds more like its "
        "prompt or better than the real audio, so on this data the scorer does not measure "
        "what the metric's name says, or the reference set is not the ceiling it should be."
    ),
    "floor_beats_model": (
        "The floor beats the model: decoded random latents carry no prompt and no musical "
        "structure, so a metric that ranks them above the model's clips cannot rank "
        "systems on this data."
    ),
    "wrong_prompt_not_beaten": (
        "A wrong prompt scores at least as high as the right one: each clip scored against "
        "another prompt (a seeded derangement) is not below its own, so the CLAP cannot tell "
        "these prompts apart on these clips and its CLAP score says nothing here."
    ),
    "too_few_prompts": (
        "An accuracy rests on fewer prompts than `evaluate.min_prompts_for_rates`: one "
        "prompt moves it by 1/n, so a difference between systems is mostly which prompts "
        "there were."
    ),
}


@dataclass(frozen=True)
class Comparison:
    """The figure a flagged one was compared with."""

    set: str
    metric: str
    value: BootstrapCI


@dataclass(frozen=True)
class SanityFlag:
    check: str  # a key of CHECKS
    set: str  # the set whose figure is suspect
    metric: str
    value: BootstrapCI
    against: Comparison | None  # None: compared with `threshold`
    threshold: int | None = None  # too_few_prompts: evaluate.min_prompts_for_rates

    @property
    def intervals_overlap(self) -> bool | None:
        if self.against is None:
            return None
        other = self.against.value
        return self.value.low <= other.high and other.low <= self.value.high

    @property
    def message(self) -> str:
        """One line with the numbers."""
        here = f"{label(self.set)} `{self.metric}` {interval(self.value)}"
        if self.against is None:
            return f"{here} on n = {self.value.n} prompts (< {self.threshold})"
        there = f"{label(self.against.set)} `{self.against.metric}` {interval(self.against.value)}"
        noise = "intervals overlap" if self.intervals_overlap else "intervals disjoint"
        direction = "lower is better, " if self.metric in LOWER_IS_BETTER else ""
        return f"{here} vs {there} ({direction}{noise}; n = {self.value.n} prompts)"

    def record(self) -> dict[str, object]:
        """The flag for metrics.json: flat, every number, and the line the report prints."""
        row: dict[str, object] = {
            "check": self.check,
            "set": self.set,
            "metric": self.metric,
            "value": self.value.estimate,
            "low": self.value.low,
            "high": self.value.high,
            "prompts": self.value.n,
        }
        if self.against is not None:
            row |= {
                "against_set": self.against.set,
                "against_metric": self.against.metric,
                "against_value": self.against.value.estimate,
                "against_low": self.against.value.low,
                "against_high": self.against.value.high,
                "intervals_overlap": self.intervals_overlap,
            }
        if self.threshold is not None:
            row["threshold"] = self.threshold
        return row | {"message": self.message}


def label(set_name: str) -> str:
    return SET_LABELS.get(set_name, set_name)


def interval(ci: BootstrapCI) -> str:
    return f"{ci.estimate:.3f} [{ci.low:.3f}, {ci.high:.3f}]"


def better(metric: str, first: BootstrapCI, second: BootstrapCI) -> bool:
    """Whether `first` is strictly better than `second` on `metric`."""
    if metric in LOWER_IS_BETTER:
        return first.estimate < second.estimate
    return first.estimate > second.estimate


def quality_metrics(first: Mapping[str, BootstrapCI], second: Mapping[str, BootstrapCI]):
    """The metrics both sets have that rank systems (controls left out), in `first`'s order."""
    return [metric for metric in first if metric in second and metric not in CONTROLS]


def set_beats(metrics: Metrics, check: str, winner: str, loser: str) -> list[SanityFlag]:
    """`winner` better than `loser` on a metric both have, flagged on `winner`'s figure."""
    if winner not in metrics or loser not in metrics:
        return []
    first, second = metrics[winner], metrics[loser]
    return [
        SanityFlag(check, winner, metric, first[metric], Comparison(loser, metric, second[metric]))
        for metric in quality_metrics(first, second)
        if better(metric, first[metric], second[metric])
    ]


def above_ceiling(metrics: Metrics) -> list[SanityFlag]:
    """The model better than the reference audio on a metric both have."""
    return set_beats(metrics, "above_ceiling", MODEL, CEILING)


def floor_beats_model(metrics: Metrics) -> list[SanityFlag]:
    """Decoded random latents better than the model on a metric both have."""
    return set_beats(metrics, "floor_beats_model", FLOOR, MODEL)


def wrong_prompt_not_beaten(metrics: Metrics) -> list[SanityFlag]:
    """A prompted set whose CLAP score against a wrong prompt is not below its own."""
    flags = []
    for name in PROMPTED_SETS:
        figures = metrics.get(name, {})
        right, wrong = figures.get("clap_score"), figures.get("clap_score_wrong_prompt")
        if right is not None and wrong is not None and wrong.estimate >= right.estimate:
            right_prompt = Comparison(name, "clap_score", right)
            flags.append(
                SanityFlag(
                    "wrong_prompt_not_beaten", name, "clap_score_wrong_prompt", wrong, right_prompt
                )
            )
    return flags


def too_few_prompts(metrics: Metrics, min_prompts: int) -> list[SanityFlag]:
    """Every attribute accuracy of any set over fewer than `min_prompts` prompts."""
    return [
        SanityFlag("too_few_prompts", name, metric, ci, None, threshold=min_prompts)
        for name, figures in metrics.items()
        for metric, ci in figures.items()
        if metric.endswith("_accuracy") and ci.n < min_prompts
    ]


def sanity_flags(metrics: Metrics, min_prompts_for_rates: int) -> list[SanityFlag]:
    """Every check, in the report's order."""
    return [
        *above_ceiling(metrics),
        *floor_beats_model(metrics),
        *wrong_prompt_not_beaten(metrics),
        *too_few_prompts(metrics, min_prompts_for_rates),
    ]


def markdown_lines(flags: list[SanityFlag]) -> list[str]:
    """The report's top section: each check that fired, what it means, its flags."""
    if not flags:
        return [
            "Sanity flags: none. The model sits between the floor and the ceiling on every metric, "
            "the right prompts beat the wrong-prompt control, and every accuracy rests on "
            "enough prompts.",
        ]
    lines = [
        f"## ⚠ Sanity flags ({len(flags)})",
        "",
        "These figures contradict the evaluation's own frame; read them as a limit of the "
        "scorers or of the prompt set on this data, not as the model's quality "
        "(`sanity_flags` in reports/metrics.json; tasks/evaluate/sanity.py).",
    ]
    for check, meaning in CHECKS.items():
        fired = [flag for flag in flags if flag.check == check]
        if fired:
            lines += ["", f"**{meaning}**", "", *(f"- {flag.message}" for flag in fired)]
    return lines


def run_description(flags: list[SanityFlag], limit: int) -> str:
    """The MLflow run's description: every flag's line, cut to `limit` characters (MLflow's
    tag length) with a pointer to the full list."""
    text = "\n".join(
        [f"⚠ {len(flags)} sanity flag(s) (reports/evaluation.md):"]
        + [f"- {flag.check}: {flag.message}" for flag in flags]
    )
    if len(text) <= limit:
        return text
    tail = "\n… (cut: see sanity_flags in reports/metrics.json)"
    return text[: limit - len(tail)] + tail
