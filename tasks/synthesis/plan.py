"""The corpus generator's plan: which tracks exist, whose captions are wrong or partly wrong,
which recordings are degraded and at what level (the embedded corpus, docs/architecture.md "The
embedded corpus").

Shared by the `corpus` stage, which renders the plan, and the `scorers` stage, which draws
its own disjoint pretraining pairs from the same generator with another seed stream.
"""

from __future__ import annotations

import json

import numpy as np

from tasks.params import DataParams
from tasks.synthesis.arrangement import TrackSpec, sample_track_spec
from tasks.synthesis.captions import CORRUPTIBLE_ATTRIBUTES, claims_of, corrupt, describe
from tasks.synthesis.degradation import CLEAN_LEVEL


def stream_rng(seed: int, stream: int, index: int = 0) -> np.random.Generator:
    """Independent, reproducible streams: (seed, purpose, item) never collide."""
    return np.random.default_rng([seed, stream, index])


def sample_specs(data: DataParams, seed: int) -> list[TrackSpec]:
    return [
        sample_track_spec(
            f"t{index:05d}",
            stream_rng(seed, 0, index),
            data.min_track_seconds,
            data.max_track_seconds,
            data.min_sections,
            data.max_sections,
        )
        for index in range(data.num_tracks)
    ]


def plan_caption_noise(noisy_ids: list[str], data: DataParams, seed: int) -> dict[str, str]:
    """track id -> clean | wrong | partial, with the configured fractions of `noisy_ids`."""
    order = [noisy_ids[i] for i in stream_rng(seed, 1).permutation(len(noisy_ids))]
    n_wrong = round(data.noise.wrong_caption_fraction * len(order))
    n_partial = round(data.noise.partial_caption_fraction * len(order))
    plan = dict.fromkeys(order, "clean")
    plan |= dict.fromkeys(order[:n_wrong], "wrong")
    plan |= dict.fromkeys(order[n_wrong : n_wrong + n_partial], "partial")
    return plan


def plan_degradations(
    noisy_ids: list[str], data: DataParams, seed: int
) -> dict[str, tuple[str, int]]:
    """track id -> (degradation kind, quality level); clean tracks get ("none", 5)."""
    rng = stream_rng(seed, 2)
    order = [noisy_ids[i] for i in rng.permutation(len(noisy_ids))]
    n_degraded = round(data.noise.degraded_fraction * len(order))
    plan = dict.fromkeys(order, ("none", CLEAN_LEVEL))
    for track_id in order[:n_degraded]:
        plan[track_id] = (
            str(rng.choice(data.degradation.kinds)),
            int(rng.integers(1, CLEAN_LEVEL)),
        )
    return plan


def write_captions(specs: list[TrackSpec], noise: dict[str, str], seed: int) -> list[dict]:
    """Captions of every track, honest or corrupted as planned, with their provenance."""
    claims = {spec.track_id: claims_of(spec) for spec in specs}
    honest = {
        spec.track_id: describe(claims[spec.track_id], stream_rng(seed, 3, index))
        for index, spec in enumerate(specs)
    }
    rows = []
    for index, spec in enumerate(specs):
        rng, kind = stream_rng(seed, 4, index), noise.get(spec.track_id, "clean")
        source, attribute, stated = spec.track_id, None, claims[spec.track_id]
        captions = honest[spec.track_id]
        if kind == "wrong":
            others = [s.track_id for s in specs if s.genre != spec.genre]
            source = str(rng.choice(others))
            stated, captions = claims[source], honest[source]
        elif kind == "partial":
            attribute = str(rng.choice(CORRUPTIBLE_ATTRIBUTES))
            stated = corrupt(claims[spec.track_id], attribute, rng)
            captions = describe(stated, rng)
        rows.append(
            {
                **captions,
                "caption_noise": kind,
                "caption_source_track": source,
                "corrupted_attribute": attribute,
                "caption_claims": json.dumps(stated),
            }
        )
    return rows
