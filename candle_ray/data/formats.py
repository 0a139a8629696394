"""The input file formats, read into numpy: CANDLE's headerless CSV and header tables (CSV, TSV, Parquet).

pyarrow's multi-threaded CSV parser is used rather than pandas' (several times faster on the
60,483-column NT3/TC1 files). Column types are always given explicitly: pyarrow infers types from the
first block only, so a feature column that reads "0" for 1,000 rows and "0.5" later would fail.
"""

from __future__ import annotations

import csv
import difflib
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from candle_ray.errors import DataError, data_row

_BLOCK = 1 << 26  # pyarrow needs a whole row per block; NT3 rows are ~0.5 MB, keep plenty of room.
_COLUMN_IN_ERROR = re.compile(r"column #(\d+)")


def _one_line(text) -> str:
    return " ".join(str(text).split())


def _first_line(path: Path) -> str:
    """The first line of a (possibly compressed) text file, for counting columns and reading a header."""
    try:
        with pa.input_stream(str(path), compression="detect") as stream:
            buf = b""
            while b"\n" not in buf:
                block = stream.read(1 << 20)
                if not block:
                    break
                buf += block
    except (OSError, pa.ArrowException) as e:
        raise DataError(f"cannot read {path}: {_one_line(e)}; check that the file exists and is readable") from None
    line = buf.split(b"\n", 1)[0].rstrip(b"\r")
    if not line.strip():
        raise DataError(f"{path} is empty or starts with a blank line; check the file (a CSV needs one row per line)")
    return line.decode("utf-8", errors="replace")


def _matrix(columns: list, path: Path) -> np.ndarray:
    """Stack Arrow columns into a C-contiguous float32 [rows, columns] matrix (nulls become NaN)."""
    rows = len(columns[0]) if columns else 0
    out = np.empty((rows, len(columns)), dtype=np.float32)
    for j, column in enumerate(columns):
        if column.type != pa.float32():
            column = column.cast(pa.float32())
        out[:, j] = column.to_numpy()  # float32 with nulls -> NaN; caught by the cache's validation
    return out


def _read_csv(path: Path, delimiter: str, *, header: bool, names: list[str], types: dict, include: list[str]):
    read = pacsv.ReadOptions(block_size=_BLOCK, column_names=names, skip_rows=1 if header else 0)
    parse = pacsv.ParseOptions(delimiter=delimiter)
    convert = pacsv.ConvertOptions(column_types=types, include_columns=include, strings_can_be_null=False,
                                   quoted_strings_can_be_null=False)
    return pacsv.read_csv(str(path), read_options=read, parse_options=parse, convert_options=convert)


def _conversion_error(path: Path, error: Exception, names: list[str] | None, hint: str) -> DataError:
    match = _COLUMN_IN_ERROR.search(str(error))
    where = ""
    if match and names is None:
        where = f" in column {int(match.group(1))} (0 = the label)"
    elif match and int(match.group(1)) < len(names):
        where = f" in column {names[int(match.group(1))]!r}"
    return DataError(f"cannot parse {path}{where}: {_one_line(error)}; {hint}")


def is_positions_line(cells: list[str]) -> bool:
    """A first line that is its own column positions, "0,1,...,n-1": the header pandas' to_csv writes for a
    frame with default column names (a header-less file read with header=None, an MLflow input example).
    Such a line names the columns; no row of data reads like that."""
    return len(cells) > 1 and cells == [str(i) for i in range(len(cells))]


