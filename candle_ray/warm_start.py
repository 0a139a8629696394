"""`tune --warm-start SWEEP[,SWEEP]`: earlier sweeps' finished trials as points a new sweep's searcher has
already evaluated, so that TPE, GP or BOHB start from what is known instead of from random draws.

A point is a finished trial's configuration (its results.csv row) with its worth, the best epoch's value
of the metric (candle_ray.summary). Points must fit this sweep's space: the same keys, each value inside
the key's range or among its choices; the others are left out and counted. Driver side; no Ray here
beyond the search-space classes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from candle_ray.errors import UsageError

# Samplers that model every finished trial of their study. CMA-ES and NSGA-II build generations from
# trials they proposed themselves, so points added to the study would be ignored.
SEARCHERS = ("optuna", "gp", "bohb")


@dataclass(frozen=True)
class WarmStart:
    sweeps: tuple[str, ...]
    points: list[dict]  # one configuration per finished trial, with the space's own values (lists included)
    values: list[float]  # each point's best-epoch value of the metric
    outside: int  # finished trials whose configuration lies outside this space

    def line(self, searcher: str) -> str:
        left_out = f" ({self.outside} outside this space left out)" if self.outside else ""
        return (f"warm start: {len(self.points)} finished trials of {', '.join(self.sweeps)} given to the "
                f"{searcher} searcher as evaluated points{left_out}")


def check_searcher(searcher: str, resume: bool) -> None:
    if resume:
        raise UsageError("--warm-start feeds a new sweep's searcher; a resumed sweep's searcher already holds "
                         "what it learnt: drop --warm-start (or --resume)")
    if searcher not in SEARCHERS:
        why = ("builds its generations from its own trials and would ignore earlier ones"
               if searcher in ("cmaes", "ga") else "does not learn from evaluated points")
        raise UsageError(f"--warm-start: --search {searcher} {why}; use --search {', '.join(SEARCHERS)}")


def load(store, names: list[str], experiment_path: Path, space: dict, metric: str, mode: str, smoke: bool,
         echo) -> WarmStart:
    """The finished trials of sweeps `names` (in `store`) as evaluated points of `space`."""
    from candle_ray import ensemble

    points, values, outside = [], [], 0
    for name in names:
        record = store.read_sweep(name, f"--warm-start {name!r}: no such sweep", "pass --storage where it ran")
        _check_record(name, record, space, metric, mode, smoke)
        if Path(record["experiment_file"]) != Path(experiment_path):
            echo(f"note: --warm-start {name} searched {record['experiment_file']}, this sweep {experiment_path}")
        rows = store.read_results(name)
        if rows is None:
            raise UsageError(f"--warm-start {name!r} has no results.csv yet; let it finish (or resume it) first")
        for row in rows:
            if row.get("status") not in ensemble.FINISHED or row.get(metric) in (None, ""):
                continue
            point = fitted_point(row, space)
            if point is None:
                outside += 1
            else:
                points.append(point)
                values.append(float(row[metric]))
    if not points:
        raise UsageError(f"--warm-start {','.join(names)}: no finished trial fits this search space"
                         + (f" ({outside} lie outside it)" if outside else "") + "; drop --warm-start")
    return WarmStart(tuple(names), points, values, outside)


def _check_record(name: str, record: dict, space: dict, metric: str, mode: str, smoke: bool) -> None:
    searched = record["sweep"]
    if set(record["space_keys"]) != set(space):
        raise UsageError(f"--warm-start {name!r} searched {', '.join(sorted(record['space_keys']))}, this sweep "
                         f"searches {', '.join(sorted(space))}; warm-start from a sweep over the same keys")
    if (searched["metric"], searched["mode"]) != (metric, mode):
        raise UsageError(f"--warm-start {name!r} ranked trials by {searched['metric']} ({searched['mode']}), this "
                         f"sweep by {metric} ({mode}); pass --metric {searched['metric']} --mode {searched['mode']} "
                         f"or warm-start from a sweep with the same metric")
    if bool(record.get("smoke")) != smoke:
        data = "synthetic smoke data" if record.get("smoke") else "the real data"
        raise UsageError(f"--warm-start {name!r} trained on {data}, this sweep does not; its values say nothing "
                         f"here: warm-start from a sweep on the same data")


def fitted_point(row: dict, space: dict) -> dict | None:
    """A results.csv row's configuration as values of `space` (None when one lies outside it). A conditional
    key (candle_ray.conditional) is None where its condition fails, as the searcher itself would leave it."""
    from ray.tune.search.sample import Domain

    from candle_ray.conditional import Conditional, conditions

    point = {}
    for key, domain in space.items():
        if not isinstance(domain, Domain):  # a constant: not searched, not a point's coordinate
            continue
        text = row.get(f"config.{key}", "")
        if isinstance(domain, Conditional) and text in ("", "None"):
            point[key] = None
            continue
        value = _within(domain.then if isinstance(domain, Conditional) else domain, text)
        if value is _OUTSIDE:
            return None
        point[key] = value
    if any((point[key] is not None) != condition.holds(point) for key, condition in conditions(space).items()):
        return None  # searched where this space would not search it, or the other way round
    return point


_OUTSIDE = object()


def _within(domain, text: str):
    """`text` (a results.csv cell) as a value of `domain`, or _OUTSIDE."""
    from ray.tune.search.sample import Categorical, Float, Integer

    if isinstance(domain, Categorical):
        return {str(c): c for c in domain.categories}.get(text, _OUTSIDE)
    try:
        value = float(text)
    except ValueError:
        return _OUTSIDE
    if isinstance(domain, Integer):  # Tune's randint excludes its upper bound
        return int(value) if value == int(value) and domain.lower <= value < domain.upper else _OUTSIDE
    if isinstance(domain, Float) and domain.lower <= value <= domain.upper:
        return value
    return _OUTSIDE
