"""New rows for a model of a joined dataset (Uno, Combo, P1B3, Attn): named by their ids, gathered from the cache.

Such a model reads x = concat(feature-table rows, value columns) in its slots' order (candle_ray.data.joined),
built from the feature tables of the cache entry it was trained on. A row to predict is therefore a
(cell, drug[, drug2], dose...) combination, written as one column per slot key, the names the cached
row tables use: Uno `cell`, `drug1` [`drug2`], `dose1` [`dose2`] (-log10 molar, as the reader computes
it), `response_source` where it is an input; Combo `cell`, `drug1`, `drug2`; P1B3 `cell`, `drug`,
`LOG_CONCENTRATION`; Attn `cell`, `drug`. Ids are the feature tables' own ("CCLE.22RV1", "NSC.740");
rows are gathered a slice at a time, as the training feed gathers batches, so memory is the tables
(memory-mapped) plus one slice however many combinations are predicted. Pure numpy/pandas.
"""

from __future__ import annotations

import numpy as np

from candle_ray.data import CACHE_ENV
from candle_ray.errors import DataError, UsageError, data_row


class JoinedRows:
    """Model input rows built on demand: `rows[a:b]` is float32 [b - a, num_features], as the feed's batches."""

    def __init__(self, tables: dict[str, np.ndarray], slots: list[dict], columns: dict[str, np.ndarray]):
        self.tables, self.slots, self.columns = tables, slots, columns
        self.rows = len(next(iter(columns.values())))

    def __len__(self) -> int:
        return self.rows

    def __getitem__(self, rows: slice) -> np.ndarray:
        parts = [self.columns[s["key"]][rows, None].astype(np.float32) if s["table"] is None
                 else self.tables[s["table"]][self.columns[s["key"]][rows]] for s in self.slots]
        return np.concatenate(parts, axis=1)


def entry_of(cache, info: dict):
    """The cache entry a joined model was trained on, on this node: by its checkpoint's dataset name and
    fingerprint in `cache` (None: $CANDLE_RAY_CACHE, else the default root), else at the path it was trained
    from where that still holds it (an MLflow model logged by a sweep with --cache-dir); UsageError naming
    where it was looked for and how to prepare it."""
    from candle_ray.data.remote_cache import ensure_local, open_cache

    cache = cache or open_cache()
    entry = cache.find(info["dataset"], info["fingerprint"]) or _trained_from(info)
    if entry is None:
        rebuild = info.get("rebuild") or "candle-ray data prepare EXPERIMENT (with the run's --config-file)"
        where = getattr(cache, "uri", None) or cache.root
        raise UsageError(f"the model reads its features from dataset {info['dataset']} (fingerprint "
                         f"{info['fingerprint']}), which is not in the cache {where}; pass --cache-dir (or set "
                         f"{CACHE_ENV}) where it is, or prepare it: {rebuild}")
    ensure_local(entry.path)  # an S3 entry is read from this node's copy (a local one: nothing to do)
    return entry


def _trained_from(info: dict):
    """The entry at the path the model's data was described from, if it is still there, unchanged."""
    from pathlib import Path

    from candle_ray.data.cache_format import MANIFEST, Entry, read_manifest

    path = Path(info["entry"]) if info.get("entry") else None
    if path is None or not (path / MANIFEST).is_file():
        return None
    manifest = read_manifest(path)
    return Entry(path=path, manifest=manifest) if manifest.get("fingerprint") == info["fingerprint"] else None


def example_row(entry):
    """The first training row as a file of rows to predict names it: an MLflow model's input example."""
    import pandas as pd

    from candle_ray.data import joined_cache

    rows, ids = joined_cache.open_rows(entry.path, "train"), joined_cache.open_table_ids(entry.path)
    id_columns, value_columns = input_columns(entry.manifest)
    table = {s["key"]: s["table"] for s in entry.manifest["slots"] if s["table"] is not None}
    row = {key: [ids[table[key]][int(rows[key][0])]] for key in id_columns}
    return pd.DataFrame({**row, **{key: [float(rows[key][0])] for key in value_columns}})


