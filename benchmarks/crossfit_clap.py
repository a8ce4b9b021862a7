"""Cross-fitted CLAP: `python -m benchmarks.crossfit_clap [--folds 3 5] [--corpus DIR]`.

On the embedded corpus's train split, whose wrong captions (`caption_noise == "wrong"`,
another track's caption) are recorded, how well do out-of-fold scores separate wrong from
clean pairs? For each k it times `tasks.scorers.crossfit.cross_fit` (k tiny-CLAP trainings
at params.yaml's `scorers.clap` + each fold's reference captions) and prints the wrong-vs-clean
ROC-AUC of the CLAP score of `curate.caption_column`: per segment (`curate.candidates_per_track`
evenly spaced windows of `curate.segment_seconds` per track) and per track (the mean of its
windows, as curation keeps or drops a track's segments together). The reference line is one
tiny CLAP trained on the whole split and scored on it (what cross-fitting avoids).

The corpus is `data.root` when built, else it is generated into a temporary directory.
Each line comes as soon as its model is measured, with wall-clock and process CPU seconds
and the load average: wall times are only comparable on a quiet machine.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from models.scorers import TinyClap, TinyClapConfig
from tasks.backends.crossfit_clap import CrossfitClap
from tasks.backends.embedded import EmbeddedClap
from tasks.backends.text_encoder import load_minilm
from tasks.common.rank_metrics import roc_auc
from tasks.corpus.stage import build_corpus, write_corpus
from tasks.params import Params, load_params
from tasks.scorers.crossfit import CrossfitSettings, cross_fit, fold_data
from tasks.scorers.stage import crop_frames, load_split, mel_config
from tasks.scorers.training import train_clap


def corpus_root(params: Params, given: Path | None, scratch: Path) -> Path:
    root = given or Path(params.data.root)
    if (root / "tracks.parquet").exists():
        return root
    print(f"no corpus at {root}: generating the embedded corpus into {scratch}")
    corpus = build_corpus(params.data, params.seed, params.curate.segment_seconds, scratch)
    write_corpus(corpus, scratch)
    return scratch


def window_starts(samples: int, length: int, count: int) -> np.ndarray:
    """`count` evenly spaced window starts (none when the track is shorter than a window)."""
    if samples < length:
        return np.zeros(0, dtype=int)
    return np.linspace(0, samples - length, count).astype(int)


def windows(waveforms: list[np.ndarray], length: int, count: int) -> tuple[list, np.ndarray]:
    clips, owners = [], []
    for row, audio in enumerate(waveforms):
        for start in window_starts(audio.size, length, count):
            clips.append(audio[start : start + length])
            owners.append(row)
    return clips, np.array(owners)


def aucs(scores: np.ndarray, owners: np.ndarray, noise: np.ndarray) -> dict[str, float]:
    """Wrong-vs-clean ROC-AUC (clean should score higher) per segment and per track."""
    per_track = pd.Series(scores).groupby(owners).mean()
    track_noise = noise[per_track.index.to_numpy()]
    segment_noise = noise[owners]
    return {
        "auc_track": roc_auc(per_track[track_noise == "clean"], per_track[track_noise == "wrong"]),
        "auc_segment": roc_auc(scores[segment_noise == "clean"], scores[segment_noise == "wrong"]),
    }


def batched(function, items: list, size: int = 64) -> np.ndarray:
    return np.concatenate([function(items[i : i + size]) for i in range(0, len(items), size)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folds", type=int, nargs="+", default=[3, 5])
    parser.add_argument("--corpus", type=Path, default=None)
    parser.add_argument("--no-reference", action="store_true", help="skip the one-CLAP line")
    args = parser.parse_args()
    params = load_params()
    s, rate = params.scorers, params.scorers.sample_rate
    with tempfile.TemporaryDirectory() as scratch:
        root = corpus_root(params, args.corpus, Path(scratch))
        tracks = pd.read_parquet(root / "tracks.parquet")
        train = load_split(tracks, "train", root, rate)
    rows, waves = train.tracks, train.waveforms
    noise = rows["caption_noise"].astype(str).to_numpy()
    print(
        f"train split: {len(rows)} tracks, {int((noise == 'wrong').sum())} wrong, "
        f"{int((noise == 'clean').sum())} clean; torch threads {torch.get_num_threads()}"
    )
    text_encoder = load_minilm(None, "backends.clap.path")
    encode = text_encoder.sentence_embedding
    config = TinyClapConfig(mel_config(params), s.clap_channels, s.embed_dim, text_encoder.dim)
    length = round(params.curate.segment_seconds * rate)
    clips, owners = windows(waves, length, params.curate.candidates_per_track)
    captions = rows[params.curate.caption_column].astype(str).tolist()
    ids = rows["track_id"].astype(str).tolist()
    print(f"{'model':<22} {'AUC/track':>9} {'AUC/segment':>11} {'train s':>8} {'CPU s':>8}")
    if not args.no_reference:
        started, cpu = time.perf_counter(), time.process_time()
        data = fold_data(rows, waves, config, encode)
        torch.manual_seed(params.seed)
        model = TinyClap(config)
        mels = [data.mels[i] for i in data.trainable]
        train_clap(
            model,
            mels,
            data.caption_embeddings,
            s.clap,
            crop_frames(params),
            params.seed,
            lambda *_: None,
        )
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
        clap = EmbeddedClap(model.eval(), text_encoder)
        audio = batched(lambda c: clap.embed_audio(c, rate), clips)
        text = clap.embed_text(captions)[owners]
        scores = np.einsum("nd,nd->n", audio, text)
        report("one CLAP, in-sample", seconds, cpu, aucs(scores, owners, noise))
    for folds in args.folds:
        settings = CrossfitSettings(
            folds,
            params.seed,
            s.clap,
            crop_frames(params),
            params.curate.caption_column,
        )
        started, cpu = time.perf_counter(), time.process_time()
        fitted = cross_fit(rows, waves, config, encode, settings, lambda *_: None)
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
        clap = CrossfitClap(
            [EmbeddedClap(m, text_encoder) for m in fitted.models],
            fitted.fold_of,
            fitted.references,
        )
        audio = batched(lambda c, clap=clap: clap.fold_audio(c, rate), clips)
        text = clap.fold_text(captions)[owners]
        scores = clap.pair_scores(audio, text, [ids[i] for i in owners])
        report(f"crossfit k={folds}", seconds, cpu, aucs(scores, owners, noise))


def report(name: str, seconds: float, cpu: float, figures: dict[str, float]) -> None:
    """One line as soon as a model is measured, with the load average it ran under."""
    load = " ".join(f"{v:.1f}" for v in os.getloadavg())
    print(
        f"{name:<22} {figures['auc_track']:>9.3f} {figures['auc_segment']:>11.3f} "
        f"{seconds:>8.1f} {cpu:>8.1f}  (load average {load})",
        flush=True,
    )


if __name__ == "__main__":
    main()
