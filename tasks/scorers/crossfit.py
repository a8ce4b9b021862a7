"""The cross-fitted CLAP (`backends.clap.name: crossfit`): k tiny CLAPs on the dataset itself.

For a domain no pretrained CLAP covers, the only pairs to learn from are the dataset's own,
and a CLAP trained on them learns its wrong captions by heart (one tiny CLAP trained on the
embedded train split scores its recorded wrong captions like correct ones: ROC-AUC ~0.54,
benchmarks/crossfit_clap.py). Cross-fitting, as in confident learning (Northcutt et al.,
2021), keeps every score out-of-sample: the tracks are dealt into k folds, model f is trained
on the pairs of every fold but f, and a segment is only ever scored by the model that never
saw its track (tasks/backends/crossfit_clap.py).

The k models do not share a score scale (each has its own temperature and geometry), so
each fold's scores are standardised against that model's own scores of mismatched pairs
within its held-out fold (a window against another held-out track's caption): label-free,
and 0 then means "as similar as a random caption" for every fold alike.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from models.scorers import TinyClap, TinyClapConfig
from tasks.backends.crossfit_clap import FoldNormaliser
from tasks.params import Params, ScorerOptim
from tasks.scorers.training import CAPTION_COLUMNS, LogFn, track_log_mels, train_clap

FOLD_SEED_STREAM = 211  # a seed stream of its own: the fold deal is not the corpus split


@dataclass(frozen=True)
class CrossfitSettings:
    """What the stage's params fix for one cross-fit (tasks/scorers/stage.py builds it)."""

    folds: int  # backends.clap.folds
    seed: int
    optim: ScorerOptim  # scorers.clap: each fold model trains like the embedded CLAP
    crop_frames: int  # training windows (curate.segment_seconds, as the embedded CLAP)
    caption_column: str  # curate.caption_column: the caption the normalisers score
    window: int  # samples per scored window (curate.segment_seconds)
    windows_per_track: int  # scorers.eval_windows_per_track


def assign_folds(track_ids: list[str], folds: int, seed: int) -> dict[str, int]:
    """Deal the tracks into `folds` folds of equal size (±1) in a seeded random order.

    Stratifies nothing: the only thing that could be balanced on is ground truth the data
    lacks (the noise labels). Sorting first makes the deal independent of row order.
    """
    ordered = sorted(set(track_ids))
    if len(ordered) != len(track_ids):
        raise ValueError("track ids must be unique")
    if len(ordered) < 2 * folds:
        raise ValueError(
            f"backends.clap.folds = {folds} needs at least {2 * folds} tracks (two per fold); "
            f"the corpus has {len(ordered)}"
        )
    order = np.random.default_rng([seed, FOLD_SEED_STREAM]).permutation(len(ordered))
    return {ordered[i]: position % folds for position, i in enumerate(order)}


def pair_captions(tracks: pd.DataFrame) -> tuple[np.ndarray, list[list[str]]]:
    """(rows with at least one caption style, their captions in CAPTION_COLUMNS order).

    A missing style is filled with the track's first present one, so every row has one
    caption per style and `train_clap` draws styles uniformly (a track with one style is
    simply always trained on it).
    """
    usable, captions = [], []
    for row, values in enumerate(tracks[list(CAPTION_COLUMNS)].itertuples(index=False)):
        present = [str(v) for v in values if isinstance(v, str) and v.strip()]
        if not present:
            continue
        usable.append(row)
        captions.append(
            [str(v) if isinstance(v, str) and v.strip() else present[0] for v in values]
        )
    return np.array(usable, dtype=int), captions


@dataclass
class FoldData:
    """What the k trainings share: per-track log-mels and frozen caption embeddings."""

    track_ids: list[str]
    mels: list[torch.Tensor]
    trainable: np.ndarray  # row indices with a caption (and so a training pair)
    caption_embeddings: np.ndarray  # [len(trainable), styles, text_dim]


def fold_data(
    tracks: pd.DataFrame, waveforms: list[np.ndarray], config: TinyClapConfig, encode
) -> FoldData:
    """`encode(captions) -> [n, text_dim]` is the frozen MiniLM sentence embedding."""
    rows, captions = pair_captions(tracks)
    flat = encode([c for row in captions for c in row]) if captions else np.zeros((0, 1))
    mels = track_log_mels(waveforms, TinyClap(config).log_mel)
    return FoldData(
        tracks["track_id"].astype(str).tolist(),
        mels,
        rows,
        np.asarray(flat, dtype=np.float32).reshape(len(rows), len(CAPTION_COLUMNS), -1),
    )


def train_fold_models(
    data: FoldData,
    fold_of: dict[str, int],
    config: TinyClapConfig,
    optim: ScorerOptim,
    crop_frames: int,
    seed: int,
    log: LogFn,
) -> list[TinyClap]:
    """Model f trained on the caption pairs of every track outside fold f (same init seed)."""
    folds = max(fold_of.values()) + 1
    models = []
    for fold in range(folds):
        keep = [i for i, row in enumerate(data.trainable) if fold_of[data.track_ids[row]] != fold]
        torch.manual_seed(seed)
        model = TinyClap(config)
        mels = [data.mels[data.trainable[i]] for i in keep]

        def fold_log(name: str, value: float, step: int, fold: int = fold) -> None:
            log(f"crossfit_fold{fold}_{name}", value, step)

        train_clap(
            model, mels, data.caption_embeddings[keep], optim, crop_frames, seed + fold, fold_log
        )
        models.append(model.eval())
    return models


