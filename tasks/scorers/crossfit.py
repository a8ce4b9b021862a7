"""The cross-fitted CLAP (`backends.clap.name: crossfit`): k tiny CLAPs on the dataset itself.

For a domain no pretrained CLAP covers, the only pairs to learn from are the dataset's own,
and a CLAP trained on them learns its wrong captions by heart (one tiny CLAP trained on the
embedded train split scores its recorded wrong captions like correct ones: ROC-AUC ~0.54,
benchmarks/crossfit_clap.py). Cross-fitting, as in confident learning (Northcutt et al.,
2021), keeps every score out-of-sample: the tracks are dealt into k folds, model f is trained
on the pairs of every fold but f, and a segment is only ever scored by the model that never
saw its track (tasks/backends/crossfit_clap.py).

The k models do not share a score scale (each has its own temperature and geometry), so
a segment's score is standardised against the same model's scores of that segment with the
captions of the held-out fold (its reference set): label-free, and 0 then means "as similar
as a typical caption of the fold" for every fold and every segment alike
(tasks/backends/crossfit_clap.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from models.scorers import TinyClap, TinyClapConfig
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
    caption_column: str  # curate.caption_column: the reference captions' style


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


@torch.inference_mode()
def fold_references(
    models: list[TinyClap], fold_of: dict[str, int], track_ids: list[str], captions: np.ndarray
) -> list[np.ndarray]:
    """Model f's text embeddings [r_f, D] of the scored captions of its held-out fold.

    `captions` [tracks, text_dim] are the scored caption's sentence embeddings (NaN rows: no
    caption). A segment's pair score is standardised against its scores of these captions.
    """
    references = []
    has_caption = ~np.isnan(captions).any(axis=1)
    for fold, model in enumerate(models):
        rows = [i for i, t in enumerate(track_ids) if fold_of[t] == fold and has_caption[i]]
        if len(rows) < 2:
            raise ValueError(
                f"backends.clap.folds: fold {fold} holds {len(rows)} track(s) with a caption; "
                "a segment's score scale needs two reference captions (use fewer folds)"
            )
        references.append(model.embed_text(torch.from_numpy(captions[rows])).numpy())
    return references


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
    references: list[np.ndarray]  # per fold [r_f, D]


def cross_fit(
    tracks: pd.DataFrame,
    waveforms: list[np.ndarray],
    config: TinyClapConfig,
    encode,
    settings: CrossfitSettings,
    log: LogFn,
) -> CrossfitResult:
    """Deal folds, train the k models, embed each one's reference captions."""
    fold_of = assign_folds(tracks["track_id"].astype(str).tolist(), settings.folds, settings.seed)
    data = fold_data(tracks, waveforms, config, encode)
    models = train_fold_models(
        data, fold_of, config, settings.optim, settings.crop_frames, settings.seed, log
    )
    scored = caption_embeddings_of(tracks, settings.caption_column, encode)
    references = fold_references(models, fold_of, data.track_ids, scored)
    return CrossfitResult(fold_of, models, references)


def crossfit_settings(params: Params, crop_frames: int) -> CrossfitSettings:
    return CrossfitSettings(
        folds=params.backends.clap.folds,
        seed=params.seed,
        optim=params.scorers.clap,
        crop_frames=crop_frames,
        caption_column=params.curate.caption_column,
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
