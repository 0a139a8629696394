"""Split-conformal intervals and sets: the finite-sample quantile, coverage on seeded synthetic data with
known heteroscedastic noise over many repetitions, state round trips and input errors (no Ray)."""

import json

import numpy as np
import pytest

from candle_ray.conformal import (
    ConformalClassifier,
    ConformalQuantileRegressor,
    SplitConformalRegressor,
    conformal_from_dict,
    conformal_quantile,
    minimum_calibration_rows,
    quantile_rank,
)
from candle_ray.errors import DataError, UsageError
from candle_ray.uq import interval_coverage, mean_interval_width, mean_set_size, set_coverage

ALPHA = 0.1
REPEATS = 200
N_CAL, N_TEST = 500, 500
Z90 = 1.2815515655446004  # standard normal 90 % quantile
# With continuous scores E[coverage] = k/(n+1) exactly (0.9002 here); the mean over REPEATS runs has a
# standard error of about 0.0014, so 0.006 is over 4 standard errors.
EXPECTED, TOLERANCE = quantile_rank(N_CAL, ALPHA) / (N_CAL + 1), 0.006


def regression(rng, n):
    """y = sin 2x + ε, ε ~ N(0, σ(x)²) with σ(x) = 0.1 + 0.4x on x ~ U(0, 4): noise grows 17-fold with x.
    Returns x, y, the true mean and the true σ (a model that learned both exactly)."""
    x = rng.uniform(0, 4, n)
    sigma = 0.1 + 0.4 * x
    mean = np.sin(2 * x)
    return x, mean + sigma * rng.normal(size=n), mean, sigma


def classification(rng, n, classes=6):
    """Labels drawn from softmax(2·z) with z ~ N(0, 1); the model reports the over-confident softmax(3·z)."""
    logits = 2.0 * rng.normal(size=(n, classes))
    truth = np.exp(logits)
    truth /= truth.sum(axis=1, keepdims=True)
    labels = (truth.cumsum(axis=1) > rng.uniform(size=(n, 1))).argmax(axis=1)
    model = np.exp(1.5 * logits)
    return model / model.sum(axis=1, keepdims=True), labels


def repeated(run):
    """Mean of run(rng, repeat) over REPEATS seeded repetitions, per returned statistic."""
    rng = np.random.default_rng(2024)
    return np.mean([run(rng, r) for r in range(REPEATS)], axis=0)


# ------------------------------------------------------------------ the conformal quantile


def test_quantile_is_the_kth_smallest_score():
    scores = np.arange(10.0, 0.0, -1.0)  # 10 … 1, unsorted on purpose
    assert quantile_rank(10, 0.2) == 9  # ⌈11 · 0.8⌉ = ⌈8.8⌉
    assert conformal_quantile(scores, 0.2) == 9.0
    assert conformal_quantile(scores, 0.5) == 6.0  # ⌈5.5⌉ = 6
    assert quantile_rank(9, 0.7) == 3  # 10 · 0.3 is 3.0000000000000004 in floating point
    np.testing.assert_allclose(conformal_quantile(np.column_stack([scores, 10 * scores]), 0.2), [9.0, 90.0])


def test_too_small_calibration_names_size_alpha_and_minimum():
    assert [minimum_calibration_rows(a) for a in (0.5, 0.2, 0.1, 0.05, 0.01)] == [1, 4, 9, 19, 99]
    with pytest.raises(DataError, match=r"calibration set has 8 rows, too few for alpha=0.1: .* at least 9 rows"):
        SplitConformalRegressor(0.1).fit(np.zeros(8), np.zeros(8))
    with pytest.raises(DataError, match=r"18 rows, too few for alpha=0.05: .* at least 19 rows"):
        ConformalClassifier(0.05).fit(np.full((18, 2), 0.5), np.zeros(18, dtype=int))
    assert SplitConformalRegressor(0.1).fit(np.arange(9.0), np.zeros(9)).quantile == 8.0  # 9 rows suffice


# ------------------------------------------------------------------ coverage over repetitions


def test_regression_intervals_cover_90_percent():
    def run(rng, _):
        _, y, mean, sigma = regression(rng, N_CAL)
        _, y_test, mean_test, sigma_test = regression(rng, N_TEST)
        absolute = SplitConformalRegressor(ALPHA).fit(y, mean).predict(mean_test)
        normalized = SplitConformalRegressor(ALPHA, score="normalized").fit(y, mean, sigma).predict(mean_test, sigma_test)
        return [interval_coverage(y_test, *absolute), interval_coverage(y_test, *normalized),
                mean_interval_width(*absolute), mean_interval_width(*normalized)]

    cover_abs, cover_norm, width_abs, width_norm = repeated(run)
    # Guarantee: 1 − α ≤ E[coverage] ≤ 1 − α + 1/(n+1) ≈ 0.902.
    assert 0.88 <= cover_abs <= 0.92 and 0.88 <= cover_norm <= 0.92
    assert abs(cover_abs - EXPECTED) < TOLERANCE and abs(cover_norm - EXPECTED) < TOLERANCE
    assert width_norm < 0.9 * width_abs  # σ-scaled intervals are narrower where the noise is small


