"""The `curate` stage: paper 000 §II-A selection, tiers, S, the score cache, bad audio, e2e."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch

from models.scorers import (
    MelConfig,
    QualityRegressor,
    QualityRegressorConfig,
    TinyClap,
    TinyClapConfig,
)
from tasks.backends.embedded import save_checkpoint
from tasks.common import schema
from tasks.common.rank_metrics import roc_auc
from tasks.common.schema import SEGMENT_COLUMNS
from tasks.common.score_cache import SHARED_CACHE_ENV, CachedScorer, ScoreCache, cache_directory
from tasks.corpus import stage as corpus
from tasks.curate import report as curation_report
from tasks.curate import stage as curate
from tasks.curate.segments import (
    DROPPED_LOW,
    DROPPED_SURPLUS,
    HIGH,
    KEPT_HIGH,
    KEPT_LOW,
    KEPT_MEDIUM,
    LOW,
    MEDIUM,
    REJECTED_SILENT,
    Thresholds,
    add_normalised_score,
    assign_tiers,
    calibrate_thresholds,
    candidate_starts,
    normalise_scores,
    select_track,
    select_unfiltered,
)
from tasks.params import Params
from tests.conftest import HEALTH_GATES_OFF, TINY_DATA, params_with

RATE = 16000
ABSOLUTE = Thresholds(high=0.33, medium=0.20, mode="absolute")


# --------------------------------------------------------------------------- doubles
class CountingClap:
    """A content-deterministic CLAP double: the score of a window grows with its RMS."""

    sample_rate = RATE
    embedding_dim = 2

    def __init__(self) -> None:
        self.calls: list[int] = []

    def embed_audio(self, waveforms: Sequence[np.ndarray], sample_rate: int) -> np.ndarray:
        self.calls.append(len(waveforms))
        rms = np.array([np.sqrt(np.mean(np.square(w))) for w in waveforms])
        angle = np.pi / 2 * (1.0 - np.clip(rms / 0.5, 0.0, 1.0))  # louder: closer to text
        return np.stack([np.cos(angle), np.sin(angle)], axis=1).astype(np.float32)

    def embed_text(self, captions: Sequence[str]) -> np.ndarray:
        return np.tile(np.array([[1.0, 0.0]], dtype=np.float32), (len(captions), 1))


class CountingQuality:
    sample_rate = RATE

    def __init__(self) -> None:
        self.calls: list[int] = []

    def predict(self, waveforms: Sequence[np.ndarray], sample_rate: int) -> np.ndarray:
        self.calls.append(len(waveforms))
        return np.array([3.0 + np.abs(w).mean() for w in waveforms], dtype=np.float32)


def scorers_for(cache: ScoreCache, batch: int) -> tuple[curate.Scorers, CountingClap]:
    clap, quality = CountingClap(), CountingQuality()
    return (
        curate.Scorers(
            clap,
            CachedScorer(cache, "clap_audio", "clap-double", clap.embed_audio, batch),
            CachedScorer(cache, "pmos", "quality-double", quality.predict, batch),
        ),
        clap,
    )


@pytest.fixture
def small_params(shipped_params: dict, tmp_path: Path) -> Params:
    return params_with(
        shipped_params,
        {
            "data": {**TINY_DATA, "root": str(tmp_path)},
            "curate": {
                "candidates_per_track": 5,
                "segment_seconds": 1.0,
                "keep_per_track": 2,
                "threshold_mode": "absolute",
                "batch_size": 4,
                "cache_dir": str(tmp_path / "cache"),
            },
        },
    )


def write_tracks(root: Path, specs: list[tuple[str, str, float, float]]) -> pd.DataFrame:
    """(track_id, split, seconds, amplitude) -> FLAC files of amplitude-modulated noise."""
    rows = []
    for track_id, split, seconds, amplitude in specs:
        rng = np.random.default_rng(abs(hash(track_id)) % 2**32)
        n = round(seconds * RATE)
        envelope = amplitude * (0.5 + 0.5 * np.sin(np.linspace(0, 3 * np.pi, n)))
        audio = (envelope * rng.uniform(-1, 1, n)).astype(np.float32)
        (root / "audio").mkdir(parents=True, exist_ok=True)
        sf.write(root / "audio" / f"{track_id}.flac", audio, RATE, subtype="PCM_16")
        rows.append(
            {
                "track_id": track_id,
                "audio_path": f"audio/{track_id}.flac",
                "split": split,
                "duration_s": seconds,
                "caption_holistic": f"a caption of {track_id}",
            }
        )
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- selection
def test_at_least_k_high_keeps_exactly_k_high_at_random_but_seeded() -> None:
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.25, 0.1])
    tiers = assign_tiers(scores, ABSOLUTE)
    picks = set()
    for seed in range(20):
        status = select_track(scores, tiers, 3, np.random.default_rng(seed))
        again = select_track(scores, tiers, 3, np.random.default_rng(seed))
        assert (status == again).all()
        assert (status == KEPT_HIGH).sum() == 3 and (status == KEPT_MEDIUM).sum() == 0
        assert set(np.flatnonzero(status == KEPT_HIGH)) <= {0, 1, 2, 3, 4, 5}
        assert status[6] == DROPPED_SURPLUS and status[7] == DROPPED_LOW
        picks.add(tuple(np.flatnonzero(status == KEPT_HIGH)))
    assert len(picks) > 5  # random among the high tier, not the top-scoring three


def test_fewer_high_keeps_all_high_then_top_medium_never_low() -> None:
    scores = np.array([0.21, 0.5, 0.30, 0.05, 0.25, 0.10, 0.32])
    tiers = assign_tiers(scores, ABSOLUTE)
    status = select_track(scores, tiers, 3, np.random.default_rng(0))
    assert list(status) == [
        DROPPED_SURPLUS,
        KEPT_HIGH,
        KEPT_MEDIUM,
        DROPPED_LOW,
        DROPPED_SURPLUS,
        DROPPED_LOW,
        KEPT_MEDIUM,
    ]


def test_fewer_than_k_admissible_keeps_fewer_and_silent_is_rejected() -> None:
    scores = np.array([0.4, np.nan, 0.22, 0.19, -0.5])
    tiers = assign_tiers(scores, ABSOLUTE)
    status = select_track(scores, tiers, 4, np.random.default_rng(0))
    assert list(status) == [KEPT_HIGH, REJECTED_SILENT, KEPT_MEDIUM, DROPPED_LOW, DROPPED_LOW]


def test_unfiltered_keeps_k_scored_candidates_at_random_whatever_their_tier() -> None:
    """`curate.clap_filter: false`: the same number kept as the filter would, drawn uniformly
    among the scored candidates (low tier included), seeded; silent windows never."""
    scores = np.array([0.9, 0.05, np.nan, 0.1, 0.25, 0.02, 0.4, 0.12])
    tiers = assign_tiers(scores, ABSOLUTE)
    picks, lows = set(), 0
    for seed in range(30):
        status = select_unfiltered(scores, tiers, 4, np.random.default_rng(seed))
        assert (status == select_unfiltered(scores, tiers, 4, np.random.default_rng(seed))).all()
        kept = np.isin(status, [KEPT_HIGH, KEPT_MEDIUM, KEPT_LOW])
        assert kept.sum() == 4 and status[2] == REJECTED_SILENT
        assert (status[~kept & np.isfinite(scores)] == DROPPED_SURPLUS).all()
        assert all(status[i] == KEPT_LOW for i in np.flatnonzero(kept & (tiers == LOW)))
        lows += int((status == KEPT_LOW).sum())
        picks.add(tuple(np.flatnonzero(kept)))
    assert lows > 0 and len(picks) > 5


def test_unfiltered_selection_keeps_as_many_segments_as_the_filter() -> None:
    rng = np.random.default_rng(0)
    candidates = pd.DataFrame(
        {
            "track_id": np.repeat([f"t{i}" for i in range(6)], 10),
            "candidate_index": np.tile(np.arange(10), 6),
            "clap_score": rng.uniform(0.0, 0.6, 60),
        }
    )
    filtered = curate.select_segments(candidates, ABSOLUTE, 3, seed=1, clap_filter=True)
    unfiltered = curate.select_segments(candidates, ABSOLUTE, 3, seed=1, clap_filter=False)
    assert (unfiltered.groupby("track_id")["kept"].sum() == 3).all()
    assert filtered["kept"].sum() <= unfiltered["kept"].sum()
    assert not filtered.loc[filtered["tier"] == LOW, "kept"].any()
    assert unfiltered.loc[unfiltered["tier"] == LOW, "kept"].any()


def test_tier_boundaries_are_inclusive_below() -> None:
    scores = np.array([0.33, np.nextafter(0.33, 0), 0.20, np.nextafter(0.20, 0), np.nan])
    assert list(assign_tiers(scores, ABSOLUTE)) == [HIGH, MEDIUM, MEDIUM, LOW, None]


@pytest.mark.parametrize(("high_share", "low_share"), [(0.5, 0.2), (0.3, 0.1), (0.8, 0.15)])
def test_validation_quantiles_give_the_requested_shares(small_params, high_share, low_share):
    curate_params = small_params.curate.model_copy(
        update={
            "threshold_mode": "validation_quantile",
            "high_share": high_share,
            "low_share": low_share,
        }
    )
    val = np.random.default_rng(3).normal(0.1, 0.2, 2000)
    thresholds = calibrate_thresholds(curate_params, val)
    tiers = assign_tiers(val, thresholds)
    assert abs(np.mean(tiers == HIGH) - high_share) <= 1 / len(val)
    assert abs(np.mean(tiers == LOW) - low_share) <= 1 / len(val)
    assert thresholds.calibration_scores == len(val)
    absolute = calibrate_thresholds(small_params.curate, val)
    assert (absolute.high, absolute.medium) == (0.33, 0.20)
    with pytest.raises(ValueError, match="val split"):
        calibrate_thresholds(curate_params, np.array([np.nan]))


def test_s_is_zero_at_the_tier_floor_and_clipped_at_the_train_percentile() -> None:
    s = normalise_scores(np.array([0.20, 0.25, 0.30, 0.45, 0.10]), floor=0.20, clip_at=0.30)
    np.testing.assert_allclose(s, [0.0, 0.5, 1.0, 1.0, 0.0])
    assert normalise_scores(np.array([0.3]), floor=0.3, clip_at=0.3)[0] == 1.0
    segments = pd.DataFrame(
        {
            "clap_score": [0.2, 0.3, 0.4, 0.5, 0.9, 0.1],
            "kept": [True, True, True, True, True, False],
            "split": ["train", "train", "train", "train", "val", "train"],
        }
    )
    out, clip_at = add_normalised_score(segments, ABSOLUTE, 75.0)
    assert clip_at == pytest.approx(np.percentile([0.2, 0.3, 0.4, 0.5], 75))  # train, kept only
    s = out["score_normalised"].to_numpy()
    np.testing.assert_allclose(
        s[:5], np.clip((out["clap_score"][:5] - 0.2) / (clip_at - 0.2), 0, 1)
    )
    assert np.isnan(s[5]) and s[4] == 1.0 and s[0] == 0.0


# --------------------------------------------------------------------------- candidates
def test_candidate_windows_lie_inside_the_track_and_are_sorted(small_params) -> None:
    length = RATE  # 1 s windows
    for n in (length, length + 1, 3 * length + 17, 40 * length):
        starts = candidate_starts("t1", n, RATE, small_params.curate, seed=1)
        assert len(starts) == 5 and (np.diff(starts) >= 0).all()
        assert starts.min() >= 0 and starts.max() + length <= n
    with pytest.raises(ValueError):
        candidate_starts("t1", length - 1, RATE, small_params.curate, seed=1)


def test_candidates_do_not_depend_on_track_order(small_params, tmp_path) -> None:
    tracks = write_tracks(tmp_path, [(f"t{i}", "train", 3.0 + i, 0.3) for i in range(4)])
    tables = []
    for order in (tracks, tracks.iloc[::-1]):
        with ScoreCache(tmp_path / f"cache{len(tables)}") as cache:
            scorers, _ = scorers_for(cache, 4)
            candidates, _ = curate.clap_scores(order, tmp_path, small_params, scorers)
        tables.append(candidates.sort_values("segment_id").reset_index(drop=True))
    pd.testing.assert_frame_equal(tables[0], tables[1])


# --------------------------------------------------------------------------- cache
def test_rerun_and_partial_cache_call_the_backend_only_for_missing_windows(
    small_params, tmp_path
) -> None:
    tracks = write_tracks(tmp_path, [(f"t{i}", "train", 4.0, 0.1 * (i + 1)) for i in range(5)])
    cache_dir = tmp_path / "cache"
    with ScoreCache(cache_dir) as cache:
        scorers, clap = scorers_for(cache, 4)
        first, _ = curate.clap_scores(tracks, tmp_path, small_params, scorers)
        # 25 windows in 7 calls, each at the full batch (the last padded: score_cache.py)
        assert clap.calls == [4] * 7 and scorers.clap_audio.computed == 25
    with ScoreCache(cache_dir) as cache:
        scorers, clap = scorers_for(cache, 4)
        again, _ = curate.clap_scores(tracks, tmp_path, small_params, scorers)
        assert clap.calls == [] and scorers.clap_audio.hits == 25
    pd.testing.assert_frame_equal(first, again)
    with sqlite3.connect(cache_dir / "scores.sqlite") as connection:  # lose 7 windows
        connection.execute(
            "DELETE FROM clap_audio WHERE key IN (SELECT key FROM clap_audio LIMIT 7)"
        )
    with ScoreCache(cache_dir) as cache:
        scorers, clap = scorers_for(cache, 4)
        resumed, _ = curate.clap_scores(tracks, tmp_path, small_params, scorers)
        assert clap.calls == [4, 4]  # only the missing windows, in full batches
        assert scorers.clap_audio.computed == 7
    pd.testing.assert_frame_equal(first, resumed)


def test_a_killed_run_keeps_its_finished_batches(small_params, tmp_path) -> None:
    tracks = write_tracks(tmp_path, [(f"t{i}", "train", 4.0, 0.2) for i in range(4)])
    with ScoreCache(tmp_path / "cache") as cache:
        scorers, clap = scorers_for(cache, 4)
        original = clap.embed_audio

        def dies_on_third_batch(waveforms, sample_rate):
            if len(clap.calls) == 2:
                raise KeyboardInterrupt
            return original(waveforms, sample_rate)

        scorers.clap_audio.compute = dies_on_third_batch
        with pytest.raises(KeyboardInterrupt):
            curate.clap_scores(tracks, tmp_path, small_params, scorers)
        assert cache.count("clap_audio") == 8
    with ScoreCache(tmp_path / "cache") as cache:
        scorers, clap = scorers_for(cache, 4)
        curate.clap_scores(tracks, tmp_path, small_params, scorers)
        assert sum(clap.calls) == 20 - 8


# --------------------------------------------------------------------------- bad audio
def test_unreadable_tracks_are_rejected_and_silent_windows_marked(small_params, tmp_path):
    tracks = write_tracks(
        tmp_path,
        [("good", "train", 3.0, 0.3), ("short", "train", 0.5, 0.3), ("quiet", "train", 3.0, 0)],
    )
    (tmp_path / "audio" / "corrupt.flac").write_bytes(b"fLaC" + bytes(range(256)) * 8)
    extra = pd.DataFrame(
        [
            {"track_id": "gone", "audio_path": "audio/gone.flac", "split": "train"},
            {"track_id": "corrupt", "audio_path": "audio/corrupt.flac", "split": "val"},
        ]
    ).assign(duration_s=3.0, caption_holistic="x")
    tracks = pd.concat([tracks, extra], ignore_index=True)
    with ScoreCache(tmp_path / "cache") as cache:
        scorers, _ = scorers_for(cache, 4)
        candidates, rejects = curate.clap_scores(tracks, tmp_path, small_params, scorers)
    schema.check_columns(rejects, curate.REJECT_COLUMNS, "rejects")
    reasons = dict(zip(rejects["track_id"], rejects["reason"], strict=True))
    assert reasons == {"short": "too_short", "gone": "missing_audio", "corrupt": "undecodable"}
    assert set(candidates["track_id"]) == {"good", "quiet"}
    quiet = candidates[candidates["track_id"] == "quiet"]
    assert quiet["clap_score"].isna().all()
    assert scorers.clap_audio.computed == 5  # only "good" scored
    selected = curate.select_segments(candidates, ABSOLUTE, 2, seed=0, clap_filter=True)
    assert (selected.loc[quiet.index, "status"] == REJECTED_SILENT).all()
    assert not selected.loc[quiet.index, "kept"].any()


# --------------------------------------------------------------------------- end to end
def save_random_scorers(params: Params, directory: Path) -> tuple[Path, Path]:
    s = params.scorers
    mel = MelConfig(sample_rate=s.sample_rate, n_mels=s.n_mels, frame_rate=s.frame_rate)
    torch.manual_seed(0)
    clap = TinyClap(TinyClapConfig(mel, s.clap_channels, s.embed_dim, 384))
    quality = QualityRegressor(QualityRegressorConfig(mel, s.quality_channels))
    with torch.no_grad():  # random init predicts ~0: move it onto the p-MOS scale
        quality.head[-1].bias.fill_(3.8)
    save_checkpoint(clap.eval(), directory / "clap", {})
    save_checkpoint(quality.eval(), directory / "quality", {})
    return directory / "clap", directory / "quality"


@pytest.mark.slow
def test_stage_end_to_end_on_a_tiny_corpus(shipped_params, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    base = params_with(shipped_params, {"data": TINY_DATA})
    clap_dir, quality_dir = save_random_scorers(base, tmp_path / "scorers")
    overlay = {
        "data": {**TINY_DATA, "root": "corpus"},
        "curate": {
            "candidates_per_track": 6,
            "segment_seconds": 4.0,
            "keep_per_track": 3,
            **HEALTH_GATES_OFF,
        },
        "backends": {
            "clap": {"name": "embedded", "path": str(clap_dir), "text_model_path": None},
            "quality": {"name": "embedded", "path": str(quality_dir)},
        },
    }
    params = params_with(shipped_params, overlay)
    built = corpus.build_corpus(params.data, params.seed, 4.0, tmp_path / "corpus")
    corpus.write_corpus(built, tmp_path / "corpus")
    summary = curate.run(params)

    segments = pd.read_parquet("data/curated/segments.parquet")
    assert list(segments.columns) == list(SEGMENT_COLUMNS)
    assert len(segments) == 6 * len(built.tracks) == summary["candidates"]
    assert segments["segment_id"].is_unique
    per_track = segments.groupby("track_id")["kept"].sum()
    assert per_track.max() <= 3 and (segments.loc[segments["tier"] == LOW, "kept"] == 0).all()
    kept = segments[segments["kept"]]
    assert kept["score_normalised"].between(0, 1).all()
    assert segments.loc[~segments["kept"], "score_normalised"].isna().all()
    assert kept["quality_level"].between(1, 5).all() and kept["quality_prefix"].notna().all()
    assert segments.loc[~segments["kept"], "quality_level"].isna().all()
    high, medium = summary["thresholds"]["high"], summary["thresholds"]["medium"]
    val = segments.loc[segments["split"] == "val", "clap_score"]
    assert abs((val >= high).mean() - params.curate.high_share) <= 1 / len(val) + 1e-9
    assert high > medium and summary["thresholds"]["mode"] == "validation_quantile"

    report = json.loads(Path("reports/curation.json").read_text())
    assert report["ground_truth"]["noise"]["train"]["wrong"]["files"] >= 1
    fig1 = pd.read_csv("reports/curation/clap_scores_val.csv")
    assert len(fig1) == (built.tracks["split"] == "val").sum() and fig1["track_id"].is_unique
    assert Path("reports/curation/clap_score_hist.png").stat().st_size > 1000
    page = Path("reports/curation.md").read_text()
    assert "## Ground truth" in page
    # the label-free health section leads the page, its figures are in the JSON and MLflow
    assert page.split("\n\n")[1] == "## Scorer health on this data (label-free)"
    health = report["health"]
    assert health["clap"]["tracks"] == (built.tracks["split"] == "val").sum()
    assert health["clap"]["auc"]["low"] <= health["clap"]["auc"]["value"] <= 1
    assert health["quality"]["spearman"]["n"] == health["clap"]["tracks"]
    assert 0 <= health["captioner"]["vocabulary"]["coverage"] <= 1
    runs = mlflow.search_runs(experiment_names=[params.tracking.experiment])
    assert len(runs) == 1 and runs.loc[0, "metrics.candidates"] == len(segments)
    assert runs.loc[0, "metrics.health.clap.auc.value"] == health["clap"]["auc"]["value"]

    curate.run(params)  # a rerun is all cache hits and changes nothing
    rerun = mlflow.search_runs(experiment_names=[params.tracking.experiment]).iloc[0]
    assert rerun["metrics.cache.clap_audio.backend_calls"] == 0
    assert rerun["metrics.cache.quality.backend_calls"] == 0
    pd.testing.assert_frame_equal(pd.read_parquet("data/curated/segments.parquet"), segments)

    # the unfiltered baseline (curate.clap_filter false): as many kept, low tier included
    off = {**overlay, "curate": {**overlay["curate"], "clap_filter": False}}
    unfiltered = params_with(shipped_params, off)
    curate.run(unfiltered)
    drawn = pd.read_parquet("data/curated/segments.parquet")
    scored = drawn[drawn["clap_score"].notna()].groupby("track_id").size()
    assert (drawn.groupby("track_id")["kept"].sum() == scored.clip(upper=3)).all()
    assert drawn["kept"].sum() >= segments["kept"].sum()
    assert set(drawn.loc[drawn["kept"] & (drawn["tier"] == LOW), "status"]) <= {"kept_low"}
    assert drawn.loc[drawn["kept"], "quality_level"].notna().all()
    assert "curate.clap_filter is false" in Path("reports/curation.md").read_text()


def test_ground_truth_measures_on_a_hand_built_table() -> None:
    """4 clean files (one fully dropped), 2 wrong (one fully dropped); 2 candidates each."""
    rows = []
    plan = {"c1": (1, 1), "c2": (1, 0), "c3": (0, 0), "c4": (1, 1), "w1": (0, 0), "w2": (1, 0)}
    for track_id, kept in plan.items():
        for keep in kept:
            low = not keep and track_id.startswith("w")
            rows.append(
                {
                    "track_id": track_id,
                    "split": "train",
                    "kept": bool(keep),
                    "tier": LOW if low else HIGH,
                    "clap_score": 0.1 if low else 0.5 + 0.01 * len(rows),
                    "caption_noise": "clean" if track_id.startswith("c") else "wrong",
                }
            )
    truth = pd.DataFrame(rows)
    noise = curation_report.noise_table(truth).set_index(["scope", "caption_noise"])
    clean, wrong = noise.loc[("train", "clean")], noise.loc[("train", "wrong")]
    assert (clean["files"], clean["candidates"], clean["kept"]) == (4, 8, 5 / 8)
    assert clean["files_dropped_entirely"] == 1 / 4 and clean["not_low"] == 1.0
    assert (wrong["dropped"], wrong["low_tier"], wrong["files_dropped_entirely"]) == (
        3 / 4,
        3 / 4,
        1 / 2,
    )
    table = curation_report.filter_table(truth).set_index(["scope", "target"])
    row = table.loc[("train", "wrong")]
    assert (row["file_precision"], row["file_recall"]) == (1 / 2, 1 / 2)  # c3 and w1 dropped
    assert (row["segment_precision"], row["segment_recall"]) == (1.0, 3 / 4)
    assert row["score_auc"] == pytest.approx(
        roc_auc(truth["clap_score"][:8].to_numpy(), truth["clap_score"][8:].to_numpy())
    )
    rates = curation_report.tier_split_rate(truth)
    assert rates == {"all": 1 / 6, "clean": 0.0, "wrong": 1 / 2}


def test_trials_share_the_repositorys_score_cache(monkeypatch, tmp_path: Path) -> None:
    """A `dvc exp run --temp` copy would otherwise score every clip again: the trial flow
    names the repository's cache in the environment, and the stages use it."""
    monkeypatch.delenv(SHARED_CACHE_ENV, raising=False)
    assert cache_directory(".cache/scores") == Path(".cache/scores")
    monkeypatch.setenv(SHARED_CACHE_ENV, str(tmp_path))
    assert cache_directory(".cache/scores") == tmp_path
