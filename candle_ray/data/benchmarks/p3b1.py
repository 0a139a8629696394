"""P3B1's data: CANDLE's `P3B1_data.tar.gz` of per-task pathology-report features, read as JoinedTables.

The archive unpacks to P3B1_data/task{t}_{fold}_{train,test}_{feature,label}.csv: comma-separated, no
header, numbers printed by numpy.savetxt ("%.18e"); a feature file has 400 columns per report, a label
file one class index per line. Task 0 = primary site, 1 = tumour laterality, 2 = histological grade.

CANDLE-fidelity choices:
* One fold, `options["fold"]` (default 0; CANDLE's n_fold=1 reads fold 0).
* No scaling (`scaling='none'`): the features are used as read.
* Classes per task = max(train label) + 1, as p3b1_baseline_keras2.run_mtl (13, 2, 4 for the real
  data); a test label beyond it is a DataError (CANDLE's one-hot fill would fail on it).
* The validation split is each task's *test* files: CANDLE validates on them and has no other held-out set.
* CANDLE fits one Keras model per task in turn on that task's own rows. Here every row carries one
  label column per task, -1 for the tasks it does not belong to, so a multi-task loop can mask the
  loss per task; the "task" column says which task a row came from.

Layout: one FeatureTable "report" (one row per report, ids "task{t}.{train|test}.{row}"), one Slot
reading it through the row tables' "report" index column.

The archive is never unpacked to disk: members are read straight from the tar stream after checking
every member name (no absolute paths, no "..", regular files and folders only), so a hostile archive
cannot write anywhere.
"""

from __future__ import annotations

import gzip
import io
import re
import tarfile
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd

from candle_ray.data.joined import FeatureTable, JoinedTables, Slot
from candle_ray.errors import DataError, UsageError, data_row

VERSION = 1
ROLE = "archive"
FILE = "P3B1_data.tar.gz"
# Fold 0's training rows per task in the real archive (primary site, laterality, grade): smoke data keep the mix.
REAL_TRAIN_ROWS = (3900, 600, 1200)
REAL_CLASSES = (13, 2, 4)
TABLE = "report"
OPTIONS = {"fold": 0}
# (file kind in the archive, split name in JoinedTables)
SPLITS = (("train", "train"), ("test", "val"))
_MEMBER = re.compile(r"task(\d+)_(\d+)_(train|test)_(feature|label)\.csv")


def _options(options: dict | None) -> dict:
    options = dict(options or {})
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise UsageError(f"unknown P3B1 reader option(s) {unknown}; the options are {sorted(OPTIONS)}")
    merged = {**OPTIONS, **options}
    fold = merged["fold"]
    if isinstance(fold, bool) or not isinstance(fold, int) or fold < 0:
        raise UsageError(f"P3B1 reader option fold must be an integer >= 0, got {fold!r}")
    return merged


def _check_member(member: tarfile.TarInfo, path: Path) -> None:
    name = PurePosixPath(member.name)
    if name.is_absolute() or ".." in name.parts or "\\" in member.name:
        raise DataError(f"{path} has the unsafe member path {member.name!r} (absolute or with '..'); refusing to "
                        f"read it: re-download P3B1_data.tar.gz from the CANDLE server")
    if not (member.isfile() or member.isdir()):
        raise DataError(f"{path} has the member {member.name!r}, which is a link or device, not a file; refusing "
                        f"to read it: re-download P3B1_data.tar.gz from the CANDLE server")


def _read_members(path: Path, fold: int) -> tuple[dict[tuple[int, str, str], bytes], set[int]]:
    """{(task, train|test, feature|label): bytes} of `fold`, and every fold the archive has."""
    wanted, folds = {}, set()
    try:
        with tarfile.open(path, mode="r:*") as archive:
            for member in archive:
                _check_member(member, path)
                match = _MEMBER.fullmatch(PurePosixPath(member.name).name) if member.isfile() else None
                if not match:
                    continue
                folds.add(int(match.group(2)))
                if int(match.group(2)) == fold:
                    key = (int(match.group(1)), match.group(3), match.group(4))
                    if key in wanted:
                        raise DataError(f"{path} has two members named {PurePosixPath(member.name).name!r}; keep "
                                        f"one copy in the archive")
                    wanted[key] = archive.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError) as e:
        raise DataError(f"cannot read {path} as a tar archive: {' '.join(str(e).split())}; P3B1 needs CANDLE's "
                        f"P3B1_data.tar.gz: re-download it") from None
    return wanted, folds


