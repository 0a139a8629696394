"""Search spaces from CANDLE Supervisor files, as Ray Tune samplers (`candle-ray tune --space FILE`).

Supported, as Supervisor writes them:
  - GA JSON (workflows/GA/data/*_param_space*.json): a list of {"name", "type": categorical | ordered |
    int | float | logical | constant, "values" / "lower" + "upper" / "value", "element_type", "sigma"}, and
    "log": true (ours, not Supervisor's) for an int or float range sampled log-uniformly;
  - random settings.json: {"parameters": {key: [low, high]}, "samples": {"num": [N]}};
  - grid settings.json: {"parameters": {key: [v1, v2, ...]}}.
Values are converted to the experiment's types ("500 100 50" becomes [500, 100, 50] for a list key).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ray import tune

from candle_ray.errors import UsageError
from candle_ray.experiment import CANDLE_ALIASES, coerce, suggest


@dataclass(frozen=True)
class SpaceFile:
    space: dict
    searcher: str | None  # what the file implies: "grid" for a grid settings.json
    num_samples: int | None


def _key(name: str, defaults: dict, path: Path) -> str:
    key = name if name in defaults else CANDLE_ALIASES.get(name, name)
    if key not in defaults:
        raise UsageError(f"{path}: search-space key {name!r} is not in the experiment's config{suggest(name, defaults)}; "
                         f"remove it from the file or add it to the experiment's defaults")
    return key


def _values(key: str, defaults: dict, values, path: Path) -> list:
    if not isinstance(values, list) or not values:
        raise UsageError(f"{path}: {key} needs a non-empty list of values, got {values!r}")
    try:
        return [coerce(key, defaults[key], v) for v in values]
    except UsageError as exc:
        raise UsageError(f"{path}: {exc}") from None


def _number_range(key: str, defaults: dict, low, high, path: Path, integer: bool):
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)) or low > high:
        raise UsageError(f"{path}: {key} needs numbers lower <= upper, got {low!r}, {high!r}")
    if low == high:
        return coerce(key, defaults[key], low)
    if integer:
        return tune.randint(int(low), int(high) + 1)  # Supervisor's bounds are inclusive
    return tune.uniform(float(low), float(high))


# A GA entry's fields: Supervisor's, and "log" (ours: sample an int or float range log-uniformly).
GA_FIELDS = ("name", "type", "values", "lower", "upper", "value", "element_type", "sigma", "log")


def _log_range(key: str, item: dict, path: Path, integer: bool):
    low, high = item.get("lower"), item.get("upper")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)) or not 0 < low < high:
        raise UsageError(f"{path}: {key} with \"log\": true needs numbers 0 < lower < upper, got {low!r}, {high!r}")
    return tune.lograndint(int(low), int(high) + 1) if integer else tune.loguniform(float(low), float(high))


def _ga(items: list, defaults: dict, path: Path) -> dict:
    space = {}
    for item in items:
        if not isinstance(item, dict) or "name" not in item or "type" not in item:
            raise UsageError(f"{path}: every GA entry needs 'name' and 'type', got {item!r}")
        if unknown := sorted(set(item) - set(GA_FIELDS)):
            raise UsageError(f"{path}: {item['name']} has unknown field(s) {', '.join(unknown)}; a GA entry takes "
                             f"{', '.join(GA_FIELDS)}")
        key, kind = _key(item["name"], defaults, path), item["type"]
        if kind in ("categorical", "ordered"):
            space[key] = tune.choice(_values(key, defaults, item.get("values"), path))
        elif kind in ("int", "float") and item.get("log"):
            space[key] = _log_range(key, item, path, kind == "int")
        elif kind in ("int", "float"):
            space[key] = _number_range(key, defaults, item.get("lower"), item.get("upper"), path, kind == "int")
        elif kind == "logical":
            space[key] = tune.choice(_values(key, defaults, [True, False], path))
        elif kind == "constant":
            space[key] = coerce(key, defaults[key], item.get("value"))
        else:
            raise UsageError(f"{path}: {item['name']} has unknown type {kind!r}; "
                             f"use categorical, ordered, int, float, logical or constant")
    return space


def read_space_file(path: str | Path, defaults: dict) -> SpaceFile:
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"space file not found: {path}; pass a Supervisor GA JSON or settings.json")
    try:
        data = json.loads(path.read_text())
    except ValueError as exc:
        raise UsageError(f"space file {path} is not JSON: {exc}") from None
    if isinstance(data, list):
        space, searcher, samples = _ga(data, defaults, path), None, None
    elif isinstance(data, dict) and isinstance(data.get("parameters"), dict):
        params = data["parameters"]
        if "samples" in data:  # random: [low, high] per key, and a sample count
            space = {}
            for name, bounds in params.items():
                key = _key(name, defaults, path)
                if not isinstance(bounds, list) or len(bounds) != 2:
                    raise UsageError(f"{path}: random settings need [low, high] for {name}, got {bounds!r}")
                integer = all(isinstance(b, int) for b in bounds) and isinstance(defaults[key], int)
                space[key] = _number_range(key, defaults, bounds[0], bounds[1], path, integer)
            num = data["samples"].get("num") if isinstance(data["samples"], dict) else None
            samples, searcher = (int(num[0]) if isinstance(num, list) and num else None), None
        else:  # grid: every listed value
            space = {_key(n, defaults, path): tune.grid_search(_values(_key(n, defaults, path), defaults, v, path))
                     for n, v in params.items()}
            searcher, samples = "grid", 1
    else:
        raise UsageError(f"space file {path} is neither a GA list nor a settings.json with 'parameters'")
    if not space:
        raise UsageError(f"space file {path} defines no parameters")
    return SpaceFile(space, searcher, samples)


def wide_uniform_note(space: dict) -> str | None:
    """A note on keys drawn uniformly over three decades or more (Supervisor's GA files give learning_rate
    [1e-5, 0.1] that way): nine draws in ten land in the top decade, so small values are hardly tried."""
    from ray.tune.search.sample import Float, Uniform

    wide = {k: d for k, d in space.items() if isinstance(d, Float) and isinstance(d.get_sampler(), Uniform)
            and 0 < d.lower and d.upper >= 1000 * d.lower}
    if not wide:
        return None
    ranges = ", ".join(f"{k} [{d.lower:g}, {d.upper:g}]" for k, d in wide.items())
    return (f"note: {ranges} drawn uniformly: 9 in 10 draws land in the top decade; sample them log-uniformly "
            f"(tune.loguniform in the experiment, \"log\": true in a GA space file)")
