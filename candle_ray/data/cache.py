"""The dataset cache: a prepared dataset as two Arrow IPC files plus a manifest.

(The entry format itself, manifest, checksums, atomic writes, lock, fingerprint, is
candle_ray.data.cache_format. Joined datasets, `ReaderDataset` specs such as P1B3, Uno, Combo, are
stored as feature tables plus row tables: manifest kind "joined", written and read by
candle_ray.data.joined_cache; this module keeps the preparation of both kinds (under the lock, renamed
into place) and the verify dispatch. An `s3://bucket/prefix` root is
candle_ray.data.remote_cache.S3Cache: entries are built by this class in node-local staging, uploaded
with the manifest as the commit point, and read from verified node-local copies that
`remote_cache.ensure_local` fetches.)

Layout under the root:
  downloads/<name>/<file>                  fetched remote sources (+ <file>.sha256 sidecars)
  datasets/<name>-<fingerprint>/           one entry: train.arrow, val.arrow, scaler.json, manifest.json
  locks/<name>-<fingerprint>.lock          flock files serialising the preparation of one entry

An entry is built in `datasets/.tmp-...` and renamed into place with its manifest already inside,
so a reader sees either no entry or a complete one. Each split file holds ONE record batch with a
`x: fixed_size_list<float32>[d]` column and a `y` column: the feature values of the whole split are
then one contiguous buffer that `open_split` memory-maps and hands out as a numpy [n, d] view
without copying (several batches would interleave `y` buffers between the `x` buffers and force a
copy). Streaming readers cut row chunks out of that buffer instead of relying on record batches.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa

from candle_ray.data.cache_format import (DEFAULT_REBUILD, FORMAT_VERSION, MANIFEST, Entry, check_sha256,
                                          corrupt_entry, exclusive_lock, file_sha256, fingerprint, fsync,
                                          numpy_view, open_arrow, read_manifest, sources_record,
                                          verify_downloads, write_batch_file, write_manifest)
from candle_ray.data.sources import fetch, local_path, redact, sidecar
from candle_ray.data.spec import Dataset, ReaderDataset, has_class_labels, strata
from candle_ray.errors import CacheError, DataError, UsageError, data_row

SPLITS = ("train", "val")
_SCALER = "scaler.json"


# --------------------------------------------------------------------------- reading and checking an entry
def _schema(num_features: int, task: str, grouped: bool = False) -> pa.Schema:
    """x, y, and with a dataset's `group` column each row's group (text: cv folds keep groups whole)."""
    y_type = pa.int64() if has_class_labels(task) else pa.float32()
    return pa.schema([pa.field("x", pa.list_(pa.float32(), num_features)), pa.field("y", y_type),
                      *([pa.field("group", pa.string())] if grouped else [])])


def _open_checked(entry_path: Path, split: str):
    """The quick checks of the hot path (no hashing): manifest, size, schema, rows. Returns (manifest, reader)."""
    manifest = read_manifest(entry_path)
    hint = manifest.get("rebuild")
    if manifest.get("kind", "matrix") != "matrix":
        raise CacheError(f"cache entry {entry_path} is a {manifest['kind']} dataset (feature tables + row tables), not one "
                         f"matrix per split; read it with candle_ray.data.feed.make_feed")
    info = manifest.get("splits", {}).get(split)
    if info is None:
        have = ", ".join(manifest.get("splits", {})) or "none"
        raise CacheError(f"cache entry {entry_path} has no split {split!r} (it has: {have}); use one of those splits or rebuild it with: {hint or DEFAULT_REBUILD}")
    reader = open_arrow(entry_path, info, hint)
    expected = _schema(manifest["num_features"], manifest["task"], bool(manifest.get("group")))
    if not reader.schema.equals(expected):
        raise corrupt_entry(entry_path, f"{info['file']} has schema {reader.schema.to_string(show_schema_metadata=False)!r}, expected {expected.to_string()!r}".replace("\n", " "), hint)
    try:
        rows = sum(reader.get_batch(i).num_rows for i in range(reader.num_record_batches))
    except (pa.ArrowException, OSError) as e:
        raise corrupt_entry(entry_path, f"{info['file']} has an unreadable record batch ({' '.join(str(e).split())})", hint) from None
    if rows != info["rows"]:
        raise corrupt_entry(entry_path, f"{info['file']} has {rows} rows, the manifest says {info['rows']}", hint)
    return manifest, reader


def open_split(entry_path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(X, y) of one split of a cache entry, memory-mapped: X is a read-only float32 [n, d] view of the
    file (no copy, pages load on first touch and are shared by every process on the node)."""
    entry_path = Path(entry_path)
    manifest, reader = _open_checked(entry_path, split)
    d = manifest["num_features"]
    batches = [reader.get_batch(i) for i in range(reader.num_record_batches)]
    # `.values` ignores the list array's own offset: apply it here (0 for files this module writes).
    xs = [numpy_view(b.column(0).values, np.float32, first=b.column(0).offset * d, count=b.num_rows * d) for b in batches]
    ys = [numpy_view(b.column(1), np.int64 if has_class_labels(manifest["task"]) else np.float32) for b in batches]
    if len(batches) == 1:
        X, y = xs[0], ys[0]
    else:  # not written by this module; still readable, at the price of one copy
        X, y = np.concatenate(xs), np.concatenate(ys)
    return X.reshape(-1, d), y


