"""Calibration pictures as PNG files (the caller logs them to MLflow):

- reliability diagram: accuracy against confidence per bin, with the ECE;
- coverage against nominal: observed interval/set coverage for a range of levels, one line per method;
- error against predicted σ: |y − μ| against σ per row, and the RMSE of σ-quantile bins against their mean σ
  (a calibrated σ puts the bins on the diagonal, as in CANDLE's decile plots).
matplotlib is imported inside the functions so that importing this module stays cheap.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from candle_ray.errors import DataError
from candle_ray.uq import finite_array, positive, reliability_bins, same_shape


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def _save(fig, plt, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)
    return path


def reliability_diagram(probs, labels, path, *, bins: int = 15, title: str = "Reliability diagram") -> Path:
    """Bars of accuracy per confidence bin over the diagonal (perfect calibration), gaps shaded, ECE in the
    title; a lower panel shows how many rows each bin holds."""
    table = reliability_bins(probs, labels, bins)
    plt = _plt()
    fig, (ax, hist) = plt.subplots(2, 1, figsize=(6, 6.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    left, width = table.edges[:-1], np.diff(table.edges)
    used = table.counts > 0
    ax.bar(left[used], table.accuracy[used], width=width[used], align="edge", color="#1f77b4",
           edgecolor="black", linewidth=0.6, label="accuracy")
    gap_bottom = np.minimum(table.accuracy[used], table.confidence[used])
    ax.bar(left[used], np.abs(table.accuracy[used] - table.confidence[used]), bottom=gap_bottom,
           width=width[used], align="edge", color="#d62728", alpha=0.35, label="gap to mean confidence")
    ax.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
    ax.set(ylabel="accuracy", xlim=(0, 1), ylim=(0, 1), title=f"{title} (ECE {table.ece:.3f}, {bins} bins)")
    ax.legend(loc="upper left", fontsize=9)
    ax.grid(alpha=0.3)
    hist.bar(left, table.counts, width=width, align="edge", color="#7f7f7f", edgecolor="black", linewidth=0.6)
    hist.set(xlabel="confidence (top-class probability)", ylabel="rows")
    hist.grid(alpha=0.3)
    return _save(fig, plt, path)


def coverage_plot(nominal, observed: Mapping[str, np.ndarray], path, *,
                  title: str = "Coverage against nominal") -> Path:
    """One line per method of observed coverage against the nominal level 1 − α; the diagonal is exact."""
    levels = finite_array(nominal, "nominal", ndim=(1,))
    if not observed:
        raise DataError("coverage_plot got no curves; pass {method name: observed coverage per nominal level}")
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 5.5))
    lo = min(levels.min(), *(finite_array(v, name).min() for name, v in observed.items()))
    ax.plot([lo, 1], [lo, 1], "--", color="gray", label="nominal")
    for name, values in observed.items():
        curve = finite_array(values, name, ndim=(1,))
        if curve.shape != levels.shape:
            raise DataError(f"curve {name!r} has {curve.shape[0]} points but nominal has {levels.shape[0]}; "
                            "pass one observed coverage per nominal level")
        ax.plot(levels, curve, marker="o", markersize=4, label=name)
    ax.set(xlabel="nominal coverage 1 − α", ylabel="observed coverage", title=title)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=9)
    return _save(fig, plt, path)


def error_vs_sigma(y, mean, sigma, path, *, bins: int = 10, title: str = "Error against predicted σ") -> Path:
    """|y − μ| against σ per row (points), and per σ-quantile bin RMSE = sqrt(mean (y − μ)²) against the
    bin's mean σ (line); for a calibrated Gaussian σ the bins lie on RMSE = σ."""
    y, mu = finite_array(y, "y"), finite_array(mean, "mean")
    s = positive(finite_array(sigma, "sigma"), "sigma")
    same_shape(y=y, mean=mu, sigma=s)
    y, mu, s = y.ravel(), mu.ravel(), s.ravel()
    error = y - mu
    groups = np.array_split(np.argsort(s, kind="stable"), min(bins, len(s)))
    bin_sigma = np.array([s[g].mean() for g in groups])
    bin_rmse = np.array([np.sqrt(np.mean(error[g] ** 2)) for g in groups])
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    ax.scatter(s, np.abs(error), s=6, alpha=0.25, color="#7f7f7f", label="|error| per row")
    ax.plot(bin_sigma, bin_rmse, marker="o", color="#ff7f0e", linewidth=2, label=f"RMSE per σ bin ({len(groups)} bins)")
    top = max(s.max(), bin_rmse.max())
    ax.plot([0, top], [0, top], "--", color="black", label="RMSE = σ (calibrated)")
    ax.set(xlabel="predicted σ", ylabel="|y − μ| (points), RMSE (line)", title=title)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=9)
    return _save(fig, plt, path)
