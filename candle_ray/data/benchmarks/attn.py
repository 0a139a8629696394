"""ATTN's data: CANDLE's `top_21_1fold_<ijk>.h5`, a pandas HDFStore exported by Uno, read as JoinedTables.

The file (Pilot1/uno/top_21_1fold_001.h5, ~4 GB) holds, for each split s in train, val and test:
  x_{s}_0  RNA-seq of the row's cell line (942 float32 columns, all named '' by Uno's exporter)
  x_{s}_1  descriptors of the row's drug (5,270 float32 columns)
  y_{s}    AUC (already binarised: 1 = response), Sample (cell id), Drug1 (drug id)
row-aligned by position (CANDLE's attn.load_data concatenates x_{s}_0 and x_{s}_1 column-wise).

CANDLE-fidelity choices:
* Features in CANDLE's order: RNA-seq then drug descriptors (6,212 inputs for the real file).
* No scaling and no imputation: `scaling='minmax'` is in attn_default_model.txt but attn.load_data
  applies none (the export is pre-processed). A non-finite value is a DataError instead of the NaN
  loss it would give in CANDLE.
* The splits are the file's fixed partitions (271,915 / 33,989 / 33,989 rows); nothing is shuffled here.
* Classification with 2 classes; y = AUC as 0/1. Any other AUC value is a DataError.

Not CANDLE's memory layout: an x row repeats for every row of the same Sample (RNA-seq) or Drug1
(descriptors), so the features are de-duplicated into two FeatureTables ("cell.rnaseq" keyed by
Sample, "drug.descriptors" keyed by Drug1) and the rows become int32 indices into them: 340k rows
cost a few MB instead of 8 GB. A repeated id whose row differs from its first occurrence is a
DataError, so de-duplication never changes what the model sees. The file is read in chunks of
`options["chunk_rows"]` rows: memory is the two feature tables plus one chunk.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from candle_ray.data.joined import FeatureTable, JoinedTables, Slot
from candle_ray.errors import DataError, UsageError, data_row

VERSION = 1
SPLITS = ("train", "val", "test")
ROLE = "h5"
FILE = "top_21_1fold_001.h5"
LABEL, CELL_ID, DRUG_ID = "AUC", "Sample", "Drug1"
# (table name, slot key, id column of y, HDF5 table suffix, column-name prefix when the file's are blank,
#  id column of the row tables: named as the Uno/Combo readers name theirs)
FEATURE_TYPES = (
    ("cell.rnaseq", "cell", CELL_ID, "0", "rnaseq", "cell_id"),
    ("drug.descriptors", "drug", DRUG_ID, "1", "descriptor", "drug_id"),
)
OPTIONS = {"chunk_rows": 2048}  # 2,048 rows x 5,270 float32 descriptors = 43 MB per chunk


class _Dedup:
    """The distinct rows of one feature type, keyed by id, grown chunk by chunk."""

    def __init__(self, name: str, key: str, width: int):
        self.name, self.key = name, key
        self.index: dict[str, int] = {}
        self.values = np.empty((64, width), dtype=np.float32)

    def add(self, ids: np.ndarray, rows: np.ndarray, where: str) -> np.ndarray:
        """int32 indices of `ids`; new ids store their row, known ids must repeat it exactly."""
        first_seen: dict[str, int] = {}
        for position, i in enumerate(ids.tolist()):
            if i not in self.index and i not in first_seen:
                first_seen[i] = position
        if first_seen:
            new, first = list(first_seen), list(first_seen.values())
            start = len(self.index)
            self._reserve(start + len(new))
            self.values[start:start + len(new)] = rows[first]
            self.index.update((i, start + k) for k, i in enumerate(new))
        positions = np.fromiter((self.index[i] for i in ids.tolist()), dtype=np.int32, count=len(ids))
        same = (self.values[positions] == rows) | (np.isnan(self.values[positions]) & np.isnan(rows))
        bad = np.flatnonzero(~same.all(axis=1))
        if bad.size:
            row = int(bad[0])
            column = int(np.flatnonzero(~same[row])[0])
            kept, found = float(self.values[positions[row], column]), float(rows[row, column])
            raise DataError(f"{where}: {self.key} {ids[row]!r} has two different {self.name} rows (column {column}: "
                            f"{kept!r} vs {found!r}); ATTN needs one feature row per {self.key}: fix the export "
                            f"or remove the inconsistent rows")
        return positions

    def _reserve(self, n: int) -> None:
        if n > len(self.values):
            grown = np.empty((max(n, 2 * len(self.values)), self.values.shape[1]), dtype=np.float32)
            grown[:len(self.index)] = self.values[:len(self.index)]
            self.values = grown

    def table(self, columns: list[str]) -> FeatureTable:
        n = len(self.index)
        return FeatureTable(self.name, list(self.index), np.ascontiguousarray(self.values[:n]), columns)


def _options(options: dict | None) -> dict:
    options = dict(options or {})
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise UsageError(f"unknown ATTN reader option(s) {unknown}; the options are {sorted(OPTIONS)}")
    merged = {**OPTIONS, **options}
    rows = merged["chunk_rows"]
    if isinstance(rows, bool) or not isinstance(rows, int) or rows < 1:
        raise UsageError(f"ATTN reader option chunk_rows must be a positive integer, got {rows!r}")
    return merged


def _nrows(store: pd.HDFStore, key: str) -> int:
    storer = store.get_storer(key)
    return int(storer.nrows) if storer.is_table else int(storer.shape[0])


def _columns(store: pd.HDFStore, key: str) -> list[str]:
    return [str(c) for c in store.select(key, start=0, stop=0).columns]


def _feature_names(names: list[str], prefix: str) -> list[str]:
    """The file's column names, or prefix.0, prefix.1, ... when they are blank or repeat (Uno's export)."""
    if all(names) and len(set(names)) == len(names):
        return names
    return [f"{prefix}.{j}" for j in range(len(names))]


def _check_layout(store: pd.HDFStore, path: Path) -> dict[str, int]:
    """Rows per split, after checking every table is there with matching rows and widths."""
    keys = {k.lstrip("/") for k in store.keys()}
    for split in SPLITS:
        for key in (f"x_{split}_0", f"x_{split}_1", f"y_{split}"):
            if key not in keys:
                raise DataError(f"{path} has no table {key!r} (it has {', '.join(sorted(keys)) or 'no tables'}); "
                                f"ATTN needs CANDLE's top_21_1fold_*.h5 layout: x_{{train,val,test}}_0, "
                                f"x_{{train,val,test}}_1 and y_{{train,val,test}}")
    rows = {}
    for split in SPLITS:
        y_columns = _columns(store, f"y_{split}")
        missing = [c for c in (LABEL, CELL_ID, DRUG_ID) if c not in y_columns]
        if missing:
            raise DataError(f"{path}: table y_{split} has no column(s) {missing} (it has {y_columns}); ATTN needs "
                            f"{LABEL} (binarised response), {CELL_ID} and {DRUG_ID}")
        counts = {key: _nrows(store, key) for key in (f"y_{split}", f"x_{split}_0", f"x_{split}_1")}
        if len(set(counts.values())) != 1:
            raise DataError(f"{path}: the {split} tables have different row counts {counts}; the x and y tables of "
                            f"a split must be row-aligned: re-export the file")
        rows[split] = counts[f"y_{split}"]
        if rows[split] == 0:
            raise DataError(f"{path}: the {split} split is empty (y_{split} has no rows); ATTN needs rows in "
                            f"train, val and test")
    for _, _, _, suffix, _, _ in FEATURE_TYPES:
        widths = {f"x_{s}_{suffix}": len(_columns(store, f"x_{s}_{suffix}")) for s in SPLITS}
        if len(set(widths.values())) != 1 or 0 in widths.values():
            raise DataError(f"{path}: the x_*_{suffix} tables have different or zero widths {widths}; every split "
                            f"needs the same feature columns: re-export the file")
    return rows


def _labels(auc: pd.Series, where: str, start: int) -> np.ndarray:
    values = auc.to_numpy(dtype=np.float64, na_value=np.nan)
    bad = np.flatnonzero(~np.isin(values, (0.0, 1.0)))
    if bad.size:
        raise DataError(f"{where}: {LABEL} is {float(values[bad[0]])!r} at {data_row(start + int(bad[0]))}; ATTN's {LABEL} "
                        f"must be binarised to 0 or 1 (CANDLE's export does this): fix the file")
    return values.astype(np.int64)


def _ids(column: pd.Series, name: str, where: str, start: int) -> np.ndarray:
    missing = column.isna().to_numpy()
    if missing.any():
        raise DataError(f"{where}: {name} is missing at {data_row(start + int(np.flatnonzero(missing)[0]))}; every row "
                        f"needs a {name} to find its features: fix the file")
    return column.astype(str).to_numpy(dtype=object)


def _check_values(table: FeatureTable, path: Path) -> None:
    finite = np.isfinite(table.values)
    if finite.all():
        return
    if not finite.any():
        raise DataError(f"{path}: the {table.name} features are all NaN or infinite; the file is unusable: "
                        f"re-download or re-export it")
    row, column = (int(v[0]) for v in np.nonzero(~finite))
    raise DataError(f"{path}: {table.name} of {table.ids[row]!r} has the non-finite value {float(table.values[row, column])!r} "
                    f"in column {table.columns[column]!r}; ATTN's data are used as exported (no imputation): "
                    f"impute or drop it in the file")


def read(paths: dict[str, Path], options: dict | None = None, seed: int = 0) -> JoinedTables:
    """Read CANDLE's ATTN HDF5 (source role "h5") into de-duplicated feature tables and index rows.

    Row tables per split: "cell" and "drug" (int32 indices), "y" (int64 0/1) and the file's Sample
    and Drug1 ids as "cell_id" and "drug_id" (for grouped cross-validation). `seed` is unused: nothing
    is random.
    """
    del seed
    opts = _options(options)
    if ROLE not in paths:
        raise UsageError(f"the ATTN reader needs a source with role {ROLE!r} (the top_21_1fold_*.h5 file); "
                         f"got roles {sorted(paths)}")
    path = Path(paths[ROLE])
    try:
        store = pd.HDFStore(str(path), mode="r")
    except (OSError, ValueError, RuntimeError) as e:  # PyTables' HDF5ExtError (not HDF5) is a RuntimeError
        raise DataError(f"cannot open {path} as HDF5: {' '.join(str(e).split())[:200]}; ATTN needs CANDLE's "
                        f"top_21_1fold_*.h5 (a pandas HDFStore): re-download it") from None
    with store, warnings.catch_warnings():
        warnings.simplefilter("ignore", pd.errors.PerformanceWarning)
        rows = _check_layout(store, path)
        names = {suffix: _columns(store, f"x_train_{suffix}") for _, _, _, suffix, _, _ in FEATURE_TYPES}
        dedup = {suffix: _Dedup(name, id_column, len(names[suffix]))
                 for name, _, id_column, suffix, _, _ in FEATURE_TYPES}
        splits, info = {}, {"rows": {}, "positives": {}}
        for split in SPLITS:
            parts = []
            for start in range(0, rows[split], opts["chunk_rows"]):
                stop = min(start + opts["chunk_rows"], rows[split])
                y = store.select(f"y_{split}", start=start, stop=stop)
                if len(y) != stop - start:
                    raise DataError(f"{path}: y_{split} returned {len(y)} rows for rows {start}..{stop}; the file is "
                                    f"truncated or corrupt: re-download it")
                part = {"y": _labels(y[LABEL], f"{path} y_{split}", start)}
                for _, key, id_column, suffix, _, id_out in FEATURE_TYPES:
                    ids = _ids(y[id_column], id_column, f"{path} y_{split}", start)
                    x = store.select(f"x_{split}_{suffix}", start=start, stop=stop).to_numpy(dtype=np.float32)
                    if x.shape[0] != len(ids):
                        raise DataError(f"{path}: x_{split}_{suffix} returned {x.shape[0]} rows for rows "
                                        f"{start}..{stop}; the file is truncated or corrupt: re-download it")
                    part[key] = dedup[suffix].add(ids, x, f"{path} x_{split}_{suffix} rows {start}..{stop}")
                    part[id_out] = ids
                parts.append(pd.DataFrame(part))
            frame = pd.concat(parts, ignore_index=True)
            splits[split] = frame[["cell", "drug", "y", "cell_id", "drug_id"]]
            info["rows"][split] = len(frame)
            info["positives"][split] = int(frame["y"].sum())
    tables = {}
    for name, _, _, suffix, prefix, _ in FEATURE_TYPES:
        tables[name] = dedup[suffix].table(_feature_names(names[suffix], prefix))
        _check_values(tables[name], path)
    info.update(cells=len(tables["cell.rnaseq"].ids), drugs=len(tables["drug.descriptors"].ids))
    slots = [Slot(name, name, key) for name, key, _, _, _, _ in FEATURE_TYPES]
    return JoinedTables(tables=tables, slots=slots, splits=splits, task="classification", num_classes=2,
                        label_columns=["y"], info=info)


def write_synthetic(path, *, samples: int = 30, drugs: int = 20, genes: int = 40, descriptors: int = 60,
                    positive_fraction: float = 0.04, seed: int = 0, batch_rows: int = 64) -> dict[str, int]:
    """Write a small HDF5 in the exact layout of top_21_1fold_*.h5; return the rows per split.

    As Uno's exporter: tables appended batch by batch in pandas' "table" format, x columns all named
    '', float32 values; y with AUC (float32 0/1), Sample and Drug1. Every (Sample, Drug1) pair is one
    row; the pairs are split 80/10/10, stratified so each split has positives. The response is a
    threshold on (cell score + drug score + noise), the scores being sums of a few gene / descriptor
    columns: a small network learns it. `positive_fraction` mirrors the real file's 3.61 %.
    """
    if samples < 2 or drugs < 2 or genes < 4 or descriptors < 4 or not 0.0 < positive_fraction < 0.5:
        raise UsageError(f"ATTN synthetic data need samples, drugs >= 2, genes, descriptors >= 4 and 0 < "
                         f"positive_fraction < 0.5; got samples={samples}, drugs={drugs}, genes={genes}, "
                         f"descriptors={descriptors}, positive_fraction={positive_fraction}")
    rng = np.random.default_rng([seed, 0xA77])
    rnaseq = rng.standard_normal((samples, genes)).astype(np.float32)
    desc = rng.standard_normal((drugs, descriptors)).astype(np.float32)
    cell_of, drug_of = (a.ravel() for a in np.meshgrid(np.arange(samples), np.arange(drugs), indexing="ij"))
    score = rnaseq[cell_of, :4].sum(axis=1) + desc[drug_of, :4].sum(axis=1) + 0.5 * rng.standard_normal(cell_of.size)
    positives = max(3, int(round(positive_fraction * cell_of.size)))
    auc = np.zeros(cell_of.size, dtype=np.float32)
    auc[np.argsort(-score)[:positives]] = 1.0
    split_of = np.empty(cell_of.size, dtype=np.int64)
    for label in (0.0, 1.0):  # stratified 80/10/10: every split gets some positives
        rows = rng.permutation(np.flatnonzero(auc == label))
        n_val = max(1, int(round(0.1 * rows.size)))
        split_of[rows] = 0
        split_of[rows[:n_val]] = 1
        split_of[rows[n_val:2 * n_val]] = 2
    cell_ids = np.array([f"SYN.CELL_{i:03d}" for i in range(samples)], dtype=object)
    drug_ids = np.array([f"SYN.DRUG_{j:03d}" for j in range(drugs)], dtype=object)
    counts = {}
    with pd.HDFStore(str(path), mode="w", complevel=1, complib="zlib") as store:
        for index, split in enumerate(SPLITS):
            rows = rng.permutation(np.flatnonzero(split_of == index))
            counts[split] = int(rows.size)
            for start in range(0, rows.size, batch_rows):
                batch = rows[start:start + batch_rows]
                for suffix, values in (("0", rnaseq[cell_of[batch]]), ("1", desc[drug_of[batch]])):
                    frame = pd.DataFrame(values)
                    frame.columns = [""] * values.shape[1]  # Uno's exporter blanks the feature names
                    store.append(f"x_{split}_{suffix}", frame, format="table")
                y = pd.DataFrame({LABEL: auc[batch], CELL_ID: cell_ids[cell_of[batch]], DRUG_ID: drug_ids[drug_of[batch]]})
                store.append(f"y_{split}", y, format="table", min_itemsize={CELL_ID: 30, DRUG_ID: 10})
    return counts


def synthesize(out_dir: Path, options: dict, seed: int, rows: int, features: int) -> dict[str, Path]:
    """--smoke data: a top_21_1fold_001.h5 of ~`rows` rows (every pair of ~sqrt(1.5 rows) cell lines
    and the matching number of drugs), `features` descriptors and half as many genes (the real file's
    942 : 5,270 is narrower still), ~4 % positives as the real 3.61 %."""
    samples = max(6, int(round((1.5 * rows) ** 0.5)))
    drugs = max(4, int(round(rows / samples)))
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    path = Path(out_dir) / FILE
    write_synthetic(path, samples=samples, drugs=drugs, genes=max(4, features // 2), descriptors=max(4, features),
                    seed=seed)
    return {ROLE: path}