def split_file(entry_path, split: str) -> Path:
    """The quick-checked Arrow file of one split (for streaming readers)."""
    entry_path = Path(entry_path)
    manifest, _ = _open_checked(entry_path, split)
    return entry_path / manifest["splits"][split]["file"]


def verify(entry: Entry) -> None:
    """Full check of an entry: file hashes and sizes, Arrow schema and rows, scaler, downloads still present."""
    path, manifest = Path(entry.path), read_manifest(entry.path)
    if manifest.get("kind") == "joined":
        from candle_ray.data import joined_cache

        return joined_cache.verify(path, manifest)
    hint = manifest.get("rebuild")
    for split, info in manifest["splits"].items():
        _open_checked(path, split)  # size, schema, rows
        check_sha256(path, info, hint)
    pre = manifest["preprocessing"]
    scaler = path / pre["scaler_file"]
    if not scaler.is_file() or file_sha256(scaler) != pre["scaler_sha256"]:
        raise corrupt_entry(path, f"{pre['scaler_file']} is missing or does not match its sha256 in the manifest", hint)
    verify_downloads(path, manifest, hint)


# --------------------------------------------------------------------------- preparation steps
def _check_finite(X: np.ndarray, split: str, url: str, names: list[str] | None, missing_allowed: bool = False) -> None:
    for start in range(0, len(X), 4096):
        block = X[start : start + 4096]
        bad = np.isinf(block) if missing_allowed else ~np.isfinite(block)
        if bad.any():
            row, col = (int(i) for i in np.argwhere(bad)[0])
            kind = "NaN" if np.isnan(block[row, col]) else "inf"
            column = f"column {names[col]!r}" if names else f"feature {col + 1}"  # as predict names them
            raise DataError(f"{split} data has {kind} at {data_row(start + row)}, {column} of {url}; fix the source file, or "
                            f"fill missing values: impute='mean' (the train rows' column means) or impute='median'")


def _labels(ds: Dataset, y_by_split: dict[str, np.ndarray], urls: dict[str, str]):
    """Validated labels as int64 class indices (or float32 targets, or survival's signed times), plus
    num_classes and class_names."""
    if ds.task == "survival":
        return {split: _survival_targets(ds, y, urls[split], split) for split, y in y_by_split.items()}, None, None
    if ds.task == "regression":
        out = {}
        for split, y in y_by_split.items():
            if y.dtype.kind in "OUS":
                raise DataError(f"{split} labels of {urls[split]} are not numbers (e.g. {y[0].item()!r}) but task='regression'; use task='classification' or a numeric label column")
            y = y.astype(np.float32)
            if not np.isfinite(y).all():
                row = int(np.flatnonzero(~np.isfinite(y))[0])
                raise DataError(f"{split} label at {data_row(row)} of {urls[split]} is {y[row]}; fix the source file or drop the row")
            out[split] = y
        return out, None, None
    if all(y.dtype.kind in "iu" for y in y_by_split.values()):
        for split, y in y_by_split.items():
            limit = ds.classes
            bad = np.flatnonzero((y < 0) | (y >= limit)) if limit else np.flatnonzero(y < 0)
            if bad.size:
                row = int(bad[0])
                allowed = f"[0, {limit})" if limit else "0, 1, 2, ..."
                raise DataError(f"{split} label {int(y[row])} at {data_row(row)} of {urls[split]} is out of range for classes={limit}; labels must be integers in {allowed}: fix the labels or set classes")
        num_classes = ds.classes or int(max(int(y.max()) for y in y_by_split.values())) + 1
        if num_classes < 2:
            raise DataError(f"all labels of {urls['train']} are 0; a classifier needs at least 2 classes: check the label column")
        return {s: y.astype(np.int64) for s, y in y_by_split.items()}, num_classes, None
    if any(y.dtype.kind == "f" for y in y_by_split.values()):  # a numeric target read as class names
        split, y = next((s, y) for s, y in y_by_split.items() if y.dtype.kind == "f")
        odd = [v for v in y.tolist() if v != round(v)][:3]
        raise DataError(f"{split} labels of {urls[split]} are numbers that are not whole (e.g. "
                        f"{', '.join(f'{v:g}' for v in odd)}), and task='classification' would make each value a "
                        f"class; pass task='regression' for a numeric target, or give class labels")
    # Names: class index = position in the sorted distinct values of train+val.
    values = {s: y.astype(str) for s, y in y_by_split.items()}
    names = np.unique(np.concatenate(list(values.values())))
    if ds.classes is not None and len(names) > ds.classes:
        raise DataError(f"{len(names)} distinct labels (e.g. {', '.join(map(repr, names[:3].tolist()))}) but classes={ds.classes}; raise classes to at least {len(names)} or leave it unset")
    if len(names) < 2:
        raise DataError(f"the label column of {urls['train']} has only one value {str(names[0])!r}; a classifier needs at least 2 classes")
    out = {s: np.searchsorted(names, y).astype(np.int64) for s, y in values.items()}
    return out, ds.classes or len(names), names.tolist()


