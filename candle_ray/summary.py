"""The one rule for "the best": a trial is worth its best epoch's value of the metric.

A trial's model is its best checkpoint (the epoch with the best value of the sweep's metric, the first
such epoch on a tie), so ranking trials by their last epoch would rank models the sweep does not keep.
Every place that ranks or picks trials (the summary line, results.csv, best_config.json, the parent
run's metrics, `--from-sweep --top K`, the report and the live view) goes through these functions.

Trials report their best epoch so far with every result (`best_epoch` and `best_<metric>` for every
validation and test metric at that epoch: see `BestEpoch`), so the driver ranks from the last result
alone, after a resume too. Plain Python: no Ray, no MLflow.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")
PREFIX = "best_"
# What a trial costs, reported with every epoch and kept with its best epoch: objectives a multi-objective
# search may trade the fit against (model size, training time).
PER_TRIAL = ("n_params", "epoch_time_s")


def counted(n: int, noun: str) -> str:
    """`n` and its noun, plural but for one: "1 epoch", "3 epochs"."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# Which way a metric improves. Beyond doubt for these: ranking them the other way calls the worst trial the best.
SURE_DIRECTION = {"min": ("loss", "_mae", "_mse"), "max": ("accuracy", "auroc", "aupr", "_r2", "_corr")}
# These improve downwards too: errors, abstention, calibration error, interval width, a trial's size and time.
_LOWER = ("mae", "mse", "abstention_fraction", "mean_sigma", "nll", "brier", "ece", "width", "n_params", "time_s")


def natural_mode(metric: str) -> str | None:
    """"min" for a loss or error, "max" for an accuracy, AUROC, AUPR, R² or correlation, None when unsure."""
    return next((mode for mode, endings in SURE_DIRECTION.items() if metric.endswith(endings)), None)


def direction(metric: str) -> str:
    """Whether a metric improves downwards ("min") or upwards ("max": also coverage and anything unknown)."""
    return natural_mode(metric) or ("min" if metric.endswith(_LOWER) else "max")


# Equal values of a coarse metric are ranked by val_loss, lower first: the model surer of the rows it gets right.
# Accuracy on a few dozen rows ties often (Khan, 17 val rows: 5 of 16 trials at 0.941, and a trial's epochs at
# its best accuracy span tens of epochs), where the first epoch or trial to reach it used to win.
TIE_BREAK = "val_loss"


def tie_value(values: dict, metric: str) -> float | None:
    """The TIE_BREAK metric among `values` (an epoch's or a trial's best epoch's metrics), None for val_loss."""
    return None if metric == TIE_BREAK else values.get(TIE_BREAK)


def improves(value, best, mode: str, tie=None, best_tie=None) -> bool:
    """Whether `value` is strictly better than `best` (None: nothing yet); on a tie, whether its TIE_BREAK
    value `tie` is strictly below `best_tie` (a missing one loses); otherwise the earlier stays."""
    if not finite(value):
        return False
    if best is None:
        return True
    if value == best:
        return finite(tie) and not (finite(best_tie) and tie >= best_tie)
    return value < best if mode == "min" else value > best


def ranked(items: Iterable[T], value: Callable[[T], float | None], mode: str,
           tie: Callable[[T], float | None] | None = None) -> list[T]:
    """Items with a finite value, best first; equal values by `tie` (their TIE_BREAK value: lower first), then
    in the items' order (the earlier trial first)."""
    scored = [(v, i, item) for i, item in enumerate(items) if finite(v := value(item))]
    broken = (lambda item: t if finite(t := tie(item)) else math.inf) if tie else (lambda item: 0.0)
    scored.sort(key=lambda s: (s[0] if mode == "min" else -s[0], broken(s[2]), s[1]))
    return [item for _, _, item in scored]


def best_of(items: Iterable[T], value: Callable[[T], float | None], mode: str,
            tie: Callable[[T], float | None] | None = None) -> T | None:
    top = ranked(items, value, mode, tie)
    return top[0] if top else None


