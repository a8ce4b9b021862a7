"""Label-distribution metrics (paired KL, Inception Score, audioldm_eval style) and the CLAP
score (mean prompt-audio cosine, av-benchmark style)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import special

from tasks.evaluate.metrics.checks import (
    as_distributions,
    as_matrix,
    check_same_shape,
)

# audioldm_eval metrics/kl.py: EPS added to the generated probabilities inside the log.
AUDIOLDM_KL_EPS = 1e-6
# audioldm_eval eval.py calls calculate_isc(..., samples_shuffle=True, rng_seed=2020, splits=10).
AUDIOLDM_IS_SEED = 2020
AUDIOLDM_IS_SPLITS = 10

# --------------------------------------------------------------------------------------------
# Label distributions: KL and Inception Score


def _smooth(probs: np.ndarray, eps: float) -> np.ndarray:
    """Add eps to every class and renormalise, so logs are finite and rows stay distributions."""
    smoothed = probs + eps
    return smoothed / smoothed.sum(axis=-1, keepdims=True)


def kl_divergence(p: object, q: object, eps: float = 1e-6) -> np.ndarray:
    """KL(p || q) = sum_k p_k log(p_k / q_k) in nats, per distribution along the last axis.

    Both sides are smoothed by eps and renormalised, so KL(p || p) = 0 and KL >= 0 hold
    exactly (Gibbs), and a zero in q gives a large finite value instead of inf. audioldm_eval
    instead adds EPS to q only (log(q + 1e-6)), which biases KL by about -K * eps (-5e-4 for
    527 AudioSet classes); `audioldm_kl` reproduces that formula exactly.
    """
    if eps <= 0:
        raise ValueError("eps must be > 0")
    p_arr = as_distributions(p, "p")
    q_arr = as_distributions(q, "q")
    check_same_shape(p_arr, q_arr, "p and q")
    p_s, q_s = _smooth(p_arr, eps), _smooth(q_arr, eps)
    return np.sum(p_s * (np.log(p_s) - np.log(q_s)), axis=-1)


def paired_kl(*, reference: object, generated: object, eps: float = 1e-6) -> float:
    """Mean over pairs i of KL(p_ref,i || p_gen,i) between label distributions [N, K].

    Pairing, direction and averaging follow audioldm_eval metrics/kl.py, whose generated
    ("input1", prediction) and reference ("input2", pseudo-target) clips are matched by file
    name and scored as KL(input2_i || input1_i): the reference's label distribution is the
    target. Rows must be softmax distributions (e.g. zero-shot tag probabilities); per-pair
    values for a bootstrap are `kl_divergence(reference, generated)`.
    """
    return float(np.mean(kl_divergence(reference, generated, eps=eps)))


def audioldm_kl(
    *,
    generated_logits: object,
    reference_logits: object,
    activation: Literal["softmax", "sigmoid"] = "softmax",
) -> float:
    """audioldm_eval's paired KL on classifier logits [N, K], reproduced formula for formula.

    `torch.nn.functional.kl_div((act(gen) + 1e-6).log(), act(ref), reduction="sum") / N`, i.e.
    sum_k p_ref log(p_ref / (p_gen + 1e-6)) averaged over pairs (metrics/kl.py, PANNs logits).
    "softmax" is its `kullback_leibler_divergence_softmax` (printed as "KL", the one AudioGen,
    SpecVQGAN and av-benchmark report); "sigmoid" is `..._sigmoid` ("KL_Sigmoid"), which sums
    the same expression over independent sigmoid scores: not a divergence (the (1 - p) terms of a
    Bernoulli KL are missing, so it can be negative). Use for comparability with published
    numbers; `paired_kl` is the clean version for probabilities.
    """
    gen = as_matrix(generated_logits, "generated_logits")
    ref = as_matrix(reference_logits, "reference_logits")
    check_same_shape(gen, ref, "generated and reference logits")
    if activation == "softmax":
        p_gen, p_ref = special.softmax(gen, axis=1), special.softmax(ref, axis=1)
    elif activation == "sigmoid":
        p_gen, p_ref = special.expit(gen), special.expit(ref)
    else:
        raise ValueError(f"activation must be 'softmax' or 'sigmoid', got {activation!r}")
    terms = special.xlogy(p_ref, p_ref) - p_ref * np.log(p_gen + AUDIOLDM_KL_EPS)
    return float(terms.sum() / gen.shape[0])


@dataclass(frozen=True)
class InceptionScore:
    mean: float  # mean over splits: the reported IS
    std: float  # population std (ddof=0) over splits, as np.std in the reference
    split_scores: tuple[float, ...]


def _split_inception_score(probs: np.ndarray) -> float:
    """exp(E_x KL(p(y|x) || p(y))) with p(y) the split's mean prediction."""
    marginal = probs.mean(axis=0, keepdims=True)
    # xlogy: 0 log 0 = 0 for one-hot predictions; marginal > 0 wherever probs > 0.
    kl = np.sum(special.xlogy(probs, probs) - special.xlogy(probs, marginal), axis=1)
    return float(np.exp(kl.mean()))


