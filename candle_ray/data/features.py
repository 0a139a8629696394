"""What a model's input columns are, and reading new rows in that order for prediction.

`describe(entry)` is stored in every checkpoint: the feature names (or count, for CANDLE's header-less
files), the scaler fitted at preparation, the class names and the source files' checksums.
`read_for_prediction` then turns a user's CSV / TSV / Parquet file into the exact matrix the model saw
in training: the same columns in the same order, the same scaling, without the experiment file or the
cache.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from candle_ray.errors import DataError, UsageError, data_row

_FORMATS = {".csv": ",", ".tsv": "\t", ".txt": "\t", ".parquet": None, ".pq": None}


def describe(entry) -> dict:
    """The facts about a prepared dataset that prediction needs (JSON-able, small but for the scaler)."""
    manifest = entry.manifest
    pre = manifest.get("preprocessing", {})
    scaler_file = Path(entry.path) / pre["scaler_file"] if pre.get("scaler_file") else None
    return {
        "dataset": manifest["name"], "fingerprint": manifest["fingerprint"], "task": manifest["task"],
        "kind": manifest.get("kind", "matrix"), "num_features": manifest["num_features"],
        "feature_names": manifest.get("feature_names"), "class_names": manifest.get("class_names"),
        "num_classes": manifest.get("num_classes"), "format": pre.get("format"),
        "label": _label(manifest), "label_columns": manifest.get("label_columns"), "event": manifest.get("event"),
        "rebuild": manifest.get("rebuild"), "entry": str(entry.path),
        "categorical": pre.get("categorical") or [],
        "scaler": json.loads(scaler_file.read_text()) if scaler_file and scaler_file.is_file() else None,
        "source_sha256": {role: src.get("sha256") for role, src in (manifest.get("sources") or {}).items()},
    }


def is_multitask(info: dict) -> bool:
    """A model with one head per task (P3B1): its dataset's `num_classes` is a list."""
    return isinstance(info.get("num_classes"), list)


def task_names(info: dict) -> list[str]:
    """A multi-task model's tasks, named as its dataset's label columns (task0, task1, ...)."""
    return info.get("label_columns") or [f"task{t}" for t in range(len(info["num_classes"]))]


def _label(manifest: dict):
    """The label column of a file of rows: a table's own (a name, or a header-less file's index), or a joined
    dataset's one row-table column ("y"; None for several tasks)."""
    if manifest.get("kind") != "joined":
        return manifest.get("preprocessing", {}).get("label")
    labels = manifest.get("label_columns") or []
    return labels[0] if len(labels) == 1 else None


def source_role(path, info: dict) -> str | None:
    """Which of the model's own data files `path` is, byte for byte ("train", "val"), or None. A model is
    surer of the rows it was fitted or chosen on than of new ones, so they make a poor calibration set."""
    from candle_ray.data.cache_format import file_sha256

    hashes = {role: digest for role, digest in (info.get("source_sha256") or {}).items() if digest}
    if not hashes:  # a checkpoint from before this record, or data with no file checksums
        return None
    digest = file_sha256(Path(path))
    return next((role for role, known in hashes.items() if known == digest), None)


def _delimiter(path: Path):
    suffix = path.suffix.lower()
    if suffix not in _FORMATS:
        raise UsageError(f"cannot tell the format of {path} from its suffix {suffix!r}; use .csv, .tsv, .txt or .parquet")
    return _FORMATS[suffix]


def _read_frame(path: Path, header: str, text_columns=()):
    """The file as a DataFrame, its first line read as `header` says (`_header_of`); `text_columns`
    (categorical ones) read as written, as preparation read them (a stage column with an empty cell would
    otherwise become floats: 1.0, not "1")."""
    import pandas as pd

    delimiter = _delimiter(path)
    try:
        if delimiter is None:
            return pd.read_parquet(path)
        return pd.read_csv(path, sep=delimiter, header=0 if header == "names" else None, low_memory=False,
                           skiprows=1 if header == "positions" else None, dtype={c: str for c in text_columns} or None)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"cannot read {path}: {first}; check that it is a readable {path.suffix} file") from None