def history_best(history: dict[str, list[tuple[int, float]]], metric: str, mode: str) -> tuple[int, float] | None:
    """(epoch, value) of the best epoch of `metric` in per-epoch histories {key: [(epoch, value)]} (equal
    values: the epoch of the lower TIE_BREAK value)."""
    ties = dict(history.get(TIE_BREAK, ())) if metric != TIE_BREAK else {}
    return best_of(sorted(history.get(metric, ())), lambda p: p[1], mode, (lambda p: ties.get(p[0])) if ties else None)


# A trial's per-epoch metrics that only its MLflow run and the sweep's tables read reach the driver packed in
# one value of its Tune result. Tune keeps running statistics (min, max, last, windowed means) of every
# numeric key of every trial's results, in the driver's memory and in its experiment state, about 2 KB per
# key and trial; schedulers and searchers follow only the epoch, the objective and the best epoch's values.
PACKED = "epoch_metrics"


def common_epoch(histories: list[dict[str, dict[int, float]]], metric: str, mode: str) -> int | None:
    """The epoch at which the mean of `metric` over runs trained alike (a cv's folds; histories {key: {epoch:
    value}}) is best, among the epochs every run reached with a finite value: one epoch count for every fold,
    as `tune --cv` ranks its trials and as a final model is trained. Each fold's own best epoch is chosen on
    the very rows it is scored on, so their mean flatters the model."""
    curve = mean_curve(histories, metric)
    return best_of(list(curve), curve.get, mode) if curve else None


def mean_curve(histories: list[dict[str, dict[int, float]]], metric: str) -> dict[int, float]:
    """{epoch: the mean of `metric` over the runs} at the epochs every run reached with a finite value."""
    if not histories:
        return {}
    epochs = set.intersection(*({e for e, v in h.get(metric, {}).items() if finite(v)} for h in histories))
    return {e: sum(h[metric][e] for h in histories) / len(histories) for e in sorted(epochs)}


def packed(result: dict, followed: tuple[str, ...]) -> dict:
    """A trial's result as it goes to Tune: the epoch, the best epoch and the `followed` metrics (the sweep's
    objectives), each as reported and at the best epoch, as they are; the other numbers in PACKED pairs."""
    kept = {"epoch", *followed}
    kept |= {PREFIX + k for k in kept}  # best_epoch among them
    out = {k: v for k, v in result.items() if k in kept}
    out[PACKED] = tuple((k, v) for k, v in result.items() if k not in kept)
    return out


def unpacked(result: dict | None) -> dict:
    """A result as the trial reported it (a packed one's pairs back in place; they come back as lists
    from a resumed sweep's saved state)."""
    result = dict(result or {})
    pairs = result.pop(PACKED, ())
    return {**result, **dict(pairs)}


def best_epoch_of(history: dict[str, list[tuple[int, float]]], metric: str, mode: str) -> dict:
    """Every metric's value at the best epoch of `metric`, from per-epoch histories {key: [(epoch, value)]}
    ({} without a finite value of `metric`)."""
    top = history_best(history, metric, mode)
    return {} if top is None else {k: dict(points).get(top[0]) for k, points in history.items()}


def trial_value(result: dict | None, metric: str) -> float | None:
    """A trial's worth from its last reported result: the best epoch's value (older results without
    `best_<metric>`: the result's own value)."""
    if not result:
        return None
    return result.get(PREFIX + metric, result.get(metric))


def trial_tie(result: dict | None, metric: str) -> float | None:
    """A trial's TIE_BREAK value at its best epoch of `metric`, from its last reported result."""
    return None if metric == TIE_BREAK else best_metrics(result).get(TIE_BREAK)


def ranked_trials(trials: Iterable[T], metric: str, mode: str) -> list[T]:
    """Tune trials with a value, best first, each worth its best epoch (equal values: TIE_BREAK)."""
    return ranked(trials, lambda t: trial_value(t.last_result, metric), mode, lambda t: trial_tie(t.last_result, metric))


