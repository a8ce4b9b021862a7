"""Label-free p-MOS targets against recorded ones: `python -m benchmarks.quality_targets`.

Trains the embedded p-MOS regressor twice on the embedded corpus's train split (params.yaml
as shipped, `data.root`; the corpus is built into a temporary folder when it is absent):
with `scorers.quality_targets: recorded` (the recorded degradation levels, the default
there) and `synthetic_degradations` (every train clip taken as level 5, recorded levels
ignored, as on a real dataset). Both are measured on the val split against its recorded
levels, the figures of reports/scorers.json: Spearman ρ per track and on the balanced set,
and the level accuracy on the balanced set. So the label-free targets are judged by the
ground truth they never saw (tasks/scorers/quality.py).
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import pandas as pd

from tasks.backends.embedded import EmbeddedQuality
from tasks.corpus import stage as corpus
from tasks.params import Params, load_params
from tasks.scorers.pairs import pretraining_pairs
from tasks.scorers.quality import (
    RECORDED,
    SYNTHETIC,
    recorded_set,
    synthetic_set,
    train_embedded_quality,
)
from tasks.scorers.stage import crop_frames, eval_windows, load_split, mel_config, quality_reach


def corpus_root(params: Params, scratch: Path) -> Path:
    root = Path(params.data.root)
    if (root / "tracks.parquet").exists():
        return root
    built = corpus.build_corpus(params.data, params.seed, params.curate.segment_seconds, scratch)
    corpus.write_corpus(built, scratch)
    return scratch


def main() -> None:
    params = load_params()
    rate = params.scorers.sample_rate
    with tempfile.TemporaryDirectory() as scratch:
        root = corpus_root(params, Path(scratch))
        tracks = pd.read_parquet(root / "tracks.parquet")
        train = load_split(tracks, "train", root, rate)
        val = load_split(tracks, "val", root, rate)
    clips, owners = eval_windows(
        val, params.curate.segment_seconds, params.scorers.eval_windows_per_track, rate
    )
    results = {}
    for targets in (RECORDED, SYNTHETIC):
        started = time.perf_counter()
        if targets == RECORDED:
            levels = train.tracks["quality_level"]
            quality_set = recorded_set(train.waveforms, levels, pretraining_pairs(params), params)
        else:
            quality_set = synthetic_set(train.waveforms, params)
        model = train_embedded_quality(
            params, quality_set, crop_frames(params), mel_config(params), lambda *a: None
        )
        reach = quality_reach(EmbeddedQuality(model), val, clips, owners, params)
        reach["train_clips"] = len(quality_set.levels)
        reach["seconds"] = round(time.perf_counter() - started, 1)
        results[targets] = reach
        print(targets, json.dumps(reach), flush=True)


if __name__ == "__main__":
    main()
