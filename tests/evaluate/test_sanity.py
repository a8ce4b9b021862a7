"""Sanity flags on hand-made metric dicts, and the seeded wrong-prompt derangement."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tasks.common.bootstrap import BootstrapCI
from tasks.common.seeds import derangement
from tasks.evaluate.sanity import markdown_lines, run_description, sanity_flags
from tasks.evaluate.scoring import ClipScores
from tasks.evaluate.summary import (
    BootstrapSettings,
    Reference,
    ScoredSet,
    Summariser,
)


def ci(estimate: float, half_width: float = 0.05, n: int = 24) -> BootstrapCI:
    return BootstrapCI(estimate, estimate - half_width, estimate + half_width, 0.95, 200, n)


def healthy() -> dict[str, dict[str, BootstrapCI]]:
    """The model between floor and ceiling on every metric, right prompts beating wrong."""
    return {
        "generated": {
            "clap_score": ci(0.38),
            "clap_score_wrong_prompt": ci(0.07),
            "pmos": ci(3.9),
            "fad_clap": ci(0.75),
            "genre_accuracy": ci(0.5),
        },
        "random_latents": {
            "clap_score": ci(0.14),
            "clap_score_wrong_prompt": ci(0.20),  # the floor's control is not checked
            "pmos": ci(3.5),
            "fad_clap": ci(1.65),
            "genre_accuracy": ci(0.1),
        },
        "reference": {
            "clap_score": ci(0.59),
            "clap_score_wrong_prompt": ci(0.06),
            "pmos": ci(4.19),
            "genre_accuracy": ci(0.96),
        },
    }


def checks(flags) -> list[tuple[str, str, str]]:
    return [(flag.check, flag.set, flag.metric) for flag in flags]


def test_a_healthy_evaluation_raises_no_flag() -> None:
    flags = sanity_flags(healthy(), min_prompts_for_rates=10)
    assert flags == []
    assert markdown_lines(flags)[0].startswith("Sanity flags: none")


def test_the_committed_dag_floor_pmos_above_the_model_is_flagged() -> None:
    """reports/metrics.json of the embedded DAG: random latents p-MOS 3.752 over the
    model's 3.713, inside its interval: flagged, with the overlap said."""
    metrics = healthy()
    metrics["generated"]["pmos"] = BootstrapCI(3.713, 3.602, 3.816, 0.95, 1000, 24)
    metrics["random_latents"]["pmos"] = BootstrapCI(3.752, 3.738, 3.767, 0.95, 1000, 24)
    (flag,) = sanity_flags(metrics, min_prompts_for_rates=10)
    assert (flag.check, flag.set, flag.metric) == ("floor_beats_model", "random_latents", "pmos")
    assert flag.intervals_overlap is True
    assert "3.752 [3.738, 3.767]" in flag.message and "3.713 [3.602, 3.816]" in flag.message
    record = flag.record()
    assert record["value"] == 3.752 and record["against_value"] == 3.713
    assert record["against_set"] == "generated" and record["intervals_overlap"] is True
    json.dumps(record)  # metrics.json-ready


def test_lower_is_better_metrics_compare_the_right_way() -> None:
    metrics = healthy()
    metrics["random_latents"]["fad_clap"] = ci(0.5)  # a floor closer to the reference
    flags = sanity_flags(metrics, min_prompts_for_rates=10)
    assert checks(flags) == [("floor_beats_model", "random_latents", "fad_clap")]
    assert "lower is better" in flags[0].message
    assert flags[0].intervals_overlap is False and "intervals disjoint" in flags[0].message
    metrics["random_latents"]["fad_clap"] = ci(3.0)  # a larger FAD is worse: no flag
    assert sanity_flags(metrics, min_prompts_for_rates=10) == []


def test_a_model_above_its_ceiling_is_flagged_on_each_metric() -> None:
    metrics = healthy()
    metrics["generated"]["clap_score"] = ci(0.62)
    metrics["generated"]["genre_accuracy"] = ci(0.97)
    flags = sanity_flags(metrics, min_prompts_for_rates=10)
    assert checks(flags) == [
        ("above_ceiling", "generated", "clap_score"),
        ("above_ceiling", "generated", "genre_accuracy"),
    ]
    assert flags[0].against is not None and flags[0].against.set == "reference"
    assert "reference audio (ceiling) `clap_score` 0.590" in flags[0].message


def test_wrong_prompt_at_or_above_the_right_one_is_flagged_for_prompted_sets() -> None:
    metrics = healthy()
    metrics["generated"]["clap_score_wrong_prompt"] = ci(0.38)  # a tie is not beating it
    metrics["reference"]["clap_score_wrong_prompt"] = ci(0.61)
    flags = sanity_flags(metrics, min_prompts_for_rates=10)
    assert checks(flags) == [
        ("wrong_prompt_not_beaten", "generated", "clap_score_wrong_prompt"),
        ("wrong_prompt_not_beaten", "reference", "clap_score_wrong_prompt"),
    ]
    assert "vs reference audio (ceiling) `clap_score` 0.590" in flags[1].message
    # The control is not a quality metric: a model "above the ceiling" on it is no flag.
    assert not any(flag.check == "above_ceiling" for flag in flags)


