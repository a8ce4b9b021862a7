"""The trial evaluation profile (evaluate.profile: trial): the ranking metrics under the full
profile's keys, nothing else; and the full profile's metrics unchanged by the `only` filter."""

from __future__ import annotations

import json
import shutil

import mlflow
import numpy as np
import pandas as pd
import pytest
from scipy import special

from tasks.common.bootstrap import BootstrapCI
from tasks.evaluate.inputs import PromptSet
from tasks.evaluate.scoring import ClipScores
from tasks.evaluate.summary import BootstrapSettings, Reference, ScoredSet, Summariser
from tasks.evaluate.trial import TrialResult, trial_prompts, write_trial_reports
from tasks.params import Params, merge
from tests.conftest import inside_workspace

RANKING = ["clap_score", "fad_clap", "pmos"]  # params.yaml ablation.metrics' generated.*


def random_scores(rng: np.random.Generator, clips: int) -> ClipScores:
    clap = rng.normal(size=(clips, 8))
    cosine = rng.uniform(-1, 1, size=(clips, 5))
    return ClipScores(
        clap_audio=clap / np.linalg.norm(clap, axis=1, keepdims=True),
        teacher=rng.normal(size=(clips, 6)),
        tag_cosine=cosine,
        tag_probabilities=special.softmax(cosine / 0.1, axis=1),
        pmos=rng.uniform(1, 5, size=clips),
        tempo_bpm=None,
        keys=None,
    )


def summariser_and_set(prompts: int = 6) -> tuple[Summariser, ScoredSet]:
    rng = np.random.default_rng(0)
    text = rng.normal(size=(prompts, 8))
    reference = Reference(random_scores(rng, prompts), np.arange(prompts))
    summariser = Summariser(
        text / np.linalg.norm(text, axis=1, keepdims=True),
        reference,
        BootstrapSettings(0.9, 50, 0),
        fad_infinity=True,
    )
    index = np.tile(np.arange(prompts), 2)  # two generations per prompt
    return summariser, ScoredSet("generated", random_scores(rng, 2 * prompts), index, {})


def test_only_the_named_metrics_are_computed_and_equal_the_full_ones() -> None:
    summariser, scored = summariser_and_set()
    full = summariser.summarise(scored)
    # the full profile's metrics, in its order (metrics.json's key order)
    assert list(full) == [
        "clap_score",
        "clap_score_wrong_prompt",
        "pmos",
        "inception_score",
        "fad_clap",
        "fad_teacher",
        "kl",
        "fad_clap_infinity",
    ]
    trial = summariser.summarise(scored, only=RANKING)
    assert sorted(trial) == sorted(RANKING)
    assert all(trial[name] == full[name] for name in RANKING)  # same seed, same intervals
    assert list(summariser.summarise(scored, only=["kl"])) == ["kl"]


def test_trial_prompts_are_the_first_n() -> None:
    table = pd.DataFrame({"prompt_id": list("abcd"), "prompt": list("wxyz")})
    prompts = PromptSet(table, "eval_prompts.parquet")
    assert trial_prompts(prompts, None) is prompts and trial_prompts(prompts, 9) is prompts
    first = trial_prompts(prompts, 2)
    assert first.ids == ["a", "b"] and "first 2" in first.source


def ci(value: float) -> BootstrapCI:
    return BootstrapCI(value, value - 0.1, value + 0.1, 0.95, 100, 4)


def test_trial_reports_say_so_and_hold_only_the_ranking_metrics(tmp_path, tiny_params) -> None:
    table = pd.DataFrame({"prompt_id": list("abcd"), "prompt": list("wxyz")})
    result = TrialResult(
        prompts=PromptSet(table, "x"),
        generated_clips=4,
        reference_clips=8,
        reference_rejected=0,
        metrics={"clap_score": ci(0.3), "fad_clap": ci(0.5), "pmos": ci(3.0)},
    )
    with inside_workspace(tmp_path), mlflow.start_run():
        summary = write_trial_reports(result, tiny_params)
    reports = tmp_path / "reports"
    metrics = json.loads((reports / "metrics.json").read_text())
    assert metrics == summary and metrics["profile"] == "trial"
    assert set(metrics["generated"]) == set(RANKING)
    assert metrics["generated"]["fad_clap"] == {"value": 0.5, "low": 0.4, "high": 0.6, "prompts": 4}
    assert not {"reference", "random_latents", "quality_curve"} & set(metrics)
    assert (reports / "evaluation.md").read_text().startswith("# Evaluation (trial profile)")
    assert sorted(p.name for p in (reports / "evaluate").iterdir()) == ["metrics.csv"]
    page = (reports / "listening/index.html").read_text()
    assert "Trial evaluation" in page and "<audio" not in page


@pytest.mark.slow
def test_trial_run_matches_the_full_run_on_the_same_clips(trained_workspace, tmp_path) -> None:
    """All prompts x the full profile's seeds: the trial's metrics are the full run's."""
    from tasks.evaluate import stage
    from tasks.evaluate.trial import run_trial

    source, raw = trained_workspace
    settings = {"generations_per_prompt": 2, "bootstrap_resamples": 200}
    trial = {"prompts": None, "generations_per_prompt": 2, "metrics": RANKING}
    params = Params.from_mapping(
        merge(raw, {"evaluate": {**settings, "profile": "trial", "trial": trial}})
    )
    root = tmp_path / "w"
    shutil.copytree(source, root)
    with inside_workspace(root):
        result = run_trial(params)
        full = stage.run(params)
    assert sorted(result.metrics) == sorted(RANKING)
    assert result.generated_clips == len(full.audio["generated"].audio)
    for name in RANKING:
        assert result.metrics[name] == full.metrics["generated"][name], name
    fewer = Params.from_mapping(
        merge(raw, {"evaluate": {**settings, "trial": {**trial, "prompts": 3}}})
    )
    with inside_workspace(root):
        small = run_trial(fewer)
    assert small.generated_clips == 3 * 2 and small.metrics["clap_score"].n == 3