def _survival_targets(ds: Dataset, raw: np.ndarray, url: str, split: str) -> np.ndarray:
    """A split's (time, event) values checked (times > 0, events 0/1) and coded as signed times (candle_ray.cox)."""
    from candle_ray import cox

    try:
        time = raw[:, 0].astype(np.float64)
    except ValueError:
        value = next(str(v) for v in raw[:, 0] if not _is_number(v))
        raise DataError(f"{split} time column {ds.label!r} of {url} holds {value!r}, not a number; survival times "
                        f"must be numbers (days, months)") from None
    bad = np.flatnonzero(~np.isfinite(time) | (time <= 0))
    if bad.size:
        raise DataError(f"{split} time {time[bad[0]]:g} at {data_row(bad[0])} of {url} (column {ds.label!r}) is not "
                        f"positive ({bad.size} such rows); survival times must be > 0: drop those rows or give "
                        f"them a small positive time")
    event = cox.events_of(raw[:, 1])
    if np.isnan(event).any():
        row = int(np.flatnonzero(np.isnan(event))[0])
        raise DataError(f"{split} event column {ds.event!r} of {url} holds {str(raw[row, 1])!r} at {data_row(row)}; it must be "
                        f"1 (the event was seen at that time) or 0 (censored then): recode that column")
    if split == "train" and not event.any():
        raise DataError(f"the event column {ds.event!r} of {url} is 0 on every train row; a survival model needs "
                        f"events to learn from: check the column (1 = event seen)")
    return cox.encode(time, event)


def _is_number(value) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True


def _class_notes(ds: Dataset, y: dict, num_classes, class_names) -> list[str]:
    """What a classifier's labels leave out, said, not changed (a file may lack a class that exists):
    integer labels are class indices (CANDLE's rule), so labels 1..4 (Khan's own coding) make 5 classes, the
    first with no rows; and a class with val rows but no train rows is one the model cannot learn."""
    if not has_class_labels(ds.task) or not num_classes or y["train"].ndim > 1:
        return []
    train, val = (set(np.unique(y[split]).tolist()) for split in ("train", "val"))

    def shown(indices) -> str:
        named = [repr(class_names[i]) if class_names else str(i) for i in sorted(indices)]
        return ", ".join(named[:5]) + (" ..." if len(named) > 5 else "")

    notes = []
    unused = set(range(num_classes)) - train - val
    if unused and class_names is None and ds.classes is None:
        notes.append(f"note: integer labels are class indices 0..{num_classes - 1}; class(es) {shown(unused)} have "
                     f"no rows, and the model will still have an output for them; relabel from 0, or give the labels "
                     f"as names")
    if val_only := val - train:
        rows = int(np.isin(y["val"], list(val_only)).sum())
        notes.append(f"note: class(es) {shown(val_only)} have {rows} val row(s) but no train rows: the model cannot "
                     f"learn them, and those rows count against it")
    if (train_only := train - val) and val:
        notes.append(f"note: the val rows hold no row of class(es) {shown(train_only)} ({len(val)} of {len(train | val)} "
                     f"classes): val_loss and val_accuracy cannot say how the model tells those apart, and a sweep "
                     f"chooses without them; {_fuller_val(ds)}")
    return notes


def _fuller_val(ds: Dataset) -> str:
    if ds.val is not None:
        return "add rows of those classes to the val file"
    if ds.group:
        return (f"the val split took whole {ds.group} groups, which lack them: `candle-ray cv` (or `tune --cv K`) "
                f"scores every group once")
    return "raise val_fraction"


