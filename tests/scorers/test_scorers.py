"""The embedded scorers: p-MOS bins, metrics, checkpoints through the registries, training."""

from __future__ import annotations

import json

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from models.scorers import (
    MelConfig,
    QualityRegressor,
    QualityRegressorConfig,
    TinyClap,
    TinyClapConfig,
)
from tasks.backends.base import BackendUnavailable, ClapBackend, resample
from tasks.backends.clap import load_clap
from tasks.backends.embedded import save_checkpoint
from tasks.backends.frame_teacher import load_frame_teacher
from tasks.backends.quality import load_quality
from tasks.common.quality_levels import level_centre, moments, quality_level, quality_prefix
from tasks.common.rank_metrics import recall_at_k, roc_auc, spearman
from tasks.corpus import stage as corpus
from tasks.params import BackendChoice, ClapChoice, ScorerOptim
from tasks.scorers import stage as scorers
from tasks.scorers.training import train_clap, train_quality
from tests.conftest import TINY_DATA, TINY_SCORERS, params_with

MEL = MelConfig(sample_rate=16000, n_mels=16, frame_rate=25)
REFERENCE_EDGES = [-2.0, -1.0, 1.0, 2.0]


# --------------------------------------------------------------------------- p-MOS bins
@pytest.mark.parametrize(
    ("pmos", "level"),
    [(3.39, 1), (3.40, 2), (3.59, 2), (3.60, 3), (3.99, 3), (4.00, 4), (4.19, 4), (4.20, 5)],
)
def test_levels_match_the_reference_vq_mos_table(pmos, level):
    """docs/reference.md §C.3 (hhhh.py): μ = 3.80, σ = 0.20, bins at μ ± σ and μ ± 2σ."""
    assert quality_level(np.array([pmos]), 3.80, 0.20, REFERENCE_EDGES)[0] == level


def test_prefixes_match_the_reference_thresholds():
    prefixes = ["low quality", "medium quality", "high quality"]
    values = np.array([3.50, 3.55, 3.56, 4.04, 4.05, 4.50])
    got = quality_prefix(values, 3.80, 0.20, [-1.25, 1.25], prefixes)
    assert list(got) == [prefixes[i] for i in (0, 0, 1, 1, 2, 2)]


def test_level_centres_quantise_back_to_their_level():
    centres = [level_centre(level, 3.80, 0.20, REFERENCE_EDGES) for level in range(1, 6)]
    assert centres == pytest.approx([3.30, 3.50, 3.80, 4.10, 4.30])
    assert list(quality_level(np.array(centres), 3.80, 0.20, REFERENCE_EDGES)) == [1, 2, 3, 4, 5]


def test_null_moments_are_fitted_on_the_train_pmos(shipped_params):
    quality = params_with(shipped_params, {"quality": {"pmos_mean": None, "pmos_std": None}})
    pmos = np.array([3.0, 4.0, 5.0])
    assert moments(quality.quality, pmos) == pytest.approx((4.0, 1.0))
    with pytest.raises(ValueError, match="train split"):
        moments(quality.quality)


# --------------------------------------------------------------------------- metrics
def test_roc_auc_and_recall_on_known_cases():
    assert roc_auc(np.array([2.0, 3.0]), np.array([0.0, 1.0])) == 1.0
    assert roc_auc(np.array([0.0, 1.0]), np.array([2.0, 3.0])) == 0.0
    assert roc_auc(np.array([1.0, 1.0]), np.array([1.0])) == 0.5
    assert recall_at_k(np.eye(4), 1) == 1.0
    assert recall_at_k(np.eye(4)[::-1], 1) == 0.0  # every match is beaten by another item
    assert spearman(np.array([1, 2, 3]), np.array([10, 20, 30])) == pytest.approx(1.0)


# --------------------------------------------------------------------------- checkpoints
def _tiny_clap() -> TinyClap:
    torch.manual_seed(0)
    return TinyClap(TinyClapConfig(MEL, channels=16, embed_dim=8, text_input_dim=384))


def test_embedded_checkpoints_load_through_the_registries(tmp_path):
    save_checkpoint(_tiny_clap(), tmp_path / "clap", {})
    torch.manual_seed(0)
    save_checkpoint(QualityRegressor(QualityRegressorConfig(MEL, 8)), tmp_path / "q", {})
    clap = load_clap(
        ClapChoice(name="embedded", path=str(tmp_path / "clap"), text_model_path=None, folds=2)
    )
    assert isinstance(clap, ClapBackend) and clap.sample_rate == 16000
    rng = np.random.default_rng(0)
    clips = [rng.uniform(-0.5, 0.5, 48000 * 2).astype(np.float32) for _ in range(3)]
    audio = clap.embed_audio(clips, 48000)  # resampled to 16 kHz inside
    assert audio.shape == (3, 8) and audio.dtype == np.float32
    assert np.allclose(np.linalg.norm(audio, axis=1), 1.0, atol=1e-5)
    same = clap.embed_audio([resample(c, 48000, 16000) for c in clips], 16000)
    assert np.allclose(audio, same, atol=1e-4)
    text = clap.embed_text(["a calm piano melody", "loud rock drums"])
    assert text.shape == (2, 8) and np.allclose(np.linalg.norm(text, axis=1), 1.0, atol=1e-5)
    quality = load_quality(BackendChoice(name="embedded", path=str(tmp_path / "q")))
    assert quality.predict(clips, 48000).shape == (3,)
    teacher = load_frame_teacher(BackendChoice(name="embedded", path=str(tmp_path / "clap")))
    frames = teacher.features([c[: 48000 * 2] for c in clips], 48000)
    assert frames.shape == (3, 2 * 25, 16) and teacher.frame_rate == 25.0  # the codec grid