def best_metrics(result: dict | None) -> dict:
    """The best epoch's metrics from a result, under their own names (best_val_r2 -> val_r2)."""
    return {k[len(PREFIX):]: v for k, v in unpacked(result).items()
            if k.startswith(PREFIX) and k != "best_epoch" and finite(v)}


class BestEpoch:
    """Follows a trial's stream of per-epoch results and adds the best epoch so far to each:
    `best_epoch` and `best_<k>` for every val_*/test_* metric (and the loss) at that epoch.

    It sees replayed epochs too (a resumed trial replays its history first), so the best survives a
    restore. The rule is the loop's best checkpoint rule: strictly better, or equal with a lower TIE_BREAK.
    """

    def __init__(self, metric: str, mode: str):
        self.metric, self.mode = metric, mode
        self.best: dict | None = None

    def __call__(self, results: Iterable[dict]) -> Iterator[dict]:
        for result in results:
            best = self.best or {}
            if improves(result.get(self.metric), best.get(self.metric), self.mode, tie_value(result, self.metric),
                        tie_value(best, self.metric)):
                self.best = result
            # Until an epoch has a finite value, the result's own (a NaN): schedulers and searchers
            # find the key they follow in every result.
            yield {**result, **(self.fields() if self.best is not None else {PREFIX + self.metric: result.get(self.metric)})}

    def fields(self) -> dict:
        kept = {k: v for k, v in self.best.items()
                if (k.startswith(("val_", "test_")) or k in ("loss", *PER_TRIAL)) and finite(v)}
        return {"best_epoch": self.best["epoch"], **{PREFIX + k: v for k, v in kept.items()}}


def headline(task: str) -> str | None:
    """The metric a person reads first for a task: accuracy for classifiers, R² for regressors, the
    concordance index for survival models."""
    return {"classification": "val_accuracy", "regression": "val_r2", "survival": "val_cindex"}.get(task)


def comparison(label: str, values: dict, metric: str, mode: str, baseline: dict, task: str, hint: str = "",
               epochs: tuple[int, int] | None = None) -> list[str]:
    """`<label> val_accuracy 0.87 vs linear baseline 0.86`, and a warning when the model is worse than
    the linear baseline on the sweep's metric (with remedies for its `epochs`, (best epoch, epochs run), and
    `hint`, a further one) or, for a regressor, than predicting the mean (R² < 0)."""
    keys = list(dict.fromkeys(k for k in (metric, headline(task)) if k and finite(values.get(k))))
    shown = ", ".join(f"{k} {values[k]:.4g}" + (f" vs linear baseline {baseline[k]:.4g}" if finite(baseline.get(k)) else "")
                      for k in keys)
    lines = [f"{label} {shown}"] if shown else []
    worse = [k for k in keys if finite(baseline.get(k)) and improves(baseline[k], values[k], mode if k == metric else direction(k))]
    if worse:
        lines.append(f"warning: {label} is worse than a linear baseline on the same rows ({', '.join(worse)}); "
                     f"{_remedy(epochs)}{hint}")
    r2 = values.get("val_r2")
    if task == "regression" and finite(r2) and r2 < 0:
        lines.append(f"warning: {label} has val_r2 {r2:.3g}, worse than predicting the training mean (R² 0)")
    return lines


def _remedy(epochs: tuple[int, int] | None) -> str:
    """What to try for a model the linear baseline beats, from where its best epoch fell: at the end of
    training, more epochs; in the first half (it overfits from there), a slower or more regularised fit."""
    best, run = epochs or (0, 0)
    if run > 1 and best >= run:
        return "its best epoch was its last: try more epochs, or a wider search (more samples, smaller dense layers)"
    if run > 1 and best <= run / 2:
        return (f"its best epoch was {best} of {run}: try a lower learning_rate or more weight_decay or dropout, "
                f"or a wider search (more samples, smaller dense layers)")
    return "try a wider search (more samples, weight_decay, smaller dense layers) or more epochs"


