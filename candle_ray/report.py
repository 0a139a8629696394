"""`candle-ray report SWEEP`: pictures of a sweep, as PNGs plus one HTML page.

- learning curves of every trial (the early-stopped ones end in an x, failed ones in red); a cv's folds
  with their mean, starred at the one epoch whose mean is best (its estimate, set against the baseline);
- parameter importance (permutation importance of a random forest fitted from config to result), shown
  only where the forest predicts the result of trials it did not see (out-of-bag R² above 0);
- parallel coordinates of the configuration against the metric;
- the best trial's curves;
- with several objectives, the Pareto front (two: a scatter of every trial with the front as a staircase; more:
  parallel coordinates of the front's members), its knee starred.
Data come from the sweep's MLflow runs; the files are attached to the sweep's parent run. Every trial
is worth its best epoch (candle_ray.summary), as in the sweep's summary; the linear baseline's metrics,
when the sweep fitted one, are drawn as dashed lines.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from candle_ray.summary import best_of, common_epoch, finite, history_best, knee, mean_curve, pareto_front, tie_value

COLORS = {"completed": "#1f77b4", "stopped early": "#9a9a9a", "failed": "#d62728"}


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def _numeric(values: list[str]):
    """Numbers (NaN where a conditional key was not searched: "None") and whether the values are numbers."""
    try:
        numbers = [float("nan") if v in ("", "None") else float(v) for v in values]
    except ValueError:
        return values, False
    return (numbers, True) if any(math.isfinite(v) for v in numbers) else (values, False)


def worth(trial: dict, metric: str, mode: str) -> float | None:
    """A trial's best epoch's value of `metric` (None without a finite one)."""
    value = trial["best"].get(metric)
    return value if finite(value) else None


def _best(trials: list[dict], metric: str, mode: str) -> dict | None:
    return best_of([t for t in trials if t["status"] != "failed"], lambda t: worth(t, metric, mode), mode,
                   lambda t: tie_value(t["best"], metric))


def _baseline_line(ax, baseline: dict, key: str, **style) -> None:
    if finite(baseline.get(key)):
        ax.axhline(baseline[key], linestyle="--", linewidth=1.4, **{"color": "#444444", **style},
                   label=f"linear baseline {key} {baseline[key]:.4g}")


# A cv's folds and an ensemble's members are not rival configurations: no "best" among them is drawn or named.
MEMBERS = {"cv": "fold", "ensemble": "member", "lc": "run"}


def learning_curves(trials, metric, mode, path: Path, baseline: dict | None = None, noun: str | None = None) -> None:
    """Every trial's curve; the best trial's drawn over them, unless the trials are a cv's folds or an
    ensemble's members (`noun`: what they are)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(9, 5.5))
    best = None if noun else _best(trials, metric, mode)
    for t in trials:
        points = t["history"].get(metric)
        if not points:
            continue
        steps, values = zip(*points)
        style = {"color": COLORS.get(t["status"], "#1f77b4"), "alpha": 0.55, "linewidth": 1.2}
        ax.plot(steps, values, **style)
        if t["status"] in ("stopped early", "failed"):
            ax.plot(steps[-1], values[-1], marker="x", markersize=7, color=style["color"])
    if noun == "fold":
        _draw_fold_mean(ax, trials, metric, mode)
    if best and best["history"].get(metric):
        steps, values = zip(*best["history"][metric])
        epoch, value = history_best(best["history"], metric, mode)
        ax.plot(steps, values, color="#ff7f0e", linewidth=2.8,
                label=f"best: trial {best['trial_id']} ({metric} {value:.4g} at epoch {epoch})")
        ax.plot(epoch, value, marker="*", markersize=14, color="#ff7f0e", markeredgecolor="black")
    _baseline_line(ax, baseline or {}, metric)
    for status, color in COLORS.items():  # the legend names the statuses drawn
        if any(t["status"] == status for t in trials):
            ax.plot([], [], color=color, label=status + (" (x = where it was stopped)" if status == "stopped early" else ""))
    finite = [v for t in trials for _, v in t["history"].get(metric, []) if math.isfinite(v)]
    if finite and min(finite) > 0 and max(finite) / min(finite) > 50:
        ax.set_yscale("log")
    drawn = sum(1 for t in trials if t["history"].get(metric))
    plural = f"{noun or 'trial'}s"
    which = f"{len(trials)} {plural}" if drawn == len(trials) else f"the {drawn} best of {len(trials)} {plural}"
    ax.set(xlabel="epoch", ylabel=metric, title=f"Learning curves of {which} ({metric})")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _folds_mean(trials, metric: str, mode: str) -> tuple[dict[int, float], int | None, int]:
    """A cv's mean curve over the folds that did not fail (at the epochs each reached), its best epoch (the cv's
    one-epoch estimate: summary.common_epoch) and how many folds it averages."""
    histories = [{metric: dict(t["history"].get(metric, []))} for t in trials if t["status"] != "failed"]
    return mean_curve(histories, metric), common_epoch(histories, metric, mode), len(histories)