def test_missing_or_wrong_checkpoints_name_the_params_key(tmp_path):
    with pytest.raises(BackendUnavailable, match=r"backends\.clap\.path"):
        load_clap(
            ClapChoice(name="embedded", path=str(tmp_path / "nope"), text_model_path=None, folds=2)
        )
    save_checkpoint(_tiny_clap(), tmp_path / "clap", {})
    with pytest.raises(ValueError, match=r"backends\.quality\.path.*tiny_clap"):
        load_quality(BackendChoice(name="embedded", path=str(tmp_path / "clap")))
    with pytest.raises(ValueError, match=r"unknown backend 'nope'.*embedded"):
        load_quality(BackendChoice(name="nope", path=None))


# --------------------------------------------------------------------------- training
def _tones(count: int, seconds: float, seed: int) -> tuple[list[torch.Tensor], np.ndarray]:
    """Log-mels of sine tones at `count` distinct pitches, and one 'caption' vector each."""
    rng = np.random.default_rng(seed)
    model = _tiny_clap()
    t = np.arange(int(seconds * 16000)) / 16000
    mels = []
    for index in range(count):
        tone = np.sin(2 * np.pi * 220 * 2 ** (index / 2) * t) + 0.01 * rng.normal(size=t.size)
        mels.append(model.log_mel(torch.from_numpy(tone.astype(np.float32))[None])[0].detach())
    captions = rng.normal(size=(count, 1, 384)).astype(np.float32)
    return mels, captions


def test_contrastive_training_learns_the_pairing():
    mels, captions = _tones(8, 3.0, seed=1)
    model = _tiny_clap()
    optim = ScorerOptim(steps=60, batch_size=8, learning_rate=3e-3, weight_decay=0.0)
    losses = train_clap(model, mels, captions, optim, 50, 0, lambda *a: None)
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:5])
    model.eval()
    with torch.no_grad():
        audio = model.embed_log_mel(torch.stack([m[:, :50] for m in mels]))
        text = model.embed_text(torch.from_numpy(captions[:, 0]))
    assert recall_at_k((text @ audio.T).numpy(), 1) >= 0.75


def test_quality_regression_orders_noise_levels():
    rng = np.random.default_rng(2)
    t = np.arange(3 * 16000) / 16000
    clean = np.sin(2 * np.pi * 440 * t).astype(np.float32)
    model = QualityRegressor(QualityRegressorConfig(MEL, 8))
    noisy = [clean + s * rng.normal(size=t.size).astype(np.float32) for s in (0.0, 0.1, 0.5, 1.0)]
    mels = [model.log_mel(torch.from_numpy(a)[None])[0].detach() for a in noisy]
    targets = np.array([4.3, 4.1, 3.8, 3.5])
    optim = ScorerOptim(steps=150, batch_size=8, learning_rate=3e-3, weight_decay=0.0)
    train_quality(model, mels, targets, optim, 50, 0, lambda *a: None)
    model.eval()
    with torch.no_grad():
        predicted = model.predict_log_mel(torch.stack([m[:, :50] for m in mels])).numpy()
    assert spearman(predicted, targets) == pytest.approx(1.0)


def test_non_finite_loss_stops_training():
    mels, captions = _tones(4, 3.0, seed=3)
    captions[:] = np.nan
    optim = ScorerOptim(steps=3, batch_size=4, learning_rate=1e-3, weight_decay=0.0)
    with pytest.raises(FloatingPointError, match="step 0"):
        train_clap(_tiny_clap(), mels, captions, optim, 50, 0, lambda *a: None)


# --------------------------------------------------------------------------- the stage
@pytest.mark.slow
def test_stage_trains_saves_and_reports(shipped_params, tmp_path, monkeypatch):
    raw = {
        **shipped_params,
        "data": {**shipped_params["data"], **TINY_DATA, "num_tracks": 16},
        "scorers": {**shipped_params["scorers"], **TINY_SCORERS},
        "curate": {**shipped_params["curate"], "segment_seconds": 4.0},
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    params = params_with(raw, {})
    built = corpus.build_corpus(params.data, params.seed, 4.0, tmp_path / "data" / "corpus")
    corpus.write_corpus(built, tmp_path / "data" / "corpus")
    scorers.main()
    for part in ("clap", "quality"):
        names = sorted(p.name for p in (tmp_path / "artifacts/scorers" / part).iterdir())
        assert names == ["config.json", "model.safetensors"]
    report = json.loads((tmp_path / "reports/scorers.json").read_text())
    assert set(report) == {"clap", "quality"}
    assert report["quality"]["training_targets"] == "recorded"  # auto, every level recorded
    curve = pd.read_csv(tmp_path / "reports/scorers/clap_train_loss.csv")
    assert len(curve) == TINY_SCORERS["clap"]["steps"]
    runs = mlflow.search_runs(experiment_names=[raw["tracking"]["experiment"]])
    assert list(runs["tags.stage"]) == ["scorers"]
    history = mlflow.MlflowClient().get_metric_history(runs.loc[0, "run_id"], "clap_train_loss")
    assert len(history) == TINY_SCORERS["clap"]["steps"]