def inception_score(
    probabilities: object,
    splits: int = AUDIOLDM_IS_SPLITS,
    shuffle_seed: int | None = AUDIOLDM_IS_SEED,
) -> InceptionScore:
    """Inception Score of predicted label distributions [N, K] (Salimans et al. 2016).

    IS = exp(E_x KL(p(y|x) || p(y))), between 1 (every prediction the same) and K (confident
    and spread evenly over the K classes). As audioldm_eval metrics/isc.py (from
    torch-fidelity): rows are permuted with np.random.RandomState(shuffle_seed) (None: keep the
    order), cut into `splits` contiguous chunks [i*N//splits, (i+1)*N//splits), scored per
    chunk, and reported as mean and std over chunks. The reference takes PANNs logits and
    softmaxes them; pass `scipy.special.softmax(logits, axis=1)` here for the same number.
    """
    probs = as_distributions(probabilities, "probabilities")
    if probs.ndim != 2:
        raise ValueError(f"probabilities must be [N, K], got shape {probs.shape}")
    n_items = probs.shape[0]
    if not 1 <= splits <= n_items:
        raise ValueError(f"splits must be in [1, N={n_items}], got {splits}")
    if shuffle_seed is not None:
        probs = probs[np.random.RandomState(shuffle_seed).permutation(n_items)]
    scores = tuple(
        _split_inception_score(probs[i * n_items // splits : (i + 1) * n_items // splits])
        for i in range(splits)
    )
    return InceptionScore(
        mean=float(np.mean(scores)), std=float(np.std(scores)), split_scores=scores
    )


# --------------------------------------------------------------------------------------------
# CLAP score


def paired_cosine(
    audio_embeddings: object, text_embeddings: object, eps: float = 1e-8
) -> np.ndarray:
    """Cosine similarity of row i of `audio_embeddings` with row i of `text_embeddings`.

    Norms are clamped at eps as in `torch.cosine_similarity`, which av-benchmark uses.
    """
    audio = as_matrix(audio_embeddings, "audio_embeddings")
    text = as_matrix(text_embeddings, "text_embeddings")
    check_same_shape(audio, text, "audio and text embeddings")
    audio_norm = np.maximum(np.linalg.norm(audio, axis=1), eps)
    text_norm = np.maximum(np.linalg.norm(text, axis=1), eps)
    return np.sum(audio * text, axis=1) / (audio_norm * text_norm)


def clap_score(audio_embeddings: object, text_embeddings: object) -> float:
    """Mean paired audio-text cosine: av-benchmark's LAION-CLAP-Score.

    av-benchmark evaluate.py: `torch.cosine_similarity(text, audio, dim=-1).mean()`, raw cosine
    in [-1, 1] (no x100 scaling or clipping at 0 as some papers apply).
    """
    return float(np.mean(paired_cosine(audio_embeddings, text_embeddings)))
