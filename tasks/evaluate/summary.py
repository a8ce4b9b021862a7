"""Set-level metrics with percentile-bootstrap intervals over prompts.

A scored set is clips + the prompt each belongs to (several generations per prompt, one
paired reference window, ...). Resampling is over prompts, a prompt's clips staying together,
with one seed for every metric and set: two systems scored on the same prompts get the same
resamples, so their intervals are paired (tasks/common/bootstrap.py).

Metrics (paper 000 §III-B: CLAP score and FAD over CLAP embeddings; paper 003 §5.3: FAD, KL,
IS as audioldm_eval computes them, p-MOS):
- clap_score: cosine of each clip's CLAP audio embedding with its prompt's CLAP text embedding
  (paper 003 §6.3: the prompt without the quality prefix), averaged per prompt; and
  clap_score_wrong_prompt, the same against another prompt's text (a seeded derangement of
  the prompts): the control it must beat (tasks/evaluate/sanity.py flags it when it doesn't);
- fad_clap / fad_teacher: FAD against all reference windows over CLAP audio embeddings and
  over the frame teacher's time-pooled features; FAD is biased at small N, so N and M are
  reported next to it and fad_clap_infinity extrapolates N -> infinity (Gui et al. 2024);
- kl: KL(p_ref || p_gen) of the zero-shot tag distributions of each generation and its
  prompt's reference window (audioldm_eval's paired KL direction);
- inception_score: over the tag distributions, one split (audioldm_eval uses 10 splits of
  ~1000 clips; with tens of clips a split would hold a handful);
- pmos: the quality backend's p-MOS, averaged per prompt;
- attribute accuracies (tasks/evaluate/scoring.py::attribute_hits), over the prompts that state
  the attribute.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass

import numpy as np

from tasks.common.bootstrap import BootstrapCI, bootstrap, bootstrap_mean
from tasks.common.seeds import derangement
from tasks.evaluate.metrics.distributions import inception_score, kl_divergence, paired_cosine
from tasks.evaluate.metrics.frechet import FrechetToReference, fad_infinity_fit
from tasks.evaluate.scoring import ClipScores

LOWER_IS_BETTER = frozenset({"fad_clap", "fad_teacher", "fad_clap_infinity", "kl"})
# The sets every evaluation scores: the model's clips, the frame of every number around them.
MODEL = "generated"
CEILING = "reference"
FLOOR = "random_latents"
SET_LABELS = {
    MODEL: "generated",
    CEILING: "reference audio (ceiling)",
    FLOOR: "decoded random latents (floor)",
}
# Controls, not quality: a higher wrong-prompt CLAP score is not a better system.
CONTROLS = frozenset({"clap_score_wrong_prompt"})


@dataclass(frozen=True)
class ScoredSet:
    name: str
    scores: ClipScores
    prompt_index: np.ndarray  # [N] the prompt of each clip
    hits: dict[str, np.ndarray]  # attribute -> per-clip 1/0/NaN


@dataclass(frozen=True)
class BootstrapSettings:
    confidence: float
    resamples: int
    seed: int

    def mean(self, values: np.ndarray) -> BootstrapCI:
        return bootstrap_mean(
            values, confidence=self.confidence, resamples=self.resamples, seed=self.seed
        )

    def statistic(self, function: Callable[[np.ndarray], float], n_items: int) -> BootstrapCI:
        return bootstrap(
            function, n_items, confidence=self.confidence, resamples=self.resamples, seed=self.seed
        )


@dataclass(frozen=True)
class Reference:
    """All reference windows (the FAD reference) and each prompt's paired window (or -1)."""

    scores: ClipScores
    paired_row: np.ndarray  # [P]


def per_prompt(values: np.ndarray, prompt_index: np.ndarray) -> np.ndarray:
    """Mean over each prompt's finite values; prompts with none are dropped."""
    prompts = np.unique(prompt_index)
    means = [values[prompt_index == p] for p in prompts]
    means = [row[np.isfinite(row)] for row in means]
    return np.array([row.mean() for row in means if row.size])


