"""The tiny CLAP's own pretraining pairs: clean tracks drawn from the corpus generator.

LAION-CLAP never saw the data it filters (paper 000 §II-A scores MTG-Jamendo with a CLAP
pretrained elsewhere). The embedded stand-in keeps that property: it is trained on tracks
drawn with a seed stream of their own (disjoint from the corpus's), with honest captions
in all three styles. Like LAION's web audio, part of it is degraded (the corpus's degraded
fraction, kinds and levels): a CLAP pretrained on pristine audio only scores correctly
captioned but noisy recordings as mismatched, and the filter would then drop audio that
paper 003 wants kept with a "low quality" label. Trained on the corpus train split
instead, it learns the corpus's wrong pairings by heart and scores them as correct.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import numpy as np

from tasks.common.parallel import ordered_map
from tasks.params import Params
from tasks.scorers.training import CAPTION_COLUMNS
from tasks.synthesis.arrangement import render
from tasks.synthesis.degradation import CLEAN_LEVEL, degrade
from tasks.synthesis.plan import sample_specs, write_captions

PRETRAIN_SEED_STREAM = 101  # a seed stream the corpus generator never uses


@dataclass
class Pairs:
    waveforms: list[np.ndarray]
    captions: list[list[str]]  # per track, one caption per CAPTION_COLUMNS style
    levels: list[int]  # 5 = clean, 1..4 = degraded at that level


def pretraining_seed(seed: int) -> int:
    return int(np.random.SeedSequence([seed, PRETRAIN_SEED_STREAM]).generate_state(1)[0])


def pretraining_pairs(params: Params) -> Pairs:
    low, high = params.scorers.clap_pretrain_seconds
    data = params.data.model_copy(
        update={
            "num_tracks": params.scorers.clap_pretrain_tracks,
            "min_track_seconds": low,
            "max_track_seconds": high,
        }
    )
    seed = pretraining_seed(params.seed)
    specs = sample_specs(data, seed)
    captions = write_captions(specs, {}, seed)
    rate = params.scorers.sample_rate
    audio = ordered_map(partial(render, sample_rate=rate), specs, params.data.workers)
    audio, levels = degrade_some(audio, params, seed)
    return Pairs(audio, [[row[c] for c in CAPTION_COLUMNS] for row in captions], levels)


def degrade_some(
    audio: list[np.ndarray], params: Params, seed: int
) -> tuple[list[np.ndarray], list[int]]:
    """`data.noise.degraded_fraction` of the clips at a random kind and level 1..4."""
    rng = np.random.default_rng([seed, 1])
    degraded = rng.random(len(audio)) < params.data.noise.degraded_fraction
    kinds = params.data.degradation.kinds
    out, levels = [], []
    for clip, flag in zip(audio, degraded, strict=True):
        level = CLEAN_LEVEL
        if flag:
            kind, level = str(rng.choice(kinds)), int(rng.integers(1, CLEAN_LEVEL))
            clip = degrade(
                clip, kind, level, params.data.degradation, params.scorers.sample_rate, rng
            )
        out.append(clip)
        levels.append(level)
    return out, levels
