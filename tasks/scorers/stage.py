"""Stage `scorers`: train the embedded CLAP and p-MOS stand-ins, or check the real ones.

Embedded backends (docs/architecture.md "Two profiles") are trained here and saved as
safetensors + config.json under artifacts/scorers/: the CLAP on its own pretraining pairs
(tasks/scorers/pairs.py), the p-MOS regressor on the train split's recorded quality levels or,
label-free, on known degradations of its clips (`scorers.quality_targets`,
tasks/scorers/quality.py; the choice is `quality.training_targets` in reports/scorers.json).
Real backends (laion, hf, t5, pmos, muq) are loaded once to check them and their identity
(path, bytes, SHA-256) is recorded in artifacts/scorers/identity.json, so a changed
checkpoint is visible in `dvc.lock`'s history and MLflow. Either way the selected CLAP and
quality backends are then measured on the val split (reports/scorers.json):

- text->audio retrieval R@1 / R@5 among the val tracks with correct captions (chance 1/n);
- ROC-AUC of the CLAP score, true caption vs another track's caption ("shuffled": what a
  wrong caption is in the corpus, paper 000's failure mode), and vs the corpus's own
  recorded wrong-caption tracks ("corpus_wrong", few on val);
- Spearman ρ between predicted p-MOS and the recorded quality level (embedded corpus).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.entities import Metric
from scipy import stats

from models.scorers import MelConfig, TinyClap, TinyClapConfig
from tasks.backends.base import checkpoint_identity
from tasks.backends.clap import load_clap, pair_audio, pair_text, score_matrix
from tasks.backends.crossfit_clap import save_crossfit
from tasks.backends.embedded import save_checkpoint
from tasks.backends.frame_teacher import load_frame_teacher
from tasks.backends.quality import load_quality
from tasks.backends.text_encoder import load_minilm, load_text_encoder
from tasks.common import schema
from tasks.common.atomic import write_json
from tasks.common.audio_io import read_audio
from tasks.common.preflight import (
    caption_column_problems,
    present,
    quality_backend_problems,
    require,
)
from tasks.common.quality_levels import quality_level
from tasks.common.rank_metrics import recall_at_k, roc_auc, spearman
from tasks.common.tracking import stage_run
from tasks.params import Params, load_stage_params
from tasks.scorers.crossfit import cross_fit, crossfit_problems, crossfit_settings
from tasks.scorers.pairs import Pairs, pretraining_pairs
from tasks.scorers.quality import (
    RECORDED,
    recorded_set,
    resolve_targets,
    synthetic_set,
    train_embedded_quality,
)
from tasks.scorers.training import CAPTION_COLUMNS, track_log_mels, train_clap
from tasks.synthesis.degradation import CLEAN_LEVEL, level_grid, make_degrader

ARTIFACTS = Path("artifacts/scorers")
REPORT = Path("reports/scorers.json")
CURVES = Path("reports/scorers")
PARTS = ("clap", "text_encoder", "quality", "frame_teacher")


@dataclass
class Split:
    tracks: pd.DataFrame
    waveforms: list[np.ndarray]


def load_split(tracks: pd.DataFrame, split: str, corpus_root: Path, sample_rate: int) -> Split:
    rows = tracks[tracks["split"] == split].reset_index(drop=True)
    audio = [read_audio(corpus_root / path, sample_rate) for path in rows["audio_path"]]
    return Split(rows, audio)


def mel_config(params: Params) -> MelConfig:
    s = params.scorers
    return MelConfig(sample_rate=s.sample_rate, n_mels=s.n_mels, frame_rate=s.frame_rate)


def crop_frames(params: Params) -> int:
    return round(params.curate.segment_seconds * params.scorers.frame_rate)


class CurveLog:
    """Training curves buffered in memory, then one MLflow batch and one CSV per curve."""

    def __init__(self) -> None:
        self.points: dict[str, list[tuple[int, float]]] = {}

    def __call__(self, name: str, value: float, step: int) -> None:
        self.points.setdefault(name, []).append((step, value))

    def flush(self, directory: Path) -> None:
        run = mlflow.active_run()
        for name, points in self.points.items():
            frame = pd.DataFrame(points, columns=["step", name])
            directory.mkdir(parents=True, exist_ok=True)
            frame.to_csv(directory / f"{name}.csv", index=False)
            if run is not None:
                stamp = int(pd.Timestamp.now().timestamp() * 1000)
                metrics = [Metric(name, v, stamp, s) for s, v in points]
                for start in range(0, len(metrics), 1000):
                    mlflow.MlflowClient().log_batch(run.info.run_id, metrics[start : start + 1000])


def train_embedded_clap(params: Params, pairs: Pairs, log: CurveLog) -> TinyClap:
    """The tiny CLAP on its own pretraining pairs (tasks/scorers/pairs.py says why)."""
    text = load_minilm(None, "backends.clap.path")
    flat = text.sentence_embedding([c for row in pairs.captions for c in row])
    captions = flat.reshape(len(pairs.captions), len(CAPTION_COLUMNS), -1)
    s = params.scorers
    config = TinyClapConfig(mel_config(params), s.clap_channels, s.embed_dim, text.dim)
    torch.manual_seed(params.seed)
    model = TinyClap(config)
    mels = track_log_mels(pairs.waveforms, model.log_mel)
    train_clap(model, mels, captions, s.clap, crop_frames(params), params.seed, log)
    return model.eval()


def eval_windows(split: Split, seconds: float, count: int, rate: int) -> tuple[list, np.ndarray]:
    """`count` evenly spaced windows per track; (clips, track index of each clip)."""
    clips, owners = [], []
    length = round(seconds * rate)
    for index, audio in enumerate(split.waveforms):
        if audio.size < length:
            continue
        for start in np.linspace(0, audio.size - length, count).astype(int):
            clips.append(audio[start : start + length])
            owners.append(index)
    return clips, np.array(owners)


def batched(function, items: list, size: int) -> np.ndarray:
    return np.concatenate([function(items[i : i + size]) for i in range(0, len(items), size)])


def clap_reach(clap, val: Split, clips: list, owners: np.ndarray, params: Params) -> dict:
    captions = val.tracks[params.curate.caption_column]
    noise = val.tracks["caption_noise"].to_numpy()
    correct = (noise == "clean") & present(captions).to_numpy()
    clean = np.intersect1d(np.flatnonzero(correct), owners)
    if len(clean) < 2:
        return {
            "note": f"not measurable on this data: {len(clean)} scorable val track(s) with a "
            "caption recorded as correct (caption_noise 'clean'); an ingested corpus has none"
        }
    rate, size = params.scorers.sample_rate, params.curate.batch_size
    # pair features + track ids: the cross-fitted CLAP scores each window out-of-fold
    audio = batched(lambda c: pair_audio(clap)(c, rate), clips, size)
    # a track without the caption is never a retrieval query nor a positive (not `correct`)
    text = pair_text(clap, captions.fillna("").tolist(), size)
    ids = val.tracks["track_id"].astype(str).to_numpy()
    scores = score_matrix(clap, audio, text, ids[owners])  # [windows, tracks]
    per_track = np.stack([audio[owners == i].mean(0) for i in clean])
    similarity = score_matrix(clap, per_track, text[clean], ids[clean]).T  # text x audio
    own = scores[np.arange(len(owners)), owners]
    is_clean_window = np.isin(owners, clean)
    shuffled = scores[is_clean_window][:, clean]
    mismatch = shuffled[owners[is_clean_window][:, None] != clean[None, :]]
    wrong_windows = noise[owners] == "wrong"
    return {
        "r_at_1": recall_at_k(similarity, 1),
        "r_at_5": recall_at_k(similarity, 5),
        "chance_r_at_1": 1.0 / len(clean),
        "retrieval_tracks": len(clean),
        "auc_shuffled": roc_auc(own[is_clean_window], mismatch),
        "auc_corpus_wrong": roc_auc(own[is_clean_window], own[wrong_windows])
        if wrong_windows.any()
        else None,
        "corpus_wrong_windows": int(wrong_windows.sum()),
        "score_mean_true": float(own[is_clean_window].mean()),
        "score_mean_shuffled": float(mismatch.mean()),
    }


def balanced_quality_set(val: Split, params: Params) -> tuple[list, np.ndarray]:
    """The middle window of every clean val track at every degradation kind and level.

    The recorded val split holds only a handful of degraded tracks; degrading its clean
    tracks with the corpus's own degradation model gives every level equal weight.
    """
    rate = params.scorers.sample_rate
    length = round(params.curate.segment_seconds * rate)
    degrader = make_degrader(params.data.degradation, rate)
    rng = np.random.default_rng([params.seed, 17])
    clips, levels = [], []
    for audio, level in zip(val.waveforms, val.tracks["quality_level"], strict=True):
        if level != CLEAN_LEVEL or audio.size < length:
            continue
        start = (audio.size - length) // 2
        window = audio[start : start + length]
        clips.append(window)
        levels.append(CLEAN_LEVEL)
        for _, degraded_level, degraded in level_grid(
            window, params.data.degradation.kinds, degrader, rng
        ):
            clips.append(degraded)
            levels.append(degraded_level)
    return clips, np.array(levels)


def quality_reach(quality, val: Split, clips: list, owners: np.ndarray, params: Params) -> dict:
    """Spearman ρ of p-MOS vs level: per val track (paper 003 §4.1 scores tracks; a track's
    p-MOS = mean over its windows), per window, and on the balanced set."""
    levels = val.tracks["quality_level"].to_numpy()[owners]
    if pd.isna(levels).any():
        return {
            "spearman": None,
            "note": "not measurable on this data: no recorded quality levels on this corpus",
        }
    if len(np.unique(owners)) < 3:
        return {"spearman": None, "note": "fewer than 3 scorable val tracks"}
    rate = params.scorers.sample_rate
    size = params.curate.batch_size
    pmos = batched(lambda c: quality.predict(c, rate), clips, size)
    balanced_clips, balanced_levels = balanced_quality_set(val, params)
    balanced = (
        batched(lambda c: quality.predict(c, rate), balanced_clips, size)
        if balanced_clips
        else np.zeros(0)
    )
    q = params.quality
    track_pmos = pd.Series(pmos).groupby(owners).mean()
    track_levels = val.tracks["quality_level"].to_numpy()[track_pmos.index].astype(float)
    report = {
        "spearman": spearman(track_pmos.to_numpy(), track_levels),
        # With most val tracks tied at level 5, even a perfect ordering cannot reach ρ = 1:
        # the ceiling is ρ of the levels against themselves with ties broken arbitrarily.
        "spearman_ceiling": spearman(stats.rankdata(track_levels, method="ordinal"), track_levels),
        "spearman_windows": spearman(pmos, levels.astype(float)),
        "tracks": len(track_levels),
        "spearman_balanced": spearman(balanced, balanced_levels) if len(balanced) > 2 else None,
        "windows": len(levels),
        "degraded_windows": int(np.sum(levels.astype(int) < 5)),
        "balanced_windows": len(balanced_levels),
    }
    if q.pmos_mean is not None and q.pmos_std is not None and len(balanced):
        predicted = quality_level(balanced, q.pmos_mean, q.pmos_std, q.level_edges_std)
        report["level_accuracy_balanced"] = float(np.mean(predicted == balanced_levels))
        report["level_mae_balanced"] = float(np.mean(np.abs(predicted - balanced_levels)))
    return report


def require_output(path: str | None, part: str) -> Path:
    if path is None:
        raise SystemExit(
            f"error: params `backends.{part}.path` is null; the scorers stage "
            f"writes the embedded {part} there (e.g. artifacts/scorers/{part})"
        )
    return Path(path)


def check_real_backends(params: Params) -> dict:
    """Load every non-embedded pretrained part once; record its checkpoint identity."""
    loaders = {
        "clap": load_clap,
        "text_encoder": load_text_encoder,
        "quality": load_quality,
        "frame_teacher": load_frame_teacher,
    }
    identity = {}
    for part in PARTS:
        choice = getattr(params.backends, part)
        if choice.name == "embedded" or (part == "text_encoder" and choice.path is None):
            continue
        loaders[part](choice)
        identity[part] = {"backend": choice.name, **checkpoint_identity(choice.path)}
        if part == "clap" and getattr(choice, "text_model_path", None):
            identity["clap_text_model"] = checkpoint_identity(choice.text_model_path)
    return identity


def train_crossfit_clap(params: Params, tracks: pd.DataFrame, corpus_root: Path) -> None:
    """backends.clap.name = crossfit: k tiny CLAPs on every track's own pairs (all splits:
    curation scores every split, so every track needs a model that never saw it). The k
    loss curves go to MLflow only (their last value), not to reports/: DVC's plots stay
    the same whatever the backend."""
    log = CurveLog()
    every = tracks.reset_index(drop=True)
    audio = [read_audio(corpus_root / p, params.scorers.sample_rate) for p in every["audio_path"]]
    text = load_minilm(None, "backends.clap.path")
    s = params.scorers
    config = TinyClapConfig(mel_config(params), s.clap_channels, s.embed_dim, text.dim)
    settings = crossfit_settings(params, crop_frames(params))
    fitted = cross_fit(every, audio, config, text.sentence_embedding, settings, log)
    path = require_output(params.backends.clap.path, "clap")
    save_crossfit(fitted.models, fitted.fold_of, fitted.references, path, {"seed": params.seed})
    mlflow.log_metrics({f"{name}_last": points[-1][1] for name, points in log.points.items()})


def preflight(tracks: pd.DataFrame, params: Params) -> None:
    """Before minutes of training: the quality backend can learn from this corpus, the
    val split's reach figures have the caption they score (tasks/common/preflight.py), and
    a cross-fitted CLAP has tracks for its folds and a directory of its own."""
    column = params.curate.caption_column
    require(
        [
            *quality_backend_problems(tracks, params),
            *caption_column_problems(tracks, column, "curate.caption_column"),
            *crossfit_problems(tracks, params),
        ],
        "scorers",
    )


def main() -> None:
    params = load_stage_params()
    backends = params.backends
    corpus_root = Path(params.data.root)
    tracks = pd.read_parquet(corpus_root / "tracks.parquet")
    schema.check_columns(tracks, schema.TRACK_COLUMNS, "tracks.parquet")
    preflight(tracks, params)
    rate = params.scorers.sample_rate
    with stage_run(params, "scorers"):
        log = CurveLog()
        train = load_split(tracks, "train", corpus_root, rate)
        clap_paths = {
            choice.path
            for choice in (backends.clap, backends.frame_teacher)
            if choice.name == "embedded"
        }
        embedded_quality = backends.quality.name == "embedded"
        targets = resolve_targets(train.tracks["quality_level"], params.scorers.quality_targets)
        if clap_paths or (embedded_quality and targets == RECORDED):
            pairs = pretraining_pairs(params)
        if clap_paths:
            clap = train_embedded_clap(params, pairs, log)
            for path in clap_paths:
                save_checkpoint(clap, require_output(path, "clap"), {})
        if backends.clap.name == "crossfit":
            train_crossfit_clap(params, tracks, corpus_root)
        if embedded_quality:
            quality_set = (
                recorded_set(train.waveforms, train.tracks["quality_level"], pairs, params)
                if targets == RECORDED
                else synthetic_set(train.waveforms, params)
            )
            regressor = train_embedded_quality(
                params, quality_set, crop_frames(params), mel_config(params), log
            )
            save_checkpoint(regressor, require_output(backends.quality.path, "quality"), {})
            mlflow.set_tag("quality_targets", targets)
        identity = check_real_backends(params)
        write_json(ARTIFACTS / "identity.json", identity)
        val = load_split(tracks, "val", corpus_root, rate)
        clips, owners = eval_windows(
            val, params.curate.segment_seconds, params.scorers.eval_windows_per_track, rate
        )
        report = {
            "clap": clap_reach(load_clap(backends.clap), val, clips, owners, params),
            "quality": quality_reach(load_quality(backends.quality), val, clips, owners, params),
        }
        if embedded_quality:  # what the regressor learned (tasks/scorers/quality.py)
            report["quality"]["training_targets"] = targets
        write_json(REPORT, report)
        log.flush(CURVES)
        mlflow.log_metrics(
            {f"{p}.{k}": v for p, r in report.items() for k, v in r.items() if isinstance(v, float)}
        )
        mlflow.log_artifact(str(REPORT))
        mlflow.log_dict(identity, "identity.json")
    print(REPORT.read_text())
