"""Uncertainty aggregation, calibration metrics and abstention summaries on hand-computed cases (no Ray)."""

import math

import numpy as np
import pytest

from candle_ray.errors import DataError, UsageError
from candle_ray.uq import (
    abstention_summary,
    area_under_risk_coverage,
    brier_score,
    categorical_nll,
    coverage_risk_curve,
    ensemble_moments,
    expected_calibration_error,
    gaussian_coverage_curve,
    gaussian_interval,
    gaussian_nll,
    interval_coverage,
    mean_interval_width,
    mean_set_size,
    quantile_sigma,
    reliability_bins,
    set_coverage,
    split_heteroscedastic,
    split_quantiles,
    summarize_passes,
)

# ------------------------------------------------------------------ aggregation


def test_ensemble_moments_hand_computed():
    # Two members, two rows: means (1, 3) and (2, 2), variances (0.5, 1) and (1.5, 3).
    means = np.array([[1.0, 2.0], [3.0, 2.0]])
    variances = np.array([[0.5, 1.0], [1.5, 3.0]])
    m = ensemble_moments(means, variances)
    np.testing.assert_allclose(m.mean, [2.0, 2.0])
    np.testing.assert_allclose(m.aleatoric, [1.0, 2.0])
    np.testing.assert_allclose(m.epistemic, [1.0, 0.0])  # ((1-2)² + (3-2)²)/2 = 1; identical means: 0
    np.testing.assert_allclose(m.variance, [2.0, 2.0])
    np.testing.assert_allclose(m.std, np.sqrt([2.0, 2.0]))
    assert m.members == 2


def test_total_variance_is_the_mixture_variance():
    """aleatoric + epistemic = E[σ²_m + μ²_m] − (E μ_m)², the second moment form of the mixture variance."""
    rng = np.random.default_rng(3)
    means = rng.normal(size=(7, 50, 2))
    variances = rng.uniform(0.1, 2.0, size=(7, 50, 2))
    m = ensemble_moments(means, variances)
    second_moment = (variances + means**2).mean(axis=0)
    np.testing.assert_allclose(m.aleatoric + m.epistemic, second_moment - means.mean(axis=0) ** 2, rtol=1e-12)
    np.testing.assert_allclose(m.variance, m.aleatoric + m.epistemic)


def test_mixture_variance_matches_sampling():
    """The closed form agrees with the variance of samples drawn from the equal-weight Gaussian mixture."""
    rng = np.random.default_rng(4)
    means, sds = np.array([[-1.0], [0.5], [2.0]]), np.array([[0.3], [1.0], [0.6]])
    member = rng.integers(0, 3, size=400_000)
    draws = rng.normal(means[member, 0], sds[member, 0])
    m = ensemble_moments(means, sds**2)
    assert m.variance[0] == pytest.approx(draws.var(), rel=0.01)


def test_ensemble_without_variances_is_purely_epistemic():
    m = ensemble_moments([[0.0, 4.0], [2.0, 4.0], [4.0, 4.0]])
    np.testing.assert_allclose(m.aleatoric, [0.0, 0.0])
    np.testing.assert_allclose(m.epistemic, [8 / 3, 0.0])


def test_ensemble_rejects_bad_input():
    with pytest.raises(DataError, match="leading member axis"):
        ensemble_moments([1.0, 2.0])
    with pytest.raises(DataError, match="shape mismatch"):
        ensemble_moments(np.zeros((3, 4)), np.ones((3, 5)))
    with pytest.raises(DataError, match="must be > 0"):
        ensemble_moments(np.zeros((2, 2)), [[1.0, 0.0], [1.0, 1.0]])
    with pytest.raises(DataError, match=r"non-finite values \(first at index \(1, 0\)"):
        ensemble_moments([[1.0, 2.0], [np.nan, 2.0]])


def test_summarize_passes_like_candle_inference():
    passes = np.array([[1.0, 10.0], [2.0, 10.0], [6.0, 10.0]])  # 3 passes, 2 rows
    s = summarize_passes(passes)
    np.testing.assert_allclose(s.mean, [3.0, 10.0])
    np.testing.assert_allclose(s.std, [math.sqrt(14 / 3), 0.0])  # population std: ((4 + 1 + 9) / 3) ** 0.5
    np.testing.assert_allclose(s.min, [1.0, 10.0])
    np.testing.assert_allclose(s.max, [6.0, 10.0])
    assert s.passes == 3


def test_split_candle_heads():
    het = np.array([[1.0, 0.0, 5.0, math.log(4.0)]])  # (μ0, log σ²0, μ1, log σ²1)
    mean, var = split_heteroscedastic(het)
    np.testing.assert_allclose(mean, [[1.0, 5.0]])
    np.testing.assert_allclose(var, [[1.0, 4.0]])
    q50, lo, hi = split_quantiles(np.array([[0.5, 0.1, 0.9, 5.0, 1.0, 9.0]]))
    np.testing.assert_allclose(q50, [[0.5, 5.0]])
    np.testing.assert_allclose(lo, [[0.1, 1.0]])
    np.testing.assert_allclose(hi, [[0.9, 9.0]])
    with pytest.raises(DataError, match="even last axis"):
        split_heteroscedastic(np.zeros((2, 3)))
    with pytest.raises(DataError, match="divisible by 3"):
        split_quantiles(np.zeros((2, 4)))