def input_columns(manifest: dict) -> tuple[list[str], list[str]]:
    """(id columns, value columns) a row to predict needs: the slot keys, each once, in slot order."""
    ids, values = [], []
    for slot in manifest["slots"]:
        wanted = values if slot["table"] is None else ids
        if slot["key"] not in ids + values:
            wanted.append(slot["key"])
    return ids, values


def gather(frame, entry, source: str) -> tuple[JoinedRows, dict[str, list]]:
    """(the model's input rows, the frame's input columns for the output) of a user's frame of ids and values."""
    manifest = entry.manifest
    id_columns, value_columns = input_columns(manifest)
    missing = [c for c in id_columns + value_columns if c not in frame.columns]
    if missing:
        raise DataError(f"{source} lacks column(s) {missing}; a model of {manifest['name']} takes one row per "
                        f"combination with columns {id_columns + value_columns} (ids of its feature tables, "
                        f"values as numbers)")
    if len(frame) == 0:
        raise DataError(f"{source} has no rows to predict")
    lookups, tables = _opened(entry)
    columns = {key: _indices(frame[key], key, lookups[key], source) for key in id_columns}
    columns.update({key: _values(frame[key], key, source) for key in value_columns})
    shown = {key: frame[key].astype(str).str.strip().tolist() if key in id_columns else frame[key].tolist()
             for key in id_columns + value_columns}
    return JoinedRows(tables, manifest["slots"], columns), shown


def _ids_of(key: str, manifest: dict, table_ids: dict[str, list[str]]) -> list[str]:
    """The ids an index column `key` points at: one list, shared by every table read through it."""
    names = [s["table"] for s in manifest["slots"] if s["key"] == key and s["table"] is not None]
    first = table_ids[names[0]]
    for name in names[1:]:
        if table_ids[name] != first:
            raise DataError(f"cache entry {manifest['name']}-{manifest['fingerprint']} is inconsistent: tables "
                            f"{names[0]!r} and {name!r} share index column {key!r} but not their ids; rebuild it "
                            f"with: {manifest.get('rebuild') or 'candle-ray data prepare EXPERIMENT --force'}")
    return first


# Entry folder -> _opened's result, the newest few: a served model gathers its rows on every request.
_OPENED: dict[str, tuple[dict, dict]] = {}


def _opened(entry) -> tuple[dict, dict]:
    """(each id column's ids -> table rows, as a pandas Series indexed by id whose hash table pandas builds once;
    the feature tables, memory-mapped), kept per entry: a one-row request to an MLflow model of P1B3's smoke
    entry (6,700 drugs) took 7.0 ms with the ids' dicts and the tables built anew, 2.5 ms with both kept
    (bench/serving.py). An entry's folder is named by its fingerprint: nothing under a path changes."""
    import pandas as pd

    from candle_ray.data import joined_cache

    path = str(entry.path)
    if path not in _OPENED:
        lookups = {}
        for key, ids in ids_by_column(entry).items():
            rows = pd.Series(np.arange(len(ids), dtype=np.int64), index=pd.Index(ids, dtype=object))
            lookups[key] = rows[~rows.index.duplicated(keep="last")]  # as the dict it replaced: an id's last row
        while len(_OPENED) >= 4:
            _OPENED.pop(next(iter(_OPENED)))
        _OPENED[path] = lookups, joined_cache.open_tables(entry.path)
    return _OPENED[path]


def _indices(column, key: str, rows, source: str) -> np.ndarray:
    """The table rows of `column`'s ids (`rows`: _opened's Series for `key`); DataError naming an unknown one."""
    given = column.astype(str).str.strip()
    found = rows.index.get_indexer(given)
    unknown = found < 0
    if unknown.any():
        first = int(np.argmax(unknown))
        ids = rows.index
        raise DataError(f"{int(unknown.sum())} of {len(given)} rows of {source} name a {key} the model has no "
                        f"features for, e.g. {given.iloc[first]!r} ({data_row(first)}); use one of its "
                        f"{len(ids):,} {key} ids (e.g. {', '.join(map(repr, ids[:3]))}) or drop those rows")
    return rows.to_numpy()[found]


