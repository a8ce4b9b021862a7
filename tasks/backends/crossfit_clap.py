"""The cross-fitted CLAP backend (`backends.clap.name: crossfit`), trained by the `scorers` stage.

`backends.clap.path` is a directory: `crossfit.json` (the fold of every track, the text
encoder) and `fold_<f>/`, an embedded tiny-CLAP checkpoint (tasks/backends/embedded.py) plus
`reference_text.npy`, that model's embeddings of its held-out fold's captions. Model f never
saw the tracks of fold f (tasks/scorers/crossfit.py), and a (segment, caption) pair is scored
only by the model of the segment's track's fold, standardised against the same segment's
scores of the fold's reference captions: `(a . t - mean_r a . r) / std_r a . r`, a z-score,
not a cosine (curation calibrates its thresholds on validation quantiles, never on
LAION-CLAP's absolute scale). Per segment rather than per fold: the k models share no score
scale, and within one model some audio sits close to every caption (a hub) and some to none;
measured on the embedded train split at k = 5, wrong-vs-clean ROC-AUC per track 0.858 with
this normaliser against 0.847 with one mean and std per fold (benchmarks/crossfit_clap.py).

Pair scoring goes through `fold_audio` / `fold_text`, every fold model's embeddings side by
side ([N, k * D]), so curate's content-addressed cache stays keyed by audio alone and the
track decides the fold only at scoring time (`score_matrix`, `pair_scores`).

Audio-only and text-only uses (latent conditioning, REPA targets, evaluation's CLAP score and
reranking, caption refinement) get `embed_audio` / `embed_text` from the fold-0 model alone:
those uses need text and audio in one space, and the k models' spaces are not aligned
(independent contrastive trainings end in arbitrary rotations of each other), so averaging
their embeddings would mix unrelated coordinates; concatenating them would change the
embedding width every consumer is built for. Fold 0 saw (k-1)/k of the pairs, a full-size
model for a feature extractor; only the curation filter needs out-of-fold scores.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from models.scorers import TinyClap
from tasks.backends.base import require_path
from tasks.backends.embedded import EmbeddedClap, load_checkpoint, save_checkpoint
from tasks.backends.text_encoder import load_minilm
from tasks.common.atomic import atomic_directory

MANIFEST = "crossfit.json"
KIND = "crossfit_clap"


REFERENCE_TEXT = "reference_text.npy"


def fold_directory(root: Path, fold: int) -> Path:
    return root / f"fold_{fold}"


def standardised(raw: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """raw [n, m] scores of n segments, reference [n, r] their scores of the fold's reference
    captions -> (raw - mean) / std per segment (row)."""
    mean = reference.mean(axis=1, keepdims=True)
    std = reference.std(axis=1, keepdims=True)
    if not np.isfinite(std).all() or (std <= 0).any():
        raise FloatingPointError("a segment scores every reference caption alike (std 0)")
    return (raw - mean) / std


def save_crossfit(
    models: Sequence[TinyClap],
    fold_of: dict[str, int],
    references: Sequence[np.ndarray],
    directory: Path,
    meta: dict,
) -> None:
    """The k checkpoints, their reference captions + manifest, atomically as one directory."""
    if len(models) != len(references) or set(fold_of.values()) != set(range(len(models))):
        raise ValueError("one model and one reference set per fold, and every fold holds tracks")
    with atomic_directory(directory) as temporary:
        for fold, (model, reference) in enumerate(zip(models, references, strict=True)):
            save_checkpoint(model, fold_directory(temporary, fold), {"fold": fold})
            np.save(fold_directory(temporary, fold) / REFERENCE_TEXT, reference.astype(np.float32))
        manifest = {
            "kind": KIND,
            "folds": len(models),
            "fold_of": dict(sorted(fold_of.items())),
            "reference_captions": [len(r) for r in references],
            **meta,
        }
        (temporary / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


class CrossfitClap:
    """k fold models; out-of-fold pair scores, fold-0 embeddings for single-sided uses."""

    def __init__(
        self,
        members: Sequence[EmbeddedClap],
        fold_of: dict[str, int],
        references: Sequence[np.ndarray],
    ) -> None:
        self.members = list(members)
        self.fold_of = dict(fold_of)
        self.references = [np.asarray(r, dtype=np.float64) for r in references]  # [r_f, D]
        self.sample_rate = self.members[0].sample_rate
        self.embedding_dim = self.members[0].embedding_dim

    # ---------------------------------------------------------------- single-sided (fold 0)
    def embed_audio(self, waveforms: Sequence[np.ndarray], sample_rate: int) -> np.ndarray:
        return self.members[0].embed_audio(waveforms, sample_rate)

    def embed_text(self, captions: Sequence[str]) -> np.ndarray:
        return self.members[0].embed_text(captions)

    # ---------------------------------------------------------------- out-of-fold pairs
    def fold_audio(self, waveforms: Sequence[np.ndarray], sample_rate: int) -> np.ndarray:
        """[N, k * D]: every fold model's audio embedding, fold-major."""
        return np.concatenate([m.embed_audio(waveforms, sample_rate) for m in self.members], 1)

    def fold_text(self, captions: Sequence[str]) -> np.ndarray:
        """[N, k * D]: every fold model's text embedding, fold-major."""
        return np.concatenate([m.embed_text(captions) for m in self.members], 1)

    def folds_of(self, track_ids: Sequence[str]) -> np.ndarray:
        unknown = sorted({str(t) for t in track_ids} - self.fold_of.keys())
        if unknown:
            raise KeyError(
                f"tracks {unknown[:5]} have no fold in the cross-fitted CLAP (it was trained "
                "on another corpus): rerun the scorers stage (dvc repro scorers)"
            )
        return np.array([self.fold_of[str(t)] for t in track_ids], dtype=int)

    def score_matrix(
        self, audio: np.ndarray, text: np.ndarray, track_ids: Sequence[str]
    ) -> np.ndarray:
        """[N, M] z-scores of audio row i (of track `track_ids[i]`) against every text row,
        each row scored by the model that held out its track."""
        folds = self.folds_of(track_ids)
        width = self.embedding_dim
        scores = np.empty((len(audio), len(text)), dtype=np.float64)
        for fold, reference in enumerate(self.references):
            rows = folds == fold
            block = slice(fold * width, (fold + 1) * width)
            segment = audio[rows, block].astype(np.float64)
            raw = segment @ text[:, block].astype(np.float64).T
            scores[rows] = standardised(raw, segment @ reference.T)
        return scores

    def pair_scores(
        self, audio: np.ndarray, text: np.ndarray, track_ids: Sequence[str]
    ) -> np.ndarray:
        """[N] out-of-fold z-score of audio row i against text row i."""
        folds = self.folds_of(track_ids)
        width = self.embedding_dim
        scores = np.empty(len(audio), dtype=np.float64)
        for fold, reference in enumerate(self.references):
            rows = folds == fold
            block = slice(fold * width, (fold + 1) * width)
            segment = audio[rows, block].astype(np.float64)
            raw = np.einsum("nd,nd->n", segment, text[rows, block].astype(np.float64))
            scores[rows] = standardised(raw[:, None], segment @ reference.T)[:, 0]
        return scores


def load_crossfit_clap(path: str | None, key: str) -> CrossfitClap:
    what = "cross-fitted CLAP directory written by the scorers stage (dvc repro scorers)"
    directory = require_path(path, key, what)
    manifest = json.loads(require_path(directory / MANIFEST, key, what).read_text())
    if manifest.get("kind") != KIND:
        raise ValueError(
            f"params `{key}`: {directory} holds a {manifest.get('kind')!r}, not {KIND}"
        )
    text_encoder = load_minilm(manifest.get("text_encoder_path"), key)
    members = [
        EmbeddedClap(
            load_checkpoint(fold_directory(directory, f), key, "tiny_clap")[0], text_encoder
        )
        for f in range(int(manifest["folds"]))
    ]
    references = [
        np.load(require_path(fold_directory(directory, f) / REFERENCE_TEXT, key, what))
        for f in range(int(manifest["folds"]))
    ]  # plain float arrays: np.load refuses pickled objects by default
    return CrossfitClap(
        members, {str(t): int(f) for t, f in manifest["fold_of"].items()}, references
    )