def _draw_fold_mean(ax, trials, metric: str, mode: str) -> None:
    curve, epoch, folds = _folds_mean(trials, metric, mode)
    if epoch is None:
        return
    value = curve[epoch]
    ax.plot(list(curve), list(curve.values()), color="#ff7f0e", linewidth=2.8,
            label=f"mean of {folds} folds (cv estimate {metric} {value:.4g} at epoch {epoch})")
    ax.plot(epoch, value, marker="*", markersize=14, color="#ff7f0e", markeredgecolor="black")


def _log_axis(key: str, arr: np.ndarray, log_keys) -> bool:
    """A key sampled on a log scale, or positive values spanning two decades or more, is shown in log10."""
    low, high = np.nanmin(arr), np.nanmax(arr)
    return low > 0 and (key in log_keys or high / low >= 100)


def _design(trials, keys, log_keys=()):
    """Config matrix for the importance model: numbers as they are (log10 for log-scaled keys),
    categories one-hot; returns the matrix and, per column, the key it came from."""
    columns, owners = [], []
    for key in keys:
        values, numeric = _numeric([t["params"].get(key, "") for t in trials])
        if numeric:
            arr = np.array(values, dtype=float)
            if _log_axis(key, arr, log_keys):
                arr = np.log10(arr)
            columns.append(np.where(np.isnan(arr), np.nanmin(arr) - 1, arr))  # not searched: below the range
            owners.append(key)
        else:
            for level in sorted(set(values)):
                columns.append(np.array([v == level for v in values], dtype=float))
                owners.append(key)
    return np.column_stack(columns), owners


IMPORTANCE_ROWS = 2000
# A forest fitted to fewer finished trials than this ranks noise: the report says "too few trials" instead.
IMPORTANCE_MIN_TRIALS = 10
IMPORTANCE_REPEATS = 20


@dataclass(frozen=True)
class Importance:
    """What shuffling each key costs the forest (empty when not estimated), and how well the forest predicts
    trials its trees did not see (out-of-bag R²; None under IMPORTANCE_MIN_TRIALS finished trials)."""
    scores: dict[str, float] = field(default_factory=dict)
    oob_r2: float | None = None
    trials: int = 0

    def text(self, metric: str) -> str:
        if self.oob_r2 is None:
            return f"too few trials to estimate (it needs {IMPORTANCE_MIN_TRIALS} finished)"
        fit = f"out-of-bag R\u00b2 {self.oob_r2:.2f} over {self.trials} trials"
        if not self.scores:  # in-sample shuffles would still rank keys: by how well the forest memorised noise
            return (f"not estimated: the configurations do not predict best {metric} on trials the forest did not "
                    f"see ({fit}); more trials, or the differences between trials are noise")
        keys = ", ".join(f"{k} {v:.3f}" for k, v in self.scores.items())
        return f"{keys} (the forest predicting best {metric}: {fit})"


