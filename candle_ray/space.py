"""Search spaces from CANDLE Supervisor files, as Ray Tune samplers (`candle-ray tune --space FILE`).

Supported, as Supervisor writes them:
  - GA JSON (workflows/GA/data/*_param_space*.json): a list of {"name", "type": categorical | ordered |
    int | float | logical | constant, "values" / "lower" + "upper" / "value", "element_type", "sigma"}, and
    "log": true (ours, not Supervisor's) for an int or float range sampled log-uniformly;
  - random settings.json: {"parameters": {key: [low, high]}, "samples": {"num": [N]}};
  - grid settings.json: {"parameters": {key: [v1, v2, ...]}}.
Values are converted to the experiment's types ("500 100 50" becomes [500, 100, 50] for a list key).

Supervisor's own files name keys a given model never reads (nt3_param_space_ga.json: clipnorm, decay, rho,
beta_1..., which CANDLE's Keras NT3 passed to an optimizer built from Keras defaults): such keys are left out
of the search and named in one warning; a name close to a key the experiment has is refused as a typo. Entry
fields Supervisor's GA does not read ("comment", PBT's "debug_value") are ignored, as it ignores them.
"""

from __future__ import annotations

import difflib
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
    left_out: tuple[str, ...] = ()  # the file's keys the experiment does not read

    def left_out_line(self, path, experiment: str, data_options) -> str | None:
        """The warning that names the keys left out; a reader's data options get their own clause: one
        sweep trains on one dataset."""
        data = [k for k in self.left_out if k in data_options]
        other = [k for k in self.left_out if k not in data_options]
        said = [f"{', '.join(other)}: experiment {experiment!r} does not read them"] if other else []
        if data:
            said.append(f"{', '.join(data)}: options of the dataset's reader, and a sweep trains on one dataset "
                        f"(set them in the experiment's ReaderDataset options)")
        return f"warning: {path}: not searched: {'; '.join(said)}" if said else None


def _key(name: str, defaults: dict, path: Path) -> str | None:
    """The experiment's key for a file's name; None for a key it does not read (left out of the search)."""
    key = name if name in defaults else CANDLE_ALIASES.get(name, name)
    if key in defaults:
        return key
    if difflib.get_close_matches(name, list(defaults), n=1, cutoff=0.8):  # a typo, not another model's key
        raise UsageError(f"{path}: search-space key {name!r} is not in the experiment's config{suggest(name, defaults)}; "
                         f"correct it, or add it to the experiment's defaults")
    return None


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
GA_TYPES = ("categorical", "ordered", "int", "float", "logical", "constant")


def _log_range(key: str, item: dict, path: Path, integer: bool):
    low, high = item.get("lower"), item.get("upper")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)) or not 0 < low < high:
        raise UsageError(f"{path}: {key} with \"log\": true needs numbers 0 < lower < upper, got {low!r}, {high!r}")
    return tune.lograndint(int(low), int(high) + 1) if integer else tune.loguniform(float(low), float(high))


def _check_fields(item: dict, path: Path) -> None:
    """Refuse a field that looks like a misspelt GA field ("lg" for "log"); others are ignored, as Supervisor does."""
    for unknown in sorted(set(item) - set(GA_FIELDS)):
        if close := difflib.get_close_matches(unknown, GA_FIELDS, n=1, cutoff=0.8):
            raise UsageError(f"{path}: {item['name']} has field {unknown!r}; did you mean {close[0]!r}? A GA entry "
                             f"takes {', '.join(GA_FIELDS)}")


def _ga(items: list, defaults: dict, path: Path) -> tuple[dict, list]:
    space, left_out = {}, []
    for item in items:
        if not isinstance(item, dict) or "name" not in item or "type" not in item:
            raise UsageError(f"{path}: every GA entry needs 'name' and 'type', got {item!r}")
        _check_fields(item, path)
        key, kind = _key(item["name"], defaults, path), item["type"]
        if kind not in GA_TYPES:
            raise UsageError(f"{path}: {item['name']} has unknown type {kind!r}; "
                             f"use categorical, ordered, int, float, logical or constant")
        if key is None:
            left_out.append(item["name"])
        elif kind in ("categorical", "ordered"):
            space[key] = tune.choice(_values(key, defaults, item.get("values"), path))
        elif kind in ("int", "float") and item.get("log"):
            space[key] = _log_range(key, item, path, kind == "int")
        elif kind in ("int", "float"):
            space[key] = _number_range(key, defaults, item.get("lower"), item.get("upper"), path, kind == "int")
        elif kind == "logical":
            space[key] = tune.choice(_values(key, defaults, [True, False], path))
        else:  # constant
            space[key] = coerce(key, defaults[key], item.get("value"))
    return space, left_out


def _random(params: dict, defaults: dict, path: Path) -> tuple[dict, list]:
    """A random settings.json's parameters: [low, high] per key."""
    space, left_out = {}, []
    for name, bounds in params.items():
        if not isinstance(bounds, list) or len(bounds) != 2:
            raise UsageError(f"{path}: random settings need [low, high] for {name}, got {bounds!r}")
        key = _key(name, defaults, path)
        if key is None:
            left_out.append(name)
            continue
        integer = all(isinstance(b, int) for b in bounds) and isinstance(defaults[key], int)
        space[key] = _number_range(key, defaults, bounds[0], bounds[1], path, integer)
    return space, left_out


def _grid(params: dict, defaults: dict, path: Path) -> tuple[dict, list]:
    """A grid settings.json's parameters: every listed value."""
    keys = {name: _key(name, defaults, path) for name in params}
    space = {key: tune.grid_search(_values(key, defaults, params[name], path)) for name, key in keys.items() if key}
    return space, [name for name, key in keys.items() if key is None]


def read_space_file(path: str | Path, defaults: dict) -> SpaceFile:
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"space file not found: {path}; pass a Supervisor GA JSON or settings.json")
    try:
        data = json.loads(path.read_text())
    except ValueError as exc:
        raise UsageError(f"space file {path} is not JSON: {exc}") from None
    if isinstance(data, list):
        (space, left_out), searcher, samples = _ga(data, defaults, path), None, None
    elif isinstance(data, dict) and isinstance(data.get("parameters"), dict) and "samples" in data:
        space, left_out = _random(data["parameters"], defaults, path)
        num = data["samples"].get("num") if isinstance(data["samples"], dict) else None
        samples, searcher = (int(num[0]) if isinstance(num, list) and num else None), None
    elif isinstance(data, dict) and isinstance(data.get("parameters"), dict):
        (space, left_out), searcher, samples = _grid(data["parameters"], defaults, path), "grid", 1
    else:
        raise UsageError(f"space file {path} is neither a GA list nor a settings.json with 'parameters'")
    if not space:
        said = f" the experiment reads (it does not read {', '.join(left_out)})" if left_out else ""
        raise UsageError(f"space file {path} defines no parameters{said}")
    return SpaceFile(space, searcher, samples, tuple(left_out))


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