def window_starts(samples: int, length: int, count: int) -> np.ndarray:
    """`count` evenly spaced window starts (none when the track is shorter than a window)."""
    if samples < length:
        return np.zeros(0, dtype=int)
    return np.linspace(0, samples - length, count).astype(int)


@torch.inference_mode()
def fold_normalisers(
    models: list[TinyClap],
    fold_of: dict[str, int],
    tracks: pd.DataFrame,
    waveforms: list[np.ndarray],
    caption_embeddings: np.ndarray,
    window: int,
    count: int,
) -> list[FoldNormaliser]:
    """Mean and std of model f's scores of mismatched pairs inside its held-out fold.

    `caption_embeddings` [tracks, text_dim] are the scored caption's sentence embeddings
    (NaN rows: no caption). Each held-out track contributes `count` windows; every window
    is scored against the captions of the fold's other tracks.
    """
    normalisers = []
    ids = tracks["track_id"].astype(str).tolist()
    has_caption = ~np.isnan(caption_embeddings).any(axis=1)
    for fold, model in enumerate(models):
        rows = [i for i, t in enumerate(ids) if fold_of[t] == fold and has_caption[i]]
        clips, owners = [], []
        for row in rows:
            for start in window_starts(waveforms[row].size, window, count):
                clips.append(waveforms[row][start : start + window])
                owners.append(row)
        text = model.embed_text(torch.from_numpy(caption_embeddings[rows])).numpy()
        if len(set(owners)) < 2:
            raise ValueError(
                f"backends.clap.folds: fold {fold} holds {len(set(owners))} scorable track(s) "
                "with a caption; the fold's score scale needs two (use fewer folds)"
            )
        audio = np.concatenate(
            [
                model.embed_audio(torch.from_numpy(np.stack(clips[i : i + 64]))).numpy()
                for i in range(0, len(clips), 64)
            ]
        )
        scores = audio @ text.T
        mismatched = scores[np.array(owners)[:, None] != np.array(rows)[None, :]]
        if not np.isfinite(mismatched).all() or mismatched.std() <= 0:
            raise FloatingPointError(f"fold {fold}'s model scores every mismatched pair alike")
        normalisers.append(
            FoldNormaliser(float(mismatched.mean()), float(mismatched.std()), int(mismatched.size))
        )
    return normalisers


def caption_embeddings_of(tracks: pd.DataFrame, column: str, encode) -> np.ndarray:
    """[tracks, text_dim] sentence embeddings of the scored caption; NaN rows where absent."""
    values = tracks[column]
    present = np.array([isinstance(v, str) and bool(v.strip()) for v in values])
    out = np.full((len(tracks), 0), np.nan, dtype=np.float32)
    if present.any():
        found = np.asarray(encode([str(v) for v in values[present]]), dtype=np.float32)
        out = np.full((len(tracks), found.shape[1]), np.nan, dtype=np.float32)
        out[present] = found
    return out


@dataclass
class CrossfitResult:
    fold_of: dict[str, int]
    models: list[TinyClap]
    normalisers: list[FoldNormaliser]


def cross_fit(
    tracks: pd.DataFrame,
    waveforms: list[np.ndarray],
    config: TinyClapConfig,
    encode,
    settings: CrossfitSettings,
    log: LogFn,
) -> CrossfitResult:
    """Deal folds, train the k models, measure each one's mismatched-pair scale."""
    fold_of = assign_folds(tracks["track_id"].astype(str).tolist(), settings.folds, settings.seed)
    data = fold_data(tracks, waveforms, config, encode)
    models = train_fold_models(
        data, fold_of, config, settings.optim, settings.crop_frames, settings.seed, log
    )
    scored = caption_embeddings_of(tracks, settings.caption_column, encode)
    normalisers = fold_normalisers(
        models, fold_of, tracks, waveforms, scored, settings.window, settings.windows_per_track
    )
    return CrossfitResult(fold_of, models, normalisers)


def crossfit_settings(params: Params, crop_frames: int) -> CrossfitSettings:
    return CrossfitSettings(
        folds=params.backends.clap.folds,
        seed=params.seed,
        optim=params.scorers.clap,
        crop_frames=crop_frames,
        caption_column=params.curate.caption_column,
        window=round(params.curate.segment_seconds * params.scorers.sample_rate),
        windows_per_track=params.scorers.eval_windows_per_track,
    )


def crossfit_problems(tracks: pd.DataFrame, params: Params) -> list[str]:
    """Pre-flight: enough tracks for the folds, and a checkpoint path of its own."""
    clap, teacher = params.backends.clap, params.backends.frame_teacher
    if clap.name != "crossfit":
        return []
    problems = []
    if len(tracks) < 2 * clap.folds:
        problems.append(
            f"backends.clap.folds = {clap.folds} needs at least {2 * clap.folds} tracks (two "
            f"per fold); the corpus has {len(tracks)}: lower it"
        )
    if clap.path is None:
        problems.append(
            "backends.clap.path is null; the scorers stage writes the cross-fitted CLAP there "
            "(e.g. artifacts/scorers/clap_crossfit)"
        )
    elif teacher.name == "embedded" and teacher.path == clap.path:
        problems.append(
            f"backends.clap.path = backends.frame_teacher.path = {clap.path!r}: the "
            "cross-fitted CLAP and the embedded frame teacher are different checkpoints; "
            "give backends.clap.path its own directory (e.g. artifacts/scorers/clap_crossfit)"
        )
    return problems