def importance(trials, keys, metric, mode: str = "min", log_keys=()) -> Importance:
    """Permutation importance (drop in R^2 when a parameter is shuffled) of a random forest that
    predicts each trial's best `metric` from its configuration; no scores where its out-of-bag R² is 0 or
    below (measured: 2 of 8 real-data sweeps of 12-24 trials, whose in-sample shuffles still ranked keys)."""
    scored = [t for t in trials if worth(t, metric, mode) is not None]
    if len(scored) < IMPORTANCE_MIN_TRIALS or not keys:
        return Importance()
    from sklearn.ensemble import RandomForestRegressor  # here: 1.1 s to import, which a small sweep's report skips

    if len(scored) > IMPORTANCE_ROWS:  # the forest and its permutations grow with the rows: a seeded sample
        scored = [scored[i] for i in sorted(np.random.default_rng(0).choice(len(scored), IMPORTANCE_ROWS, replace=False))]
    X, owners = _design(scored, keys, log_keys)
    y = np.array([worth(t, metric, mode) for t in scored])
    forest = RandomForestRegressor(n_estimators=200, random_state=0, min_samples_leaf=2, oob_score=True)
    forest.fit(X, y)
    fit = Importance(oob_r2=float(forest.oob_score_), trials=len(y))
    if not fit.oob_r2 > 0:
        return fit
    scores: dict[str, float] = {}
    for owner, value in zip(owners, _r2_drops(forest, X, y, np.random.default_rng(0))):
        scores[owner] = scores.get(owner, 0.0) + max(0.0, float(value))
    return Importance(dict(sorted(scores.items(), key=lambda kv: -kv[1])), fit.oob_r2, fit.trials)


def _r2_drops(forest, X: np.ndarray, y: np.ndarray, rng) -> np.ndarray:
    """Each column's mean loss of R² over IMPORTANCE_REPEATS shuffles (sklearn's permutation_importance),
    with one forest prediction per column instead of one per shuffle: a forest's predict has a fixed
    cost per tree that dominates on a sweep's few rows."""
    from sklearn.metrics import r2_score

    base = r2_score(y, forest.predict(X))
    drops = np.zeros(X.shape[1])
    stacked = np.tile(X, (IMPORTANCE_REPEATS, 1))  # the repeats, one below the other; one column shuffled at a time
    for col in range(X.shape[1]):
        stacked[:, col] = np.concatenate([rng.permutation(X[:, col]) for _ in range(IMPORTANCE_REPEATS)])
        predicted = forest.predict(stacked).reshape(IMPORTANCE_REPEATS, len(y))
        drops[col] = base - np.mean([r2_score(y, p) for p in predicted])
        stacked[:, col] = np.tile(X[:, col], IMPORTANCE_REPEATS)
    return drops


def importance_plot(found: Importance, metric: str, path: Path) -> None:
    plt = _plt()
    scores = found.scores
    fig, ax = plt.subplots(figsize=(7.5, 0.5 * max(len(scores), 2) + 1.5))
    names = list(scores)[::-1]
    ax.barh(names, [scores[n] for n in names], color="#2ca02c")
    ax.set(xlabel=f"importance (loss of R² predicting best {metric} when shuffled)",
           title=f"Parameter importance (out-of-bag R² {found.oob_r2:.2f}, {found.trials} trials)")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parallel_axis(key: str, cells: list, log_keys=()) -> tuple[np.ndarray, list, str]:
    """One key's axis: each trial's position in [0, 1], the (position, text) ticks, and the axis name. A log
    axis is labelled with its values and named "(log)"; a category axis has a tick per value."""
    raw, numeric = _numeric(cells)
    if not numeric:
        levels = sorted(set(raw))
        pos = {lv: (i / (len(levels) - 1) if len(levels) > 1 else 0.5) for i, lv in enumerate(levels)}
        return np.array([pos[v] for v in raw]), [(p, lv[:14]) for lv, p in pos.items()], key
    arr = np.array(raw, dtype=float)
    log = _log_axis(key, arr, log_keys)
    shown = np.log10(arr) if log else arr
    lo, hi = np.nanmin(shown), np.nanmax(shown)  # a trial that did not search the key: no point there
    positions = (shown - lo) / (hi - lo) if hi > lo else np.full_like(shown, 0.5)
    value = (lambda v: 10 ** v) if log else (lambda v: v)
    return positions, [(0.0, f"{value(lo):.3g}"), (1.0, f"{value(hi):.3g}")], f"{key}\n(log)" if log else key