def _tasks(members: dict, folds: set[int], fold: int, path: Path) -> int:
    tasks = sorted({task for task, _, _ in members})
    if not tasks:
        present = ", ".join(str(f) for f in sorted(folds)) or "none"
        raise DataError(f"{path} has no task*_{fold}_*.csv files for fold {fold} (folds present: {present}); set "
                        f"the reader option fold to one of them, or check the archive")
    for task in range(tasks[-1] + 1):
        for kind, _ in SPLITS:
            for part in ("feature", "label"):
                if (task, kind, part) not in members:
                    raise DataError(f"{path} has no task{task}_{fold}_{kind}_{part}.csv (tasks 0..{tasks[-1]} are "
                                    f"expected for fold {fold}); the archive is incomplete: re-download it")
    return tasks[-1] + 1


def _csv(data: bytes, name: str, path: Path) -> np.ndarray:
    """A headerless numeric CSV as a float64 [rows, columns] matrix (empty file: 0 rows)."""
    if not data.strip():
        return np.empty((0, 0))
    try:
        frame = pd.read_csv(io.BytesIO(data), header=None, dtype=np.float64, engine="c")
    except (ValueError, pd.errors.ParserError) as e:
        raise DataError(f"cannot parse {name} in {path}: {' '.join(str(e).split())[:200]}; P3B1 files are "
                        f"headerless comma-separated numbers: re-download the archive") from None
    return frame.to_numpy()


def _labels(values: np.ndarray, name: str, path: Path) -> np.ndarray:
    if values.size == 0:
        return np.empty(0, dtype=np.int64)
    if values.shape[1] != 1:
        raise DataError(f"{name} in {path} has {values.shape[1]} columns; a P3B1 label file has one class index "
                        f"per line: check the archive")
    labels = values[:, 0]
    bad = np.flatnonzero(~np.isfinite(labels) | (labels < 0) | (labels != np.round(labels)))
    if bad.size:
        raise DataError(f"{name} in {path} has the label {float(labels[bad[0]])!r} at {data_row(bad[0])}; P3B1 labels are "
                        f"class indices 0, 1, ...: fix the file")
    return labels.astype(np.int64)


def read(paths: dict[str, Path], options: dict | None = None, seed: int = 0) -> JoinedTables:
    """Read fold `options["fold"]` of CANDLE's P3B1 archive (source role "archive").

    Row tables: "report" (int32 index into the "report" table), "task" (int64), one int64 label
    column per task ("task0", "task1", ...) holding the class, or -1 for another task's rows.
    `seed` is unused: nothing is random.
    """
    del seed
    opts = _options(options)
    if ROLE not in paths:
        raise UsageError(f"the P3B1 reader needs a source with role {ROLE!r} (P3B1_data.tar.gz); got roles "
                         f"{sorted(paths)}")
    path, fold = Path(paths[ROLE]), opts["fold"]
    members, folds = _read_members(path, fold)
    n_tasks = _tasks(members, folds, fold, path)
    label_columns = [f"task{t}" for t in range(n_tasks)]
    blocks, ids, frames, width = [], [], {split: [] for _, split in SPLITS}, None
    num_classes = []
    for task in range(n_tasks):
        for kind, split in SPLITS:
            feature_name, label_name = (f"task{task}_{fold}_{kind}_{part}.csv" for part in ("feature", "label"))
            X = _csv(members[(task, kind, "feature")], feature_name, path)
            if X.shape[0] == 0:
                raise DataError(f"{feature_name} in {path} has no rows; the {split} split of task {task} would be "
                                f"empty: check the archive")
            y = _labels(_csv(members[(task, kind, "label")], label_name, path), label_name, path)
            if width is None:
                width = (X.shape[1], feature_name)
            elif X.shape[1] != width[0]:
                raise DataError(f"{feature_name} in {path} has {X.shape[1]} feature columns but {width[1]} has "
                                f"{width[0]}; every P3B1 feature file needs the same width: check the archive")
            if len(y) != X.shape[0]:
                raise DataError(f"{label_name} has {len(y)} labels for the {X.shape[0]} rows of {feature_name} in "
                                f"{path}; the files must be row-aligned: check the archive")
            if kind == "train":
                num_classes.append(int(y.max()) + 1)
            elif y.max() >= num_classes[task]:
                raise DataError(f"{label_name} in {path} has the class {int(y.max())} but task {task}'s training "
                                f"labels stop at {num_classes[task] - 1}; CANDLE sizes each task by its training "
                                f"labels: fix the archive")
            if not np.isfinite(X).all():
                row, column = (int(v[0]) for v in np.nonzero(~np.isfinite(X)))
                raise DataError(f"{feature_name} in {path} has the non-finite value {float(X[row, column])!r} at {data_row(row)}, "
                                f"column {column}; P3B1 features are used as read (no imputation): fix the file")
            start = sum(len(b) for b in blocks)
            blocks.append(X.astype(np.float32))
            ids += [f"task{task}.{kind}.{r}" for r in range(X.shape[0])]
            frame = {TABLE: np.arange(start, start + X.shape[0], dtype=np.int32),
                     "task": np.full(X.shape[0], task, dtype=np.int64)}
            for t, column in enumerate(label_columns):
                frame[column] = y if t == task else np.full(X.shape[0], -1, dtype=np.int64)
            frames[split].append(pd.DataFrame(frame))
    values = np.ascontiguousarray(np.concatenate(blocks))
    table = FeatureTable(TABLE, ids, values, [f"f{j}" for j in range(values.shape[1])])
    splits = {split: pd.concat(parts, ignore_index=True) for split, parts in frames.items()}
    info = {"fold": fold, "folds_in_archive": sorted(folds),
            "rows": {split: {column: int((frame[column] >= 0).sum()) for column in label_columns}
                     for split, frame in splits.items()}}
    return JoinedTables(tables={TABLE: table}, slots=[Slot(TABLE, TABLE, TABLE)], splits=splits,
                        task="classification", num_classes=num_classes, label_columns=label_columns, info=info)