def read_candle_noheader(path, feature_subsample: int = 0, *, label_dtype=np.int64) -> tuple[np.ndarray, np.ndarray]:
    """CANDLE's NT3/TC1 format: headerless CSV, column 0 the label, columns 1.. the features.

    `feature_subsample > 0` keeps the first N feature columns (CANDLE's `usecols`). Labels must be
    integers unless `label_dtype` is a float type (regression). A first line of column positions (0, 1, ...)
    is a header, skipped: read as data, it was a row of label 0. Returns (X float32 [n, d], y).
    """
    path = Path(path)
    first = next(csv.reader([_first_line(path)]))
    width = len(first)
    if width < 2:
        raise DataError(f"{path} has {width} column; the CANDLE format needs a label column and at least one feature column")
    names = [f"c{i}" for i in range(width)]
    keep = names[: 1 + feature_subsample] if feature_subsample > 0 else names
    types = {name: pa.float32() for name in keep[1:]}
    types[names[0]] = pa.float64()  # exact for any integer label CANDLE files hold
    try:
        table = _read_csv(path, ",", header=is_positions_line(first), names=names, types=types, include=keep)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
        hint = "the CANDLE format is a headerless CSV of numbers; remove any header row or non-numeric cells"
        raise _conversion_error(path, e, None, hint) from None
    except OSError as e:
        raise DataError(f"cannot read {path}: {_one_line(e)}; check that the file exists and is readable") from None
    if table.num_rows == 0:
        raise DataError(f"{path} has no rows; check the file")
    labels = table.column(0)
    if labels.null_count:
        row = int(np.flatnonzero(labels.is_null().to_numpy(zero_copy_only=False))[0])
        raise DataError(f"{path} has an empty label at {data_row(row)}; fill it in or remove the row")
    raw = labels.to_numpy()
    if np.issubdtype(np.dtype(label_dtype), np.integer):
        bad = np.flatnonzero(~np.isfinite(raw) | (raw != np.round(raw)))
        if bad.size:
            raise DataError(f"{path} has a non-integer label {float(raw[bad[0]])!r} at {data_row(bad[0])}; CANDLE labels are class indices 0, 1, ...; fix the file or use task='regression'")
    y = raw.astype(label_dtype)
    X = _matrix(table.columns[1:], path)
    return X, y


def _delimiter(path: Path) -> str | None:
    name = path.name.lower().removesuffix(".gz").removesuffix(".bz2")
    if name.endswith(".parquet") or name.endswith(".pq"):
        return None
    if name.endswith((".tsv", ".txt", ".tab")):
        return "\t"
    if name.endswith(".csv"):
        return ","
    raise DataError(f"cannot tell the format of {path} from its extension; rename it to .csv, .tsv, .txt (tab-separated) or .parquet")


def _missing(what: str, wanted, names: list[str], path: Path) -> DataError:
    close = difflib.get_close_matches(str(wanted), names, n=3, cutoff=0.5)
    suggestion = f"did you mean {', '.join(repr(c) for c in close)}?" if close else f"the columns start with {', '.join(repr(c) for c in names[:5])}"
    return DataError(f"{what} {wanted!r} is not a column of {path}; {suggestion}")


def _split_columns(names: list[str], label, drop, path: Path, categorical=()) -> tuple[str, list[str]]:
    """(label column name, feature column names) after checking label, drop and categorical against the header."""
    if isinstance(label, int) and not isinstance(label, bool):
        if not -len(names) <= label < len(names):
            raise DataError(f"label column index {label} is out of range for {path}, which has {len(names)} columns; use an index below {len(names)} or the column name")
        label_name = names[label]
    else:
        if label not in names:
            raise _missing("label column", label, names, path)
        label_name = label
    for column in drop:
        if column not in names:
            raise _missing("drop column", column, names, path)
    for column in categorical:
        if column not in names:
            raise _missing("categorical column", column, names, path)
        if column == label_name or column in drop:
            raise DataError(f"column {column!r} of {path} is both categorical and the label or dropped; "
                            f"name it in one place")
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise DataError(f"{path} has the column name {dup!r} more than once; make the header names unique")
    skip = {label_name, *drop}
    features = [n for n in names if n not in skip]
    if not features:
        raise DataError(f"{path} has no feature columns besides the label and dropped ones; check label= and drop=")
    return label_name, features


# Label cells that mean "no label" (pandas reads them as NaN): a CSV label column is read as text, where an
# empty cell was a class of its own ("") and made a regression target "not a number".
MISSING_LABELS = ("", "NA", "N/A", "NaN", "nan", "null", "NULL")