def _header_of(path: Path, names: list[str] | None) -> str:
    """What a file's first line is: "names" (a table's header), "none" (a header-less CANDLE file starts with
    numbers) or "positions" (0, 1, ...: column positions over header-less data, as pandas writes them)."""
    from candle_ray.data.formats import is_positions_line  # pyarrow's import, only where a file is read

    delimiter = _delimiter(path)
    if delimiter is None:
        return "names"
    with open(path, newline="") as f:
        first = next(csv.reader(f, delimiter=delimiter), [])
    if names and set(first) & set(names):
        return "names"
    if is_positions_line(first):
        return "positions"
    try:
        [float(v) for v in first[:20] if v != ""]
        return "none"
    except ValueError:
        return "names"


UNLABELLED = -1  # the class index of a row to predict whose label is empty or a class the model never saw


def _labels(values, info: dict, *, strict: bool) -> np.ndarray:
    """Labels as the model's class indices (classification) or floats (regression). `strict` (calibration
    rows): every row needs one, of a class seen in training. Otherwise (rows to predict, which need no label)
    an empty or unseen label is UNLABELLED (regression: NaN): new rows often carry an empty label column."""
    import pandas as pd

    values = pd.Series(np.asarray(values, dtype=object))
    missing = values.isna() | (values.astype(str).str.strip() == "")
    if info["task"] != "classification":
        y = pd.to_numeric(values.where(~missing), errors="coerce").to_numpy(np.float64)
        bad = ~np.isfinite(y)
        if strict and bad.any():
            first = int(np.argmax(bad))
            raise DataError(f"{int(bad.sum())} of {len(y)} calibration labels are empty or not numbers, e.g. "
                            f"{data_row(first)} ({values[first]!r}); calibration rows need a label each")
        return y
    y = _class_indices(values, missing, info)
    if strict and (y == UNLABELLED).any():
        if missing.any():
            raise DataError(f"{int(missing.sum())} of {len(y)} calibration rows have no label, e.g. "
                            f"{data_row(np.argmax(missing.to_numpy()))}; calibration rows need a label each")
        unknown = sorted({str(v) for v, i in zip(values, y) if i == UNLABELLED})
        names = info.get("class_names")
        known = ", ".join(map(str, names[:10])) if names else f"class indices 0..{int(info['num_classes']) - 1}"
        raise DataError(f"labels {unknown[:5]} were not classes in training ({known}); fix the label column or "
                        f"drop those rows")
    return y


def _survival_targets(time, event) -> np.ndarray:
    """A survival model's labelled rows as signed times (candle_ray.cox); NaN where the time is not a positive
    number or the event not 1/0 (true/false): such rows are predicted, not scored."""
    import pandas as pd

    from candle_ray import cox

    time = pd.to_numeric(time, errors="coerce").to_numpy(np.float64)
    seen = cox.events_of(event.to_numpy())
    coded = cox.encode(time, seen).astype(np.float64)
    coded[~(np.isfinite(time) & (time > 0) & np.isfinite(seen))] = np.nan
    return coded


def _class_indices(values, missing, info: dict) -> np.ndarray:
    """Each label's class index by name, or as an integer index where the classes have no names; UNLABELLED
    where it is missing or no class."""
    import pandas as pd

    if info.get("class_names"):
        index = {str(n): i for i, n in enumerate(info["class_names"])}
        # a label column with an empty cell is read as floats: 2.0 is class "2"
        key = lambda v: str(int(v)) if isinstance(v, float) and v.is_integer() else str(v)  # noqa: E731
        return np.array([UNLABELLED if gone else index.get(key(v), UNLABELLED) for v, gone in zip(values, missing)],
                        dtype=np.int64)
    numbers = pd.to_numeric(values.where(~missing), errors="coerce").to_numpy(np.float64)
    with np.errstate(invalid="ignore"):
        ok = np.isfinite(numbers) & (numbers == np.round(numbers)) & (numbers >= 0) & (numbers < int(info["num_classes"]))
    return np.where(ok, numbers, UNLABELLED).astype(np.int64)