def test_accuracies_on_too_few_prompts_are_flagged_in_every_set() -> None:
    metrics = healthy()
    metrics["generated"]["tempo_accuracy"] = ci(0.5, n=2)
    metrics["reference"]["genre_accuracy"] = ci(0.96, n=9)
    metrics["generated"]["pmos"] = ci(3.9, n=2)  # not a rate: the threshold is for rates
    flags = sanity_flags(metrics, min_prompts_for_rates=10)
    assert checks(flags) == [
        ("too_few_prompts", "generated", "tempo_accuracy"),
        ("too_few_prompts", "reference", "genre_accuracy"),
    ]
    assert flags[0].message.endswith("on n = 2 prompts (< 10)")
    assert flags[0].record()["threshold"] == 10
    assert checks(sanity_flags(metrics, min_prompts_for_rates=9)) == [checks(flags)[0]]


def test_missing_sets_or_metrics_raise_nothing() -> None:
    assert sanity_flags({"generated": healthy()["generated"]}, min_prompts_for_rates=1) == []
    metrics = healthy()
    del metrics["generated"]["clap_score_wrong_prompt"]  # one prompt: no control
    assert sanity_flags(metrics, min_prompts_for_rates=10) == []


def test_report_section_and_run_description_carry_the_numbers() -> None:
    metrics = healthy()
    metrics["random_latents"]["pmos"] = ci(4.0)
    metrics["generated"]["clap_score_wrong_prompt"] = ci(0.40)
    flags = sanity_flags(metrics, min_prompts_for_rates=10)
    section = "\n".join(markdown_lines(flags))
    assert section.startswith("## ⚠ Sanity flags (2)")
    assert section.index("The floor beats the model") < section.index("A wrong prompt scores")
    assert "4.000 [3.950, 4.050]" in section and "0.400 [0.350, 0.450]" in section
    description = run_description(flags, limit=8000)
    assert "floor_beats_model" in description and "wrong_prompt_not_beaten" in description
    short = run_description(flags, limit=120)
    assert len(short) == 120 and short.endswith("see sanity_flags in reports/metrics.json)")


def test_derangement_moves_every_prompt_and_is_seeded() -> None:
    for n in (2, 3, 24, 100):
        order = derangement(n, seed=1234)
        assert sorted(order) == list(range(n))
        assert not np.any(order == np.arange(n))
        assert np.array_equal(order, derangement(n, seed=1234))
    assert not np.array_equal(derangement(24, seed=1), derangement(24, seed=2))
    assert not np.array_equal(derangement(24, seed=1), (np.arange(24) + 1) % 24)
    with pytest.raises(ValueError, match="at least 2"):
        derangement(1, seed=0)


def test_the_wrong_prompt_control_scores_each_clip_against_its_deranged_prompt() -> None:
    """Clips whose CLAP embedding is their prompt's text: the right prompt scores 1, the
    control exactly the cosine with the prompt the seeded derangement picked."""
    rng = np.random.default_rng(0)
    prompts, dims = 6, 8
    text = rng.normal(size=(prompts, dims))
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    prompt_index = np.repeat(np.arange(prompts), 2)
    scores = ClipScores(
        clap_audio=text[prompt_index],
        teacher=rng.normal(size=(len(prompt_index), 3)),
        tag_cosine=np.zeros((len(prompt_index), 2)),
        tag_probabilities=np.full((len(prompt_index), 2), 0.5),
        pmos=np.full(len(prompt_index), 3.0),
        tempo_bpm=None,
        keys=None,
    )
    settings = BootstrapSettings(confidence=0.95, resamples=50, seed=7)
    summariser = Summariser(text, Reference(scores, np.arange(prompts) * 2), settings, False)
    metrics = summariser.summarise(ScoredSet("generated", scores, prompt_index, {}), False)
    wrong = derangement(prompts, seed=7)
    expected = np.mean(np.sum(text * text[wrong], axis=1))
    assert metrics["clap_score"].estimate == pytest.approx(1.0)
    assert metrics["clap_score_wrong_prompt"].estimate == pytest.approx(expected)
    one_prompt = Summariser(text[:1], Reference(scores, np.zeros(1, int)), settings, False)
    only = ScoredSet("generated", scores.take(np.array([0, 1])), np.zeros(2, int), {})
    assert "clap_score_wrong_prompt" not in one_prompt.summarise(only, False)