def _labels(column: pa.ChunkedArray, path: Path, name: str) -> np.ndarray:
    """Raw label values: numbers when every value is numeric (int64 when all integral), else strings."""
    missing = column.is_null().to_numpy(zero_copy_only=False)
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        missing |= pc.is_in(pc.utf8_trim_whitespace(column), value_set=pa.array(MISSING_LABELS)).to_numpy(
            zero_copy_only=False)
    if missing.any():
        rows = np.flatnonzero(missing)
        raise DataError(f"label column {name!r} of {path} is empty at {data_row(rows[0])} ({rows.size} of "
                        f"{len(missing)} rows have no label); fill them in or remove those rows")
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        try:
            column = column.cast(pa.float64())
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            return np.asarray(column.to_pylist(), dtype=object).astype(str)
    if pa.types.is_integer(column.type):
        return column.to_numpy().astype(np.int64)
    if pa.types.is_floating(column.type) or pa.types.is_decimal(column.type):
        values = column.cast(pa.float64()).to_numpy()
        if np.all(np.isfinite(values)) and np.all(values == np.round(values)):
            return values.astype(np.int64)
        return values
    return np.asarray(column.to_pylist(), dtype=object).astype(str)


def read_table(path, label, drop=(), categorical=(), group: str | None = None, event: str | None = None
               ) -> tuple[np.ndarray, np.ndarray, list[str], np.ndarray | None]:
    """A CSV / TSV (.tsv, .txt) / Parquet file with a header: one label column, feature columns, dropped columns,
    `categorical` columns, each one-hot encoded in its place as columns "<column>=<value>" (one per value
    the file holds; an empty cell is none of them), a `group` column of row groups and a survival dataset's
    `event` column (neither is a feature).

    Returns (X float32 [n, d], raw label values (with `event`: [n, 2] of the label's and the event's),
    feature names, each row's group as text or None). Non-numeric feature columns and unknown
    label/drop/categorical/group/event names raise DataError naming the column.
    """
    path = Path(path)
    drop, categorical = tuple(drop), tuple(categorical)
    delimiter = _delimiter(path)
    if delimiter is None:
        return _read_parquet(path, label, drop, categorical, group, event)
    names = next(csv.reader([_first_line(path)], delimiter=delimiter))
    label_name, features = _split_columns(names, label, _not_features(drop, group, event, names, path), path,
                                          categorical)
    types = {name: pa.string() if name in categorical else pa.float32() for name in features}
    types[label_name] = pa.string()
    grouped, events = [group] if group else [], [event] if event else []
    types.update({name: pa.string() for name in (*grouped, *events)})
    try:
        table = _read_csv(path, delimiter, header=True, names=names, types=types,
                          include=[label_name, *events, *features, *grouped])
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
        raise _conversion_error(path, e, names, NOT_NUMERIC) from None
    except OSError as e:
        raise DataError(f"cannot read {path}: {_one_line(e)}; check that the file exists and is readable") from None
    if table.num_rows == 0:
        raise DataError(f"{path} has a header but no rows; check the file")
    y = _label_values(table, label_name, event, path)
    X, names = _features(table, features, categorical, path)
    return X, y, names, _groups(table, group, path)


def _not_features(drop: tuple, group: str | None, event: str | None, names: list[str], path: Path) -> tuple:
    """`drop` and the group and event columns, which are never features (checked against the header first,
    so that a missing one is named as what it is)."""
    for what, column in (("group column", group), ("event column", event)):
        if column is not None and column not in names:
            raise _missing(what, column, names, path)
    return (*drop, *(c for c in (group, event) if c is not None))


def _label_values(table: pa.Table, label: str, event: str | None, path: Path) -> np.ndarray:
    """The raw label values, beside a survival dataset's raw event values as [n, 2] (the cache checks both)."""
    y = _labels(table.column(label), path, label)
    if event is None:
        return y
    events = _labels(table.column(event), path, event)
    return np.stack([y, events], 1) if y.dtype.kind in "iuf" and events.dtype.kind in "iuf" else \
        np.stack([y.astype(str), events.astype(str)], 1)