def test_quantile_sigma_inter_decile_over_2_56():
    np.testing.assert_allclose(quantile_sigma([1.0, -2.56], [3.56, 2.56]), [1.0, 2.0])
    # For a Gaussian the 10-90 % range is 2·z₀.₉·σ, so the CANDLE divisor recovers σ to 0.2 %.
    z90 = 1.2815515655446004
    assert quantile_sigma([-z90 * 3.0], [z90 * 3.0])[0] == pytest.approx(3.0, rel=2e-3)
    with pytest.raises(DataError, match="shape mismatch"):
        quantile_sigma([1.0, 2.0], [3.0])


def test_gaussian_interval_width():
    lo, hi = gaussian_interval([0.0, 10.0], [1.0, 2.0], alpha=0.05)
    np.testing.assert_allclose(hi - lo, 2 * 1.959963984540054 * np.array([1.0, 2.0]))
    with pytest.raises(UsageError, match=r"alpha must be in \(0, 1\), got 1.5"):
        gaussian_interval([0.0], [1.0], alpha=1.5)


# ------------------------------------------------------------------ calibration metrics


def test_gaussian_nll_formula():
    # Row 1: y = μ, σ = 1 → ½ log 2π. Row 2: y − μ = 2, σ = 2 → ½ log(8π) + 4 / 8.
    expected = (0.5 * math.log(2 * math.pi) + 0.5 * math.log(8 * math.pi) + 0.5) / 2
    assert gaussian_nll([0.0, 3.0], [0.0, 1.0], [1.0, 2.0]) == pytest.approx(expected, rel=1e-12)
    with pytest.raises(DataError, match="sigma must be > 0"):
        gaussian_nll([0.0], [0.0], [0.0])


def test_categorical_nll_and_brier_hand_computed():
    probs = np.array([[0.7, 0.2, 0.1], [0.5, 0.25, 0.25]])
    labels = [0, 2]
    assert categorical_nll(probs, labels) == pytest.approx(-(math.log(0.7) + math.log(0.25)) / 2)
    # Row 1: 0.3² + 0.2² + 0.1² = 0.14. Row 2: 0.5² + 0.25² + 0.75² = 0.875.
    assert brier_score(probs, labels) == pytest.approx((0.14 + 0.875) / 2)
    assert brier_score(np.eye(3), [0, 1, 2]) == 0.0
    assert brier_score(np.eye(3), [1, 2, 0]) == pytest.approx(2.0)  # the worst possible score
    assert math.isfinite(categorical_nll(np.eye(2), [1, 0]))  # p = 0 for the truth is clipped, not inf


def test_ece_perfectly_calibrated_is_zero():
    # Confidence 0.8 in one bin, right 4 times out of 5; confidence 0.6 in another, right 3 out of 5.
    probs = np.array([[0.8, 0.2]] * 5 + [[0.6, 0.4]] * 5)
    labels = [0, 0, 0, 0, 1] + [0, 0, 0, 1, 1]
    assert expected_calibration_error(probs, labels, bins=10) == pytest.approx(0.0, abs=1e-12)


def test_ece_over_confident_hand_computed():
    # Confidence 0.9 but right half the time: ECE = |0.5 − 0.9| = 0.4.
    probs = np.array([[0.9, 0.1]] * 4)
    assert expected_calibration_error(probs, [0, 1, 0, 1], bins=10) == pytest.approx(0.4)
    # Two bins weighted by size: 6 rows at 0.95 all right (gap 0.05), 4 rows at 0.65 with 1 right (gap 0.4).
    probs = np.array([[0.95, 0.05]] * 6 + [[0.35, 0.65]] * 4)
    labels = [0] * 6 + [1, 0, 0, 0]
    assert expected_calibration_error(probs, labels, bins=10) == pytest.approx(0.6 * 0.05 + 0.4 * 0.4)


def test_reliability_bins_are_equal_width_and_right_closed():
    probs = np.array([[0.5, 0.5], [0.55, 0.45], [1.0, 0.0], [0.3, 0.7]])
    table = reliability_bins(probs, [0, 1, 0, 1], bins=5)
    np.testing.assert_allclose(table.edges, [0, 0.2, 0.4, 0.6, 0.8, 1.0])
    np.testing.assert_array_equal(table.counts, [0, 0, 2, 1, 1])  # 0.5 ∈ (0.4, 0.6], 1.0 in the last bin
    np.testing.assert_allclose(table.confidence[2:], [0.525, 0.7, 1.0])
    np.testing.assert_allclose(table.accuracy[2:], [0.5, 1.0, 1.0])
    assert np.isnan(table.accuracy[0])
    edge = reliability_bins([[0.6, 0.4], [0.3, 0.7]], [0, 1], bins=10)  # 0.6 · 10 is 6.000000000000001
    assert edge.counts[5] == 1 and edge.counts[6] == 1
    with pytest.raises(UsageError, match="bins must be a positive integer"):
        reliability_bins(probs, [0, 1, 0, 1], bins=0)


