"""Known cases and power checks for tasks/evaluate/metrics/ (seeded, CPU, a few seconds)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import linalg, special

from tasks.common.bootstrap import bootstrap, bootstrap_mean
from tasks.evaluate.metrics import frechet
from tasks.evaluate.metrics.attributes import (
    set_precision_recall,
    tempo_accuracy,
    tempo_hits,
    top1_accuracy,
)
from tasks.evaluate.metrics.distributions import (
    audioldm_kl,
    clap_score,
    inception_score,
    kl_divergence,
    paired_cosine,
    paired_kl,
)
from tasks.evaluate.metrics.frechet import (
    GaussianStatsAccumulator,
    fad,
    fad_infinity_fit,
    frechet_distance,
    gaussian_stats,
)


def _random_covariance(rng: np.random.Generator, dim: int) -> np.ndarray:
    factor = rng.normal(size=(dim, dim))
    return factor @ factor.T / dim + 0.1 * np.eye(dim)


# --------------------------------------------------------------------------------------------
# Frechet distance / FAD


def test_frechet_distance_matches_closed_form_for_diagonal_covariances() -> None:
    # Commuting covariances: d^2 = ||dmu||^2 + sum_k (sqrt(a_k) - sqrt(b_k))^2.
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    a, b = rng.uniform(0.2, 3.0, size=6), rng.uniform(0.2, 3.0, size=6)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-10)


def test_frechet_distance_matches_symmetric_eigen_formula() -> None:
    # Tr (S1 S2)^(1/2) = sum sqrt(eig(S1^(1/2) S2 S1^(1/2))), an independent route.
    rng = np.random.default_rng(1)
    s1, s2 = _random_covariance(rng, 12), _random_covariance(rng, 12)
    mu1, mu2 = rng.normal(size=12), rng.normal(size=12)
    root1 = linalg.sqrtm(s1).real
    tr_covmean = np.sum(np.sqrt(np.clip(linalg.eigvalsh(root1 @ s2 @ root1), 0, None)))
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * tr_covmean
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(frechet_distance(mu2, s2, mu1, s1))


@pytest.mark.parametrize(("n_items", "dim"), [(400, 16), (10, 32)])  # full rank, singular
def test_fad_of_a_set_with_itself_is_zero(n_items: int, dim: int) -> None:
    rng = np.random.default_rng(2)
    embeddings = rng.normal(size=(n_items, dim)) * rng.uniform(0.5, 5.0, size=dim) + 3.0
    scale = np.trace(gaussian_stats(embeddings)[1])
    assert abs(fad(embeddings, embeddings)) < 1e-6 * scale


def test_fad_equals_squared_mean_shift_and_grows_with_it() -> None:
    rng = np.random.default_rng(3)
    reference = rng.normal(size=(300, 10)) @ rng.normal(size=(10, 10))
    direction = rng.normal(size=10)
    shifts = [0.0, 0.25, 0.5, 1.0, 2.0, 4.0]
    values = [fad(reference + t * direction, reference) for t in shifts]
    # Shifting leaves the covariance unchanged, so FAD is exactly ||t * direction||^2.
    expected = [t**2 * direction @ direction for t in shifts]
    np.testing.assert_allclose(values, expected, rtol=1e-6, atol=1e-6)
    assert np.all(np.diff(values) > 0)


def test_fad_of_two_samples_of_one_gaussian_is_biased_like_one_over_n() -> None:
    dim = 8
    reference_stats = gaussian_stats(np.random.default_rng(4).normal(size=(40_000, dim)))
    sizes = [50, 200, 1000]
    mean_fad = [
        np.mean(
            [fad(np.random.default_rng(s).normal(size=(n, dim)), reference_stats) for s in range(5)]
        )
        for n in sizes
    ]
    assert np.all(np.diff(mean_fad) < 0)
    # About (D + D(D+1)/4) / N = 26 / N for identity covariances: the bias is c / N.
    for n, value in zip(sizes, mean_fad, strict=True):
        assert 15 < n * value < 40


def _same_gaussian_pair(seed: int, n_items: int = 2000, dim: int = 8) -> tuple:
    rng = np.random.default_rng(seed)
    reference = rng.normal(size=(50_000, dim))
    return rng.normal(size=(n_items, dim)), gaussian_stats(reference)


def test_fad_infinity_extrapolates_closer_to_zero_than_fad_at_full_n() -> None:
    generated, reference_stats = _same_gaussian_pair(seed=5)
    plain = fad(generated, reference_stats)
    fit = fad_infinity_fit(generated, reference_stats, num_points=15, seed=0)
    assert plain > 0.005
    assert abs(fit.intercept) < 0.5 * plain
    assert fit.slope > 0
    assert fit.sizes[0] == 500 and fit.sizes[-1] == 2000 and fit.sizes.size == 15
    # Without replacement the largest subset is the whole set: its FAD is the plain FAD.
    assert fit.values[-1] == pytest.approx(plain, rel=1e-9)


def test_fad_infinity_with_replacement_keeps_the_full_sample_bias() -> None:
    # Why subsets are drawn without replacement (FID-inf) and not with it (fadtk): averaged
    # over samples of one Gaussian (true FAD 0), with-replacement intercepts stay near the
    # biased full-set FAD while without-replacement ones centre on 0.
    plain, without, with_replacement = [], [], []
    for seed in range(6):
        generated, reference_stats = _same_gaussian_pair(seed=10 + seed)
        plain.append(fad(generated, reference_stats))
        without.append(fad_infinity_fit(generated, reference_stats, seed=seed).intercept)
        with_replacement.append(
            fad_infinity_fit(generated, reference_stats, seed=seed, replace=True).intercept
        )
    assert np.mean(with_replacement) > 0.5 * np.mean(plain)
    assert abs(np.mean(without)) < 0.25 * np.mean(plain)


def test_fad_infinity_is_seeded() -> None:
    generated, reference_stats = _same_gaussian_pair(seed=6, n_items=400)
    first = fad_infinity_fit(generated, reference_stats, seed=3)
    np.testing.assert_array_equal(
        first.values, fad_infinity_fit(generated, reference_stats, seed=3).values
    )
    assert not np.array_equal(
        first.values, fad_infinity_fit(generated, reference_stats, seed=4).values
    )


def test_accumulator_matches_batch_stats_despite_a_large_offset() -> None:
    # A naive sum of outer products loses ~1e-4 relative precision at this offset.
    rng = np.random.default_rng(7)
    embeddings = rng.normal(size=(1000, 5)) + 1e6
    accumulator = GaussianStatsAccumulator()
    for start, stop in [(0, 1), (1, 130), (130, 131), (131, 600), (600, 1000)]:
        accumulator.update(torch.from_numpy(embeddings[start:stop]))
    mean, cov = accumulator.compute()
    expected_mean, expected_cov = gaussian_stats(embeddings)
    assert accumulator.n == 1000
    np.testing.assert_allclose(mean, expected_mean, rtol=1e-12)
    np.testing.assert_allclose(cov, expected_cov, rtol=1e-8, atol=1e-8)


def test_fad_accepts_accumulated_reference_stats() -> None:
    rng = np.random.default_rng(8)
    generated, reference = rng.normal(size=(200, 6)), rng.normal(size=(300, 6)) + 0.3
    accumulator = GaussianStatsAccumulator()
    for batch in np.array_split(reference, 7):
        accumulator.update(batch)
    assert fad(generated, accumulator.compute()) == pytest.approx(fad(generated, reference))


def test_frechet_distance_retries_with_a_diagonal_offset(monkeypatch: pytest.MonkeyPatch) -> None:
    # scipy >= 1.16 rarely returns non-finite square roots, so force the reference retry path.
    real_sqrtm, calls = linalg.sqrtm, []

    def first_call_fails(matrix: np.ndarray) -> np.ndarray:
        calls.append(matrix)
        return np.full_like(matrix, np.nan) if len(calls) == 1 else real_sqrtm(matrix)

    monkeypatch.setattr(frechet.linalg, "sqrtm", first_call_fails)
    a, b = np.array([1.0, 0.0, 2.0]), np.array([0.5, 3.0, 0.0])  # singular diagonals
    with pytest.warns(RuntimeWarning, match="singular"):
        value = frechet_distance(np.zeros(3), np.diag(a), np.ones(3), np.diag(b))
    eps = frechet.SQRTM_OFFSET
    expected = 3 + a.sum() + b.sum() - 2 * np.sum(np.sqrt((a + eps) * (b + eps)))
    assert len(calls) == 2
    assert value == pytest.approx(expected, rel=1e-12)


def test_fad_rejects_bad_input() -> None:
    rng = np.random.default_rng(9)
    with pytest.raises(ValueError, match="NaN"):
        fad(np.full((5, 3), np.nan), rng.normal(size=(5, 3)))
    with pytest.raises(ValueError, match="shapes differ"):
        fad(rng.normal(size=(5, 3)), rng.normal(size=(5, 4)))
    with pytest.raises(ValueError, match="imaginary"):
        frechet_distance(np.zeros(2), np.diag([1.0, -1.0]), np.zeros(2), np.eye(2))


# --------------------------------------------------------------------------------------------
# KL


def test_kl_of_identical_distributions_is_zero_and_otherwise_positive() -> None:
    rng = np.random.default_rng(10)
    p, q = rng.dirichlet(np.ones(7), size=50), rng.dirichlet(np.ones(7), size=50)
    np.testing.assert_allclose(kl_divergence(p, p), 0.0, atol=1e-12)
    assert np.all(kl_divergence(p, q) > 0)
    one_hot = np.eye(7)[rng.integers(0, 7, size=50)]  # zeros in q: large but finite
    assert np.all(np.isfinite(kl_divergence(p, one_hot)))


def test_kl_known_two_class_values_and_direction() -> None:
    p, q = np.array([0.5, 0.5]), np.array([0.9, 0.1])
    assert float(kl_divergence(p, q)) == pytest.approx(math.log(5 / 3), abs=1e-5)
    assert float(kl_divergence(q, p)) == pytest.approx(
        0.9 * math.log(1.8) + 0.1 * math.log(0.2), abs=1e-5
    )
    # KL(reference || generated): the reference's distribution is the target.
    pairs = paired_kl(reference=np.stack([p, q]), generated=np.stack([q, q]))
    assert pairs == pytest.approx(math.log(5 / 3) / 2, abs=1e-5)


def test_kl_rejects_sigmoid_scores() -> None:
    with pytest.raises(ValueError, match="sum to 1"):
        kl_divergence(np.array([0.9, 0.8, 0.1]), np.array([0.3, 0.3, 0.4]))


def _torch_audioldm_kl(generated: np.ndarray, reference: np.ndarray, sigmoid: bool) -> float:
    # audioldm_eval metrics/kl.py, the lines that compute kl_softmax / kl_sigmoid.
    gen, ref = torch.from_numpy(generated), torch.from_numpy(reference)
    act = torch.sigmoid if sigmoid else (lambda x: x.softmax(dim=1))
    kl = torch.nn.functional.kl_div((act(gen) + 1e-6).log(), act(ref), reduction="sum")
    return float(kl / len(gen))


@pytest.mark.parametrize("activation", ["softmax", "sigmoid"])
def test_audioldm_kl_reproduces_the_reference_formula(activation: str) -> None:
    rng = np.random.default_rng(11)
    generated, reference = rng.normal(size=(20, 527)) * 2, rng.normal(size=(20, 527)) * 2
    expected = _torch_audioldm_kl(generated, reference, sigmoid=activation == "sigmoid")
    value = audioldm_kl(
        generated_logits=generated, reference_logits=reference, activation=activation
    )
    assert value == pytest.approx(expected, rel=1e-9)


def test_audioldm_kl_direction_matches_paired_kl() -> None:
    rng = np.random.default_rng(12)
    generated, reference = rng.normal(size=(30, 3)) * 2, rng.normal(size=(30, 3))
    value = audioldm_kl(generated_logits=generated, reference_logits=reference)
    probs_gen, probs_ref = special.softmax(generated, axis=1), special.softmax(reference, axis=1)
    assert value == pytest.approx(paired_kl(reference=probs_ref, generated=probs_gen), abs=1e-4)
    assert abs(value - paired_kl(reference=probs_gen, generated=probs_ref)) > 0.05


# --------------------------------------------------------------------------------------------
# Inception Score


def test_inception_score_is_one_for_identical_predictions() -> None:
    probs = np.tile(np.random.default_rng(13).dirichlet(np.ones(6)), (100, 1))
    score = inception_score(probs, splits=10)
    assert score.mean == pytest.approx(1.0, abs=1e-12)
    assert score.std == pytest.approx(0.0, abs=1e-12)


def test_inception_score_is_k_for_confident_balanced_predictions() -> None:
    k = 5
    one_hot = np.eye(k)[np.arange(500) % k]  # every split of 50 holds 10 of each class
    assert inception_score(one_hot, splits=10, shuffle_seed=None).mean == pytest.approx(k)
    assert inception_score(one_hot, splits=1).mean == pytest.approx(k)
    # Shuffled splits are no longer balanced, so the score drops below K.
    assert inception_score(one_hot, splits=10).mean < k


def test_inception_score_known_two_class_value() -> None:
    probs = np.array([[0.9, 0.1], [0.1, 0.9]] * 50)
    expected = math.exp(math.log(2) + 0.9 * math.log(0.9) + 0.1 * math.log(0.1))
    assert inception_score(probs, splits=1).mean == pytest.approx(expected, rel=1e-12)


def _torch_audioldm_isc(logits: np.ndarray) -> tuple[float, float]:
    # audioldm_eval metrics/isc.py as eval.py calls it: shuffle seed 2020, 10 splits.
    features = torch.from_numpy(logits)[np.random.RandomState(2020).permutation(len(logits))]
    p, log_p = features.softmax(dim=1), features.log_softmax(dim=1)
    n_items, scores = len(logits), []
    for i in range(10):
        chunk = slice(i * n_items // 10, (i + 1) * n_items // 10)
        q = p[chunk].mean(dim=0, keepdim=True)
        scores.append((p[chunk] * (log_p[chunk] - q.log())).sum(dim=1).mean().exp().item())
    return float(np.mean(scores)), float(np.std(scores))


def test_inception_score_reproduces_audioldm_eval() -> None:
    logits = np.random.default_rng(14).normal(size=(203, 40)) * 3
    score = inception_score(special.softmax(logits, axis=1))
    expected_mean, expected_std = _torch_audioldm_isc(logits)
    assert score.mean == pytest.approx(expected_mean, rel=1e-9)
    assert score.std == pytest.approx(expected_std, rel=1e-6)
    assert 1.0 < score.mean < 40.0


# --------------------------------------------------------------------------------------------
# CLAP score


def test_clap_score_of_matched_pairs_beats_shuffled_pairs() -> None:
    rng = np.random.default_rng(15)
    audio = rng.normal(size=(200, 64))
    text = audio + 0.5 * rng.normal(size=audio.shape)
    shuffled = text[rng.permutation(200)]
    assert clap_score(audio, text) > 0.8
    assert abs(clap_score(audio, shuffled)) < 0.1
    np.testing.assert_allclose(paired_cosine(audio, 3.0 * audio), 1.0, rtol=1e-12)


def test_paired_cosine_matches_torch() -> None:
    rng = np.random.default_rng(16)
    audio, text = rng.normal(size=(50, 16)), rng.normal(size=(50, 16))
    expected = torch.cosine_similarity(torch.from_numpy(text), torch.from_numpy(audio), dim=-1)
    np.testing.assert_allclose(paired_cosine(audio, text), expected.numpy(), rtol=1e-10)


# --------------------------------------------------------------------------------------------
# Bootstrap


def test_bootstrap_mean_covers_the_true_mean_at_about_the_nominal_rate() -> None:
    rng = np.random.default_rng(17)
    covered = 0
    for repetition in range(200):
        draws = rng.exponential(scale=1.0, size=40)
        ci = bootstrap_mean(draws, confidence=0.95, resamples=1000, seed=repetition)
        covered += ci.low <= 1.0 <= ci.high
    assert 0.88 <= covered / 200 <= 0.99


def test_bootstrap_interval_width_seed_and_fields() -> None:
    values = np.random.default_rng(18).normal(size=60)
    wide = bootstrap_mean(values, confidence=0.95, seed=1)
    narrow = bootstrap_mean(values, confidence=0.5, seed=1)
    assert narrow.high - narrow.low < 0.6 * (wide.high - wide.low)
    assert wide.low < narrow.low < wide.estimate < narrow.high < wide.high
    assert bootstrap_mean(values, seed=1) == wide
    assert bootstrap_mean(values, seed=2) != wide
    assert (wide.estimate, wide.n, wide.resamples, wide.confidence) == (
        pytest.approx(values.mean()),
        60,
        1000,
        0.95,
    )


def test_generic_bootstrap_agrees_with_bootstrap_mean() -> None:
    values = np.random.default_rng(19).exponential(size=30)
    generic = bootstrap(lambda idx: values[idx].mean(), values.size, resamples=300, seed=5)
    assert generic == bootstrap_mean(values, resamples=300, seed=5)


def test_bootstrap_of_a_set_level_fad_separates_shifted_sets() -> None:
    rng = np.random.default_rng(20)
    reference_stats = gaussian_stats(rng.normal(size=(20_000, 4)))
    same, shifted = rng.normal(size=(200, 4)), rng.normal(size=(200, 4)) + 0.5  # ||dmu||^2 = 1
    ci_same = bootstrap(lambda idx: fad(same[idx], reference_stats), 200, resamples=200)
    ci_shifted = bootstrap(lambda idx: fad(shifted[idx], reference_stats), 200, resamples=200)
    assert ci_same.high < ci_shifted.low
    assert 0.6 < ci_shifted.low < ci_shifted.high < 1.6


def test_bootstrap_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_mean(np.ones(5), confidence=1.0)
    with pytest.raises(ValueError, match="not finite"):
        bootstrap(lambda idx: float("nan"), 5)


# --------------------------------------------------------------------------------------------
# Attribute checks


def test_tempo_accuracy_tolerance_and_octave_errors() -> None:
    assert tempo_accuracy([124.0], [120.0]) == 1.0  # within 4 % (4.8 BPM)
    assert tempo_accuracy([126.0], [120.0]) == 0.0
    octave_errors = [240.0, 60.0, 360.0, 40.0, 61.0]  # x2, x1/2, x3, x1/3, x1/2 within 4 %
    truth = [120.0] * 5
    assert tempo_accuracy(octave_errors, truth, allow_octave=False) == 0.0
    assert tempo_accuracy(octave_errors, truth, allow_octave=True) == 1.0
    assert tempo_accuracy([180.0], [120.0]) == 0.0  # x1.5 is not a metrical-level error
    assert list(tempo_hits([float("nan"), 120.0], [120.0, 120.0])) == [False, True]


def test_top1_accuracy() -> None:
    assert top1_accuracy(["rock", "jazz", "pop", "pop"], ["rock", "pop", "pop", "jazz"]) == 0.5
    with pytest.raises(ValueError, match="lengths"):
        top1_accuracy(["rock"], ["rock", "pop"])


def test_set_precision_recall_is_micro_averaged() -> None:
    result = set_precision_recall([{"a"}, {"b", "c", "d", "e"}], [{"a"}, {"x"}])
    # Micro: 1 true positive of 5 predictions (macro precision would be (1 + 0) / 2).
    assert result.precision == pytest.approx(1 / 5)
    assert result.recall == pytest.approx(1 / 2)
    assert result.f1 == pytest.approx(2 * 1 / (5 + 2))
    assert (result.true_positives, result.predicted, result.relevant) == (1, 5, 2)
    assert math.isnan(set_precision_recall([set()], [{"a"}]).precision)


def test_frechet_to_reference_matches_fad_and_is_reused() -> None:
    from tasks.evaluate.metrics.frechet import FrechetToReference

    rng = np.random.default_rng(3)
    reference = rng.normal(size=(80, 24)) @ rng.normal(size=(24, 24))
    distance = FrechetToReference(reference)
    for shift in (0.0, 0.5, 2.0):
        generated = rng.normal(size=(40, 24)) @ rng.normal(size=(24, 24)) + shift
        assert distance(generated) == pytest.approx(fad(generated, reference), rel=1e-6)
    # Zero up to round-off of the eigensolve, which scales with the covariance's trace
    # (about 600 here) and varies with the BLAS threading.
    scale = np.trace(np.cov(reference, rowvar=False))
    assert distance(reference) == pytest.approx(0.0, abs=1e-8 * scale)
    with pytest.raises(ValueError, match="dimension"):
        distance(rng.normal(size=(10, 5)))


def test_frechet_to_reference_with_fewer_rows_than_dimensions_uses_the_gram_matrix() -> None:
    """N < D (48 clips of 128-d CLAP embeddings): the N x N Gram route equals the D x D one."""
    from tasks.evaluate.metrics.frechet import FrechetToReference

    rng = np.random.default_rng(5)
    reference = rng.normal(size=(200, 32)) @ rng.normal(size=(32, 32))
    distance = FrechetToReference(reference)
    for rows in (3, 12, 31):
        generated = rng.normal(size=(rows, 32)) @ rng.normal(size=(32, 32)) + 0.3
        mean, cov = np.mean(generated, axis=0), np.cov(generated, rowvar=False)
        product = np.linalg.eigvalsh(distance.root @ cov @ distance.root)
        diff = mean - distance.mean
        full_rank = (
            diff @ diff
            + np.trace(cov)
            + distance.trace
            - 2.0 * np.sum(np.sqrt(np.clip(product, 0.0, None)))
        )
        # The D x D route sqrt()s the round-off of its D - N + 1 zero eigenvalues (1e-12 ->
        # 1e-6 each); the Gram route has none, so the two agree to ~1e-8, not to 1e-15.
        assert distance(generated) == pytest.approx(full_rank, rel=1e-7)
