"""The label-free health checks (tasks/common/health.py) and their gates, on hand-built data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from benchmarks.health_checks import shuffled_captions
from tasks.backends.captioner import embedded_vocabulary_texts
from tasks.captions.refinement import captioner_gate
from tasks.common.health import (
    calibration_position,
    clap_health,
    quality_health,
    tag_confidence,
    tag_health,
    vocabulary_coverage,
    words_of,
)
from tasks.common.preflight import calibration_problems
from tasks.common.seeds import derangement
from tasks.curate.health import gate_problems, markdown
from tests.conftest import TINY_DATA, params_with


def unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def paired(n: int, noise: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Audio and text embeddings that share a direction per track, plus noise."""
    rng = np.random.default_rng(seed)
    shared = rng.standard_normal((n, 16))
    audio = unit(shared + noise * rng.standard_normal((n, 16)))
    text = unit(shared + noise * rng.standard_normal((n, 16)))
    return audio, text


def test_derangement_pairs_every_item_with_another_and_is_seeded() -> None:
    for n in (2, 3, 10, 40):
        order = derangement(n, seed=5)
        assert sorted(order) == list(range(n)) and not np.any(order == np.arange(n))
    assert np.array_equal(derangement(30, 1), derangement(30, 1))
    assert not np.array_equal(derangement(30, 1), derangement(30, 2))


def test_clap_health_is_high_on_matched_pairs_and_at_chance_when_shuffled() -> None:
    n = 40
    audio, text = paired(n, noise=0.3)
    captions = [f"caption {i}" for i in range(n)]
    good = clap_health(audio, text, captions, seed=0, resamples=300, confidence=0.95)
    assert good["auc"]["value"] > 0.95 and good["r_at_1"]["value"] > 0.8
    assert good["auc"]["low"] <= good["auc"]["value"] <= good["auc"]["high"]
    assert good["chance_r_at_1"] == 1 / n and good["chance_r_at_5"] == 5 / n
    # the same captions on the wrong tracks: what a CLAP that knows nothing sees
    shuffled = text[np.random.default_rng(3).permutation(n)]
    bad = clap_health(audio, shuffled, captions, seed=0, resamples=300, confidence=0.95)
    assert bad["auc"]["low"] < 0.5 < bad["auc"]["high"]
    assert bad["r_at_1"]["value"] < 0.15


def test_clap_health_leaves_out_identical_captions_and_says_when_too_few() -> None:
    audio, text = paired(4, noise=0.3)
    same = clap_health(audio, text, ["x"] * 4, seed=0, resamples=50, confidence=0.9)
    assert "not measurable on this data" in same["note"]
    two = clap_health(audio[:2], text[:2], ["a", "b"], seed=0, resamples=50, confidence=0.9)
    assert "2 val track(s)" in two["note"]
    mixed = clap_health(audio, text, ["a", "a", "b", "c"], seed=0, resamples=50, confidence=0.9)
    assert mixed["negatives_left_out"] in (0, 1, 2)


def test_quality_health_ranks_levels_and_places_clean_clips_on_the_scale() -> None:
    rng = np.random.default_rng(0)
    n, kinds, levels = 12, ["noise", "clip"], [1, 2, 3, 4]
    original = 4.3 + 0.05 * rng.standard_normal(n)
    # each level 0.2 lower, as a p-MOS that hears the degradations would predict
    degraded = np.stack([[4.3 - 0.2 * (5 - np.array(levels))] * len(kinds)] * n)
    degraded = degraded + 0.05 * rng.standard_normal(degraded.shape)
    good = quality_health(
        original, degraded, levels, kinds, (3.8, 0.2), [-2, -1, 1, 2], 0, 200, 0.95
    )
    assert good["spearman"]["value"] > 0.9 and set(good["spearman_by_kind"]) == set(kinds)
    assert good["median_z_original"] == pytest.approx(2.5, abs=0.2)
    blind = rng.standard_normal(degraded.shape)
    bad = quality_health(original * 0, blind, levels, kinds, None, [-2, -1, 1, 2], 0, 200, 0.95)
    assert abs(bad["spearman"]["value"]) < 0.3 and "not measurable" in bad["calibration"]


def test_calibration_position_counts_clips_outside_the_levels_range() -> None:
    # the levels span z -2.5 .. 2.5 (level 1 to level 5 centres) at edges [-2, -1, 1, 2]
    place = calibration_position(np.array([3.8, 3.0, 5.0, 4.2]), (3.8, 0.2), [-2, -1, 1, 2])
    assert place["range_z"] == [-2.5, 2.5]
    assert place["share_outside_range"] == 0.5  # z -4 and +6
    assert place["share_below_lowest_edge"] == 0.25