class Summariser:
    def __init__(
        self,
        text_embeddings: np.ndarray,
        reference: Reference,
        settings: BootstrapSettings,
        fad_infinity: bool,
    ) -> None:
        self.text = text_embeddings
        self.reference = reference
        self.settings = settings
        self.fad_infinity = fad_infinity
        # One prompt cannot be scored against another: then the control is not computed.
        self.wrong_prompt = (
            derangement(len(text_embeddings), settings.seed) if len(text_embeddings) > 1 else None
        )
        self.distances = {
            "fad_clap": FrechetToReference(reference.scores.clap_audio),
            "fad_teacher": FrechetToReference(reference.scores.teacher),
        }

    # ------------------------------------------------------------------ helpers
    def _set_statistic(
        self, scored: ScoredSet, function: Callable[[np.ndarray], float]
    ) -> BootstrapCI:
        """Bootstrap a statistic of clip rows, resampling the set's prompts."""
        prompts = np.unique(scored.prompt_index)
        rows = [np.flatnonzero(scored.prompt_index == p) for p in prompts]
        return self.settings.statistic(
            lambda idx: function(np.concatenate([rows[i] for i in idx])), len(prompts)
        )

    def clap_scores(self, scored: ScoredSet) -> np.ndarray:
        """Per clip CLAP score against its own prompt."""
        return paired_cosine(scored.scores.clap_audio, self.text[scored.prompt_index])

    def wrong_prompt_clap_scores(self, scored: ScoredSet, wrong_prompt: np.ndarray) -> np.ndarray:
        """Per clip CLAP score against its prompt's wrong prompt (`wrong_prompt[p]`, another
        prompt): the control every CLAP score should beat."""
        prompts = wrong_prompt[scored.prompt_index]
        return paired_cosine(scored.scores.clap_audio, self.text[prompts])

    def paired_kl(self, scored: ScoredSet) -> np.ndarray:
        """Per clip KL(p_ref || p_gen); NaN where the prompt has no reference window."""
        rows = self.reference.paired_row[scored.prompt_index]
        kl = np.full(len(rows), np.nan)
        paired = rows >= 0
        if paired.any():
            kl[paired] = kl_divergence(
                self.reference.scores.tag_probabilities[rows[paired]],
                scored.scores.tag_probabilities[paired],
            )
        return kl

    # ------------------------------------------------------------------ metrics
    def summarise(
        self, scored: ScoredSet, distances: bool = True, only: Collection[str] | None = None
    ) -> dict[str, BootstrapCI]:
        """Every metric of one set, or those named in `only` (a trial evaluation's); `distances`
        False for the reference itself (FAD and KL against itself say nothing)."""
        mean = self.settings.mean
        index = scored.prompt_index
        wanted = _wanted(only)
        result = {}
        if wanted("clap_score"):
            result["clap_score"] = mean(per_prompt(self.clap_scores(scored), index))
        if self.wrong_prompt is not None and wanted("clap_score_wrong_prompt"):
            wrong = self.wrong_prompt_clap_scores(scored, self.wrong_prompt)
            result["clap_score_wrong_prompt"] = mean(per_prompt(wrong, index))
        if wanted("pmos"):
            result["pmos"] = mean(per_prompt(scored.scores.pmos.astype(np.float64), index))
        if wanted("inception_score"):
            result["inception_score"] = self._set_statistic(
                scored,
                lambda rows: (
                    inception_score(
                        scored.scores.tag_probabilities[rows], splits=1, shuffle_seed=None
                    ).mean
                ),
            )
        if distances:
            result.update(self.distances_of(scored, only))
        for attribute, hits in scored.hits.items():
            values = per_prompt(hits, index)
            if values.size:
                result[f"{attribute}_accuracy"] = mean(values)
        return result

    def distances_of(
        self, scored: ScoredSet, only: Collection[str] | None = None
    ) -> dict[str, BootstrapCI]:
        wanted = _wanted(only)

        def to_reference(name: str) -> Callable[[np.ndarray], float]:
            distance = self.distances[name]
            features = "clap_audio" if name == "fad_clap" else "teacher"
            return lambda rows: distance(getattr(scored.scores, features)[rows])

        result = {
            name: self._set_statistic(scored, to_reference(name))
            for name in self.distances
            if wanted(name)
        }
        kl = per_prompt(self.paired_kl(scored), scored.prompt_index) if wanted("kl") else None
        if kl is not None and kl.size:
            result["kl"] = self.settings.mean(kl)
        if self.fad_infinity and wanted("fad_clap_infinity"):
            result["fad_clap_infinity"] = self._set_statistic(
                scored,
                lambda rows: (
                    fad_infinity_fit(
                        scored.scores.clap_audio[rows],
                        self.distances["fad_clap"],
                        seed=self.settings.seed,
                    ).intercept
                ),
            )
        return result


def _wanted(only: Collection[str] | None) -> Callable[[str], bool]:
    return lambda name: only is None or name in only


def interval_record(ci: BootstrapCI) -> dict[str, float]:
    """metrics.json form: value, interval bounds, prompts."""
    return {"value": ci.estimate, "low": ci.low, "high": ci.high, "prompts": ci.n}
