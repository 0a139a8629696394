"""Cache entries of joined datasets (manifest kind "joined"): feature tables + row tables per split.

Layout of an entry folder (written in a temporary folder and renamed by `Cache.prepare`):
  table-<name>.arrow   one per feature table: `id: string`, `x: fixed_size_list<float32>[width]`, ONE
                       record batch (the values are one contiguous buffer, memory-mapped as [rows, width]);
                       the feature names are in the schema metadata ("columns", JSON)
  <split>.arrow        one per split (train, val, optional test): the reader's row table, ONE record batch:
                       int32 index columns into the tables, float32 value columns (doses), the label
                       column(s) (float32 for regression, int64 for classes), extra id columns (strings)
  manifest.json        kind "joined", slots, tables, splits (rows, bytes, sha256, column types), reader
                       (name, version, options, seed, facts), sources, num_features, num_classes, task

The feed (candle_ray.data.feed.JoinedFeed) memory-maps both kinds of files and gathers each batch's
features by index, so memory is the feature tables plus one batch whatever the number of rows.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa

from candle_ray.data import registry
from candle_ray.data.cache_format import (DEFAULT_REBUILD, FORMAT_VERSION, check_sha256, corrupt_entry, numpy_view,
                                          open_arrow, read_manifest, sources_record, verify_downloads,
                                          write_batch_file, write_manifest)
from candle_ray.data.joined import JoinedTables
from candle_ray.data.sources import fetch
from candle_ray.errors import CacheError, DataError, UsageError

KIND = "joined"
SPLITS = ("train", "val", "test")


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


# --------------------------------------------------------------------------- validation of a reader's output
def _fail(reader: str, what: str) -> DataError:
    return DataError(f"the {reader} reader produced unusable data: {what}")


def _check_tables(jt: JoinedTables, reader: str) -> None:
    if not jt.tables:
        raise _fail(reader, "no feature tables")
    for name, table in jt.tables.items():
        values = table.values
        if values.ndim != 2 or values.shape[0] != len(table.ids) or values.shape[1] != len(table.columns):
            raise _fail(reader, f"feature table {name!r} has values of shape {values.shape} for {len(table.ids)} ids and {len(table.columns)} columns")
        if values.shape[1] == 0 or values.shape[0] == 0:
            raise _fail(reader, f"feature table {name!r} is empty ({values.shape[0]} ids x {values.shape[1]} columns)")
        for start in range(0, len(values), 4096):
            bad = ~np.isfinite(values[start:start + 4096])
            if bad.any():
                row, col = (int(i) for i in np.argwhere(bad)[0])
                raise _fail(reader, f"feature table {name!r} has a non-finite value for id {table.ids[start + row]!r}, column {table.columns[col]!r}; impute it")


def _check(jt: JoinedTables, reader: str) -> None:
    """The JoinedTables contract (candle_ray.data.joined), checked before anything is written."""
    _check_tables(jt, reader)
    if jt.task not in ("regression", "classification"):
        raise _fail(reader, f"task {jt.task!r} is not regression or classification")
    if not jt.slots or len({s.name for s in jt.slots}) != len(jt.slots):
        raise _fail(reader, f"slots {[s.name for s in jt.slots]} are empty or repeat a name")
    for slot in jt.slots:
        if slot.table is not None and slot.table not in jt.tables:
            raise _fail(reader, f"slot {slot.name!r} reads table {slot.table!r}, which is not one of {sorted(jt.tables)}")
    unknown = sorted(set(jt.splits) - set(SPLITS))
    if unknown or not {"train", "val"} <= set(jt.splits):
        raise _fail(reader, f"splits {sorted(jt.splits)}; need train and val (and optionally test) only")
    labels = list(jt.label_columns)
    multi = len(labels) > 1
    if not labels:
        raise _fail(reader, "no label_columns")
    if jt.task == "classification" and multi and not (isinstance(jt.num_classes, list) and len(jt.num_classes) == len(labels)):
        raise _fail(reader, f"{len(labels)} label columns need num_classes as a list of {len(labels)} counts, got {jt.num_classes!r}")
    for split, frame in jt.splits.items():
        if len(frame) == 0:
            raise DataError(f"the {split} split of the {reader} data is empty; check the reader's options and files")
        needed = {s.key for s in jt.slots} | set(labels)
        missing = sorted(needed - set(frame.columns))
        if missing:
            raise _fail(reader, f"the {split} row table lacks column(s) {missing}")
        for slot in jt.slots:
            column = frame[slot.key].to_numpy()
            if slot.table is None:
                if column.dtype.kind not in "fiu" or not np.isfinite(column.astype(np.float64)).all():
                    raise _fail(reader, f"value column {slot.key!r} of the {split} rows must be finite numbers")
            else:
                rows = len(jt.tables[slot.table].ids)
                if column.dtype.kind not in "iu" or (len(column) and (column.min() < 0 or column.max() >= rows)):
                    raise _fail(reader, f"index column {slot.key!r} of the {split} rows must hold integers in [0, {rows}) (rows of table {slot.table!r})")
        for t, label in enumerate(labels):
            y = frame[label].to_numpy()
            if jt.task == "regression":
                if y.dtype.kind not in "fiu" or not np.isfinite(y.astype(np.float64)).all():
                    raise _fail(reader, f"label column {label!r} of the {split} rows must be finite numbers")
                continue
            if y.dtype.kind not in "iu":
                raise _fail(reader, f"label column {label!r} of the {split} rows must hold integer class indices, has dtype {y.dtype}")
            limit = jt.num_classes[t] if multi else jt.num_classes
            low = -1 if multi else 0  # -1: no label for this task (multi-task rows)
            if len(y) and (y.min() < low or (limit is not None and y.max() >= limit)):
                raise _fail(reader, f"label column {label!r} of the {split} rows has values outside [{low}, {limit})")


def _num_classes(jt: JoinedTables):
    if jt.task != "classification":
        return None
    if jt.num_classes is not None:
        return list(jt.num_classes) if isinstance(jt.num_classes, (list, tuple)) else int(jt.num_classes)
    found = max(int(f[jt.label_columns[0]].max()) for f in jt.splits.values()) + 1
    return max(found, 2)


# --------------------------------------------------------------------------- writing
def _table_schema(width: int, columns: list[str] | None = None) -> pa.Schema:
    meta = {b"columns": json.dumps(columns).encode()} if columns is not None else None
    return pa.schema([pa.field("id", pa.string()), pa.field("x", pa.list_(pa.float32(), width))], metadata=meta)


def _write_table(path: Path, table) -> dict:
    values = np.ascontiguousarray(table.values, dtype=np.float32)
    schema = _table_schema(values.shape[1], list(table.columns))
    x = pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), values.shape[1])
    record = write_batch_file(path, pa.record_batch([pa.array([str(i) for i in table.ids], pa.string()), x], schema=schema))
    return {**record, "width": int(values.shape[1])}


def _row_arrays(jt: JoinedTables, frame) -> dict[str, pa.Array]:
    """The row table's columns with the dtypes the feed maps: int32 indices, float32 values and
    regression targets, int64 classes; other columns as Arrow infers them (ids for grouping)."""
    typed = {}
    for slot in jt.slots:
        typed[slot.key] = np.float32 if slot.table is None else np.int32
    for label in jt.label_columns:
        typed[label] = np.int64 if jt.task == "classification" else np.float32
    arrays = {}
    for name in frame.columns:
        if name in typed:
            arrays[str(name)] = pa.array(np.ascontiguousarray(frame[name].to_numpy(), dtype=typed[name]))
        else:
            try:
                arrays[str(name)] = pa.Array.from_pandas(frame[name])
            except (pa.ArrowException, TypeError, ValueError) as exc:
                raise DataError(f"row column {name!r} cannot be stored ({' '.join(str(exc).split())}); a reader's extra "
                                f"columns must each hold one type (e.g. strings for ids)") from None
    return arrays


def _write_rows(path: Path, jt: JoinedTables, frame) -> dict:
    arrays = _row_arrays(jt, frame)
    batch = pa.record_batch(list(arrays.values()), names=list(arrays))
    return {**write_batch_file(path, batch), "columns": {n: str(a.type) for n, a in arrays.items()}}


def build(cache, ds, fp: str, out: Path, rebuild_hint: str, log) -> dict:
    """Fetch the sources, run the reader, validate and write the entry's files and manifest into `out`."""
    start = time.monotonic()
    log(f"preparing dataset {ds.name} (reader {ds.reader}, fingerprint {fp}) in {out.parent.parent}")
    options = registry.options(ds.reader, ds.options)
    fetched = {role: fetch(src, cache.downloads / ds.name, log=log)
               for role, src in registry.needed_sources(ds.reader, ds.sources, ds.options).items()}
    jt = registry.read(ds.reader, {role: got.path for role, got in fetched.items()}, options, ds.seed)
    if not isinstance(jt, JoinedTables):
        raise UsageError(f"the {ds.reader} reader returned a {type(jt).__name__}, not candle_ray.data.joined.JoinedTables")
    _check(jt, ds.reader)
    for note in jt.info.get("notes", []):
        log(note)

    tables = {}
    for index, (name, table) in enumerate(jt.tables.items()):
        tables[name] = _write_table(out / f"table-{index}-{_safe(name)}.arrow", table)
    splits = {split: _write_rows(out / f"{split}.arrow", jt, jt.splits[split]) for split in SPLITS if split in jt.splits}
    offset, slots = 0, []
    for slot in jt.slots:
        width = 1 if slot.table is None else tables[slot.table]["width"]
        slots.append({"name": slot.name, "table": slot.table, "key": slot.key, "offset": offset, "width": width})
        offset += width

    manifest = {
        "format_version": FORMAT_VERSION,
        "kind": KIND,
        "name": ds.name,
        "fingerprint": fp,
        "created": datetime.now(timezone.utc).isoformat(timespec="microseconds"),
        "task": jt.task,
        "num_features": int(jt.num_features),
        "num_classes": _num_classes(jt),
        "class_names": None,
        "feature_names": None,  # per table, in each table file's schema metadata
        "label_columns": list(jt.label_columns),
        "slots": slots,
        "tables": tables,
        "splits": splits,
        "reader": {"name": ds.reader, "version": registry.version(ds.reader), "options": options, "seed": ds.seed,
                   "info": json.loads(json.dumps(jt.info, default=str))},
        "sources": sources_record(fetched, cache.root),
        "synthetic": ds.synthetic,
        "rebuild": rebuild_hint or None,
    }
    write_manifest(out, manifest)
    rows = ", ".join(f"{s} {info['rows']:,}" for s, info in splits.items())
    widths = ", ".join(f"{n} {t['rows']:,}x{t['width']:,}" for n, t in tables.items())
    log(f"prepared {ds.name}: {rows} rows x {manifest['num_features']:,} features (tables {widths}) in "
        f"{time.monotonic() - start:.1f} s -> {out.parent / f'{ds.name}-{fp}'}")
    return manifest