def parallel_coordinates(trials, keys, metric, mode, path: Path, log_keys=()) -> None:
    plt = _plt()
    from matplotlib.collections import LineCollection

    scored = [t for t in trials if metric in t["best"]]
    values = np.array([np.nan if (w := worth(t, metric, mode)) is None else w for t in scored])
    axes_data, tick_labels, names = [], [], []
    for key in keys:
        positions, ticks, name = parallel_axis(key, [t["params"].get(key, "") for t in scored], log_keys)
        axes_data.append(positions)
        tick_labels.append(ticks)
        names.append(name)
    finite = np.isfinite(values)
    lo, hi = (values[finite].min(), values[finite].max()) if finite.any() else (0, 1)
    norm = (values - lo) / (hi - lo) if hi > lo else np.zeros_like(values)
    axes_data.append(np.where(finite, norm, 1.0))
    tick_labels.append([(0.0, f"{lo:.3g}"), (1.0, f"{hi:.3g}")])
    # Colour by rank, not value: a few excellent trials would otherwise wash all the others out.
    # goodness: 0 for the best trial, 1 for the worst.
    goodness = np.argsort(np.argsort(np.where(finite, values if mode == "min" else -values, np.inf)), kind="stable") \
        / max(len(values) - 1, 1)
    fig, ax = plt.subplots(figsize=(max(7, 1.8 * len(axes_data)), 5.5))
    cmap = plt.get_cmap("viridis")  # dark purple (0) = best
    xs = np.arange(len(axes_data))
    order = np.argsort(-goodness)  # best drawn last, on top; one collection draws 10,000 trials in a second
    ys = np.column_stack(axes_data)[order]
    ax.add_collection(LineCollection([np.column_stack([xs, y]) for y in ys], alpha=0.8,
                                     colors=[cmap(goodness[i]) if finite[i] else "#d62728" for i in order],
                                     linewidths=2.2 - goodness[order]))
    ax.set_xlim(-0.1, len(axes_data) - 0.6)
    ax.set_ylim(-0.05, 1.05)
    for x, ticks in zip(xs, tick_labels):
        ax.axvline(x, color="black", linewidth=0.8)
        for y, text in ticks:
            ax.text(x + 0.03, y, text, fontsize=8, va="center")
    ax.set_xticks(xs, [*names, f"best {metric}"])
    ax.set_yticks([])
    ax.set_title("Parallel coordinates: configuration against result (dark = better rank)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def objective_values(trial: dict, objectives) -> tuple | None:
    """A trial's objectives at its best epoch by the first one (the epoch its checkpoint holds)."""
    if trial["status"] == "failed":
        return None
    values = tuple(trial["best"].get(m) for m, _ in objectives)
    return values if all(finite(v) for v in values) else None


def pareto_plot(trials, objectives, path: Path) -> list[dict]:
    """The front (returned, first objective best first) drawn against every trial: the one results.csv marks
    (`front`, `knee`: sweep._mark_front, which also picks among trials of equal values), else computed."""
    plt = _plt()
    modes = tuple(m for _, m in objectives)
    scored = [(t, v) for t in trials if (v := objective_values(t, objectives)) is not None]
    marked = bool(scored) and all("front" in t for t, _ in scored)
    front = [s for s in scored if s[0]["front"]] if marked else pareto_front(scored, lambda s: s[1], modes)
    front.sort(key=lambda s: s[1][0] * (1 if modes[0] == "min" else -1))
    if not front:
        return []
    k = next((i for i, (t, _) in enumerate(front) if t["knee"]), 0) if marked else knee([v for _, v in front], modes)
    names = [m for m, _ in objectives]
    if len(objectives) == 2:
        fig, ax = plt.subplots(figsize=(8, 5.5))
        ax.scatter([v[0] for _, v in scored], [v[1] for _, v in scored], color="#9a9a9a", s=22, label="trials")
        xs, ys = [v[0] for _, v in front], [v[1] for _, v in front]
        # A staircase, not a line: the edge of what the front dominates. Between two members no trial is known
        # to reach what a straight segment promises; each step holds one objective until the next member.
        ax.step(xs, ys, where="post", color="#1f77b4", label="Pareto front")
        ax.plot(xs, ys, "o", color="#1f77b4")
        for t, v in front:
            ax.annotate(t["trial_id"], v, fontsize=7, xytext=(4, 4), textcoords="offset points")
        ax.plot(*front[k][1], marker="*", markersize=16, color="#ff7f0e", markeredgecolor="black", linestyle="",
                label=f"knee: trial {front[k][0]['trial_id']}")
        ax.set(xlabel=f"{names[0]} ({modes[0]})", ylabel=f"{names[1]} ({modes[1]})")
        for axis, set_scale in enumerate((ax.set_xscale, ax.set_yscale)):  # model sizes span decades
            column = [v[axis] for _, v in scored]
            if min(column) > 0 and max(column) / min(column) > 100:
                set_scale("log")
    else:
        fig, ax = plt.subplots(figsize=(max(7, 2 * len(objectives)), 5.5))
        data = np.array([v for _, v in front], dtype=float)
        lo, hi = data.min(axis=0), data.max(axis=0)
        scaled = (data - lo) / np.where(hi > lo, hi - lo, 1.0)
        for i, (t, _) in enumerate(front):
            ax.plot(range(len(names)), scaled[i], "-o", color="#ff7f0e" if i == k else "#1f77b4",
                    linewidth=3 if i == k else 1.4, label=f"knee: trial {t['trial_id']}" if i == k else None)
        for x in range(len(names)):
            ax.text(x + 0.03, 0, f"{lo[x]:.3g}", fontsize=8)
            ax.text(x + 0.03, 1, f"{hi[x]:.3g}", fontsize=8)
        ax.set_xticks(range(len(names)), [f"{n} ({m})" for n, m in objectives])
        ax.set_yticks([])
    ax.set_title(f"Pareto front: {len(front)} of {len(scored)} trials")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [t for t, _ in front]


def best_curves(best: dict, path: Path, baseline: dict | None = None) -> None:
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    # The second panel: what the task reports (accuracy; R² and r for regressors; AUROC for ATTN).
    second = next((pair for pair in (("accuracy", "val_accuracy"), ("val_r2", "val_corr"), ("val_auroc", "val_aupr"))
                   if any(key in best["history"] for key in pair)), ("accuracy", "val_accuracy"))
    for ax, pair in zip(axes, (("loss", "val_loss"), second)):
        for key, style in zip(pair, ("-", "--")):
            if key in best["history"]:
                steps, values = zip(*best["history"][key])
                ax.plot(steps, values, style, marker="o", markersize=3, label=key)
            if key.startswith("val_"):
                _baseline_line(ax, baseline or {}, key)
        ax.set(xlabel="epoch", title=f"best trial {best['trial_id']}: {pair[0]}")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(trials: list[dict], *, sweep: str, metric: str, mode: str, space_keys: list[str], out: Path,
                 log_keys=(), baseline: dict | None = None, also=(), kind: str = "sweep") -> list[Path]:
    """Write the PNGs and report.html into `out`; return the files written. `log_keys`: keys sampled on a
    log scale; `baseline`: the linear baseline's metrics (val_loss, val_accuracy, ...); `also`: a
    multi-objective sweep's other objectives, [(metric, mode), ...]; `kind`: sweep, cv or ensemble."""
    out.mkdir(parents=True, exist_ok=True)
    files = []
    curves = out / "learning_curves.png"
    noun = MEMBERS.get(kind)
    learning_curves(trials, metric, mode, curves, baseline, noun)
    files.append(curves)
    keys = [k for k in space_keys if any(k in t["params"] for t in trials)]
    found = importance(trials, keys, metric, mode, log_keys)
    if found.scores:
        importance_plot(found, metric, out / "parameter_importance.png")
        files.append(out / "parameter_importance.png")
    if keys and any(metric in t["best"] for t in trials):
        parallel_coordinates(trials, keys, metric, mode, out / "parallel_coordinates.png", log_keys)
        files.append(out / "parallel_coordinates.png")
    best = None if noun else _best(trials, metric, mode)
    if best:
        best_curves(best, out / "best_trial.png", baseline)
        files.append(out / "best_trial.png")
    if also and pareto_plot(trials, ((metric, mode), *map(tuple, also)), out / "pareto_front.png"):
        files.append(out / "pareto_front.png")
    files.append(_html(trials, sweep=sweep, metric=metric, mode=mode, keys=keys, best=best, found=found,
                       images=[f.name for f in files], out=out, baseline=baseline, noun=noun))
    return files


def _shown(value) -> str:
    """A parameter as the table shows it: fractions to 4 significant digits (a searcher's 0.0010000000000000002
    is 0.001 here; results.csv keeps every digit), integers and lists as they are."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    return str(value) if number.is_integer() else f"{number:.4g}"


def _html(trials, *, sweep, metric, mode, keys, best, found: Importance, images, out: Path, baseline: dict | None = None,
          noun: str | None = None) -> Path:
    from candle_ray.summary import ranked as rank

    counts = {}
    for t in trials:
        counts[t["status"]] = counts.get(t["status"], 0) + 1
    top = rank(trials, lambda t: worth(t, metric, mode), mode, lambda t: tie_value(t["best"], metric))[:20]
    rows = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in (
            t["trial_id"], t["status"], len(t["history"].get(metric, ())),
            (history_best(t["history"], metric, mode) or ("",))[0], f"{worth(t, metric, mode):.4g}",
            *(_shown(t["params"].get(k, "")) for k in keys))) + "</tr>"
        for t in top)
    header = "".join(f"<th>{html.escape(h)}</th>" for h in ("trial", "status", "epochs", "best epoch", f"best {metric}", *keys))
    summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    values = [w for t in trials if (w := worth(t, metric, mode)) is not None and finite(w)]
    best_text = "no successful trial"
    if noun and values:  # folds or members: their spread, no winner
        best_text = f"{metric} of the {noun}s {min(values):.6g} to {max(values):.6g} (mean {np.mean(values):.6g})"
        curve, epoch, _ = _folds_mean(trials, metric, mode) if noun == "fold" else ({}, None, 0)
        if epoch is not None:
            best_text += f" at each fold's best epoch; {curve[epoch]:.6g} at epoch {epoch} for all, the cv estimate"
    elif best:
        epoch = (history_best(best["history"], metric, mode) or ("?",))[0]
        best_text = f"best {metric} {worth(best, metric, mode):.6g} (trial {html.escape(best['trial_id'])}, epoch {epoch})"
    if baseline and finite(baseline.get(metric)):
        best_text += f"; linear baseline {metric} {baseline[metric]:.6g}"
    importance_text = found.text(metric)
    figures = "".join(f'<figure><img src="{name}" alt="{name}"><figcaption>{name}</figcaption></figure>' for name in images)
    page = out / "report.html"
    page.write_text(f"""<!doctype html>
<html><head><meta charset="utf-8"><title>candle-ray sweep {html.escape(sweep)}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1200px}} img{{max-width:100%;border:1px solid #ddd}}
table{{border-collapse:collapse}} td,th{{border:1px solid #ccc;padding:3px 8px;font-size:13px}}</style></head>
<body><h1>Sweep {html.escape(sweep)}</h1>
<p>{len(trials)} {noun or "trial"}s: {html.escape(summary)}; {best_text}.</p>
<p>Parameter importance: {html.escape(importance_text)}.</p>
{figures}
<h2>Top trials</h2><table><tr>{header}</tr>{rows}</table>
</body></html>
""")
    return page
