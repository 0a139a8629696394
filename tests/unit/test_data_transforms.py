"""Scalers against hand computations (sklearn semantics), one-hot."""

import json

import numpy as np
import pytest

from candle_ray.data.transforms import apply_scaler, fit_scaler, one_hot
from candle_ray.errors import DataError, UsageError

# Column 0: mixed signs; column 1: constant non-zero; column 2: all zero.
X = np.array([[1.0, 3.0, 0.0], [-4.0, 3.0, 0.0], [2.0, 3.0, 0.0], [5.0, 3.0, 0.0]], dtype=np.float32)


def roundtrip(params):
    """Parameters must survive JSON (they are stored in the cache's scaler.json)."""
    return json.loads(json.dumps(params))


def test_maxabs_divides_by_max_abs_and_keeps_zero_columns():
    params = roundtrip(fit_scaler("maxabs", X))
    assert params["scale"] == [5.0, 3.0, 1.0]
    out = apply_scaler(params, X)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[:, 0], [0.2, -0.8, 0.4, 1.0], rtol=1e-6)
    np.testing.assert_allclose(out[:, 1], [1, 1, 1, 1])
    np.testing.assert_allclose(out[:, 2], [0, 0, 0, 0])


def test_minmax_maps_to_unit_interval_and_constant_columns_to_zero():
    params = roundtrip(fit_scaler("minmax", X))
    assert params["min"] == [-4.0, 3.0, 0.0] and params["scale"] == [9.0, 1.0, 1.0]
    out = apply_scaler(params, X)
    np.testing.assert_allclose(out[:, 0], [5 / 9, 0, 6 / 9, 1], rtol=1e-6)
    np.testing.assert_allclose(out[:, 1:], 0)


def test_std_uses_population_std_and_unit_scale_for_constant_columns():
    params = roundtrip(fit_scaler("std", X))
    column = X[:, 0].astype(np.float64)
    mean, std = column.mean(), np.sqrt(((column - column.mean()) ** 2).mean())
    np.testing.assert_allclose(params["mean"], [mean, 3.0, 0.0])
    np.testing.assert_allclose(params["scale"], [std, 1.0, 1.0])
    out = apply_scaler(params, X)
    np.testing.assert_allclose(out[:, 0], (column - mean) / std, rtol=1e-6)
    np.testing.assert_allclose(out[:, 0].mean(), 0, atol=1e-6)
    np.testing.assert_allclose(out[:, 0].std(), 1, rtol=1e-6)
    np.testing.assert_allclose(out[:, 1:], 0)


def test_log_is_log1p_and_refuses_negative_values():
    Y = np.abs(X)
    params = fit_scaler("log", Y)
    assert params == {"kind": "log"}
    np.testing.assert_allclose(apply_scaler(params, Y), np.log1p(Y), rtol=1e-6)
    with pytest.raises(DataError) as error:
        fit_scaler("log", X)
    message = str(error.value)
    assert "\n" not in message and "-4.0" in message and "feature 1" in message
    with pytest.raises(DataError):
        apply_scaler(params, X)


def test_none_returns_a_float32_copy():
    out = apply_scaler(fit_scaler("none", X), X)
    assert out.dtype == np.float32 and np.array_equal(out, X) and not np.shares_memory(out, X)


@pytest.mark.parametrize("kind", ["maxabs", "minmax", "std"])
def test_fitting_on_several_matrices_equals_fitting_on_their_concatenation(kind):
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(3000, 5)).astype(np.float32), rng.normal(2, 3, size=(700, 5)).astype(np.float32)
    together = fit_scaler(kind, np.concatenate([a, b]))
    apart = fit_scaler(kind, [a, b])
    for key in together:
        if key != "kind":
            np.testing.assert_allclose(apart[key], together[key], rtol=1e-9)


@pytest.mark.parametrize("kind", ["maxabs", "minmax", "std"])
def test_matches_sklearn_when_available(kind):
    preprocessing = pytest.importorskip("sklearn.preprocessing")
    cls = {"maxabs": preprocessing.MaxAbsScaler, "minmax": preprocessing.MinMaxScaler, "std": preprocessing.StandardScaler}[kind]
    rng = np.random.default_rng(1)
    data = np.concatenate([rng.normal(size=(50, 4)), np.full((50, 1), 7.0)], axis=1).astype(np.float32)
    expected = cls().fit_transform(data.astype(np.float64))
    np.testing.assert_allclose(apply_scaler(fit_scaler(kind, data), data), expected, rtol=1e-5, atol=1e-6)


def test_apply_checks_the_width():
    with pytest.raises(DataError, match="3 features"):
        apply_scaler(fit_scaler("maxabs", X), X[:, :2])


def test_unknown_kind_is_a_usage_error():
    with pytest.raises(UsageError):
        fit_scaler("minabs", X)
    with pytest.raises(UsageError):
        apply_scaler({"kind": "robust"}, X)


def test_one_hot():
    out = one_hot(np.array([0, 2, 1]), 3)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, [[1, 0, 0], [0, 0, 1], [0, 1, 0]])
    with pytest.raises(DataError, match="out of range"):
        one_hot(np.array([0, 5]), 2)
