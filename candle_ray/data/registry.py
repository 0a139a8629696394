"""The joined-dataset readers, found by name: reader "p1b3" is module `candle_ray.data.benchmarks.p1b3`.

A reader module defines `read(paths, options, seed) -> JoinedTables` and
`synthesize(out_dir, options, seed, rows, features) -> dict[role, Path]`, optionally `OPTIONS` (every
option with its CANDLE default), `CANDLE_NEGATED` (CANDLE flags that are the opposite of an option, for
config files), `OPTIONAL_ROLES` (source roles read only when an option is set) and
`VERSION` (bumped when its output changes); see
`candle_ray.data.spec.ReaderDataset` for the full contract. Modules are imported on first use, so
naming a reader costs nothing until data is prepared. A dotted name imports that module instead
(a user's own reader outside this package).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType
from typing import Any, Mapping

from candle_ray.errors import UsageError

PACKAGE = "candle_ray.data.benchmarks"
# The benchmark readers shipped with candle-ray (for messages; any module with `read` works).
BUILTIN = ("p1b3", "uno", "combo", "attn", "p3b1")


def module(reader: str) -> ModuleType:
    """The reader's module; UsageError when it does not exist or is not a reader."""
    name = reader if "." in reader else f"{PACKAGE}.{reader}"
    try:
        found = importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and name.startswith(exc.name):  # the reader itself, not one of its imports
            raise UsageError(f"unknown dataset reader {reader!r} (no module {name}); use one of {', '.join(BUILTIN)} "
                             f"or the dotted name of a module that defines read() and synthesize()") from None
        raise
    if not callable(getattr(found, "read", None)):
        raise UsageError(f"module {name} is not a dataset reader: it defines no read(paths, options, seed) function")
    return found


def options(reader: str, given: Mapping[str, Any]) -> dict[str, Any]:
    """The reader's OPTIONS defaults updated with `given`; unknown names are usage errors."""
    found = module(reader)
    defaults = getattr(found, "OPTIONS", None)
    if defaults is None:
        return dict(given)
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        import difflib

        close = difflib.get_close_matches(unknown[0], list(defaults), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else f"; known options: {', '.join(sorted(defaults))}"
        raise UsageError(f"unknown option {unknown[0]!r} for dataset reader {reader!r}{hint}")
    return {**defaults, **given}


def identifying_options(reader: str, given: Mapping[str, Any]) -> dict[str, Any]:
    """The options a cache fingerprint names: every option with its default filled in, except those the reader
    added after its entries were first prepared (ADDED_OPTIONS) while they are at their default, so that an
    entry keeps its name when a reader gains an option."""
    chosen = options(reader, given)
    found = module(reader)
    defaults = getattr(found, "OPTIONS", None) or {}
    added = getattr(found, "ADDED_OPTIONS", ())

    def at_default(key: str, value) -> bool:  # an empty list is a None option's "none" too
        return value == defaults.get(key) or (defaults.get(key) is None and not value)

    return {k: v for k, v in chosen.items() if not (k in added and at_default(k, v))}


def version(reader: str) -> int:
    return int(getattr(module(reader), "VERSION", 1))


def needed_sources(reader: str, sources: Mapping[str, Any], given_options: Mapping[str, Any]) -> dict[str, Any]:
    """The sources a prepare fetches and a fingerprint names: all of them but the reader's OPTIONAL_ROLES
    (role -> option) whose option is off. Uno's aggregated-response file is read only with agg_dose, so an
    experiment can list it and a growth run neither downloads it nor changes its entry."""
    optional = getattr(module(reader), "OPTIONAL_ROLES", {})
    chosen = options(reader, given_options)
    return {role: src for role, src in sources.items() if role not in optional or chosen.get(optional[role])}


def read(reader: str, paths: Mapping[str, Path], given_options: Mapping[str, Any], seed: int):
    """Run the reader on fetched local files: a `JoinedTables`."""
    return module(reader).read(dict(paths), options(reader, given_options), seed)


def synthesize(reader: str, out_dir: Path, given_options: Mapping[str, Any], seed: int, rows: int,
               features: int) -> dict[str, Path]:
    """Write the reader's synthetic files (for --smoke) into `out_dir`; the file per source role."""
    found = module(reader)
    if not callable(getattr(found, "synthesize", None)):
        raise UsageError(f"dataset reader {reader!r} has no synthesize() function, so it has no --smoke data")
    return {role: Path(path) for role, path in
            found.synthesize(Path(out_dir), options(reader, given_options), seed, rows, features).items()}