def _need_rows(split: str, n: int, ds: Dataset) -> None:
    if n < 2:
        fix = "raise val_fraction or add rows" if ds.val is None else "check the file"
        raise DataError(f"the {split} split of dataset {ds.name!r} has {n} row(s), at least 2 are needed; {fix}")




def _read_splits(ds: Dataset, fetched: dict, urls: dict[str, str], log):
    """Each fetched split file as (X float32 [n, d], raw labels), each row's group (a dataset with `group`,
    else None), and the feature names (None for CANDLE's header-less files); a val table's columns are put in
    train's order."""
    from candle_ray.data import formats  # only preparation parses CSV; workers opening splits never do

    X, y, groups, names = {}, {}, {}, None
    for split, got in fetched.items():
        if ds.format == "candle_noheader":
            label_dtype = np.int64 if has_class_labels(ds.task) else np.float32
            X[split], y[split] = formats.read_candle_noheader(got.path, ds.feature_subsample, label_dtype=label_dtype)
            split_names = None
        else:
            X[split], y[split], split_names, groups[split] = formats.read_table(got.path, ds.label, ds.drop,
                                                                                ds.categorical, ds.group, ds.event)
            if ds.feature_subsample:
                X[split], split_names = X[split][:, : ds.feature_subsample], split_names[: ds.feature_subsample]
        if names is not None and split_names is not None and split_names != names:
            X[split] = _align(X[split], split_names, names, urls[split], ds.categorical)
        names = names or split_names
        log(f"read {split}: {X[split].shape[0]:,} rows x {X[split].shape[1]:,} features from {got.path}")
    return X, y, (groups if ds.group else None), names


def _align(X: np.ndarray, have: list[str], want: list[str], url: str, categorical=()) -> np.ndarray:
    """Reorder a val table's columns to train's order; DataError if the column sets differ. A categorical
    column's values may differ: one train lacks is no category (dropped), one val lacks a column of zeros."""
    from candle_ray.data.formats import category_column

    have_set, want_set = set(have), set(want)  # built once: per name, a 60,000-column table took minutes
    encoded = tuple(category_column(c, "") for c in categorical)
    missing = [n for n in want if n not in have_set and not (encoded and n.startswith(encoded))]
    extra = [n for n in have if n not in want_set and not (encoded and n.startswith(encoded))]
    if missing or extra:
        detail = f"missing {missing[:3]}" if missing else f"extra {extra[:3]}"
        raise DataError(f"the feature columns of {url} differ from train's ({len(have)} vs {len(want)} columns, {detail}); both files need the same feature columns")
    position = {n: i for i, n in enumerate(have)}
    present = [j for j, n in enumerate(want) if n in position]
    if len(present) == len(want):
        return X[:, [position[n] for n in want]]
    out = np.zeros((len(X), len(want)), dtype=np.float32)
    out[:, present] = X[:, [position[want[j]] for j in present]]
    return out


def _check_features(X: dict[str, np.ndarray], urls: dict[str, str], names: list[str] | None, impute=None) -> None:
    """Train and val have the same width, and every value is finite (or missing, where `impute` fills it)."""
    if "val" in X and X["val"].shape[1] != X["train"].shape[1]:
        raise DataError(f"train has {X['train'].shape[1]} features but val has {X['val'].shape[1]} ({urls['train']} vs {urls['val']}); both files need the same feature columns")
    for split in X:
        _check_finite(X[split], split, urls[split], names, missing_allowed=impute is not None)


def _impute(ds: Dataset, X: dict[str, np.ndarray], names: list[str] | None, log) -> np.ndarray | None:
    """Fill every split's missing values with the train rows' column mean or median (`ds.impute`); the fill
    values, which predict uses too (they go into scaler.json). A column with no train value is filled with 0."""
    if ds.impute is None:
        return None
    with warnings.catch_warnings():  # an all-missing column's "mean of empty slice": filled with 0 below
        warnings.simplefilter("ignore", RuntimeWarning)
        fill = (np.nanmean if ds.impute == "mean" else np.nanmedian)(X["train"].astype(np.float64), axis=0)
    empty = np.flatnonzero(np.isnan(fill))
    fill[empty] = 0.0
    counts = {split: int(np.isnan(X[split]).sum()) for split in X}
    if any(counts.values()):
        where = ", ".join(f"{n:,} in {split}" for split, n in counts.items())
        log(f"imputed {sum(counts.values()):,} missing values ({where}) with the train rows' column {ds.impute}"
            + (f"; {len(empty)} columns have no train value, e.g. {names[empty[0]] if names else empty[0]!r}: "
               f"filled with 0" if len(empty) else ""))
    for split in X:
        rows, cols = np.nonzero(np.isnan(X[split]))
        X[split][rows, cols] = fill[cols]
    return fill