# --------------------------------------------------------------------------- reading
def _open_file(entry_path: Path, info: dict, hint: str | None):
    """Quick checks (no hashing): the file exists with the manifest's size and is a readable Arrow file
    of one record batch with the manifest's rows. Returns that batch (memory-mapped)."""
    reader = open_arrow(entry_path, info, hint)
    try:
        batches = [reader.get_batch(i) for i in range(reader.num_record_batches)]
    except (pa.ArrowException, OSError) as e:
        raise corrupt_entry(entry_path, f"{info['file']} is not a readable Arrow file ({' '.join(str(e).split())})", hint) from None
    if len(batches) != 1 or batches[0].num_rows != info["rows"]:
        rows = sum(b.num_rows for b in batches)
        raise corrupt_entry(entry_path, f"{info['file']} has {rows} rows in {len(batches)} record batches, the manifest says {info['rows']} in one", hint)
    return batches[0]


def manifest_of(entry_path) -> dict:
    """The manifest of a joined entry; CacheError when it is missing or not a joined entry."""
    manifest = read_manifest(entry_path)
    if manifest.get("kind") != KIND:
        raise CacheError(f"cache entry {entry_path} is not a joined dataset (kind {manifest.get('kind', 'matrix')!r}); "
                         f"open it with candle_ray.data.cache.open_split")
    return manifest