def read_for_prediction(path, info: dict, *, need_labels: bool = False, joined_entry=None):
    """(X scaled like the training data, labels or None, row ids or None) from a CSV / TSV / Parquet file.

    A file with a header must contain every training feature by name (in any order; extra columns
    are ignored, the label column is read when present). A header-less file (CANDLE's NT3/TC1 format)
    must have exactly the training width, or one more column: the label first. A model of a joined
    dataset takes rows of ids and values instead, gathered from its cache entry `joined_entry` (None: looked
    up as candle_ray.data.joined_input.entry_of does); X is then a `JoinedRows` and the ids are its input
    columns by name.
    """
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"prediction data {path} does not exist; pass an existing CSV, TSV or Parquet file")
    if is_multitask(info):
        header = _header_of(path, task_names(info))
        return frame_for_prediction(_read_frame(path, header), info, header=header == "names", source=str(path),
                                    need_labels=need_labels)
    if info.get("kind") == "joined":
        from candle_ray.data import joined_input

        joined_entry = joined_entry or joined_input.entry_of(None, info)
        frame = _read_frame(path, "names", joined_input.input_columns(joined_entry.manifest)[0])  # ids as text
        return frame_for_prediction(frame, info, source=str(path), need_labels=need_labels, joined_entry=joined_entry)
    header = _header_of(path, info.get("feature_names"))
    frame = _read_frame(path, header, info.get("categorical") or ())
    return frame_for_prediction(frame, info, header=header == "names", source=str(path), need_labels=need_labels)


def _joined_for_prediction(frame, info: dict, entry, source: str, need_labels: bool):
    """A joined model's rows to predict: ids and values by name, gathered from its cache entry; the label
    column (the cached row tables' name, "y") is read where the frame has it."""
    from candle_ray.data import joined_input

    X, shown = joined_input.gather(frame, entry, source)
    labels = entry.manifest["label_columns"]
    if len(labels) == 1 and labels[0] in frame.columns:
        return X, _labels(frame[labels[0]].to_numpy(), info, strict=need_labels), shown
    if need_labels:
        raise DataError(f"{source} has no label column {labels[0]!r}; calibration data needs the true labels"
                        if len(labels) == 1 else f"calibration needs one label column; this model has {len(labels)}")
    return X, None, shown


