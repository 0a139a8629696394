"""Cross-validation folds over a prepared dataset's labelled rows (its train and val splits pooled).

`assign` deals the pooled rows into K folds: shuffled (seeded), stratified by class, or grouped so that
every value of a column (a drug, a cell line) lies in one fold only — CANDLE's leave-drugs-out and
leave-cells-out (cp-leaveout) evaluations. `fold_feed` serves fold k's training rows (every other fold)
or its validation rows (fold k) with the ordinary feeds' sharding. The assignment is computed once by
the driver and sent with the job, so every trial and every DDP rank sees the same folds.

CV is for small data: for a matrix entry a fold's rows are gathered into memory (joined entries only
gather their narrow row tables; the feature tables stay memory-mapped).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from candle_ray.data.cache_format import read_manifest
from candle_ray.errors import DataError, UsageError

POOLED = ("train", "val")


def pooled_labels(entry_path) -> np.ndarray:
    from candle_ray.data.feed import split_labels

    return np.concatenate([np.asarray(split_labels(entry_path, split)) for split in POOLED])


def group_columns(entry_path) -> list[str]:
    """Columns a dataset's rows can be grouped by: the id columns its reader kept (joined datasets), or a
    matrix dataset's `group` column."""
    manifest = read_manifest(entry_path)
    if manifest.get("kind") != "joined":
        return [manifest["group"]] if manifest.get("group") else []
    types = manifest["splits"]["train"]["columns"]
    return [name for name, kind in types.items() if kind in ("string", "large_string")]


def pooled_groups(entry_path, column: str) -> np.ndarray:
    """The values of `column` for the pooled rows (UsageError naming the usable columns if missing)."""
    usable = group_columns(entry_path)
    if column not in usable:
        manifest = read_manifest(entry_path)
        hint = (f"columns you can group by: {', '.join(usable)}" if usable else
                f"dataset {manifest['name']} keeps no id columns to group by")
        raise UsageError(f"--group-by {column!r} is not a column of the dataset's rows; {hint}")
    from pathlib import Path

    manifest = read_manifest(entry_path)
    field = column if manifest.get("kind") == "joined" else "group"  # a matrix split file names it "group"
    values = []
    for split in POOLED:
        path = Path(entry_path) / manifest["splits"][split]["file"]
        with pa.memory_map(str(path)) as source:
            batch = pa.ipc.open_file(source).get_batch(0)
            values.append(np.asarray(batch.column(field).to_pylist(), dtype=object))
    return np.concatenate(values)


def assign(n: int, folds: int, *, seed: int = 0, labels: np.ndarray | None = None,
           groups: np.ndarray | None = None) -> np.ndarray:
    """Fold number (int8) of each of n rows.

    Plain: a seeded permutation dealt round-robin (fold sizes differ by at most one row).
    Stratified (`labels`): each class dealt round-robin on its own, so every fold keeps the class mix.
    Grouped (`groups`): whole groups, largest first, each to the fold with the fewest rows so far
    (sklearn's GroupKFold balance, with a seeded order among groups of equal size).
    """
    if folds < 2:
        raise UsageError(f"--folds must be at least 2, got {folds}; one fold leaves nothing to validate on")
    if labels is not None and groups is not None:
        raise UsageError("--stratify and --group-by cannot be combined; grouping decides the folds alone")
    if n < folds:
        raise DataError(f"{n} rows cannot make {folds} folds; use --folds {max(2, n)} or fewer")
    rng = np.random.default_rng(seed)
    out = np.empty(n, dtype=np.int8)
    if groups is not None:
        keys, inverse, counts = np.unique(groups, return_inverse=True, return_counts=True)
        if len(keys) < folds:
            raise DataError(f"{len(keys)} distinct groups cannot make {folds} folds; use --folds {max(2, len(keys))} "
                            f"or fewer, or group by a finer column")
        order = sorted(rng.permutation(len(keys)), key=lambda g: -counts[g])  # stable: ties stay shuffled
        load, fold_of = np.zeros(folds, dtype=np.int64), np.empty(len(keys), dtype=np.int8)
        for g in order:
            fold_of[g] = int(np.argmin(load))
            load[fold_of[g]] += counts[g]
        return fold_of[inverse]
    if labels is not None:
        labels = np.asarray(labels)
        if labels.ndim != 1:
            raise UsageError("--stratify needs one class label per row; this dataset has several label columns")
        start = 0
        for value in np.unique(labels):
            rows = rng.permutation(np.flatnonzero(labels == value))
            out[rows] = (start + np.arange(len(rows))) % folds  # continue the deal where the last class ended
            start += len(rows)
        return out
    out[rng.permutation(n)] = np.arange(n) % folds
    return out


