"""UQ: coverage and size of split-conformal intervals and sets on seeded synthetic problems (target 1 − α ± 2 %).

Regression: y = sin 2x + ε, ε ~ N(0, σ(x)²), σ(x) = 0.1 + 0.4x, x ~ U(0, 4) (noise grows 17-fold).
The "model" is fitted on its own training rows with numpy: a degree-7 polynomial for the mean and a
degree-3 polynomial in x for log |residual| (so σ̂ is learned, with its own error); quantile heads are
μ̂ ± z₀.₉·σ̂, an 80 % band like CANDLE's q10/q90 heads. Classification: 6 classes, labels drawn from
softmax(2z), z ~ N(0, 1); the model reports the over-confident softmax(3z).
Each repetition draws fresh calibration and test rows; printed are the mean (sd) coverage over
repetitions and the mean interval width or set size, for each method and α, and the uncalibrated Gaussian
intervals μ̂ ± z·σ̂ for comparison. --plots DIR also writes the three calibration PNGs.
"""

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

from candle_ray.conformal import ConformalClassifier, ConformalQuantileRegressor, SplitConformalRegressor
from candle_ray.uq import (
    brier_score,
    categorical_nll,
    expected_calibration_error,
    gaussian_coverage_curve,
    gaussian_interval,
    gaussian_nll,
    interval_coverage,
    mean_interval_width,
    mean_set_size,
    set_coverage,
)

Z90 = 1.2815515655446004


def regression_rows(rng, n):
    x = rng.uniform(0, 4, n)
    return x, np.sin(2 * x) + (0.1 + 0.4 * x) * rng.normal(size=n)


def fit_regression_model(rng, n):
    """(mean, sigma) functions of x fitted on n training rows."""
    x, y = regression_rows(rng, n)
    mean = np.polynomial.Polynomial.fit(x, y, 7)
    # E log|ε| = log σ − 0.635 for Gaussian ε, so the fitted log |residual| is shifted back by 0.635.
    log_abs = np.polynomial.Polynomial.fit(x, np.log(np.abs(y - mean(x)) + 1e-12), 3)
    return mean, lambda z: np.exp(log_abs(z) + 0.635)


def classification_rows(rng, n, classes=6):
    logits = 2.0 * rng.normal(size=(n, classes))
    truth = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    labels = (truth.cumsum(axis=1) > rng.uniform(size=(n, 1))).argmax(axis=1)
    model = np.exp(1.5 * logits)
    return model / model.sum(axis=1, keepdims=True), labels


def regression_methods(mean, sigma, alpha):
    """name → (fit(x, y), predict(x) → (lower, upper)) for one α."""
    def split(score):
        model = SplitConformalRegressor(alpha, score=score)
        use_sigma = score == "normalized"
        return (lambda x, y: model.fit(y, mean(x), sigma(x) if use_sigma else None),
                lambda x: model.predict(mean(x), sigma(x) if use_sigma else None))

    cqr = ConformalQuantileRegressor(alpha)
    band = lambda x: (mean(x) - Z90 * sigma(x), mean(x) + Z90 * sigma(x))  # noqa: E731
    return {
        "gaussian mu±z*sigma (no calibration)": (lambda x, y: None, lambda x: gaussian_interval(mean(x), sigma(x), alpha)),
        "split conformal, |y-mu|": split("absolute"),
        "split conformal, |y-mu|/sigma": split("normalized"),
        "CQR on q10/q90 heads": (lambda x, y: cqr.fit(y, *band(x)), lambda x: cqr.predict(*band(x))),
    }


def row(name, alpha, coverages, sizes, size_name):
    sd = statistics.stdev(coverages) if len(coverages) > 1 else 0.0
    print(f"{name:<38} {alpha:>5.2f} {statistics.mean(coverages):>9.4f} ({sd:.4f}) "
          f"{size_name} {statistics.mean(sizes):.4f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calibration", type=int, default=1000, help="calibration rows per repetition")
    parser.add_argument("--test", type=int, default=2000, help="test rows per repetition")
    parser.add_argument("--train", type=int, default=5000, help="rows the regression model is fitted on")
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--alphas", type=float, nargs="+", default=[0.05, 0.1, 0.2])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plots", type=Path, help="write the calibration PNGs into this folder")
    args = parser.parse_args()
    start = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    mean, sigma = fit_regression_model(rng, args.train)

    print(f"{args.repeats} repetitions, {args.calibration} calibration and {args.test} test rows each, seed {args.seed}")
    print(f"{'method':<38} {'alpha':>5} {'coverage':>9} (sd)     mean width / set size")
    print("regression (heteroscedastic, 1-D)")
    for alpha in args.alphas:
        methods = regression_methods(mean, sigma, alpha)
        results = {name: ([], []) for name in methods}
        for _ in range(args.repeats):
            x_cal, y_cal = regression_rows(rng, args.calibration)
            x_test, y_test = regression_rows(rng, args.test)
            for name, (fit, predict) in methods.items():
                fit(x_cal, y_cal)
                lower, upper = predict(x_test)
                results[name][0].append(interval_coverage(y_test, lower, upper))
                results[name][1].append(mean_interval_width(lower, upper))
        for name, (coverages, widths) in results.items():
            row(name, alpha, coverages, widths, "width")

    print("classification (6 classes, over-confident probabilities)")
    variants = {"LAC": {"score": "lac"}, "APS": {"score": "aps"}, "APS randomized": {"score": "aps", "randomized": True}}
    for alpha in args.alphas:
        for name, options in variants.items():
            coverages, sizes = [], []
            for r in range(args.repeats):
                probs, labels = classification_rows(rng, args.calibration)
                probs_test, labels_test = classification_rows(rng, args.test)
                sets = ConformalClassifier(alpha, seed=r, **options).fit(probs, labels).predict(probs_test)
                coverages.append(set_coverage(sets, labels_test))
                sizes.append(mean_set_size(sets))
            row(name, alpha, coverages, sizes, "size ")

    x, y = regression_rows(rng, 20_000)
    probs, labels = classification_rows(rng, 20_000)
    print(f"calibration of the models on 20,000 rows: regression Gaussian NLL {gaussian_nll(y, mean(x), sigma(x)):.4f}; "
          f"classifier ECE(15 bins) {expected_calibration_error(probs, labels):.4f}, "
          f"Brier {brier_score(probs, labels):.4f}, NLL {categorical_nll(probs, labels):.4f}")
    if args.plots:
        from candle_ray.uq_plots import coverage_plot, error_vs_sigma, reliability_diagram

        nominal = np.round(np.arange(0.5, 0.96, 0.05), 2)
        half = len(x) // 2
        conformal = [interval_coverage(y[half:], *SplitConformalRegressor(1 - c, score="normalized")
                                       .fit(y[:half], mean(x[:half]), sigma(x[:half]))
                                       .predict(mean(x[half:]), sigma(x[half:]))) for c in nominal]
        written = [reliability_diagram(probs, labels, args.plots / "reliability.png"),
                   coverage_plot(nominal, {"gaussian μ ± zσ": gaussian_coverage_curve(y[half:], mean(x[half:]),
                                                                                   sigma(x[half:]), nominal),
                                           "split conformal |y−μ|/σ": np.array(conformal)},
                                 args.plots / "coverage.png"),
                   error_vs_sigma(y, mean(x), sigma(x), args.plots / "error_vs_sigma.png")]
        print("plots:", ", ".join(str(p) for p in written))
    print(f"elapsed {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