def test_normalized_scores_cover_the_noisy_region_too():
    """Absolute residuals give one width everywhere: too narrow where σ(x) is large. Scaling by σ fixes it."""
    rng = np.random.default_rng(7)
    _, y, mean, sigma = regression(rng, 4000)
    x_test, y_test, mean_test, sigma_test = regression(rng, 20_000)
    noisy = x_test > 3
    absolute = SplitConformalRegressor(ALPHA).fit(y, mean).predict(mean_test)
    normalized = SplitConformalRegressor(ALPHA, score="normalized").fit(y, mean, sigma).predict(mean_test, sigma_test)
    assert interval_coverage(y_test[noisy], absolute[0][noisy], absolute[1][noisy]) < 0.8
    assert 0.88 <= interval_coverage(y_test[noisy], normalized[0][noisy], normalized[1][noisy]) <= 0.92


@pytest.mark.parametrize("scale", [0.5, 1.6])
def test_cqr_corrects_too_narrow_and_too_wide_quantile_heads(scale):
    """Quantile heads at μ ± scale · z₀.₉ · σ: nominal 80 %, really under- (0.5) or over-covering (1.6)."""
    def run(rng, _):
        _, y, mean, sigma = regression(rng, N_CAL)
        _, y_test, mean_test, sigma_test = regression(rng, N_TEST)
        half, half_test = scale * Z90 * sigma, scale * Z90 * sigma_test
        cqr = ConformalQuantileRegressor(ALPHA).fit(y, mean - half, mean + half)
        lower, upper = cqr.predict(mean_test - half_test, mean_test + half_test)
        raw = interval_coverage(y_test, mean_test - half_test, mean_test + half_test)
        return [interval_coverage(y_test, lower, upper), raw, float(cqr.quantile)]

    covered, raw, shift = repeated(run)
    assert 0.88 <= covered <= 0.92
    assert abs(covered - EXPECTED) < TOLERANCE
    assert (raw < 0.6 and shift > 0) if scale < 1 else (raw > 0.95 and shift < 0)


@pytest.mark.parametrize("score, randomized, smoothed",
                         [("lac", False, False), ("aps", False, False), ("aps", True, False), ("lac", False, True)])
def test_prediction_sets_cover_90_percent(score, randomized, smoothed):
    def run(rng, r):
        probs, labels = classification(rng, N_CAL)
        probs_test, labels_test = classification(rng, N_TEST)
        sets = ConformalClassifier(ALPHA, score=score, randomized=randomized, seed=r,
                                   smoothed=smoothed).fit(probs, labels).predict(probs_test)
        return [set_coverage(sets, labels_test), mean_set_size(sets)]

    covered, size = repeated(run)
    assert 0.88 <= covered <= 0.92
    assert abs(covered - EXPECTED) < TOLERANCE
    assert 1.0 < size < 6.0  # informative: neither single labels nor every class


def test_smoothed_sets_cover_exactly_with_few_calibration_rows():
    """17 calibration rows (a small study's validation split): the rank rule covers 17/18 = 0.944, and 100 %
    for a model sure of every row (tied scores); smoothed p-values cover 0.90 in both cases."""
    def run(rng, r):
        probs, labels = classification(rng, 17)
        probs_test, labels_test = classification(rng, 50)
        sure = np.eye(4)[rng.integers(0, 4, 67)] * 0.999 + 0.00025
        sure_labels = sure.argmax(axis=1)
        out = []
        for smoothed in (False, True):
            model = ConformalClassifier(ALPHA, seed=r, smoothed=smoothed)
            out.append(set_coverage(model.fit(probs, labels).predict(probs_test), labels_test))
            out.append(set_coverage(model.fit(sure[:17], sure_labels[:17]).predict(sure[17:]), sure_labels[17:]))
        return out

    rank, rank_sure, smooth, smooth_sure = repeated(run)
    assert abs(rank - 17 / 18) < 0.01 and rank_sure == 1.0
    assert abs(smooth - 0.9) < 0.01 and abs(smooth_sure - 0.9) < 0.01


