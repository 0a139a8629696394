"""Joined datasets: response rows that point into shared feature tables (P1B3, Uno, Combo).

A drug-response row is (cell, drug[, drug2], dose[s], target). Materialising its features would
repeat the same cell and drug vectors millions of times (P1B3: ~1M rows x 29,532 features = 120 GB;
Uno: 20M rows x 15,580). Instead a reader returns the feature tables once and, per split, narrow
row tables of integer indices into them; the cache stores both as Arrow files and the feed gathers
each mini-batch's features on the fly: x = concat(slot values in `slots` order). Memory is then the
feature tables plus one batch, whatever the number of rows.

This module is the contract between the benchmark readers (which build `JoinedTables` with
pandas/numpy) and the cache/feed (which store and serve them). Pure data: numpy and pandas only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd


@dataclass
class FeatureTable:
    """One feature type, e.g. "cell.rnaseq" or "drug.descriptors": one row per id, already imputed
    and scaled; `columns` are the feature names, in the order the model sees them."""

    name: str
    ids: list[str]
    values: np.ndarray  # float32 [len(ids), len(columns)], finite
    columns: list[str]


@dataclass
class Slot:
    """One segment of the model's flat input, in order.

    table None: `key` names a float32 column of the row tables copied as one input column (a dose,
    a concentration). Otherwise `key` names an int32 column of the row tables holding row indices
    into `table` (e.g. slots "drug1.descriptors" and "drug2.descriptors" both read table
    "drug.descriptors", through keys "drug1" and "drug2": the shared encoders of Uno/Combo).
    """

    name: str
    table: str | None
    key: str


@dataclass
class JoinedTables:
    """What a joined-dataset reader returns.

    splits: "train", "val" and optionally "test" row tables; each has every Slot key column
      (int32 indices or float32 values) and "y" (float32 for regression, int64 for classes).
      Extra columns (ids kept for grouping, e.g. "drug_id", "cell_id" as strings) are stored too and
      can be used by cross-validation's --group-by.
    label_columns: the target column(s). One column ("y") gives y of shape [B]; several (multi-task,
      e.g. P3B1's ["site", "laterality", "grade"]) give int64 y of shape [B, len(label_columns)] with
      -1 where a row has no label for that task. num_classes is then a list, one entry per task.
    """

    tables: dict[str, FeatureTable]
    slots: list[Slot]
    splits: dict[str, pd.DataFrame]
    task: str = "regression"
    num_classes: int | list[int] | None = None
    label_columns: list[str] = field(default_factory=lambda: ["y"])
    info: dict = field(default_factory=dict)  # reader facts for the manifest: rows kept per filter, ...
    # info["notes"] (optional): list of one-line messages (e.g. rows dropped for lack of features) that the
    # cache prints while preparing and keeps in the manifest.

    @property
    def num_features(self) -> int:
        return sum(1 if s.table is None else self.tables[s.table].values.shape[1] for s in self.slots)


def impute_and_scale(values: np.ndarray, columns: list[str], scaling: str, what: str) -> tuple[np.ndarray, list[str]]:
    """CANDLE's `impute_and_scale` for one feature table: drop all-NaN columns, mean-impute the remaining
    NaNs (SimpleImputer(strategy="mean")), then scale every column over all the table's rows (CANDLE's
    transductive fit: the table holds the ids of every split). Returns float32 values and kept columns.

    `what` names the table (file) for the error raised when no column has any value.
    """
    from candle_ray.data import transforms
    from candle_ray.errors import DataError, data_row

    values = np.asarray(values, dtype=np.float64)
    present = ~np.isnan(values)
    keep = present.any(axis=0)
    if values.size == 0 or not keep.any():
        raise DataError(f"{what} has no values at all ({values.shape[0]} rows x {values.shape[1]} columns, all missing); "
                        f"check the file or drop this feature set from the options")
    if not keep.all():
        values, present = values[:, keep], present[:, keep]
        columns = [c for c, k in zip(columns, keep) if k]
    if not present.all():
        means = np.nanmean(values, axis=0)
        rows, cols = np.nonzero(~present)
        values[rows, cols] = means[cols]
    if not np.isfinite(values).all():
        row, col = (int(i) for i in np.argwhere(~np.isfinite(values))[0])
        raise DataError(f"{what} has an infinite value at {data_row(row)}, column {columns[col]!r}; fix the file")
    params = transforms.fit_scaler(scaling, values)
    return transforms.apply_scaler(params, values), columns