def _hold_out_val(ds: Dataset, X: dict[str, np.ndarray], y: dict[str, np.ndarray], groups: dict | None) -> None:
    """The hold-out when there is no val file: a seeded shuffle of train, whose last val_fraction rows become
    val (X, y and `groups` are updated in place); whole groups with a `group` column (`grouped_holdout`), else
    for a classifier (a survival dataset) stratified by class (by event): `stratified_holdout`."""
    n = len(y["train"])
    n_val = int(round(n * ds.val_fraction))
    classes = strata(ds.task, y["train"])
    if groups is not None:
        order, n_val = grouped_holdout(groups["train"], n_val, ds.seed, classes)
    elif classes is not None:
        order, n_val = stratified_holdout(classes, n_val, ds.seed)
    else:
        order = np.random.default_rng(ds.seed).permutation(n)
    for parts in (X, y, *([groups] if groups is not None else [])):
        parts["train"], parts["val"] = parts["train"][order[: n - n_val]], parts["train"][order[n - n_val :]]


def _note_shared_groups(column: str, groups: dict[str, np.ndarray], log) -> None:
    """A val file whose rows share groups with train's: said, since val then scores groups the model saw."""
    shared = np.intersect1d(groups["train"], groups["val"])
    if shared.size:
        log(f"note: {shared.size} {column} value(s) have rows in both the train and the val file, e.g. "
            f"{str(shared[0])!r}: val scores them on groups the model trained on; keep each group in one file")


GROUPED_DRAWS = 64  # seeded group orders a grouped hold-out chooses among


def grouped_holdout(groups: np.ndarray, n_val: int, seed: int, labels: np.ndarray | None = None
                    ) -> tuple[np.ndarray, int]:
    """(row order, val rows) as `stratified_holdout` returns them, with every group's rows on one side: of
    GROUPED_DRAWS seeded orders of the groups, each taken into val up to the group count nearest `n_val` rows
    (one at least, never all), the one whose val is nearest `n_val` rows and (a classifier's `labels`) the
    class mix of all rows, among those that leave every class a train row. A patient's tumour and normal
    samples split across train and val would let val score a patient the model has seen."""
    keys, inverse = np.unique(groups, return_inverse=True)
    if len(keys) < 2:
        raise DataError(f"the group column has {len(keys)} group(s); a hold-out needs 2 or more: pass a val= file or "
                        f"a finer group column")
    rng = np.random.default_rng(seed)
    # Rows of each class in each group [groups, classes]: a draw is scored from its groups' counts, not its rows
    if labels is None:
        counts = np.bincount(inverse)[:, None]
    else:
        _, label_of = np.unique(labels, return_inverse=True)
        counts = np.zeros((len(keys), int(label_of.max()) + 1), dtype=np.int64)
        np.add.at(counts, (inverse, label_of), 1)
    sizes = counts.sum(axis=1)
    best, best_cost = None, np.inf
    for _ in range(GROUPED_DRAWS):
        order = rng.permutation(len(keys))
        taken = int(np.argmin(np.abs(np.cumsum(sizes[order])[:-1] - n_val))) + 1
        cost = _holdout_cost(counts, order[:taken], n_val, labels is not None)
        if cost < best_cost:
            best, best_cost = order[:taken], cost
    if best is None:
        raise DataError(f"no hold-out of whole groups near {n_val} rows leaves every class a train row; raise "
                        f"val_fraction or pass a val= file")
    val = np.isin(inverse, best)
    order = np.concatenate([rng.permutation(np.flatnonzero(~val)), rng.permutation(np.flatnonzero(val))])
    return order, int(val.sum())


def _holdout_cost(counts: np.ndarray, val_groups: np.ndarray, n_val: int, classes: bool) -> float:
    """How far the hold-out of `val_groups` is from `n_val` rows and (`classes`: `counts` has a column per
    class) from the classes' mix of all rows; inf where a class is left without train rows."""
    held, total = counts[val_groups].sum(axis=0), counts.sum(axis=0)
    cost = abs(int(held.sum()) - n_val)
    if not classes:
        return float(cost)
    if (held == total).any():
        return np.inf
    return cost + n_val * float(np.abs(held / held.sum() - total / total.sum()).sum())


