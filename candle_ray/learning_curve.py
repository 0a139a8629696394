"""`candle-ray lc`: a learning curve, the validation metric against the number of training rows (driver side).

The runs train one configuration on growing shares of the training split (`train_fraction`, drawn per
rng_seed: candle_ray.data.subsample), a few seeds each, and are scored on the same validation rows at
each size's one best epoch (the best of its seeds' mean curve). Each size's mean and spread, and a power law fitted through the means,
metric ≈ c + a·n^(−b) (the form data-scaling studies of drug response fit, e.g. Partin et al. 2021), say
whether more data would still help: b is how fast the metric moves with the rows, c where it levels off.
Pure numpy (SciPy for the fit, matplotlib for the picture); the sweep driver logs what this returns.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from candle_ray.data.subsample import rows as rows_for

MIN_SIZES_TO_FIT = 3  # a three-parameter curve through fewer points says nothing
# A fitted exponent below this is no power law but its limit, a straight line in log n with a huge a and c: the
# points do not level off (NCI-60's 11..43 rows steepened), and its extrapolation is the line's, not a law's.
MIN_EXPONENT = 0.02


@dataclass(frozen=True)
class Point:
    fraction: float
    rows: int
    mean: float
    sd: float
    runs: int


@dataclass(frozen=True)
class PowerLaw:
    """metric ≈ c + a·n^(−b)."""

    a: float
    b: float
    c: float

    def at(self, rows: float) -> float:
        return float(self.c + self.a * rows ** -self.b)

    def text(self, metric: str) -> str:
        return f"{metric} ≈ {self.c:.4g} {'+' if self.a >= 0 else '-'} {abs(self.a):.4g}·n^-{self.b:.3g}"


def points(finals: list[tuple[float, float]], train_rows: int) -> list[Point]:
    """Each training share's runs [(train_fraction, metric at the run's best epoch)] as one point, smallest
    first; the spread is the sample standard deviation over its seeds (0 for one)."""
    shares = sorted({share for share, _ in finals})
    out = []
    for share in shares:
        values = np.array([value for s, value in finals if s == share], dtype=float)
        out.append(Point(share, rows_for(train_rows, share), float(values.mean()),
                         float(values.std(ddof=1)) if len(values) > 1 else 0.0, len(values)))
    return out


def fit(curve: list[Point]) -> PowerLaw | None:
    """The power law through the points' means (their spreads as weights where every size has one), or None
    with fewer than MIN_SIZES_TO_FIT sizes, where the fit does not converge, or where it degenerates (b below
    MIN_EXPONENT)."""
    if len(curve) < MIN_SIZES_TO_FIT:
        return None
    import warnings

    from scipy.optimize import OptimizeWarning, curve_fit

    n = np.array([p.rows for p in curve], dtype=float)
    y = np.array([p.mean for p in curve])
    sigma = np.array([p.sd for p in curve])
    law = lambda rows, a, b, c: c + a * rows ** -b  # noqa: E731
    guess = (float((y[0] - y[-1]) * n[0] ** 0.5), 0.5, float(y[-1]))
    try:
        with warnings.catch_warnings():  # three sizes fit three parameters exactly: no covariance, which is unused
            warnings.simplefilter("ignore", OptimizeWarning)
            (a, b, c), _ = curve_fit(law, n, y, p0=guess, sigma=sigma if np.all(sigma > 0) else None,
                                     bounds=([-np.inf, 0.0, -np.inf], [np.inf, 3.0, np.inf]), maxfev=20000)
    except (RuntimeError, ValueError):
        return None
    return PowerLaw(float(a), float(b), float(c)) if np.all(np.isfinite([a, b, c])) and b >= MIN_EXPONENT else None


def lines(curve: list[Point], law: PowerLaw | None, metric: str, mode: str,
          linear: list[Point] | None = None, linear_law: PowerLaw | None = None, unit: str = "rows") -> list[str]:
    """What the end of `candle-ray lc` prints: the table (the linear baseline's curve beside the network's, fitted
    on the same rows), each law, and what twice the rows would give. `unit`: what a point's size counts (rows,
    or a grouped dataset's groups: "patient groups")."""
    runs, width = {p.runs for p in curve}, max(10, len(f"train {unit}"))
    seeds = f"{runs.pop()} seed(s)" if len(runs) == 1 else "its seeds"
    out = [f"learning curve: {metric} at each size's best epoch of its seeds' mean curve, mean ± sd over {seeds}"
           + ("; the linear baseline fitted on the same rows" if linear else ""),
           f"  {'train ' + unit:>{width}}  {'fraction':>8}  {'network':<18}" + ("  linear baseline" if linear else "")]
    for i, p in enumerate(curve):
        shown = f"{p.mean:.4g} ± {p.sd:.2g}"
        out.append(f"  {p.rows:>{width},}  {p.fraction:>8.3g}  {shown:<18}"
                   + (f"  {linear[i].mean:.4g} ± {linear[i].sd:.2g}" if linear else ""))
    out.append(_verdict(curve, law, metric, mode, "network", unit))
    if linear:
        out.append(_verdict(linear, linear_law, metric, mode, "linear baseline", unit))
    return out


def _verdict(curve: list[Point], law: PowerLaw | None, metric: str, mode: str, who: str, unit: str = "rows") -> str:
    if law is None:
        return (f"{who}: no power law fitted: these points do not level off as one does (still steepening, or "
                f"flat within noise); the table is the curve" if len(curve) >= MIN_SIZES_TO_FIT else
                f"{who}: no power law fitted: {len(curve)} size(s); pass {MIN_SIZES_TO_FIT} or more to --sizes")
    full, double = curve[-1].rows, 2 * curve[-1].rows
    gain = law.at(double) - law.at(full)
    # The seeds' spread near the end of the curve: at all the rows a deterministic fit (ridge) has none.
    spread = max(p.sd for p in curve[-2:])
    verdict = (f"more {unit} are not predicted to help" if (gain < 0) != (mode == "min") or gain == 0 else
               f"a change within the seeds' spread at the largest sizes ({spread:.2g}): no clear gain"
               if abs(gain) < spread else f"more {unit} are predicted to help")
    return (f"{who}: power law {law.text(metric)} (n = training {unit}): twice the {unit} ({double:,}) would give "
            f"{metric} ≈ {law.at(double):.4g}, against {law.at(full):.4g} at {full:,}; {verdict}")


def plot(curve: list[Point], law: PowerLaw | None, metric: str, path: Path, linear: list[Point] | None = None,
         linear_law: PowerLaw | None = None, unit: str = "rows") -> Path:
    """The points with their spreads and the fitted law, rows on a log axis; the linear baseline's beside them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    n = np.array([p.rows for p in curve], dtype=float)
    grid = np.geomspace(n.min(), 2 * n.max(), 100)
    for points_, fitted, who, colour in ((curve, law, "network", "C0"), (linear or [], linear_law, "linear baseline", "grey")):
        if not points_:
            continue
        ax.errorbar(n, [p.mean for p in points_], yerr=[p.sd for p in points_], fmt="o", capsize=3, color=colour,
                    label=f"{who} (mean ± sd)")
        if fitted is not None:
            ax.plot(grid, [fitted.at(g) for g in grid], "-", color=colour, label=fitted.text(metric))
    ax.set(xscale="log", xlabel=f"training {unit}", ylabel=metric, title=f"Learning curve ({metric})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