def _groups(table: pa.Table, group: str | None, path: Path) -> np.ndarray | None:
    """Each row's group as text; an empty cell is refused (a row's group decides which split holds it)."""
    if group is None:
        return None
    values = np.asarray(table.column(group).cast(pa.string()).to_pylist(), dtype=object)
    empty = np.flatnonzero([v is None or not str(v).strip() for v in values])
    if empty.size:
        raise DataError(f"group column {group!r} of {path} is empty at {data_row(empty[0])} ({empty.size} of "
                        f"{len(values)} rows); give every row its group (a row alone: an id of its own)")
    return values.astype(str)


def _read_parquet(path: Path, label, drop: tuple, categorical: tuple, group: str | None = None,
                  event: str | None = None) -> tuple[np.ndarray, np.ndarray, list[str], np.ndarray | None]:
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(str(path))
    except (OSError, pa.ArrowException) as e:
        raise DataError(f"cannot read Parquet file {path}: {_one_line(e)}; check that it exists and is a Parquet file") from None
    names = list(schema.names)
    label_name, features = _split_columns(names, label, _not_features(drop, group, event, names, path), path,
                                          categorical)
    for name in features:
        kind = schema.field(name).type
        if name not in categorical and not (pa.types.is_integer(kind) or pa.types.is_floating(kind)
                                            or pa.types.is_boolean(kind) or pa.types.is_decimal(kind)):
            raise DataError(f"feature column {name!r} of {path} is not numeric ({kind}); {NOT_NUMERIC}")
    table = pq.read_table(str(path), columns=[label_name, *([event] if event else []), *features,
                                              *([group] if group else [])])
    if table.num_rows == 0:
        raise DataError(f"{path} has no rows; check the file")
    y = _label_values(table, label_name, event, path)
    X, names = _features(table, features, categorical, path)
    return X, y, names, _groups(table, group, path)


NOT_NUMERIC = ("features must be numbers; add non-numeric columns to drop=(...) (ids, names) or to categorical=(...) "
               "(tissue, stage: one-hot encoded)")
# A categorical column with more values than this, most of them on one row each, names rows: an id.
ID_LIKE_CATEGORIES = 50


def _features(table: pa.Table, features: list[str], categorical: tuple, path: Path) -> tuple[np.ndarray, list[str]]:
    """The feature matrix in the header's order, each categorical column replaced by its one-hot block."""
    if not categorical:
        return _matrix([table.column(name) for name in features], path), features
    blocks, names = [], []
    for name in features:
        if name in categorical:
            values = table.column(name).cast(pa.string()).to_pylist()
            categories = categories_in(values, name, path)
            blocks.append(one_hot(values, categories))
            names += [category_column(name, c) for c in categories]
        else:
            blocks.append(_matrix([table.column(name)], path))
            names.append(name)
    return np.ascontiguousarray(np.hstack(blocks), dtype=np.float32), names


def category_column(column: str, value: str) -> str:
    """The name of a categorical column's one-hot column for `value` (what predict rebuilds from the raw column)."""
    return f"{column}={value}"


def _category(value) -> str | None:
    text = None if value is None else str(value).strip()
    return None if text is None or text in MISSING_LABELS else text


def categories_in(values: list, column: str, path) -> list[str]:
    """A categorical column's values (sorted; empty cells are none)."""
    categories = sorted({c for v in values if (c := _category(v)) is not None})
    if len(categories) > ID_LIKE_CATEGORIES and len(categories) > len(values) / 2:
        raise DataError(f"categorical column {column!r} of {path} has {len(categories)} different values in "
                        f"{len(values)} rows, e.g. {categories[:3]}: it names rows rather than groups them; add it "
                        f"to drop=(...)")
    return categories


def one_hot(values: list, categories: list[str]) -> np.ndarray:
    """float32 [rows, len(categories)]: 1 where a row holds that category; a row whose value is empty or not
    among `categories` (a category the training rows did not have) is all zeros."""
    index = {c: i for i, c in enumerate(categories)}
    out = np.zeros((len(values), len(categories)), dtype=np.float32)
    for row, value in enumerate(values):
        if (i := index.get(_category(value))) is not None:
            out[row, i] = 1.0
    return out