def _drop_categories_train_lacks(X: dict[str, np.ndarray], names: list[str], categorical, log) -> list[str]:
    """Leave out the one-hot columns of categories no train row has (held out into val, or only in the val
    file): the network could not learn them, and their untrained input weights would add noise to the rows
    that have them. Those rows become 'no category', as at prediction."""
    from candle_ray.data.formats import category_column

    encoded = tuple(category_column(c, "") for c in categorical)
    unseen = [j for j, n in enumerate(names) if n.startswith(encoded) and not X["train"][:, j].any()]
    if not unseen:
        return names
    log(f"note: {len(unseen)} categories appear in no train row, e.g. {names[unseen[0]]!r}: their val rows are "
        f"encoded as no category")
    keep = np.setdiff1d(np.arange(len(names)), unseen)
    for split in X:
        X[split] = np.ascontiguousarray(X[split][:, keep])
    return [names[j] for j in keep]


def stratified_holdout(labels: np.ndarray, n_val: int, seed: int) -> tuple[np.ndarray, int]:
    """(row order, val rows): the order's last rows are the val split, about `n_val` of them (fewer only where
    classes of one row each would have to give theirs up). Each class's share of val is its share of the rows
    (largest remainders), every class keeps a train row, and both splits are in seeded-shuffled order. A plain
    shuffle of a small, uneven table gave Khan's class sizes (23, 20, 12, 8 of 63 rows, 13 held out) 0 to 6 val
    rows of the rarest class, none in 155 of 1,000 seeds: a val split that says nothing about that class."""
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    exact = counts * n_val / len(labels)
    take = np.minimum(np.floor(exact).astype(int), counts - 1)
    for i in np.argsort(-(exact - take), kind="stable"):  # the rows left over, to the largest remainders
        if take.sum() >= n_val:
            break
        take[i] += take[i] < counts[i] - 1
    val = np.zeros(len(labels), dtype=bool)
    for label, k in zip(classes, take):
        val[rng.permutation(np.flatnonzero(labels == label))[:k]] = True
    return np.concatenate([rng.permutation(np.flatnonzero(~val)), rng.permutation(np.flatnonzero(val))]), int(val.sum())


def _write_split(path: Path, X: np.ndarray, y: np.ndarray, task: str, groups: np.ndarray | None = None) -> dict:
    X = np.ascontiguousarray(X, dtype=np.float32)
    schema = _schema(X.shape[1], task, groups is not None)
    x = pa.FixedSizeListArray.from_arrays(pa.array(X.reshape(-1)), X.shape[1])
    columns = [x, pa.array(y, type=schema.field("y").type), *([pa.array(groups, pa.string())] if groups is not None
                                                               else [])]
    return write_batch_file(path, pa.record_batch(columns, schema=schema))


def _write_scaled(ds: Dataset, X: dict[str, np.ndarray], y: dict[str, np.ndarray], out: Path, fill=None,
                  groups: dict | None = None) -> dict:
    """Fit the scaler, write each scaled split (with its rows' `groups`) and scaler.json into `out` (with the
    imputation's `fill` values, which predict applies before scaling); the splits' manifest records.

    Each raw split is dropped from `X` once scaled, so that at most one split exists twice in memory.
    """
    from candle_ray.data import transforms

    fit_on = [X["train"], X["val"]] if ds.scaling_fit == "train+val" else X["train"]
    params = transforms.fit_scaler(ds.scaling, fit_on)
    if fill is not None:
        params["fill"] = fill.tolist()
    splits = {}
    for split in SPLITS:
        scaled = transforms.apply_scaler(params, X.pop(split))
        splits[split] = _write_split(out / f"{split}.arrow", scaled, y[split], ds.task,
                                     groups[split] if groups is not None else None)
        del scaled
    (out / _SCALER).write_text(json.dumps(params))
    fsync(out / _SCALER)
    return splits


def _preprocessing_record(ds: Dataset, scaler_sha256: str) -> dict:
    return {
        "scaling": ds.scaling,
        "scaling_fit": ds.scaling_fit,
        "scaler_file": _SCALER,
        "scaler_sha256": scaler_sha256,
        "feature_subsample": ds.feature_subsample,
        "categorical": list(ds.categorical),
        "impute": ds.impute,
        "val_fraction": ds.val_fraction if ds.val is None else None,
        "seed": ds.seed if ds.val is None else None,
        "format": ds.format,
        "label": ds.label,
        "drop": list(ds.drop),
        "classes": ds.classes,
    }