def test_classifier_input_checks():
    with pytest.raises(DataError, match="rows must sum to 1, row 1 sums to 0.9"):
        brier_score([[0.5, 0.5], [0.5, 0.4]], [0, 1])
    with pytest.raises(DataError, match=r"integers in \[0, 2\), got range \[0, 2\]"):
        brier_score([[0.5, 0.5], [0.5, 0.5]], [0, 2])
    with pytest.raises(DataError, match="one class index per row"):
        brier_score([[0.5, 0.5], [0.5, 0.5]], [[1, 0], [0, 1]])
    with pytest.raises(DataError, match="apply softmax"):
        categorical_nll([[2.0, -1.0]], [0])


def test_interval_coverage_and_width():
    y = np.array([0.0, 1.0, 2.0, 3.0])
    lower, upper = np.array([-1.0, 1.0, 2.5, 0.0]), np.array([1.0, 2.0, 3.0, 3.0])
    assert interval_coverage(y, lower, upper) == 0.75  # the bounds are inclusive; row 3 misses
    assert mean_interval_width(lower, upper) == pytest.approx((2 + 1 + 0.5 + 3) / 4)
    with pytest.raises(DataError, match=r"shape mismatch: y \(4,\), lower \(3,\)"):
        interval_coverage(y, lower[:3], upper)


def test_set_coverage_and_size():
    sets = np.array([[True, False, True], [False, False, False], [True, True, True]])
    assert set_coverage(sets, [2, 0, 1]) == pytest.approx(2 / 3)
    assert mean_set_size(sets) == pytest.approx(5 / 3)
    with pytest.raises(DataError, match="boolean"):
        mean_set_size(sets.astype(int))


def test_gaussian_coverage_curve_of_a_calibrated_model():
    rng = np.random.default_rng(5)
    sigma = rng.uniform(0.5, 3.0, 20_000)
    y = rng.normal(0.0, sigma)
    levels = np.array([0.5, 0.8, 0.9, 0.95])
    observed = gaussian_coverage_curve(y, np.zeros_like(y), sigma, levels)
    np.testing.assert_allclose(observed, levels, atol=0.01)
    under = gaussian_coverage_curve(y, np.zeros_like(y), sigma / 2, levels)  # σ too small → under-covers
    assert (under < levels - 0.1).all()


# ------------------------------------------------------------------ abstention

ABSTAIN_PROBS = np.array([
    [0.7, 0.2, 0.1],  # predicts 0, right
    [0.1, 0.6, 0.3],  # predicts 1, wrong (label 0)
    [0.2, 0.1, 0.7],  # abstains
    [0.3, 0.5, 0.2],  # predicts 1, right
    [0.4, 0.1, 0.5],  # abstains
])
ABSTAIN_LABELS = [0, 0, 1, 1, 0]


def test_abstention_summary_like_candle_metrics():
    s = abstention_summary(ABSTAIN_PROBS, ABSTAIN_LABELS)
    assert (s.rows, s.abstained) == (5, 2)
    assert s.abstention_rate == pytest.approx(0.4)
    assert s.coverage == pytest.approx(0.6)
    assert s.accuracy_kept == pytest.approx(2 / 3)
    assert s.risk == pytest.approx(1 / 3)
    # The abstain unit may sit in any column.
    moved = ABSTAIN_PROBS[:, [2, 0, 1]]
    assert abstention_summary(moved, ABSTAIN_LABELS, abstain_index=0) == s
    everything = abstention_summary([[0.1, 0.1, 0.8]], [0])
    assert everything.abstention_rate == 1.0 and math.isnan(everything.accuracy_kept)


def test_coverage_risk_curve():
    coverage, risk = coverage_risk_curve(ABSTAIN_PROBS, ABSTAIN_LABELS)
    # Kept by increasing abstain probability: rows 0 (0.1, right), 3 (0.2, right), 1 (0.3, wrong),
    # 4 (0.5, predicts 0: right), 2 (0.7, predicts 0: wrong).
    np.testing.assert_allclose(coverage, [0.2, 0.4, 0.6, 0.8, 1.0])
    np.testing.assert_allclose(risk, [0, 0, 1 / 3, 1 / 4, 2 / 5])
    assert area_under_risk_coverage(ABSTAIN_PROBS, ABSTAIN_LABELS) == pytest.approx((1 / 3 + 1 / 4 + 2 / 5) / 5)
    with pytest.raises(UsageError, match="abstain_index 3 is outside the 3 columns"):
        coverage_risk_curve(ABSTAIN_PROBS, ABSTAIN_LABELS, abstain_index=3)
    with pytest.raises(DataError, match=r"integers in \[0, 2\)"):
        abstention_summary(ABSTAIN_PROBS, [0, 1, 2, 0, 0])  # 2 is the abstain unit, not a class