def _rows(assignment: np.ndarray, fold: int, part: str) -> np.ndarray:
    if part not in ("train", "val"):
        raise UsageError(f"fold part must be train or val, got {part!r}")
    rows = np.flatnonzero(assignment != fold if part == "train" else assignment == fold)
    if len(rows) == 0:
        raise DataError(f"fold {fold} leaves no {part} rows; use fewer folds")
    return rows


def every_row(entry_path) -> dict:
    """`train --all-rows` as a fold: its training rows are all of train+val, and it has no validation rows."""
    splits = read_manifest(entry_path)["splits"]
    return {"assignment": np.zeros(sum(int(splits[s]["rows"]) for s in POOLED), dtype=np.int8), "fold": -1}


def train_groups(entry_path, cv: dict | None) -> np.ndarray | None:
    """Each training row's group (a matrix dataset's group column) in the order the training feed serves the
    rows: fold `cv`'s training rows, else the train split's; None for a dataset without one."""
    manifest = read_manifest(entry_path)
    if not manifest.get("group"):
        return None
    pooled = pooled_groups(entry_path, manifest["group"])
    if cv:
        return pooled[_rows(np.asarray(cv["assignment"]), int(cv["fold"]), "train")]
    return pooled[: int(manifest["splits"]["train"]["rows"])]


def fold_labels(entry_path, cv: dict, part: str) -> np.ndarray:
    return pooled_labels(entry_path)[_rows(np.asarray(cv["assignment"]), int(cv["fold"]), part)]


def fold_feed(entry_path, cv: dict, part: str, batch_size: int, **shard):
    """A feed over fold `cv["fold"]`'s training rows (part "train") or validation rows ("val")."""
    from candle_ray.data import joined_cache
    from candle_ray.data.cache import open_split
    from candle_ray.data.feed import BatchFeed, JoinedFeed

    assignment = np.asarray(cv["assignment"])
    rows = _rows(assignment, int(cv["fold"]), part)
    manifest = read_manifest(entry_path)
    if manifest.get("kind") == "joined":
        splits = [joined_cache.open_rows(entry_path, split) for split in POOLED]
        if sum(len(next(iter(s.values()))) for s in splits) != len(assignment):
            raise DataError(f"the fold assignment has {len(assignment)} rows but the dataset now has a different "
                            f"number; the cache entry changed under the run, start it again")
        columns = {name: np.concatenate([s[name] for s in splits])[rows] for name in splits[0]}
        return JoinedFeed(joined_cache.open_tables(entry_path), columns, manifest["slots"], manifest["label_columns"],
                          batch_size, **shard)
    parts = [open_split(entry_path, split) for split in POOLED]
    n_train = len(parts[0][1])
    if n_train + len(parts[1][1]) != len(assignment):
        raise DataError(f"the fold assignment has {len(assignment)} rows but the dataset has "
                        f"{n_train + len(parts[1][1])}; the cache entry changed under the run, start it again")
    first, second = rows[rows < n_train], rows[rows >= n_train] - n_train
    x = np.concatenate([parts[0][0][first], parts[1][0][second]])
    y = np.concatenate([parts[0][1][first], parts[1][1][second]])
    return BatchFeed(x, y, batch_size, **shard)