def open_tables(entry_path) -> dict[str, np.ndarray]:
    """Every feature table of a joined entry as a read-only, memory-mapped float32 [rows, width] view."""
    entry_path = Path(entry_path)
    manifest = manifest_of(entry_path)
    hint = manifest.get("rebuild")
    out = {}
    for name, info in manifest["tables"].items():
        batch = _open_file(entry_path, info, hint)
        expected = _table_schema(info["width"])
        if not batch.schema.remove_metadata().equals(expected):
            raise corrupt_entry(entry_path, f"{info['file']} has schema {batch.schema.remove_metadata().to_string()!r}, expected {expected.to_string()!r}".replace("\n", " "), hint)
        x = batch.column(1)
        out[name] = numpy_view(x.values, np.float32, first=x.offset * info["width"], count=batch.num_rows * info["width"]).reshape(-1, info["width"])
    return out


def open_table_ids(entry_path) -> dict[str, list[str]]:
    """Every feature table's row ids, in row order: what the row tables' index columns point at."""
    entry_path = Path(entry_path)
    manifest = manifest_of(entry_path)
    return {name: _open_file(entry_path, info, manifest.get("rebuild")).column(0).to_pylist()
            for name, info in manifest["tables"].items()}


def open_rows(entry_path, split: str) -> dict[str, np.ndarray]:
    """The numeric columns of one split's row table (slot keys and labels), memory-mapped, zero-copy."""
    entry_path = Path(entry_path)
    manifest = manifest_of(entry_path)
    hint = manifest.get("rebuild")
    info = manifest["splits"].get(split)
    if info is None:
        raise CacheError(f"cache entry {entry_path} has no split {split!r} (it has: {', '.join(manifest['splits'])}); "
                         f"use one of those splits or rebuild it with: {hint or DEFAULT_REBUILD}")
    batch = _open_file(entry_path, info, hint)
    found = {f.name: str(f.type) for f in batch.schema}
    if found != info["columns"]:
        raise corrupt_entry(entry_path, f"{info['file']} has columns {found}, the manifest says {info['columns']}", hint)
    wanted = {s["key"] for s in manifest["slots"]} | set(manifest["label_columns"])
    dtypes = {"int32": np.int32, "int64": np.int64, "float": np.float32}
    out = {}
    for name in wanted:
        column = batch.column(name)
        if column.null_count:
            raise corrupt_entry(entry_path, f"column {name!r} of {info['file']} has missing values", hint)
        out[name] = numpy_view(column, dtypes[info["columns"][name]])
    return out


def verify(entry_path, manifest: dict) -> None:
    """Full check: every file's size, rows, sha256; the row tables' columns; downloads unchanged."""
    entry_path = Path(entry_path)
    hint = manifest.get("rebuild")
    open_tables(entry_path)
    for split in manifest["splits"]:
        open_rows(entry_path, split)
    for info in [*manifest["tables"].values(), *manifest["splits"].values()]:
        check_sha256(entry_path, info, hint)
    verify_downloads(entry_path, manifest, hint)