def _savetxt(values: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savetxt(buffer, values, delimiter=",")  # numpy's default "%.18e", as CANDLE's files
    return buffer.getvalue()


def write_synthetic(path, *, train_rows=(130, 40, 60), test_rows=(26, 16, 16), classes=(13, 2, 4),
                    features: int = 400, folds: int = 2, seed: int = 0) -> None:
    """Write a small archive in the exact layout of P3B1_data.tar.gz (byte-for-byte deterministic).

    Members P3B1_data/task{t}_{fold}_{train,test}_{feature,label}.csv for every task and fold, printed
    as numpy.savetxt does. Each class of each task has a prototype (a few raised feature columns) over
    sparse non-negative noise, like tf-idf report vectors: a small network separates them. Every class
    occurs in each task's training rows, so max(label) + 1 gives back `classes`.
    """
    tasks = len(classes)
    if not (len(train_rows) == len(test_rows) == tasks) or min(classes) < 2 or features < 4 or folds < 1 \
            or any(n < c for n, c in zip(train_rows, classes)) or min(test_rows) < 1:
        raise UsageError(f"P3B1 synthetic data need one train and test row count per task, train rows >= classes "
                         f"(every class seen), classes >= 2, features >= 4 and folds >= 1; got train_rows={train_rows}, "
                         f"test_rows={test_rows}, classes={classes}, features={features}, folds={folds}")
    rng = np.random.default_rng([seed, 0x3B1])
    active = max(2, features // 50)
    prototypes = []
    for n_classes in classes:
        proto = np.zeros((n_classes, features), dtype=np.float64)
        for c in range(n_classes):
            proto[c, rng.choice(features, size=active, replace=False)] = 0.3
        prototypes.append(proto)
    files = {}
    for fold in range(folds):
        for task, n_classes in enumerate(classes):
            for kind, n in (("train", train_rows[task]), ("test", test_rows[task])):
                labels = rng.permutation(np.arange(n) % n_classes)
                noise = rng.normal(0.0, 0.08, (n, features))
                X = np.clip(noise, 0.0, None) * (rng.random((n, features)) < 0.3) + prototypes[task][labels]
                X = X.astype(np.float32).astype(np.float64)  # CANDLE's values are float32 printed with %.18e
                files[f"task{task}_{fold}_{kind}_feature.csv"] = _savetxt(X)
                files[f"task{task}_{fold}_{kind}_label.csv"] = _savetxt(labels.astype(np.float64))
    with open(path, "wb") as raw, gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0) as zipped, \
            tarfile.open(fileobj=zipped, mode="w", format=tarfile.PAX_FORMAT) as archive:
        folder = tarfile.TarInfo("P3B1_data")
        folder.type, folder.mode = tarfile.DIRTYPE, 0o755
        archive.addfile(folder)
        for name, data in files.items():
            member = tarfile.TarInfo(f"P3B1_data/{name}")
            member.size, member.mode = len(data), 0o644
            archive.addfile(member, io.BytesIO(data))


def synthesize(out_dir: Path, options: dict, seed: int, rows: int, features: int) -> dict[str, Path]:
    """--smoke data: a P3B1_data.tar.gz with ~`rows` training rows split over the tasks as in the real
    fold 0 (65 / 10 / 20 %), test files of a fifth of that, min(features, 400) columns, and folds
    0..options["fold"] so the configured fold exists."""
    fold = _options(options)["fold"]
    total = sum(REAL_TRAIN_ROWS)
    train = tuple(max(2 * c, int(round(rows * n / total))) for n, c in zip(REAL_TRAIN_ROWS, REAL_CLASSES))
    test = tuple(max(c, n // 5) for n, c in zip(train, REAL_CLASSES))
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    path = Path(out_dir) / FILE
    write_synthetic(path, train_rows=train, test_rows=test, classes=REAL_CLASSES, features=max(4, min(features, 400)),
                    folds=fold + 1, seed=seed)
    return {ROLE: path}