# --------------------------------------------------------------------------- the cache
def drop_unused_downloads(root: Path, removed: list[dict], kept: list[Entry], broken: list, log) -> int:
    """Delete the files under `root`/downloads that the `removed` manifests record and no `kept` entry's does,
    with their sha256 sidecars and the folders they leave empty; their bytes. Nothing while an entry's
    manifest cannot be read (`broken`): it may record them."""
    if broken:
        log(f"kept the downloads: {len(broken)} cache entr{'y' if len(broken) == 1 else 'ies'} cannot be read and "
            f"may use them (`candle-ray data verify` names the problem)")
        return 0

    def recorded(manifests) -> set[str]:
        return {s["download"] for m in manifests for s in (m.get("sources") or {}).values() if s.get("download")}

    downloads, freed = root / "downloads", 0
    for relative in sorted(recorded(removed) - recorded(e.manifest for e in kept)):
        path = root / relative
        if downloads not in path.parents:  # a smoke run's synthetic files, or a file of the user's own
            continue
        for file in (path, sidecar(path)):
            if file.is_file():
                freed += file.stat().st_size
                file.unlink()
        folder = path.parent
        while folder != downloads and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
            folder = folder.parent
    return freed


class Cache:
    """A cache root on a local or shared POSIX filesystem (s3:// roots: candle_ray.data.remote_cache.S3Cache)."""

    remote = False

    def __init__(self, root):
        root = str(root)
        if root.startswith("file://"):
            root = str(local_path(root))
        elif "://" in root:
            raise UsageError(f"cache root {root!r} is not a local path; use a local or shared filesystem folder, or "
                             f"s3://bucket/prefix (candle_ray.data.remote_cache.open_cache)")
        self.root = Path(root).expanduser().absolute()
        self.downloads = self.root / "downloads"
        self.datasets = self.root / "datasets"
        self.locks = self.root / "locks"

    def __repr__(self) -> str:
        return f"Cache({str(self.root)!r})"

    def entry_path(self, ds: Dataset | ReaderDataset) -> Path:
        return self.datasets / f"{ds.name}-{fingerprint(ds)}"

    def lookup(self, ds: Dataset | ReaderDataset) -> Entry | None:
        """The prepared entry of `ds`, or None (no hashing of the entry's files)."""
        return self.find(ds.name, fingerprint(ds))

    def find(self, name: str, fp: str) -> Entry | None:
        """The prepared entry of dataset `name` with fingerprint `fp` (a checkpoint's record of its data), or None."""
        path = self.datasets / f"{name}-{fp}"
        if not (path / MANIFEST).is_file():
            return None
        return Entry(path=path, manifest=read_manifest(path))

    def entries(self, broken: list | None = None) -> list[Entry]:
        """Every complete entry, sorted by folder name. An entry whose manifest cannot be read raises
        CacheError, or, given a `broken` list, goes there as (folder name, error) instead."""
        if not self.datasets.is_dir():
            return []
        found = []
        for path in sorted(self.datasets.iterdir()):
            if not path.name.startswith(".") and (path / MANIFEST).is_file():
                try:
                    found.append(Entry(path=path, manifest=read_manifest(path)))
                except CacheError as exc:
                    if broken is None:
                        raise
                    broken.append((path.name, exc))
        return found

    def verify(self, entry: Entry) -> None:
        verify(entry)

    def remove(self, entry: Entry, log: Callable[[str], None] | None = None) -> int:
        """Delete `entry`; the bytes it held. Under its preparation lock (a `prepare` of it waits, then builds
        it afresh) it is renamed aside first, so no reader sees half an entry: a run reading it keeps its
        memory-mapped files, and one that opens it afterwards is told it is missing and how to rebuild it."""
        key = Path(entry.path).name
        path, old = self.datasets / key, self.datasets / f".old-{key}-{os.getpid()}"
        with exclusive_lock(self.locks / f"{key}.lock", log):
            if not (path / MANIFEST).is_file():
                return 0  # removed meanwhile
            size = sum(f.stat().st_size for f in path.iterdir() if f.is_file())
            os.rename(path, old)  # a leftover of a crash from here on is cleared by the next prepare of it
            fsync(self.datasets)
        shutil.rmtree(old, ignore_errors=True)
        return size

    def drop_downloads(self, removed: list[dict], log: Callable[[str], None] = print) -> int:
        """Delete the downloads that the `removed` entries' manifests record and no entry left here does."""
        broken: list = []
        return drop_unused_downloads(self.root, removed, self.entries(broken), broken, log)

    def prepare(self, ds: Dataset | ReaderDataset, *, force: bool = False, rebuild_hint: str = "", log: Callable[[str], None] = print) -> Entry:
        """Fetch, read, validate, split, scale and write `ds` into the cache, once.

        Idempotent: an existing entry is returned untouched unless `force`. Concurrent callers for the
        same dataset serialise on a lock; the second finds the first one's entry.
        """
        log = log or (lambda message: None)
        fp = fingerprint(ds)
        key = f"{ds.name}-{fp}"
        final = self.datasets / key
        with exclusive_lock(self.locks / f"{key}.lock", log):
            if not force and (final / MANIFEST).is_file():
                log(f"dataset {ds.name} already prepared: {final}")
                return Entry(path=final, manifest=read_manifest(final))
            self.datasets.mkdir(parents=True, exist_ok=True)
            # Under the lock, any temporary folder of this entry is a leftover of a crashed preparer.
            for prefix in (f".tmp-{key}-", f".old-{key}-"):
                for stale in self.datasets.glob(f"{prefix}*"):
                    if stale.name[len(prefix) :].isdigit():  # <prefix><pid>, not another entry's name
                        shutil.rmtree(stale, ignore_errors=True)
            tmp = self.datasets / f".tmp-{key}-{os.getpid()}"
            tmp.mkdir()
            try:
                if isinstance(ds, ReaderDataset):
                    # Imported here: joined_cache brings pandas (through data.joined), which a worker that
                    # only reads matrix entries from this module never needs.
                    from candle_ray.data import joined_cache

                    manifest = joined_cache.build(self, ds, fp, tmp, rebuild_hint, log)
                else:
                    manifest = self._build(ds, fp, tmp, rebuild_hint, log)
                old = self.datasets / f".old-{key}-{os.getpid()}"
                replaced = final.exists()
                if replaced:
                    os.rename(final, old)  # readers holding memory maps of the old files keep them
                os.rename(tmp, final)
                fsync(self.datasets)
                if replaced:
                    shutil.rmtree(old, ignore_errors=True)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            return Entry(path=final, manifest=manifest)

    def _build(self, ds: Dataset, fp: str, out: Path, rebuild_hint: str, log) -> dict:
        """Fetch, read, validate, split, scale and write a matrix dataset into `out`; its manifest."""
        start = time.monotonic()
        log(f"preparing dataset {ds.name} (fingerprint {fp}) in {out.parent.parent}")
        fetched = {split: fetch(src, self.downloads / ds.name, log=log) for split, src in ds.sources().items()}
        urls = {split: redact(src.url) for split, src in ds.sources().items()}
        X, y, groups, names = _read_splits(ds, fetched, urls, log)
        _check_features(X, urls, names, ds.impute)
        y, num_classes, class_names = _labels(ds, y, urls)
        if "val" not in X:
            _hold_out_val(ds, X, y, groups)
            if groups is not None:
                log(f"val: {len(np.unique(groups['val']))} of {len(np.unique(np.concatenate(list(groups.values()))))} "
                    f"{ds.group} groups held out whole ({len(groups['val'])} rows)")
        elif groups is not None:
            _note_shared_groups(ds.group, groups, log)
        if ds.categorical:
            names = _drop_categories_train_lacks(X, names, ds.categorical, log)
        fill = _impute(ds, X, names, log)
        for note in _class_notes(ds, y, num_classes, class_names):
            log(note)
        if ds.task == "survival":  # a concordance index rests on the events: few val events, a noisy one
            log("events: " + ", ".join(f"{split} {int((y[split] > 0).sum()):,} of {len(y[split]):,} rows"
                                       for split in SPLITS))
        for split in SPLITS:
            _need_rows(split, len(y[split]), ds)
        num_features = X["train"].shape[1]
        splits = _write_scaled(ds, X, y, out, fill, groups)
        manifest = {
            "format_version": FORMAT_VERSION,
            "name": ds.name,
            "fingerprint": fp,
            "created": datetime.now(timezone.utc).isoformat(timespec="microseconds"),
            "task": ds.task,
            "num_features": int(num_features),
            "num_classes": num_classes,
            "class_names": class_names,
            "feature_names": names,
            "sources": sources_record(fetched, self.root),
            "preprocessing": _preprocessing_record(ds, file_sha256(out / _SCALER)),
            "splits": splits,
            **({"group": ds.group} if ds.group else {}),
            **({"event": ds.event} if ds.event else {}),
            "synthetic": ds.synthetic,
            "rebuild": rebuild_hint or None,
        }
        write_manifest(out, manifest)
        rows = ", ".join(f"{s} {info['rows']:,}" for s, info in splits.items())
        log(f"prepared {ds.name}: {rows} rows x {manifest['num_features']:,} features in {time.monotonic() - start:.1f} s -> {out.parent / f'{ds.name}-{fp}'}")
        return manifest