def test_vocabulary_coverage_counts_content_words_the_captioner_can_write() -> None:
    vocabulary = words_of(embedded_vocabulary_texts())
    assert {"piano", "calm", "jazz", "tempo"} <= vocabulary
    inside = vocabulary_coverage(["A calm jazz piece with piano."], vocabulary)
    assert inside["coverage"] == 1.0  # "a", "with" are function words
    outside = vocabulary_coverage(["Gamelan gongs and kecak chant", "calm"], vocabulary)
    assert outside["coverage"] == pytest.approx(1 / 5)
    assert outside["top_uncovered"][:2] == ["chant", "gamelan"]


def test_tag_confidence_is_high_only_where_the_tag_depends_on_the_clip() -> None:
    rng = np.random.default_rng(0)
    # a CLAP that hears the genre: clip i scores its own class 0.2 above the rest
    heard = 0.3 + 0.01 * rng.standard_normal((12, 4))
    heard[np.arange(12), np.arange(12) % 4] += 0.2
    assert tag_confidence(heard).min() > 0.9
    # one that prefers class 0 whatever the clip: the preference is removed, ~chance left
    favourite = 0.3 + 0.001 * rng.standard_normal((12, 4))
    favourite[:, 0] += 0.2
    assert tag_confidence(favourite).max() < 0.5
    share = tag_health(np.array([0.9, 0.2, 0.8]), np.array([0, 1, 0]), 0.5)
    assert share["tracks"] == 2 and share["share_confident"] == 0.5


def health_of(auc: float) -> dict:
    figure = {"value": auc, "low": auc - 0.1, "high": auc + 0.1, "n": 24}
    return {
        "clap": {
            "tracks": 24,
            "auc": figure,
            "r_at_1": figure,
            "r_at_5": figure,
            "chance_r_at_1": 1 / 24,
            "chance_r_at_5": 5 / 24,
        },
        "quality": {"note": "not measurable on this data: 2 scorable val track(s), 3 needed"},
        "captioner": {"backend": "transformers", "note": "not measurable on this data: open"},
    }


def test_the_clap_gate_refuses_below_the_floor_and_says_what_to_do(tiny_params) -> None:
    assert tiny_params.curate.min_clap_auc == 0.7
    (problem,) = gate_problems(health_of(0.52), tiny_params)
    assert problem.startswith("curate.min_clap_auc = 0.7")
    assert "ROC-AUC 0.520 [0.420, 0.620] on 24 val tracks (0.5 = chance" in problem
    assert "backends.clap.name: laion" in problem and "backends.clap.name: crossfit" in problem
    assert gate_problems(health_of(0.9), tiny_params) == []
    off = tiny_params.model_copy(
        update={"curate": tiny_params.curate.model_copy(update={"min_clap_auc": 0.0})}
    )
    assert gate_problems(health_of(0.52), off) == []
    unmeasured = {"clap": {"note": "not measurable on this data: 1 val track(s)"}}
    (problem,) = gate_problems(unmeasured, tiny_params)
    assert "data.val_fraction" in problem and "curate.min_clap_auc: 0" in problem
    page = markdown(health_of(0.52), tiny_params)
    assert page.startswith("## Scorer health on this data (label-free)")
    assert "ROC-AUC 0.520 [0.420, 0.620] (chance 0.5" in page and "p-MOS: not measurable" in page


def test_quantile_calibration_on_too_few_val_tracks_is_refused(shipped_params) -> None:
    params = params_with(
        shipped_params, {"data": TINY_DATA, "curate": {"min_calibration_tracks": 3}}
    )
    tracks = pd.DataFrame(
        {"split": ["train", "val", "val", "val"], "caption_holistic": ["a", "b", "c", pd.NA]}
    )
    (problem,) = calibration_problems(tracks, params)
    assert "2 of this corpus's 3 val track(s) have a caption_holistic" in problem
    assert "curate.min_calibration_tracks = 3" in problem
    tracks.loc[3, "caption_holistic"] = "d"
    assert calibration_problems(tracks, params) == []


def test_refinement_keeps_the_originals_when_the_captioner_cannot_write_the_captions() -> None:
    low = captioner_gate({"coverage": 0.1}, 0.3, "embedded")
    assert low["keeps_originals"] and "captions.min_captioner_coverage = 0.3" in low["reason"]
    assert not captioner_gate({"coverage": 0.5}, 0.3, "embedded")["keeps_originals"]
    open_vocabulary = captioner_gate({"note": "open vocabulary"}, 0.3, "transformers")
    assert not open_vocabulary["keeps_originals"] and open_vocabulary["coverage"] is None


def test_the_shuffled_control_gives_every_track_another_tracks_captions() -> None:

    tracks = pd.DataFrame(
        {
            "track_id": [f"t{i}" for i in range(6)],
            "caption_holistic": [f"h{i}" for i in range(6)],
            "caption_dense": [f"d{i}" for i in range(6)],
            "prompt_concise": [f"p{i}" for i in range(6)],
        }
    )
    out = shuffled_captions(tracks, seed=3)
    assert (out["caption_holistic"] != tracks["caption_holistic"]).all()
    assert (out["caption_holistic"].str[1:] == out["caption_dense"].str[1:]).all()
    assert sorted(out["prompt_concise"]) == sorted(tracks["prompt_concise"])
