"""Split-conformal prediction: intervals and prediction sets with a finite-sample coverage guarantee.

Every method follows one recipe. On n calibration rows not used for training, compute a nonconformity score
s_i (large = the model was wrong); take q̂ = the k-th smallest score with k = ⌈(n+1)(1−α)⌉, i.e. the
empirical quantile at level k/n; on a new row, predict every answer whose score is ≤ q̂. If calibration and
test rows are exchangeable, P(truth is predicted) ≥ 1 − α, and ≤ 1 − α + 1/(n+1) when scores have no ties.

- SplitConformalRegressor: s = |y − μ| (score "absolute") or |y − μ| / σ ("normalized"); interval μ ± q̂(σ).
- ConformalQuantileRegressor (CQR, Romano et al. 2019): s = max(q_lo − y, y − q_hi); [q_lo − q̂, q_hi + q̂].
- ConformalClassifier: LAC s = 1 − p_y (smallest sets on average); APS s = Σ_{p_j > p_y} p_j + u·p_y
  (u = 1, or u ~ U(0,1) when randomized; adapts set size to how hard a row is). With smoothed=True a class
  is in the set when its smoothed conformal p-value (#{s_i > s} + v·(#{s_i = s} + 1)) / (n+1), v ~ U(0,1),
  exceeds α (Vovk et al. 2005): coverage is then exactly 1 − α in expectation for every n, where the rank
  rule over-covers by up to 1/(n+1) (0.944 for n = 17 at α = 0.1), and more when scores tie, as they do
  for a model that is sure of every row. The price: a row less typical than nearly all calibration rows
  may get an empty set.

A fitted calibrator is a small JSON-serialisable dict (to_dict / from_dict / conformal_from_dict), stored
next to a model and reused at prediction time without the calibration data.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from candle_ray.errors import DataError, UsageError
from candle_ray.uq import alpha_level, class_labels, finite_array, positive, probabilities, same_shape

STATE_VERSION = 1


def quantile_rank(n: int, alpha: float) -> int:
    """k = ⌈(n+1)(1−α)⌉, the rank of the conformal quantile among n sorted scores.

    Rounded to 9 decimals before the ceiling so that, e.g., n = 9, α = 0.7 gives 3 and not 4 from the
    float product 10 · (1 − 0.7) = 3.0000000000000004.
    """
    return math.ceil(round((n + 1) * (1 - alpha), 9))


def minimum_calibration_rows(alpha: float) -> int:
    """The smallest n with ⌈(n+1)(1−α)⌉ ≤ n (about 1/α − 1): fewer rows cannot give 1 − α coverage."""
    alpha = alpha_level(alpha)
    n = max(1, math.floor(1 / alpha - 1) - 1)
    while quantile_rank(n, alpha) > n:
        n += 1
    return n


def conformal_quantile(scores, alpha: float) -> np.ndarray:
    """q̂ = k-th smallest score per column, k = ⌈(n+1)(1−α)⌉ (the empirical quantile at level k/n).

    scores: shape (n,) or (n, outputs); returns a 0-d or (outputs,) array.
    DataError when k > n: the calibration set is too small for this α.
    """
    alpha = alpha_level(alpha)
    s = finite_array(scores, "conformal scores", ndim=(1, 2))
    n = s.shape[0]
    k = quantile_rank(n, alpha)
    if k > n:
        raise DataError(f"calibration set has {n} rows, too few for alpha={alpha:g}: split conformal needs "
                        f"ceil((n+1)(1-alpha)) <= n, i.e. at least {minimum_calibration_rows(alpha)} rows; "
                        "add calibration rows or use a larger alpha")
    return np.partition(s, k - 1, axis=0)[k - 1]


class _Conformal:
    """Shared state handling: alpha, the fitted quantile, and the dict round trip."""

    method = ""
    _options: tuple[str, ...] = ()  # constructor arguments that go into the state

    def __init__(self, alpha: float = 0.1):
        self.alpha = alpha_level(alpha)
        self.quantile: np.ndarray | None = None
        self.calibration_rows = 0

    def _set_quantile(self, scores: np.ndarray) -> None:
        self.quantile = conformal_quantile(scores, self.alpha)
        self.calibration_rows = int(scores.shape[0])

    def _fitted(self) -> np.ndarray:
        if self.quantile is None:
            raise UsageError(f"{type(self).__name__} is not calibrated; call fit(...) on calibration data "
                             "or load a stored state with from_dict(...)")
        return self.quantile

    def _check_outputs(self, arr: np.ndarray, name: str) -> None:
        """A per-output quantile needs predictions with the same number of output columns."""
        q = self._fitted()
        columns = arr.shape[1] if arr.ndim == 2 else None
        expected = q.shape[0] if q.ndim == 1 else None
        if columns != expected:
            raise DataError(f"{name} has shape {arr.shape} but the calibration was done on "
                            f"{'1-D targets' if expected is None else f'{expected} output columns'}; "
                            "predict with the same output layout as at calibration")

    def to_dict(self) -> dict[str, Any]:
        """The calibration as plain JSON types: method, version, alpha, calibration_rows, quantile, options."""
        q = self._fitted()
        return {"method": self.method, "version": STATE_VERSION, "alpha": self.alpha,
                "calibration_rows": self.calibration_rows,
                "quantile": q.tolist() if q.ndim else float(q),
                **{name: getattr(self, name) for name in self._options}}

    @classmethod
    def from_dict(cls, state: dict[str, Any]):
        """Rebuild a calibrated instance from `to_dict()` output (e.g. read back from JSON)."""
        if not isinstance(state, dict):
            raise DataError(f"conformal state must be a dict, got {type(state).__name__}; "
                            "pass the dict written by to_dict()")
        if state.get("method") != cls.method:
            raise DataError(f"conformal state is for method {state.get('method')!r}, not {cls.method!r}; "
                            "load it with conformal_from_dict(...)")
        missing = [k for k in ("version", "alpha", "calibration_rows", "quantile", *cls._options)
                   if k not in state]
        if missing:
            raise DataError(f"conformal state lacks {', '.join(missing)}; re-run the calibration to write a new one")
        if state["version"] != STATE_VERSION:
            raise DataError(f"conformal state version {state['version']!r} is not {STATE_VERSION}; "
                            "re-run the calibration with this candle-ray")
        obj = cls(alpha=state["alpha"], **{name: state[name] for name in cls._options})
        q = finite_array(state["quantile"], "conformal state quantile", ndim=(0, 1))
        obj.quantile, obj.calibration_rows = q, int(state["calibration_rows"])
        return obj


class SplitConformalRegressor(_Conformal):
    """Split-conformal intervals around point predictions.

    score "absolute":   s = |y − μ|,      interval μ ± q̂        (same width everywhere);
    score "normalized": s = |y − μ| / σ,  interval μ ± q̂·σ      (width follows the model's σ).
    y, μ, σ of shape (rows,) or (rows, outputs); each output column is calibrated on its own.
    """

    method = "split_conformal_regression"
    _options = ("score",)
    SCORES = ("absolute", "normalized")

    def __init__(self, alpha: float = 0.1, score: str = "absolute"):
        super().__init__(alpha)
        if score not in self.SCORES:
            raise UsageError(f"score must be one of {', '.join(self.SCORES)}, got {score!r}")
        self.score = score

    def _scale(self, sigma, shape: tuple[int, ...]) -> np.ndarray:
        if self.score == "absolute":
            return np.ones(shape)
        if sigma is None:
            raise UsageError("score 'normalized' needs sigma (the model's predicted standard deviation); "
                             "pass sigma=... or use score='absolute'")
        s = positive(finite_array(sigma, "sigma", ndim=(1, 2)), "sigma")
        if s.shape != shape:
            raise DataError(f"shape mismatch: predictions {shape}, sigma {s.shape}; pass one sigma per prediction")
        return s

    def fit(self, y, mean, sigma=None) -> SplitConformalRegressor:
        y, mu = finite_array(y, "y", ndim=(1, 2)), finite_array(mean, "mean", ndim=(1, 2))
        same_shape(y=y, mean=mu)
        self._set_quantile(np.abs(y - mu) / self._scale(sigma, mu.shape))
        return self

    def predict(self, mean, sigma=None) -> tuple[np.ndarray, np.ndarray]:
        """(lower, upper) = μ ∓ q̂·σ (σ = 1 for the absolute score)."""
        mu = finite_array(mean, "mean", ndim=(1, 2))
        self._check_outputs(mu, "mean")
        half = self.quantile * self._scale(sigma, mu.shape)
        return mu - half, mu + half


class ConformalQuantileRegressor(_Conformal):
    """Conformalized quantile regression (CQR) on lower/upper quantile heads (e.g. CANDLE's q10, q90).

    s = max(q_lo − y, y − q_hi) (negative inside the band); interval [q_lo − q̂, q_hi + q̂].
    q̂ < 0 narrows a band that was too wide. The heads' nominal level need not match α.
    """

    method = "conformalized_quantile_regression"

    def _band(self, lower, upper) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = finite_array(lower, "lower", ndim=(1, 2)), finite_array(upper, "upper", ndim=(1, 2))
        same_shape(lower=lo, upper=hi)
        return lo, hi

    def fit(self, y, lower, upper) -> ConformalQuantileRegressor:
        lo, hi = self._band(lower, upper)
        y = finite_array(y, "y", ndim=(1, 2))
        same_shape(y=y, lower=lo)
        self._set_quantile(np.maximum(lo - y, y - hi))
        return self

    def predict(self, lower, upper) -> tuple[np.ndarray, np.ndarray]:
        """(q_lo − q̂, q_hi + q̂)."""
        lo, hi = self._band(lower, upper)
        self._check_outputs(lo, "lower")
        return lo - self.quantile, hi + self.quantile


class ConformalClassifier(_Conformal):
    """Prediction sets C(x) = {k : s(x, k) ≤ q̂} from class probabilities, as a boolean (rows, classes) matrix.

    score "lac": s(x, k) = 1 − p_k.
    score "aps": s(x, k) = Σ_{j ranked above k} p_j + u·p_k (classes ranked by decreasing p, ties by index),
        u = 1, or with randomized=True u ~ U(0, 1) per row, drawn from `seed` (fit and predict use separate
        streams, so predicting the same rows twice gives the same sets).
    smoothed=True: C(x) = {k : smoothed p-value of s(x, k) > α} (module docstring), with one v ~ U(0, 1) per
        row from its own stream of `seed`; the state then keeps `tail`, the calibration scores at or above
        the ⌊α(n+1)⌋+1-th largest (about α·n numbers), the only ones a p-value above α depends on.
    Sets may be empty when no class is plausible enough; coverage counts them as misses.
    """

    method = "conformal_classification"
    _options = ("score", "randomized", "seed", "classes", "smoothed")
    SCORES = ("lac", "aps")

    def __init__(self, alpha: float = 0.1, score: str = "lac", randomized: bool = False, seed: int = 0,
                 classes: int | None = None, smoothed: bool = False):
        super().__init__(alpha)
        if score not in self.SCORES:
            raise UsageError(f"score must be one of {', '.join(self.SCORES)}, got {score!r}")
        if randomized and score != "aps":
            raise UsageError("randomized=True applies to score 'aps' only; drop it or use score='aps'")
        self.score, self.randomized, self.seed, self.classes = score, bool(randomized), int(seed), classes
        self.smoothed, self.tail = bool(smoothed), None

    def class_scores(self, probs, stream: int) -> np.ndarray:
        """s(x, k) for every row and class, shape (rows, classes); `stream` picks the random stream of u."""
        p = probabilities(probs)
        if self.score == "lac":
            return 1.0 - p
        order = np.argsort(-p, axis=1, kind="stable")
        ranked = np.take_along_axis(p, order, axis=1)
        u = (np.random.default_rng([self.seed, stream]).uniform(size=(p.shape[0], 1)) if self.randomized
             else np.ones((p.shape[0], 1)))
        ranked_scores = np.cumsum(ranked, axis=1) - (1 - u) * ranked
        scores = np.empty_like(p)
        np.put_along_axis(scores, order, ranked_scores, axis=1)
        return scores

    def fit(self, probs, labels) -> ConformalClassifier:
        p = probabilities(probs)
        y = class_labels(labels, p.shape[0], p.shape[1])
        self.classes = int(p.shape[1])
        scores = self.class_scores(p, stream=0)[np.arange(len(y)), y]
        self._set_quantile(scores)
        if self.smoothed:
            ranked = np.sort(scores)
            deciding = min(len(ranked), math.floor(round(self.alpha * (len(ranked) + 1), 9)) + 1)
            self.tail = ranked[ranked >= ranked[-deciding]]
        return self

    def predict(self, probs) -> np.ndarray:
        """Boolean matrix: entry (i, k) is True when class k is in the prediction set of row i."""
        q = self._fitted()
        p = probabilities(probs)
        if p.shape[1] != self.classes:
            raise DataError(f"probs has {p.shape[1]} classes but the calibration had {self.classes}; "
                            "use the calibration made for this model")
        scores = self.class_scores(p, stream=1)
        return self._smoothed_sets(scores) if self.smoothed else scores <= q

    def _smoothed_sets(self, scores: np.ndarray) -> np.ndarray:
        """p-value > α per class. Counting above `tail` alone is exact wherever it matters: a score below the
        tail has at least ⌊α(n+1)⌋+1 calibration scores above it, so it is in the set whatever v is."""
        at_or_below = np.searchsorted(self.tail, scores, side="right")
        above = len(self.tail) - at_or_below
        ties = at_or_below - np.searchsorted(self.tail, scores, side="left")
        v = np.random.default_rng([self.seed, 2]).uniform(size=(scores.shape[0], 1))
        return above + v * (ties + 1) > self.alpha * (self.calibration_rows + 1)

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), **({"tail": self.tail.tolist()} if self.smoothed else {})}

    @classmethod
    def from_dict(cls, state: dict[str, Any]):
        obj = super().from_dict(state)
        if obj.smoothed:
            if "tail" not in state:
                raise DataError("smoothed conformal state lacks tail; re-run the calibration to write a new one")
            obj.tail = finite_array(state["tail"], "conformal state tail", ndim=(1,))
        return obj


METHODS = {cls.method: cls for cls in (SplitConformalRegressor, ConformalQuantileRegressor, ConformalClassifier)}


def conformal_from_dict(state: dict[str, Any]) -> _Conformal:
    """The calibrated object for any stored state, chosen by its "method" key."""
    method = state.get("method") if isinstance(state, dict) else None
    if method not in METHODS:
        raise DataError(f"conformal state has method {method!r}; expected one of {', '.join(METHODS)} "
                        "(a dict written by to_dict())")
    return METHODS[method].from_dict(state)