def _values(column, key: str, source: str) -> np.ndarray:
    import pandas as pd

    values = pd.to_numeric(column, errors="coerce").to_numpy(np.float64)
    bad = ~np.isfinite(values)
    if bad.any():
        first = int(np.argmax(bad))
        raise DataError(f"{source} has a missing or non-number {key} at {data_row(first)} ({column.iloc[first]!r}); "
                        f"every row needs one")
    return values.astype(np.float32)


def own_split(rows: JoinedRows, entry) -> str | None:
    """The split of the model's own data ("train", "val") that at least half of `rows` are rows of (the same
    ids and values; a multi-task model's, the same features), or None: calibration rows a model was trained or
    selected on make a poor calibration set."""
    import pandas as pd

    from candle_ray.data import joined_cache

    if isinstance(rows, np.ndarray):
        return _own_reports(rows, entry)
    given = pd.DataFrame(rows.columns)
    for split in entry.manifest["splits"]:
        cached = joined_cache.open_rows(entry.path, split)
        known = pd.DataFrame({k: np.asarray(cached[k]).astype(v.dtype) for k, v in rows.columns.items()})
        if 2 * len(given.merge(known.drop_duplicates(), on=list(rows.columns))) >= len(given):
            return split
    return None


def _own_reports(X: np.ndarray, entry) -> str | None:
    """`own_split` of a multi-task entry (one feature table, read through one index column): the split whose
    reports at least half of the rows of features `X` are, byte for byte as float32."""
    from candle_ray.data import joined_cache

    [slot] = entry.manifest["slots"]
    table = joined_cache.open_tables(entry.path)[slot["table"]]
    given = [row.tobytes() for row in np.asarray(X, dtype=np.float32)]
    for split in entry.manifest["splits"]:
        reports = np.asarray(table[np.asarray(joined_cache.open_rows(entry.path, split)[slot["key"]])], dtype=np.float32)
        known = {row.tobytes() for row in reports}
        if 2 * sum(row in known for row in given) >= len(given):
            return split
    return None


def ids_by_column(entry) -> dict[str, list[str]]:
    """The ids each id column of a row to predict may name (cell, drug1...), in the feature tables' order."""
    from candle_ray.data import joined_cache

    table_ids = joined_cache.open_table_ids(entry.path)
    id_columns, _ = input_columns(entry.manifest)
    return {key: _ids_of(key, entry.manifest, table_ids) for key in id_columns}


def named_entry(cache, name: str):
    """The one entry of `cache` named `name` or `name-FINGERPRINT` (`cache_format.named`), on this node."""
    from candle_ray.data.cache_format import named
    from candle_ray.data.remote_cache import ensure_local

    entry = named(cache.entries(), name)
    ensure_local(entry.path)
    return entry


def rows_hint(entry) -> str | None:
    """What a file of rows to predict for a model of this joined entry holds, and where its ids are listed
    (a multi-task entry's rows hold a report's features); None for a matrix."""
    if entry.manifest.get("kind") != "joined":
        return None
    if len(labels := entry.manifest["label_columns"]) > 1:
        return (f"ROWS.csv: one report per row, its {entry.manifest['num_features']} features as the archive's "
                f"*_feature.csv files hold them (header-less); a header with label columns {', '.join(labels)} "
                f"scores each task")
    id_columns, value_columns = input_columns(entry.manifest)
    return (f"ROWS.csv: one row per combination, columns {', '.join(id_columns + value_columns)} "
            f"(`candle-ray data ids {entry.name}-{entry.fingerprint}` lists the ids)")