def best_lines(best: dict, metric: str, mode: str, baseline: dict, task: str, hint: str = "",
               noun: str = "trial") -> list[str]:
    """What the end of a sweep says about its best trial, or an ensemble's best member (`noun`), and the
    linear baseline beside it (`hint`: see comparison)."""
    import json

    epoch = f"epoch {best['epoch']}" + (f" of {best['epochs_run']}" if best.get("epochs_run") else "")
    lines = [f"best {metric} {best['value']:.4g} ({noun} {best['trial_id']}, {epoch}): "
             f"{json.dumps(best['config'], default=str)}"]
    return lines + comparison(f"best {noun}", {**best.get("metrics", {}), metric: best["value"]}, metric, mode,
                              baseline, task, hint, (best["epoch"], best["epochs_run"]) if best.get("epochs_run") else None)


# ------------------------------------------------------------------ several objectives: the Pareto front
# A multi-objective sweep (`tune --metric A --mode .. --metric B --mode ..`) ranks, stops and checkpoints by
# its first metric, as any sweep; a trial's other objectives are their values at that same best epoch (the
# model its checkpoint holds). The front is the trials no other trial beats on every objective at once.


def dominates(a: tuple, b: tuple, modes: tuple) -> bool:
    """`a` is at least as good as `b` on every objective and better on one."""
    better = [x < y if m == "min" else x > y for x, y, m in zip(a, b, modes)]
    worse = [x > y if m == "min" else x < y for x, y, m in zip(a, b, modes)]
    return any(better) and not any(worse)


def pareto_front(items: Iterable[T], values: Callable[[T], tuple | None], modes: tuple) -> list[T]:
    """The non-dominated items with finite values on every objective, in their given order (equal values
    on every objective: the first item stands for them)."""
    scored = [(i, v, item) for i, item in enumerate(items)
              if (v := values(item)) is not None and all(finite(x) for x in v)]
    # In lexicographic order of the objectives (each turned to "smaller is better"), no item can dominate one
    # before it: each item is compared with the front so far only (fast for 10^4 trials).
    scored.sort(key=lambda s: (tuple(x if m == "min" else -x for x, m in zip(s[1], modes)), s[0]))
    front: list = []
    for i, v, item in scored:
        if not any(w == v or dominates(w, v, modes) for _, w, _ in front):
            front.append((i, v, item))
    return [item for _, _, item in sorted(front, key=lambda s: s[0])]


def knee(points: list[tuple], modes: tuple) -> int:
    """The index of the front's knee: after scaling each objective to [0, 1] over the front (0 = its best
    value there), the point nearest the ideal point that is best at everything (the first on a tie)."""
    scaled = []
    for k, mode in enumerate(modes):
        column = [p[k] for p in points]
        lo, hi = min(column), max(column)
        span = (hi - lo) or 1.0
        scaled.append([(x - lo) / span if mode == "min" else (hi - x) / span for x in column])
    distances = [math.fsum(s[i] ** 2 for s in scaled) for i in range(len(points))]
    return distances.index(min(distances))


def front_rows(rows: list[dict]) -> list[dict]:
    """A multi-objective sweep's front from its results.csv rows (best first by the first metric)."""
    return [r for r in rows if str(r.get("pareto")) in ("1", "True")]


def picked_row(rows: list[dict], pick: str, sweep: str) -> dict:
    """The front member `--pick` names: `knee`, or its place on the front (1 = best by the first metric)."""
    from candle_ray.errors import UsageError

    if rows and "pareto" not in rows[0]:
        raise UsageError(f"--pick chooses from a multi-objective sweep's Pareto front, and sweep {sweep!r} has one "
                         f"metric: use --top K (or nothing: its best trial)")
    front = front_rows(rows)
    if not front:
        raise UsageError(f"sweep {sweep!r} has no Pareto front (no finished trial); finish or resume it first")
    if pick == "knee":
        return next(r for r in front if str(r.get("knee")) in ("1", "True"))
    if not pick.isdigit() or not 1 <= int(pick) <= len(front):
        raise UsageError(f"--pick {pick}: give knee or a front member's place, 1 to {len(front)} (the end of the "
                         f"sweep lists them; so does the pareto column of its results.csv)")
    return front[int(pick) - 1]