def frame_for_prediction(frame, info: dict, *, header: bool = True, source: str = "the input",
                         need_labels: bool = False, joined_entry=None):
    """`read_for_prediction` of rows already in a DataFrame (an MLflow model's input): named columns when
    `header`, else CANDLE's positional layout; a joined dataset's ids and values by name."""
    import pandas as pd

    if is_multitask(info):
        return _multitask_for_prediction(frame, info, header, source, need_labels)
    if info.get("kind") == "joined":
        from candle_ray.data import joined_input

        return _joined_for_prediction(frame, info, joined_entry or joined_input.entry_of(None, info), source,
                                      need_labels)
    names, width = info.get("feature_names"), int(info["num_features"])
    label = info.get("label") if isinstance(info.get("label"), str) else None
    ids, y = None, None
    if header:
        frame = _one_hot_categories(frame.rename(columns=str), info, source)  # the caller's frame stays as it was
        columns = list(frame.columns)
        if names is None:  # trained on a header-less file: take the numeric columns but the label
            names = [c for c in columns if c != label]
            if len(names) != width:
                raise DataError(f"{source} has {len(names)} feature columns but the model takes {width}; "
                                f"pass the features in training order")
        present = set(columns)  # one set: built per name, it made this quadratic (minutes at NT3's 60,483 columns)
        missing = [n for n in names if n not in present]
        if missing:
            raise DataError(f"{source} lacks {len(missing)} of the model's {width} features, e.g. {missing[:3]}; "
                            f"it needs the training columns by name (any order)")
        event = info.get("event")
        if label and label in columns:
            y = _survival_targets(frame[label], frame[event]) if event and event in columns else frame[label].to_numpy()
        features = set(names)
        others = [c for c in columns if c not in features and c not in (label, event)]
        if others and not pd.api.types.is_numeric_dtype(frame[others[0]]):
            ids = frame[others[0]].astype(str).tolist()  # the first non-feature text column names the rows
        X = frame[names]
    else:
        if frame.shape[1] == width + 1:
            y, X = frame.iloc[:, 0].to_numpy(), frame.iloc[:, 1:]
        elif frame.shape[1] == width:
            X = frame
        else:
            raise DataError(f"{source} has {frame.shape[1]} columns but the model takes {width} features "
                            f"(or {width + 1} with the label first); pass data in the training format")
    columns = [str(c) for c in X.columns] if header else None
    X = _numeric(X, source)
    fill = (info.get("scaler") or {}).get("fill")
    if fill is not None and np.isnan(X).any():  # the dataset's impute=: the train rows' column means or medians
        X = np.where(np.isnan(X), np.asarray(fill, dtype=np.float32), X)  # a new array: X may view the caller's frame
    _check_finite(X, source, columns)
    if need_labels and y is None:
        raise DataError(f"{source} has no label column{f' {label!r}' if label else ''}; calibration data needs the true labels")
    if info.get("scaler"):
        from candle_ray.data.transforms import apply_scaler

        X = apply_scaler(info["scaler"], X)
    return X, (_labels(y, info, strict=need_labels) if y is not None else None), ids


def _multitask_for_prediction(frame, info: dict, header: bool, source: str, need_labels: bool):
    """(X, labels [rows, tasks] or None, row ids or None) for a multi-task model, whose rows are a report's
    features (P3B1: the archive's `*_feature.csv` values, used as the reader uses them). Header-less: the
    features alone, or after one label column per task; with a header: the label columns by name (task0,
    task1, ...; empty or -1 where a row has none), a first text column naming the rows, the features."""
    import pandas as pd

    names, width = task_names(info), int(info["num_features"])
    ids, labels = None, None
    if header:
        frame = frame.rename(columns=str)
        labels = frame[[n for n in names if n in frame.columns]]
        X = frame.drop(columns=list(labels.columns))
        if len(X.columns) and not pd.api.types.is_numeric_dtype(X[X.columns[0]]):
            ids, X = X[X.columns[0]].astype(str).tolist(), X.drop(columns=X.columns[0])
        labels = labels if len(labels.columns) else None
    elif frame.shape[1] == width + len(names):
        labels, X = frame.iloc[:, :len(names)].set_axis(names, axis=1), frame.iloc[:, len(names):]
    else:
        X = frame
    if X.shape[1] != width:
        raise DataError(f"{source} has {X.shape[1]} feature columns but the model takes {width}; pass one row per "
                        f"report with its {width} features (header-less, or after one label column per task: "
                        f"{', '.join(names)})")
    X = _numeric(X, source)
    _check_finite(X, source)
    if labels is None:
        if need_labels:
            raise DataError(f"{source} has no label columns; calibration rows need their tasks' true classes in "
                            f"columns {', '.join(names)} (empty or -1 where a row has none)")
        return X, None, ids
    return X, _task_labels(labels, info, names, source, strict=need_labels), ids


def _numeric(X, source: str) -> np.ndarray:
    """A frame's feature columns as float32; DataError naming a column that is not numeric, or no rows."""
    import pandas as pd

    try:
        values = X.to_numpy(dtype=np.float32)
    except (TypeError, ValueError):
        bad = next((c for c in X.columns if not pd.api.types.is_numeric_dtype(X[c])), "?")
        raise DataError(f"feature column {bad!r} of {source} is not numeric; features must be numbers") from None
    if len(values) == 0:
        raise DataError(f"{source} has no rows to predict")
    return values


