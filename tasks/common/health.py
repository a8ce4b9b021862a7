"""Label-free health checks of the scorers on the user's own data (no ground truth used).

The embedded scorers learnt the embedded corpus; on someone else's music they may know
nothing, and every figure downstream (curation tiers, refinement, evaluation) would then be
noise with a plausible face. These checks ask each scorer a question whose answer is known
without labels, on the dataset's own held-out (val) tracks:

- CLAP: is a track's own caption scored above another track's caption (ROC-AUC, chance
  0.5), and does its caption retrieve it among the val tracks (text->audio R@1 / R@5,
  chance k/n)? The negatives are a seeded derangement of the captions, so no recorded
  wrong-caption labels are used; a dataset's own few wrong captions only lower the figure.
- p-MOS: are the dataset's own clips, degraded at known levels (the corpus's degradations,
  tasks/synthesis/degradation.py), ranked by level (Spearman ρ)? And where do the original
  clips sit on the scale the quality levels are cut from (paper 003 §4.1's μ ± kσ bins)?
- captioner: how many tracks get a tag that stands out from the alternatives, and how much
  of the dataset's own caption vocabulary the captioner can write at all.

Pure functions over embeddings, predictions and strings; the stages compute those.
Intervals are percentile bootstraps over val tracks (tasks/common/bootstrap.py).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

import numpy as np

from tasks.common.bootstrap import BootstrapCI, bootstrap, bootstrap_mean
from tasks.common.rank_metrics import roc_auc, spearman
from tasks.common.seeds import derangement

NOT_MEASURABLE = "not measurable on this data"
# the CLAP check's wrong captions: a random stream of its own (tasks/common/seeds.py)
DERANGEMENT_STREAM = 19
# Function words that carry no musical content: a caption's coverage is over the rest.
STOPWORDS = frozenset(
    [
        "a",
        "an",
        "and",
        "the",
        "of",
        "with",
        "in",
        "on",
        "at",
        "to",
        "for",
        "by",
        "from",
        "as",
        "is",
        "are",
        "it",
        "its",
        "this",
        "that",
        "these",
        "those",
        "be",
        "has",
        "have",
        "into",
        "over",
        "under",
        "while",
        "which",
        "who",
        "whose",
        "than",
        "then",
        "there",
        "their",
        "throughout",
        "very",
        "some",
        "more",
        "most",
        "also",
        "but",
        "or",
        "not",
        "no",
        "so",
        "just",
    ]
)
_WORD = re.compile(r"[a-z]+(?:-[a-z]+)*")


def ci_dict(ci: BootstrapCI) -> dict[str, float | int]:
    return {"value": ci.estimate, "low": ci.low, "high": ci.high, "n": ci.n}


# --------------------------------------------------------------------------- CLAP
def retrieval_ranks(similarity: np.ndarray) -> np.ndarray:
    """Per text query i: how many audio items score strictly above its own audio i."""
    own = np.diag(similarity)[:, None]
    return (similarity > own).sum(axis=1)


def clap_health(
    audio: np.ndarray,
    text: np.ndarray,
    captions: Sequence[str],
    seed: int,
    resamples: int,
    confidence: float,
) -> dict:
    """AUC (own vs deranged caption) and text->audio R@1/R@5 over n val tracks, with CIs.

    `audio` [n, d]: one unit embedding per track (its windows' mean), `text` [n, d] the
    unit embeddings of its caption. A deranged pair whose caption string equals the
    track's own (two tracks captioned alike) is no negative and is left out.
    """
    n = len(captions)
    if n < 3:
        return {"note": f"{NOT_MEASURABLE}: {n} val track(s) with a caption, 3 needed"}
    similarity = text @ audio.T  # [text queries, audio gallery]
    own = np.diag(similarity)
    other = derangement(n, [seed, DERANGEMENT_STREAM])
    negative = similarity[other, np.arange(n)]  # audio i scored against caption other[i]
    distinct = np.array([captions[other[i]] != captions[i] for i in range(n)])
    if distinct.sum() == 0:
        return {"note": f"{NOT_MEASURABLE}: every val track has the same caption"}
    auc = bootstrap(
        lambda idx: _paired_auc(own[idx], negative[idx], distinct[idx]),
        n,
        confidence=confidence,
        resamples=resamples,
        seed=seed,
    )
    ranks = retrieval_ranks(similarity)
    recall = {
        k: bootstrap_mean(ranks < k, confidence=confidence, resamples=resamples, seed=seed)
        for k in (1, 5)
    }
    return {
        "tracks": n,
        "auc": ci_dict(auc),
        "chance_auc": 0.5,
        "r_at_1": ci_dict(recall[1]),
        "chance_r_at_1": 1.0 / n,
        "r_at_5": ci_dict(recall[5]),
        "chance_r_at_5": min(5, n) / n,
        "score_mean_own": float(own.mean()),
        "score_mean_other": float(negative[distinct].mean()),
        "negatives_left_out": int((~distinct).sum()),
    }


def _paired_auc(own: np.ndarray, negative: np.ndarray, distinct: np.ndarray) -> float:
    """AUC of own-caption scores vs other-caption scores; 0.5 when a resample has no negative."""
    if not distinct.any():
        return 0.5
    return roc_auc(own, negative[distinct])


# --------------------------------------------------------------------------- p-MOS
def quality_health(
    original: np.ndarray,
    degraded: np.ndarray,
    levels: Sequence[int],
    kinds: Sequence[str],
    scale: tuple[float, float] | None,
    level_edges_std: Sequence[float],
    seed: int,
    resamples: int,
    confidence: float,
) -> dict:
    """Spearman ρ of p-MOS vs degradation level (original clip = level 5), and the place of
    the original clips on the p-MOS scale.

    `original` [n]: p-MOS of each val track's clip; `degraded` [n, kinds, levels]: of the
    same clip degraded by kind at level. `scale` (μ, σ): the scale the quality levels are
    cut from, None when quality.pmos_mean/std are fitted on this very data.
    """
    n = len(original)
    if n < 3:
        return {"note": f"{NOT_MEASURABLE}: {n} val track(s) long enough for a clip, 3 needed"}
    clean_level = max(levels) + 1
    values = np.concatenate([original[:, None], degraded.reshape(n, -1)], axis=1)
    targets = np.concatenate([[clean_level], np.tile(np.asarray(levels), len(kinds))])

    def rho(idx: np.ndarray) -> float:  # resampled tracks keep all their clips together
        return spearman(values[idx].ravel(), np.tile(targets, len(idx)))

    overall = bootstrap(rho, n, confidence=confidence, resamples=resamples, seed=seed)
    per_kind = {}
    for k, kind in enumerate(kinds):
        columns = np.concatenate([[0], 1 + k * len(levels) + np.arange(len(levels))])
        per_kind[kind] = spearman(values[:, columns].ravel(), np.tile(targets[columns], n))
    report: dict = {
        "tracks": n,
        "spearman": ci_dict(overall),
        "chance_spearman": 0.0,
        "spearman_by_kind": per_kind,
        "pmos_median_original": float(np.median(original)),
    }
    return report | calibration_position(original, scale, level_edges_std)


def calibration_position(
    original: np.ndarray, scale: tuple[float, float] | None, level_edges_std: Sequence[float]
) -> dict:
    """Median z of the original clips on the (μ, σ) scale and the share outside the range
    the levels span (centre of level 1 to centre of the top level: tasks/common/quality_levels)."""
    if scale is None:
        return {
            "calibration": f"{NOT_MEASURABLE}: quality.pmos_mean / pmos_std are null, so the "
            "scale is fitted on this data's own p-MOS and every clip sits inside it"
        }
    mean, std = scale
    edges = list(level_edges_std)
    spread = (edges[1] - edges[0]) / 2 if len(edges) > 1 else 0.5
    top = (edges[-1] - edges[-2]) / 2 if len(edges) > 1 else 0.5
    low, high = edges[0] - spread, edges[-1] + top
    z = (np.asarray(original, dtype=np.float64) - mean) / std
    return {
        "median_z_original": float(np.median(z)),
        "range_z": [low, high],
        "share_outside_range": float(np.mean((z < low) | (z > high))),
        "share_below_lowest_edge": float(np.mean(z < edges[0])),
    }


# --------------------------------------------------------------------------- captioner
def content_words(text: str) -> list[str]:
    return [w for w in _WORD.findall(text.lower()) if w not in STOPWORDS]


def words_of(texts: Iterable[str]) -> frozenset[str]:
    """The content words a captioner can write, from the texts it writes with."""
    return frozenset(word for text in texts for word in content_words(text))


def vocabulary_coverage(captions: Iterable[str], vocabulary: frozenset[str]) -> dict:
    """Share of the captions' content-word occurrences the captioner can write, and the
    most frequent words it cannot (what refinement would lose)."""
    counts: dict[str, int] = {}
    for caption in captions:
        for word in content_words(caption):
            counts[word] = counts.get(word, 0) + 1
    total = sum(counts.values())
    if not total:
        return {"note": f"{NOT_MEASURABLE}: the captions hold no content words"}
    covered = sum(c for w, c in counts.items() if w in vocabulary)
    missing = sorted((w for w in counts if w not in vocabulary), key=lambda w: (-counts[w], w))
    return {
        "coverage": covered / total,
        "words": total,
        "distinct_words": len(counts),
        "top_uncovered": missing[:10],
    }


# CLAP's logit scale: CLIP's learnt temperature, capped at 100, which LAION-CLAP and the
# tiny CLAP (models/scorers.py) both reach; zero-shot class probabilities use it.
CLAP_LOGIT_SCALE = 100.0


def tag_confidence(scores: np.ndarray) -> np.ndarray:
    """Per clip: the zero-shot probability of its best class ([n, classes] CLAP cosines).

    Each class's mean score over the dataset's clips is removed first: a class every clip
    prefers (a CLAP that knows nothing still has favourites) says nothing about a clip.
    What is left, at CLAP's logit scale, is near-uniform (1 / classes) for a CLAP whose
    scores do not depend on the audio, and near 1 for one that hears the class.
    """
    centred = np.asarray(scores, dtype=np.float64)
    centred = CLAP_LOGIT_SCALE * (centred - centred.mean(axis=0, keepdims=True))
    centred -= centred.max(axis=1, keepdims=True)
    probability = np.exp(centred)
    return probability.max(axis=1) / probability.sum(axis=1)


def tag_health(confidence: np.ndarray, owners: np.ndarray, floor: float) -> dict:
    """Share of tracks whose mean tag confidence over their clips reaches `floor`."""
    if len(confidence) == 0:
        return {"note": f"{NOT_MEASURABLE}: no clip was tagged"}
    tracks = np.unique(owners)
    per_track = np.array([confidence[owners == t].mean() for t in tracks])
    return {
        "tracks": len(tracks),
        "share_confident": float(np.mean(per_track >= floor)),
        "median_confidence": float(np.median(per_track)),
        "floor": floor,
    }
