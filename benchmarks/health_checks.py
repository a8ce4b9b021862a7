"""The label-free health figures on a corpus, as recorded and with its captions shuffled.

`python -m benchmarks.health_checks [--shuffle]` runs `curate`'s health checks
(tasks/curate/health.py) with the scorers the params select (the trained ones under
artifacts/scorers in the embedded profile) on the val tracks of `data.root`, and prints the
JSON. `--shuffle` first gives every track another track's captions (a seeded derangement
over all tracks, every caption style together): the pairs then mean nothing, so the CLAP
figures must fall to chance while the p-MOS ones, which read no caption, stay. The score
cache is a temporary one, so nothing under the project's cache or reports/ changes.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import pandas as pd

from tasks.common.health import DERANGEMENT_STREAM
from tasks.common.preflight import TRACK_CAPTION_COLUMNS
from tasks.common.reporting import json_safe
from tasks.common.score_cache import ScoreCache
from tasks.common.seeds import derangement
from tasks.curate.stage import health_checks, load_scorers
from tasks.params import load_params


def shuffled_captions(tracks: pd.DataFrame, seed: int) -> pd.DataFrame:
    """Every track with the captions of another track (all styles moved together)."""
    out = tracks.copy()
    order = derangement(len(tracks), [seed, DERANGEMENT_STREAM])
    for column in TRACK_CAPTION_COLUMNS:
        out[column] = tracks[column].to_numpy()[order]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shuffle", action="store_true", help="derange the captions first")
    args = parser.parse_args()
    params = load_params()
    root = Path(params.data.root)
    tracks = pd.read_parquet(root / "tracks.parquet")
    if args.shuffle:
        tracks = shuffled_captions(tracks, params.seed)
    with tempfile.TemporaryDirectory() as cache_dir, ScoreCache(Path(cache_dir)) as cache:
        checks = health_checks(tracks, root, params, load_scorers(params, cache))
    print(json.dumps(json_safe(checks), indent=1))


if __name__ == "__main__":
    main()