def test_smoothed_sets_by_hand():
    """n = 9, α = 0.2: a class is in when #{s_i > s} + v·(#{s_i = s} + 1) > α(n+1) = 2."""
    probs = np.column_stack([np.arange(9, 0, -1) / 10, np.arange(1, 10) / 10])  # true class 0: scores 0.1 … 0.9
    model = ConformalClassifier(0.2, smoothed=True, seed=4).fit(probs, np.zeros(9, dtype=int))
    np.testing.assert_allclose(model.tail, [0.7, 0.8, 0.9])  # the 3 largest: all that a p-value > 0.2 needs
    # row 1, class 0 at 0.75: 2 above, 2 + v > 2 (v > 0); class 1 at 0.25: 3 above, in whatever v is
    # row 2, class 0 at 0.95 and row 3 at 0.9 (a tie): 0 + v or 0 + 2v, never above 2
    rows = np.array([[0.25, 0.75], [0.05, 0.95], [0.1, 0.9]])
    assert model.predict(rows).tolist() == [[True, True], [False, True], [False, True]]
    tied = np.tile([[0.2, 0.8]], (2000, 1))  # class 0 at 0.8: 1 above, 1 tie: in when 1 + 2v > 2, v > 1/2
    assert 0.45 < model.predict(tied)[:, 0].mean() < 0.55


def test_lac_gives_smaller_sets_than_aps():
    rng = np.random.default_rng(11)
    probs, labels = classification(rng, 3000)
    probs_test, _ = classification(rng, 5000)
    lac = ConformalClassifier(ALPHA, score="lac").fit(probs, labels).predict(probs_test)
    aps = ConformalClassifier(ALPHA, score="aps", randomized=True).fit(probs, labels).predict(probs_test)
    assert mean_set_size(lac) < mean_set_size(aps)


# ------------------------------------------------------------------ scores and sets by hand


def test_class_scores_by_hand():
    probs = np.array([[0.2, 0.5, 0.3]])
    lac = ConformalClassifier(score="lac")
    aps = ConformalClassifier(score="aps")
    np.testing.assert_allclose(lac.class_scores(probs, stream=0), [[0.8, 0.5, 0.7]])
    np.testing.assert_allclose(aps.class_scores(probs, stream=0), [[1.0, 0.5, 0.8]])  # cumulative mass by rank
    aps.quantile, aps.classes = np.array(0.8), 3
    np.testing.assert_array_equal(aps.predict(probs), [[False, True, True]])
    rand = ConformalClassifier(score="aps", randomized=True, seed=3)
    scores = rand.class_scores(probs, stream=0)
    u = (scores[0, 1]) / 0.5  # top class: u · p
    np.testing.assert_allclose(scores, [[0.8 + u * 0.2, u * 0.5, 0.5 + u * 0.3]])
    assert 0 < u < 1
    np.testing.assert_array_equal(rand.class_scores(probs, stream=1), rand.class_scores(probs, stream=1))


def test_regression_intervals_by_hand():
    y, mean, sigma = np.array([1.0, 2.0, 3.0, 4.0]), np.array([1.5, 2.0, 1.0, 4.5]), np.array([1.0, 1.0, 4.0, 0.5])
    absolute = SplitConformalRegressor(0.2).fit(y, mean)  # scores 0.5, 0, 2, 0.5 → k = ⌈4⌉ = 4 → 2
    assert absolute.quantile == 2.0
    np.testing.assert_allclose(absolute.predict([0.0, 10.0]), [[-2.0, 8.0], [2.0, 12.0]])
    normalized = SplitConformalRegressor(0.2, score="normalized").fit(y, mean, sigma)  # 0.5, 0, 0.5, 1
    assert normalized.quantile == 1.0
    np.testing.assert_allclose(normalized.predict([0.0], [3.0]), [[-3.0], [3.0]])
    cqr = ConformalQuantileRegressor(0.2).fit(y, y - [1, 2, 3, 4], y + [1, 1, 1, 1])  # all −1
    assert cqr.quantile == -1.0
    np.testing.assert_allclose(cqr.predict([0.0], [5.0]), [[1.0], [4.0]])


def test_multi_output_regression_is_calibrated_per_column():
    rng = np.random.default_rng(5)
    y = rng.normal(size=(2000, 2)) * [1.0, 10.0]
    model = SplitConformalRegressor(ALPHA).fit(y, np.zeros_like(y))
    assert model.quantile.shape == (2,)
    assert model.quantile[1] / model.quantile[0] == pytest.approx(10.0, rel=0.15)
    y_test = rng.normal(size=(20_000, 2)) * [1.0, 10.0]
    lower, upper = model.predict(np.zeros_like(y_test))
    for column in range(2):
        assert 0.88 <= interval_coverage(y_test[:, column], lower[:, column], upper[:, column]) <= 0.92
    with pytest.raises(DataError, match="calibration was done on 2 output columns"):
        model.predict(np.zeros(5))


