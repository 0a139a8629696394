"""Uncertainty from model outputs, and how well it is calibrated: plain numpy, no Ray or torch.

Aggregation (CANDLE §8.6):
- deep ensembles / MC dropout: M member (or pass) means μ_m and, from heteroscedastic heads, variances σ²_m;
  total predictive variance = aleatoric (mean of σ²_m) + epistemic (spread of μ_m);
- MC dropout passes summarised as CANDLE's inference scripts do (mean, std, min, max over passes);
- CANDLE output layouts: heteroscedastic heads interleave (μ, log σ²), quantile heads interleave (q50, q10, q90);
  σ from quantile heads = inter-decile range / 2.56.
Calibration: Gaussian and categorical NLL, Brier, ECE with its reliability bins, interval coverage and width,
prediction-set coverage and size. Abstention: rate, accuracy on kept rows, coverage-risk curve.

Every function checks its input and raises a one-line DataError (or UsageError for options) that says
what is wrong, the value, and what to do.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from candle_ray.errors import DataError, UsageError

# For a Gaussian, q90 − q10 = 2·z₀.₉·σ = 2.563·σ; CANDLE's compute_statistics_quantile rounds it to 2.56.
INTERDECILE_SIGMA_DIVISOR = 2.56


# ---------------------------------------------------------------- input checks (shared with conformal.py)

def finite_array(values, name: str, *, ndim: tuple[int, ...] | None = None) -> np.ndarray:
    """`values` as a float array; DataError if it is empty, has NaN/inf, or has a dimension not in `ndim`."""
    try:
        arr = np.asarray(values, dtype=float)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{name} must be numeric ({exc}); pass numbers of one consistent shape") from None
    if ndim is not None and arr.ndim not in ndim:
        dims = " or ".join(f"{d}-D" for d in ndim)
        raise DataError(f"{name} must be {dims}, got shape {arr.shape}; reshape it")
    if arr.size == 0:
        raise DataError(f"{name} is empty (shape {arr.shape}); pass at least one row")
    bad = ~np.isfinite(arr)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise DataError(f"{name} has {int(bad.sum())} non-finite values (first at index {first}: {arr[first]}); "
                        "drop or impute those rows first")
    return arr


def same_shape(**arrays: np.ndarray) -> None:
    """DataError naming the arrays when their shapes differ."""
    shapes = {name: a.shape for name, a in arrays.items()}
    if len(set(shapes.values())) > 1:
        listed = ", ".join(f"{name} {shape}" for name, shape in shapes.items())
        raise DataError(f"shape mismatch: {listed}; pass one value per row for each")


def positive(arr: np.ndarray, name: str) -> np.ndarray:
    """DataError when any value is ≤ 0 (σ and variances divide or enter a log)."""
    if (arr <= 0).any():
        raise DataError(f"{name} must be > 0, got minimum {arr.min():.6g}; "
                        "clip it to a small positive value or check the model's variance head")
    return arr


def probabilities(probs, name: str = "probs") -> np.ndarray:
    """A (rows, classes) matrix of probabilities in [0, 1] whose rows sum to 1 (tolerance 1e-3)."""
    p = finite_array(probs, name, ndim=(2,))
    if p.shape[1] < 2:
        raise DataError(f"{name} needs at least 2 class columns, got shape {p.shape}; "
                        "for a binary model pass [1 - p, p]")
    if (p < 0).any() or (p > 1).any():
        raise DataError(f"{name} must lie in [0, 1], got range [{p.min():.6g}, {p.max():.6g}]; "
                        "apply softmax to the logits first")
    sums = p.sum(axis=1)
    worst = int(np.argmax(np.abs(sums - 1)))
    if abs(sums[worst] - 1) > 1e-3:
        raise DataError(f"{name} rows must sum to 1, row {worst} sums to {sums[worst]:.6g}; "
                        "apply softmax to the logits first")
    return p


def class_labels(labels, n_rows: int, n_classes: int, name: str = "labels") -> np.ndarray:
    """Integer class indices in [0, n_classes), one per row."""
    raw = np.asarray(labels)
    if raw.ndim != 1 or raw.shape[0] != n_rows:
        raise DataError(f"{name} must be 1-D with one class index per row ({n_rows}), got shape {raw.shape}; "
                        "pass integer class indices, not one-hot rows")
    as_float = finite_array(raw, name)
    as_int = as_float.astype(int)
    if (as_int != as_float).any() or as_int.min() < 0 or as_int.max() >= n_classes:
        raise DataError(f"{name} must be integers in [0, {n_classes}), got range "
                        f"[{as_float.min():g}, {as_float.max():g}]; map them to class indices")
    return as_int


def alpha_level(alpha) -> float:
    """A miscoverage level α strictly inside (0, 1)."""
    try:
        value = float(alpha)
    except (TypeError, ValueError):
        raise UsageError(f"alpha must be a number in (0, 1), got {alpha!r}; e.g. 0.1 for 90 % coverage") from None
    if not 0 < value < 1:
        raise UsageError(f"alpha must be in (0, 1), got {value:g}; e.g. 0.1 for 90 % coverage")
    return value


# ---------------------------------------------------------------- aggregation

@dataclass(frozen=True)
class EnsembleMoments:
    """Predictive mean and variance of an ensemble (or of MC-dropout passes), variance split by source."""

    mean: np.ndarray        # μ = (1/M) Σ_m μ_m
    aleatoric: np.ndarray   # (1/M) Σ_m σ²_m  (zero without heteroscedastic heads)
    epistemic: np.ndarray   # (1/M) Σ_m (μ_m − μ)²
    members: int

    @property
    def variance(self) -> np.ndarray:
        """Total variance of the equal-weight mixture: aleatoric + epistemic."""
        return self.aleatoric + self.epistemic

    @property
    def std(self) -> np.ndarray:
        return np.sqrt(self.variance)


def ensemble_moments(means, variances=None, weights=None) -> EnsembleMoments:
    """Mean and variance of the mixture of M Gaussian members N(μ_m, σ²_m), of equal weight or of `weights` (M,).

    means, variances: shape (M, rows[, outputs]). Law of total variance:
        Var = E_m[σ²_m] + Var_m[μ_m] = aleatoric + epistemic,
    with the population (ddof = 0) spread of the member means, so that the identity is exact.
    Without `variances` the aleatoric part is 0 (plain ensemble or MC dropout of a point-estimate model).
    (CANDLE's compute_statistics_heteroscedastic instead averages log σ² over passes, a geometric mean.)
    """
    mu = finite_array(means, "means")
    if mu.ndim < 2:
        raise DataError(f"means must have a leading member axis, shape (members, rows[, outputs]), got {mu.shape}; "
                        "stack the member predictions with np.stack")
    if variances is None:
        aleatoric = np.zeros(mu.shape[1:])
    else:
        var = positive(finite_array(variances, "variances"), "variances")
        same_shape(means=mu, variances=var)
        aleatoric = np.average(var, axis=0, weights=weights)
    center = np.average(mu, axis=0, weights=weights)
    epistemic = np.average((mu - center) ** 2, axis=0, weights=weights)
    return EnsembleMoments(mean=center, aleatoric=aleatoric, epistemic=epistemic, members=mu.shape[0])


@dataclass(frozen=True)
class PassSummary:
    """Per-row statistics over N stochastic passes, as CANDLE's MC-dropout inference scripts report them."""

    mean: np.ndarray
    std: np.ndarray   # population std over passes (numpy's default ddof = 0, as in CANDLE)
    min: np.ndarray
    max: np.ndarray
    passes: int


def summarize_passes(passes) -> PassSummary:
    """mean, std, min, max over the leading pass axis of shape (N, rows[, outputs])."""
    p = finite_array(passes, "passes")
    if p.ndim < 2:
        raise DataError(f"passes must have shape (passes, rows[, outputs]), got {p.shape}; "
                        "stack the N stochastic forward passes with np.stack")
    return PassSummary(mean=p.mean(axis=0), std=p.std(axis=0), min=p.min(axis=0), max=p.max(axis=0),
                       passes=p.shape[0])


def split_heteroscedastic(outputs) -> tuple[np.ndarray, np.ndarray]:
    """(mean, variance) from CANDLE heteroscedastic heads laid out as [μ_0, S_0, μ_1, S_1, …], S = log σ².

    outputs: shape (..., 2·nout). Variance = exp(S).
    """
    out = finite_array(outputs, "outputs")
    if out.shape[-1] % 2:
        raise DataError(f"heteroscedastic outputs need an even last axis (mean, log variance pairs), "
                        f"got {out.shape[-1]}; check the model was built with the het head")
    return out[..., 0::2], np.exp(out[..., 1::2])


def split_quantiles(outputs) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(q50, q_low, q_high) from CANDLE quantile heads laid out as [q50_0, qlo_0, qhi_0, q50_1, …]."""
    out = finite_array(outputs, "outputs")
    if out.shape[-1] % 3:
        raise DataError(f"quantile outputs need a last axis divisible by 3 (q50, low, high triples), "
                        f"got {out.shape[-1]}; check the model was built with the qtl head")
    return out[..., 0::3], out[..., 1::3], out[..., 2::3]


def quantile_sigma(q_low, q_high, divisor: float = INTERDECILE_SIGMA_DIVISOR) -> np.ndarray:
    """σ ≈ (q90 − q10) / 2.56, CANDLE's compute_statistics_quantile (exact for a Gaussian: 2·z₀.₉ = 2.563).

    A crossed pair (q_high < q_low) gives a negative σ; it is returned as is so the caller can see it.
    """
    lo, hi = finite_array(q_low, "q_low"), finite_array(q_high, "q_high")
    same_shape(q_low=lo, q_high=hi)
    if divisor <= 0:
        raise UsageError(f"divisor must be > 0, got {divisor}; use 2.56 for a 10-90 % inter-decile range")
    return (hi - lo) / divisor


def gaussian_interval(mean, sigma, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Central (1 − α) interval of N(μ, σ²): μ ± z_{1−α/2}·σ."""
    mu, s = finite_array(mean, "mean"), positive(finite_array(sigma, "sigma"), "sigma")
    same_shape(mean=mu, sigma=s)
    z = NormalDist().inv_cdf(1 - alpha_level(alpha) / 2)
    return mu - z * s, mu + z * s


# ---------------------------------------------------------------- calibration metrics

def gaussian_nll(y, mean, sigma) -> float:
    """Mean Gaussian negative log-likelihood: (1/n) Σ [½ log(2π σ²) + (y − μ)² / (2σ²)]."""
    y, mu = finite_array(y, "y"), finite_array(mean, "mean")
    s = positive(finite_array(sigma, "sigma"), "sigma")
    same_shape(y=y, mean=mu, sigma=s)
    return float(np.mean(0.5 * np.log(2 * np.pi * s**2) + (y - mu) ** 2 / (2 * s**2)))


def categorical_nll(probs, labels, eps: float = 1e-12) -> float:
    """Mean categorical negative log-likelihood: −(1/n) Σ log max(p_{i, y_i}, ε); ε keeps a 0 finite."""
    p = probabilities(probs)
    y = class_labels(labels, p.shape[0], p.shape[1])
    return float(-np.mean(np.log(np.maximum(p[np.arange(len(y)), y], eps))))


def brier_score(probs, labels) -> float:
    """Multi-class Brier score: (1/n) Σ_i Σ_k (p_ik − 1[y_i = k])², in [0, 2].

    (For a binary model given as [1 − p, p] this is twice the one-column score (p − y)².)
    """
    p = probabilities(probs)
    y = class_labels(labels, p.shape[0], p.shape[1])
    onehot = np.zeros_like(p)
    onehot[np.arange(len(y)), y] = 1.0
    return float(np.mean(((p - onehot) ** 2).sum(axis=1)))


@dataclass(frozen=True)
class ReliabilityBins:
    """Top-label confidence against accuracy in equal-width bins on [0, 1] (empty bins: count 0, NaN stats)."""

    edges: np.ndarray       # bins + 1 edges, 0 … 1
    counts: np.ndarray      # rows per bin
    confidence: np.ndarray  # mean max-probability per bin
    accuracy: np.ndarray    # fraction of rows whose argmax is the label, per bin

    @property
    def ece(self) -> float:
        """ECE = Σ_b (n_b / n) · |acc_b − conf_b| over non-empty bins."""
        used = self.counts > 0
        weights = self.counts[used] / self.counts.sum()
        return float(np.sum(weights * np.abs(self.accuracy[used] - self.confidence[used])))


def reliability_bins(probs, labels, bins: int = 15) -> ReliabilityBins:
    """Bin rows by top-label confidence c_i = max_k p_ik into `bins` equal-width bins (b−1)/B < c ≤ b/B
    (the first bin also holds c = 0); per bin: count, mean confidence, accuracy."""
    if not isinstance(bins, (int, np.integer)) or bins < 1:
        raise UsageError(f"bins must be a positive integer, got {bins!r}; 10 or 15 are usual")
    p = probabilities(probs)
    y = class_labels(labels, p.shape[0], p.shape[1])
    confidence = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(float)
    edges = np.linspace(0.0, 1.0, bins + 1)
    # Right-closed bins: a confidence of exactly 1.0 belongs to the last bin, 0.5 to the bin ending at 0.5.
    # Rounding first keeps edge values in their bin: 0.6 · 10 is 6.000000000000001 in floating point.
    index = np.clip(np.ceil(np.round(confidence * bins, 9)).astype(int) - 1, 0, bins - 1)
    counts = np.bincount(index, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(index, weights=confidence, minlength=bins) / counts
        accuracy = np.bincount(index, weights=correct, minlength=bins) / counts
    return ReliabilityBins(edges=edges, counts=counts, confidence=mean_conf, accuracy=accuracy)


def expected_calibration_error(probs, labels, bins: int = 15) -> float:
    """ECE = Σ_b (n_b / n) |acc_b − conf_b| over equal-width confidence bins (see reliability_bins)."""
    return reliability_bins(probs, labels, bins).ece


def interval_coverage(y, lower, upper) -> float:
    """Fraction of rows with lower ≤ y ≤ upper."""
    y, lo, hi = finite_array(y, "y"), finite_array(lower, "lower"), finite_array(upper, "upper")
    same_shape(y=y, lower=lo, upper=hi)
    return float(np.mean((lo <= y) & (y <= hi)))


def mean_interval_width(lower, upper) -> float:
    """(1/n) Σ (upper − lower)."""
    lo, hi = finite_array(lower, "lower"), finite_array(upper, "upper")
    same_shape(lower=lo, upper=hi)
    return float(np.mean(hi - lo))


def _sets(sets) -> np.ndarray:
    arr = np.asarray(sets)
    if arr.ndim != 2 or arr.dtype != bool:
        raise DataError(f"prediction sets must be a boolean (rows, classes) matrix, got {arr.dtype} {arr.shape}; "
                        "pass the output of ConformalClassifier.predict")
    return arr


def set_coverage(sets, labels) -> float:
    """Fraction of rows whose prediction set contains the true label."""
    s = _sets(sets)
    y = class_labels(labels, s.shape[0], s.shape[1])
    return float(np.mean(s[np.arange(len(y)), y]))


def mean_set_size(sets) -> float:
    """(1/n) Σ |C(x_i)|."""
    return float(_sets(sets).sum(axis=1).mean())


def gaussian_coverage_curve(y, mean, sigma, nominal) -> np.ndarray:
    """Observed coverage of the central Gaussian intervals μ ± z_{(1+c)/2}·σ for each nominal level c."""
    levels = np.asarray(nominal, dtype=float)
    if levels.ndim != 1 or ((levels <= 0) | (levels >= 1)).any():
        raise UsageError(f"nominal coverage levels must be a 1-D list inside (0, 1), got {levels}; e.g. 0.5 … 0.95")
    return np.array([interval_coverage(y, *gaussian_interval(mean, sigma, 1 - c)) for c in levels])


# ---------------------------------------------------------------- abstention

@dataclass(frozen=True)
class AbstentionSummary:
    """CANDLE's abstention metrics: a row is abstained when the abstain unit has the largest probability."""

    rows: int
    abstained: int
    accuracy_kept: float   # correct / kept (NaN when every row is abstained)

    @property
    def abstention_rate(self) -> float:
        return self.abstained / self.rows

    @property
    def coverage(self) -> float:
        """Fraction of rows the classifier answers: 1 − abstention rate."""
        return 1 - self.abstention_rate

    @property
    def risk(self) -> float:
        """Error rate on the answered rows: 1 − accuracy_kept."""
        return 1 - self.accuracy_kept


def _abstain_split(probs, labels, abstain_index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(abstain probability, predicted base class, base labels, abstained) from a matrix with one abstain
    column; a row is abstained when the abstain column is its argmax."""
    p = probabilities(probs)
    k = p.shape[1]
    if not -k <= abstain_index < k:
        raise UsageError(f"abstain_index {abstain_index} is outside the {k} columns of probs; "
                         "CANDLE puts the abstain unit last (-1)")
    column = abstain_index % k
    base = np.delete(p, column, axis=1)
    y = class_labels(labels, p.shape[0], k - 1)
    return p[:, column], base.argmax(axis=1), y, p.argmax(axis=1) == column


def abstention_summary(probs, labels, abstain_index: int = -1) -> AbstentionSummary:
    """Abstention rate and accuracy on kept rows, for probs of shape (rows, classes + 1).

    abstained_i = [argmax_k p_ik = abstain unit];  accuracy_kept = Σ_{kept} [argmax = y] / #kept.
    labels are base-class indices in [0, classes).
    """
    _, predicted, y, abstained = _abstain_split(probs, labels, abstain_index)
    kept = ~abstained
    accuracy = float(np.mean(predicted[kept] == y[kept])) if kept.any() else math.nan
    return AbstentionSummary(rows=len(y), abstained=int(abstained.sum()), accuracy_kept=accuracy)


def coverage_risk_curve(probs, labels, abstain_index: int = -1) -> tuple[np.ndarray, np.ndarray]:
    """Selective-classification curve: keep the k rows with the lowest abstain probability, k = 1 … n.

    coverage_k = k / n;  risk_k = (1/k) Σ_{kept} [predicted base class ≠ y].
    Ties in the abstain probability are broken by row order (stable sort).
    """
    p_abstain, predicted, y, _ = _abstain_split(probs, labels, abstain_index)
    order = np.argsort(p_abstain, kind="stable")
    errors = np.cumsum(predicted[order] != y[order])
    kept = np.arange(1, len(y) + 1)
    return kept / len(y), errors / kept


def area_under_risk_coverage(probs, labels, abstain_index: int = -1) -> float:
    """AURC = (1/n) Σ_k risk_k: the mean risk over all coverage levels (lower is better)."""
    return float(np.mean(coverage_risk_curve(probs, labels, abstain_index)[1]))
