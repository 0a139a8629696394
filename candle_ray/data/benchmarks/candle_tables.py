"""CANDLE's Pilot1 drug-response files, read with pandas: the pieces Uno and Combo share.

The response tables, RNA-seq matrices, dragon7 descriptor and fingerprint tables of
`.../benchmarks/Pilot1/combo/` are read here with their real headers checked, then turned into
`FeatureTable`s (one row per cell or drug, imputed and scaled once) and narrow row tables of integer
indices into them (`candle_ray.data.joined`). Every format rule is CANDLE's (uno_data.py, NCI60.py):
missing values are written 'na', '-' or empty; all-NaN columns are dropped or zeroed depending on the
loader; mean imputation then `scaling` (sklearn semantics, through candle_ray.data.transforms).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from candle_ray.data.joined import FeatureTable
from candle_ray.data.transforms import apply_scaler, fit_scaler
from candle_ray.errors import DataError, UsageError

log = logging.getLogger(__name__)

NA_VALUES = ["na", "-", ""]  # CANDLE's na_values for every Pilot1 table


def _one_line(text) -> str:
    return " ".join(str(text).split())


def _shown(names: Sequence[str], limit: int = 8) -> str:
    names = [str(n) for n in names]
    more = f", ... ({len(names)} in all)" if len(names) > limit else ""
    return "[" + ", ".join(names[:limit]) + more + "]"


def header(path: Path, sep: str) -> list[str]:
    """The column names on the first line of a CSV/TSV file (possibly compressed)."""
    try:
        return [str(c) for c in pd.read_csv(path, sep=sep, nrows=0).columns]
    except (OSError, ValueError, pd.errors.ParserError) as e:
        raise DataError(f"cannot read {Path(path).name}: {_one_line(e)}; check that the file exists and is a "
                        f"{'tab' if sep == chr(9) else 'comma'}-separated text file") from None


def check_columns(path: Path, found: Sequence[str], expected: Iterable[str], what: str) -> None:
    """DataError naming the file, the expected columns and the found ones when some are missing."""
    expected = list(expected)
    missing = [c for c in expected if c not in found]
    if missing:
        raise DataError(f"{Path(path).name} is not CANDLE's {what}: expected columns {_shown(expected)}, "
                        f"missing {_shown(missing)}, found {_shown(found)}; check which file this source role points at")


def read_table(path: Path, *, sep: str, what: str, required: Sequence[str], numeric: Sequence[str] = (),
               text: Sequence[str] = ()) -> pd.DataFrame:
    """The `required` columns of a response/metadata table: `numeric` as float32, the rest as strings.

    Only the required columns are parsed (the ALMANAC file has 29 columns and 3.6M rows). A cell
    that is not a number in a numeric column is a DataError naming the file and column.
    """
    path = Path(path)
    found = header(path, sep)
    check_columns(path, found, required, what)
    dtypes = {c: str for c in required if c not in numeric}
    dtypes.update({c: str for c in text})
    try:
        df = pd.read_csv(path, sep=sep, usecols=list(required), dtype=dtypes, na_values=NA_VALUES,
                         keep_default_na=True, low_memory=False)
    except (OSError, pd.errors.ParserError) as e:
        raise DataError(f"cannot parse {path.name} as CANDLE's {what}: {_one_line(e)}") from None
    for column in numeric:
        try:
            df[column] = pd.to_numeric(df[column], errors="raise").astype(np.float32)
        except (ValueError, TypeError):
            bad = df[column][pd.to_numeric(df[column], errors="coerce").isna() & df[column].notna()].iloc[0]
            raise DataError(f"{path.name} column {column!r} holds {bad!r}, not a number; CANDLE's {what} "
                            f"needs numbers there (missing values as 'na', '-' or empty)") from None
    return df


def _numeric_block(df: pd.DataFrame, path: Path, what: str) -> np.ndarray:
    try:
        return df.apply(pd.to_numeric, errors="raise").to_numpy(dtype=np.float32)
    except (ValueError, TypeError):
        for column in df.columns:
            values = pd.to_numeric(df[column], errors="coerce")
            bad = df[column][values.isna() & df[column].notna()]
            if len(bad):
                raise DataError(f"{path.name} column {column!r} holds {bad.iloc[0]!r}, not a number; CANDLE's "
                                f"{what} needs numbers (missing values as 'na', '-' or empty)") from None
        raise


def read_features(path: Path, *, id_column: str, what: str, drop: Sequence[str] = ()) -> tuple[list[str], np.ndarray, list[str]]:
    """A header table of features: (ids from `id_column`, float32 values [n, d] with NaN, column names).

    `drop` names columns CANDLE removes when present (e.g. RNA-seq's 'Cancer_type_id').
    """
    path = Path(path)
    found = header(path, "\t")
    check_columns(path, found, [id_column], what)
    columns = [c for c in found if c != id_column and c not in drop]
    if not columns:
        raise DataError(f"{path.name} has no feature columns besides {id_column!r}; CANDLE's {what} has one column per feature")
    try:
        df = pd.read_csv(path, sep="\t", dtype={id_column: str}, na_values=NA_VALUES, keep_default_na=True,
                         low_memory=False, usecols=[id_column, *columns])
    except (OSError, pd.errors.ParserError) as e:
        raise DataError(f"cannot parse {path.name} as CANDLE's {what}: {_one_line(e)}") from None
    return df[id_column].astype(str).tolist(), _numeric_block(df[columns], path, what), columns


def read_fingerprints(path: Path, *, kind: str, what: str) -> tuple[list[str], np.ndarray, list[str]]:
    """A dragon7 fingerprint table (PFP or ECFP): CANDLE skips the header line and reads column 0 as the
    drug id and columns 1.. as bits named "<kind>.<i>" (uno_data.load_drug_set_fingerprints)."""
    path = Path(path)
    try:
        df = pd.read_csv(path, sep="\t", skiprows=1, header=None, dtype={0: str}, na_values=NA_VALUES,
                         keep_default_na=True, low_memory=False)
    except pd.errors.EmptyDataError:
        raise DataError(f"{path.name} has no rows after its header line; CANDLE's {what} has one drug per line") from None
    except (OSError, pd.errors.ParserError) as e:
        raise DataError(f"cannot parse {path.name} as CANDLE's {what}: {_one_line(e)}") from None
    if df.shape[1] < 2:
        raise DataError(f"{path.name} has {df.shape[1]} column; CANDLE's {what} needs a drug id column and bit columns")
    values = _numeric_block(df.iloc[:, 1:], path, what)
    return df[0].astype(str).tolist(), values, [f"{kind}.{i}" for i in range(1, df.shape[1])]


def first_occurrence(ids: list[str], values: np.ndarray, what: str) -> tuple[list[str], np.ndarray]:
    """Keep the first row of each id: a feature table joins one vector per id (duplicates logged)."""
    series = pd.Series(ids)
    dup = series.duplicated().to_numpy()
    if dup.any():
        log.info("%s: %d duplicated ids dropped (first row kept), e.g. %s", what, int(dup.sum()), series[dup].iloc[0])
        keep = ~dup
        return series[keep].tolist(), values[keep]
    return ids, values


def impute_and_scale(values: np.ndarray, columns: list[str], *, scaling: str | None, empty: str, what: str,
                     impute: bool = True) -> tuple[np.ndarray, list[str]]:
    """CANDLE's impute_and_scale on a feature matrix.

    empty: "drop" removes all-NaN columns (NCI60.py, and uno_data.load_cell_rnaseq's dropna='all');
      "zero" sets them to 0 (uno_data's drug loaders, called with dropna=None, keep the 5,270 dragon7
      columns that way). Then NaNs get the column mean (SimpleImputer(strategy='mean')) and `scaling`
      is applied: maxabs, minmax, std (also CANDLE's fallback for any other name), None/'none'.
    """
    values = np.array(values, dtype=np.float32, copy=True)
    if values.size and not np.isfinite(values[~np.isnan(values)]).all():
        raise DataError(f"{what} holds an infinite value; CANDLE feature tables need finite numbers or 'na'")
    all_nan = np.isnan(values).all(axis=0) if len(values) else np.ones(values.shape[1], dtype=bool)
    if all_nan.all():
        raise DataError(f"{what} has no usable values: all {values.shape[1]} feature columns are empty or 'na' "
                        f"over {values.shape[0]} rows; check the file")
    if all_nan.any():
        if empty == "drop":
            values = values[:, ~all_nan]
            columns = [c for c, gone in zip(columns, all_nan) if not gone]
        else:
            values[:, all_nan] = 0.0
        log.info("%s: %d all-NaN columns %s", what, int(all_nan.sum()), "dropped" if empty == "drop" else "set to 0")
    if impute:
        holes = np.isnan(values)
        if holes.any():
            means = np.nanmean(values, axis=0)
            values[holes] = np.take(means, np.nonzero(holes)[1])
    kind = "none" if scaling is None or str(scaling).lower() == "none" else str(scaling)
    if kind not in ("maxabs", "minmax", "std", "none"):
        kind = "std"  # CANDLE: any other non-None name means StandardScaler
    if kind != "none":
        values = apply_scaler(fit_scaler(kind, values), values)
    return values, columns


def feature_table(name: str, ids: list[str], values: np.ndarray, columns: list[str], keep: list[str]) -> FeatureTable:
    """The rows of the ids in `keep`, in that order (scaling statistics were fit on the whole table first).

    Tables read through the same index column (drug.descriptors and drug.fingerprints via "drug1") are
    built with the same `keep` list, so one index addresses the same drug in each."""
    position = pd.Series(np.arange(len(ids)), index=ids)
    rows = position.reindex(keep).to_numpy()
    return FeatureTable(name=name, ids=list(keep), values=np.ascontiguousarray(values[rows], dtype=np.float32),
                        columns=list(columns))


def kept_ids(used: set, id_lists: list[list[str]], every: bool) -> list[str]:
    """The ids a key's feature tables keep, sorted: those of the rows (`used`), or with `every` each id that all
    of the key's feature files describe (`id_lists`, one per file), which includes them."""
    if not every:
        return sorted(used)
    return sorted(set.intersection(*map(set, id_lists)) | used)


def indices(table: FeatureTable, ids: pd.Series) -> np.ndarray:
    """int32 row indices into `table` for each id (every id must be in the table)."""
    position = pd.Series(np.arange(len(table.ids), dtype=np.int32), index=table.ids)
    return position.reindex(ids.to_numpy()).to_numpy().astype(np.int32)


def shuffle_split(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """sklearn's ShuffleSplit(n_splits=1, train_size=1-v, test_size=v, random_state=seed) on n items:
    (train positions, val positions), reproduced with numpy (sklearn is not a dependency)."""
    n_val = math.ceil(val_fraction * n)
    n_train = math.floor((1.0 - val_fraction) * n)
    if n_val < 1 or n_train < 1:
        raise DataError(f"cannot split {n} groups into train and val with val_split={val_fraction}; "
                        f"each side needs at least one group: use more data or another partition_by")
    permutation = np.random.RandomState(seed).permutation(n)
    return permutation[n_val:n_val + n_train], permutation[:n_val]


def check_choice(name: str, value, allowed: Sequence) -> None:
    if value not in allowed:
        raise UsageError(f"option {name}={value!r} is not one of {', '.join(map(repr, allowed))}")


def check_fraction(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < float(value) < 1.0:
        raise UsageError(f"option {name}={value!r} must be a number between 0 and 1 (exclusive), e.g. 0.2")
    return float(value)


def as_list(name: str, value, allowed: Sequence[str] | None = None) -> list[str]:
    """A list option (a string is one item); 'none' in it means the empty list, as in CANDLE."""
    items = [value] if isinstance(value, str) else list(value or [])
    if not all(isinstance(i, str) for i in items):
        raise UsageError(f"option {name}={value!r} must be a list of names")
    if any(i.lower() == "none" for i in items):
        return []
    if allowed is not None:
        for item in items:
            if item not in allowed:
                raise UsageError(f"option {name} has {item!r}, which is not one of {', '.join(map(repr, allowed))}")
    return items


def require(paths: dict, role: str, why: str) -> Path:
    if role not in paths:
        raise UsageError(f"dataset source role {role!r} is missing ({why}); add sources={{'{role}': Source(...)}} "
                         f"to the dataset; given roles: {', '.join(sorted(paths)) or 'none'}")
    return Path(paths[role])


def non_empty(split: str, df: pd.DataFrame, funnel: dict) -> None:
    """DataError when a split is empty, with the row counts that explain where the rows went."""
    if len(df) == 0:
        steps = ", ".join(f"{k} {v}" for k, v in funnel.items())
        raise DataError(f"the {split} split is empty after filtering ({steps}); check the source filters and that "
                        f"the feature tables hold the response's cell and drug ids")