# ------------------------------------------------------------------ stored state


def test_state_round_trips_through_json():
    rng = np.random.default_rng(1)
    _, y, mean, sigma = regression(rng, 300)
    probs, labels = classification(rng, 300)
    fitted = [
        (SplitConformalRegressor(0.2, score="normalized").fit(y, mean, sigma), (mean, sigma)),
        (ConformalQuantileRegressor(0.1).fit(y, mean - sigma, mean + sigma), (mean - sigma, mean + sigma)),
        (ConformalClassifier(0.1, score="aps", randomized=True, seed=9).fit(probs, labels), (probs,)),
        (ConformalClassifier(0.1, smoothed=True, seed=9).fit(probs, labels), (probs,)),
    ]
    for model, inputs in fitted:
        state = json.loads(json.dumps(model.to_dict()))
        assert set(state) >= {"method", "version", "alpha", "calibration_rows", "quantile"}
        # small: no calibration data inside, only the ~α·n largest scores a smoothed set depends on
        assert len(state.get("tail", ())) <= 0.1 * 301 + 1 and len(json.dumps(state)) < 1200
        loaded = conformal_from_dict(state)
        assert type(loaded) is type(model) and loaded.to_dict() == model.to_dict()
        np.testing.assert_array_equal(np.asarray(loaded.predict(*inputs)), np.asarray(model.predict(*inputs)))


def test_bad_states_are_rejected():
    state = SplitConformalRegressor().fit(np.arange(20.0), np.zeros(20)).to_dict()
    with pytest.raises(DataError, match="lacks quantile"):
        conformal_from_dict({k: v for k, v in state.items() if k != "quantile"})
    with pytest.raises(DataError, match="method 'nope'"):
        conformal_from_dict({**state, "method": "nope"})
    with pytest.raises(DataError, match="not 'conformal_classification'"):
        ConformalClassifier.from_dict(state)
    with pytest.raises(DataError, match="version 99"):
        conformal_from_dict({**state, "version": 99})
    smoothed = ConformalClassifier(smoothed=True).fit(np.full((20, 2), 0.5), np.zeros(20, dtype=int)).to_dict()
    with pytest.raises(DataError, match="smoothed conformal state lacks tail"):
        conformal_from_dict({k: v for k, v in smoothed.items() if k != "tail"})
    with pytest.raises(UsageError, match=r"alpha must be in \(0, 1\), got 2"):
        conformal_from_dict({**state, "alpha": 2})


# ------------------------------------------------------------------ input errors


def test_input_errors_are_one_line_and_actionable():
    y = np.arange(20.0)
    for alpha in (0, 1, -0.1, 1.5):
        with pytest.raises(UsageError, match=f"alpha must be in \\(0, 1\\), got {alpha:g}"):
            SplitConformalRegressor(alpha)
    with pytest.raises(DataError, match=r"y has 1 non-finite values \(first at index \(3,\): nan\)"):
        SplitConformalRegressor().fit(np.where(y == 3, np.nan, y), y)
    with pytest.raises(DataError, match=r"shape mismatch: y \(20,\), mean \(19,\)"):
        SplitConformalRegressor().fit(y, y[:-1])
    with pytest.raises(UsageError, match="not calibrated; call fit"):
        SplitConformalRegressor().predict(y)
    with pytest.raises(UsageError, match="needs sigma"):
        SplitConformalRegressor(score="normalized").fit(y, y)
    with pytest.raises(DataError, match="sigma must be > 0"):
        SplitConformalRegressor(score="normalized").fit(y, y, np.zeros(20))
    with pytest.raises(UsageError, match="score must be one of absolute, normalized, got 'abs'"):
        SplitConformalRegressor(score="abs")
    with pytest.raises(UsageError, match="randomized=True applies to score 'aps' only"):
        ConformalClassifier(score="lac", randomized=True)
    classifier = ConformalClassifier().fit(np.full((20, 3), 1 / 3), np.zeros(20, dtype=int))
    with pytest.raises(DataError, match="probs has 2 classes but the calibration had 3"):
        classifier.predict(np.full((4, 2), 0.5))
    errors = []
    for bad in (lambda: SplitConformalRegressor(0.1).fit(np.zeros(3), np.zeros(3)),
                lambda: classifier.predict([[0.9, 0.9, 0.9]])):
        with pytest.raises(DataError) as info:
            bad()
        errors.append(str(info.value))
    assert all("\n" not in e and len(e) < 200 for e in errors)