def _check_finite(X: np.ndarray, source: str, columns: list[str] | None = None) -> None:
    if not np.isfinite(X).all():
        row, col = map(int, np.argwhere(~np.isfinite(X))[0])
        where = f"column {columns[col]!r}" if columns else f"feature {col + 1}"
        raise DataError(f"{source} has a missing or non-finite value at {data_row(row)}, "
                        f"{where}; fill or drop it before predicting")


def _task_labels(labels, info: dict, names: list[str], source: str, *, strict: bool) -> np.ndarray:
    """Class indices [rows, tasks]: UNLABELLED where a row has no label for a task (empty, -1, or a task
    column the file lacks). `strict` (calibration rows): any other label must be one of the task's classes,
    and some row must carry one."""
    import pandas as pd

    y = np.full((len(labels), len(names)), UNLABELLED, dtype=np.int64)
    for t, name in enumerate(names):
        if name not in labels.columns:
            continue
        values = pd.Series(np.asarray(labels[name], dtype=object))
        missing = values.isna() | values.astype(str).str.strip().isin(["", "-1", "-1.0"])
        y[:, t] = _class_indices(values, missing, {"num_classes": info["num_classes"][t]})
        unknown = ~missing.to_numpy() & (y[:, t] == UNLABELLED)
        if strict and unknown.any():
            first = int(np.argmax(unknown))
            raise DataError(f"{source} has the label {values[first]!r} for {name} at {data_row(first)}, but "
                            f"{name} has classes 0..{info['num_classes'][t] - 1}; fix it, or leave it empty (-1) "
                            f"where the row has no {name} label")
    if strict and (y == UNLABELLED).all():
        raise DataError(f"{source} has no label in any of {', '.join(names)}; calibration rows need their "
                        f"tasks' true classes")
    return y


def _one_hot_categories(frame, info: dict, source: str):
    """`frame` with each categorical column replaced by the one-hot columns the model takes (formats.one_hot:
    a value the training rows did not have, or an empty cell, is no category)."""
    import pandas as pd

    from candle_ray.data.formats import category_column, one_hot

    categorical = info.get("categorical") or ()
    if not categorical:
        return frame
    absent = [c for c in categorical if c not in frame.columns]
    if absent:
        raise DataError(f"{source} lacks the categorical column {absent[0]!r} the model was trained with; add it "
                        f"(an empty cell is no category)")
    blocks = []
    for column in categorical:
        prefix = category_column(column, "")
        categories = [n[len(prefix):] for n in info["feature_names"] if n.startswith(prefix)]
        blocks.append(pd.DataFrame(one_hot(frame[column].tolist(), categories), index=frame.index,
                                   columns=[category_column(column, c) for c in categories]))
    return pd.concat([frame.drop(columns=list(categorical)), *blocks], axis=1)


def typical_row(info: dict):
    """One row at the centre of the training data, in the input's own units (the scaler's mean or the
    middle of its range; 0 where the scaling keeps no centre), named as the model's features: an MLflow
    model's input example."""
    import pandas as pd

    width, scaler = int(info["num_features"]), info.get("scaler") or {}
    centre = {"std": lambda: np.asarray(scaler["mean"]),
              "minmax": lambda: np.asarray(scaler["min"]) + np.asarray(scaler["scale"]) / 2}.get(scaler.get("kind"))
    values = centre() if centre else np.zeros(width)
    names = info.get("feature_names") or [str(i) for i in range(width)]
    # float64: what a user's frame holds; one 2-D block, not a column per feature (60k columns: 1.7 s -> ms)
    row = pd.DataFrame(values.astype(np.float64)[None, :], columns=names)
    for column in info.get("categorical") or ():  # the raw column, at its most frequent training value
        from candle_ray.data.formats import category_column

        prefix = category_column(column, "")
        encoded = [n for n in names if n.startswith(prefix)]
        top = max(encoded, key=lambda n: row[n].iloc[0]) if encoded else prefix
        row = row.drop(columns=encoded).assign(**{column: top[len(prefix):]})
    return row
