"""Declarative dataset specifications, as written in experiment files.

Pure data: no I/O, no heavy imports. The cache (`candle_ray.data.cache`) turns a spec into Arrow files.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

from candle_ray.errors import UsageError

FORMATS = ("candle_noheader", "table")
SCALINGS = ("maxabs", "minmax", "std", "log", "none")
IMPUTES = ("mean", "median")  # what fills a missing feature value (cache._impute); None: refused
SCALING_FITS = ("train+val", "train")
# "autoencoder": the model reconstructs its input (P1B1); the labels (e.g. cancer types) are kept as
# classes for conditional models and plots. "survival": a follow-up time and whether the event was seen
# (candle_ray.cox codes both in one signed number).
TASKS = ("classification", "regression", "autoencoder", "survival")


def has_class_labels(task: str) -> bool:
    return task not in ("regression", "survival")


def strata(task: str, labels):
    """What keeps its mix on both sides of a split of these rows (the val hold-out, cv folds, a learning
    curve's subsample): a classifier's classes (one label column), a survival dataset's events (signed times
    > 0, candle_ray.cox); None for any other task."""
    if task == "survival":
        return (labels > 0).astype("int64")
    return labels if task == "classification" and labels.ndim == 1 else None
URL_SCHEMES = ("http://", "https://", "ftp://", "file://")


@dataclass(frozen=True)
class Source:
    """One file to fetch: an http(s)/ftp/file URL or a local path, with an optional checksum.

    Without a checksum the sha256 of the first download is recorded in the cache manifest and
    checked on every later `candle-ray data verify` (trust on first use).
    """

    url: str
    md5: str | None = None
    sha256: str | None = None

    def __post_init__(self):
        if not isinstance(self.url, str) or not self.url:
            raise UsageError(f"Source url must be a non-empty string, got {self.url!r}")
        for algo, size in (("md5", 32), ("sha256", 64)):
            value = getattr(self, algo)
            if value is not None and (len(value) != size or any(c not in "0123456789abcdefABCDEF" for c in value)):
                raise UsageError(f"Source {algo} for {self.url} must be {size} hex digits, got {value!r}")

    @property
    def basename(self) -> str:
        return self.url.rstrip("/").rsplit("/", 1)[-1]

    def resolved(self, base_dir: Path | None) -> "Source":
        """Turn a relative local path into an absolute file:// URL (relative to the experiment file)."""
        if self.url.startswith(URL_SCHEMES) or "://" in self.url:
            return self
        path = Path(self.url).expanduser()
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        return replace(self, url=path.resolve().as_uri())


def _as_source(value) -> Source | None:
    if value is None or isinstance(value, Source):
        return value
    if isinstance(value, (str, Path)):
        return Source(str(value))
    raise UsageError(f"expected a Source or a URL/path string, got {type(value).__name__}: {value!r}")


@dataclass(frozen=True)
class Dataset:
    """A labelled feature matrix with a train split and a validation split.

    format:
      - "candle_noheader": CANDLE's NT3/TC1 CSV: no header, column 0 the integer label, the rest features.
      - "table": a CSV, TSV or Parquet file with a header, a label column and feature columns.
    val: a second file (CANDLE passes the test file as validation data), or None to hold out the
      last `val_fraction` of the (seeded-shuffled) train rows, stratified by class for a classifier.
    group: a "table" column naming rows that belong together (a patient's tumour and normal samples, a
      cell line's replicates): not a feature; the hold-out and cv folds keep each group's rows on one side.
    event: with task="survival", the "table" column saying whether the event (death, relapse) was seen at
      the `label` column's time (1) or the row was censored then (0); not a feature.
    scaling: CANDLE's vocabulary (maxabs, minmax, std, log, none); `scaling_fit` "train+val" is
      CANDLE's transductive rule (fit on train and test concatenated), "train" the inductive one.
    """

    name: str
    train: Source
    val: Source | None = None
    format: str = "candle_noheader"
    label: str | int = 0
    drop: tuple[str, ...] = ()
    categorical: tuple[str, ...] = ()  # "table" columns one-hot encoded (formats.read_table), e.g. ("tissue",)
    group: str | None = None  # a "table" column of row groups (a patient): kept whole in one split or fold
    event: str | None = None  # task="survival": the "table" column of 1 (event seen) / 0 (censored)
    impute: str | None = None  # fill missing feature values with the train rows' column mean or median
    task: str = "classification"
    classes: int | None = None
    scaling: str = "maxabs"
    scaling_fit: str = "train+val"
    feature_subsample: int = 0
    val_fraction: float = 0.1
    seed: int = 2017
    synthetic: bool = field(default=False, compare=True)

    def __post_init__(self):
        object.__setattr__(self, "train", _as_source(self.train))
        object.__setattr__(self, "val", _as_source(self.val))
        object.__setattr__(self, "drop", tuple(self.drop))
        categorical = (self.categorical,) if isinstance(self.categorical, str) else tuple(self.categorical)
        object.__setattr__(self, "categorical", categorical)
        if categorical and self.format != "table":
            raise UsageError(f"dataset categorical={list(categorical)} needs format='table' (columns by name); "
                             f"encode the columns in the file or use TableDataset")
        if not self.name or not all(c.isalnum() or c in "-_." for c in self.name):
            raise UsageError(f"dataset name must be letters, digits, '-', '_' or '.', got {self.name!r}")
        checks = (("format", FORMATS), ("scaling", SCALINGS), ("scaling_fit", SCALING_FITS), ("task", TASKS))
        for key, allowed in checks:
            if getattr(self, key) not in allowed:
                raise UsageError(f"dataset {key} {getattr(self, key)!r} is not one of {', '.join(allowed)}")
        if self.impute is not None and self.impute not in IMPUTES:
            raise UsageError(f"dataset impute {self.impute!r} is not one of {', '.join(IMPUTES)} (or None: missing "
                             f"values are refused)")
        if self.classes is not None and (not isinstance(self.classes, int) or self.classes < 2):
            raise UsageError(f"dataset classes must be an integer >= 2, got {self.classes!r}")
        self._check_group()
        self._check_event()
        if self.val is None and not 0.0 < self.val_fraction < 1.0:
            raise UsageError(f"dataset val_fraction must be in (0, 1), got {self.val_fraction!r}")
        if self.feature_subsample < 0:
            raise UsageError(f"dataset feature_subsample must be >= 0, got {self.feature_subsample!r}")

    def _check_group(self) -> None:
        if self.group is None:
            return
        if self.format != "table" or not isinstance(self.group, str) or not self.group:
            raise UsageError(f"dataset group={self.group!r} needs format='table' and a column name (a patient id, "
                             f"say), e.g. TableDataset(..., group='patient')")
        if self.group == self.label or self.group in self.drop or self.group in self.categorical:
            raise UsageError(f"dataset group column {self.group!r} is also the label, dropped or categorical; a group "
                             f"column is never a feature: name it only as group=")

    def _check_event(self) -> None:
        if (self.task == "survival") != (self.event is not None):
            raise UsageError(f"dataset task={self.task!r} with event={self.event!r}: a survival dataset names its "
                             f"event column and only it does, e.g. TableDataset(..., label='months', event='dead')")
        if self.event is None:
            return
        if self.format != "table" or not isinstance(self.event, str) or not self.event:
            raise UsageError(f"dataset event={self.event!r} needs format='table' and a column name, e.g. "
                             f"TableDataset(..., label='months', event='dead')")
        if self.event in (self.label, self.group) or self.event in self.drop or self.event in self.categorical:
            raise UsageError(f"dataset event column {self.event!r} is also the label, the group, dropped or "
                             f"categorical; name it only as event=")

    def resolved(self, base_dir: Path | None) -> "Dataset":
        """Local relative paths made absolute file:// URLs, relative to `base_dir`."""
        return replace(
            self,
            train=self.train.resolved(base_dir),
            val=self.val.resolved(base_dir) if self.val else None,
        )

    def sources(self) -> dict[str, Source]:
        return {"train": self.train, **({"val": self.val} if self.val else {})}


@dataclass(frozen=True)
class ReaderDataset:
    """A benchmark dataset of several files, turned into joined tables by a named reader (P1B3, Uno, ...).

    `ReaderDataset("p1b3", reader="p1b3", sources={"dose_response": Source(...), ...}, options={...})`.

    reader: "p1b3" reads with module `candle_ray.data.benchmarks.p1b3`; a dotted name ("mylab.readers.screen")
      imports that module instead, so users can bring their own reader. The module defines:

        read(paths: dict[str, Path], options: dict, seed: int) -> candle_ray.data.joined.JoinedTables
            `paths` maps each source role to its fetched local file; `options` are the reader's
            OPTIONS defaults updated with this spec's options.
        synthesize(out_dir: Path, options: dict, seed: int, rows: int, features: int) -> dict[str, Path]
            writes deterministic synthetic files in the real formats into `out_dir` (for --smoke):
            about `rows` response rows, feature tables at most `features` wide, a signal a small
            network learns in a few epochs; returns the written file per source role (every role
            of the real dataset). The caller renames them to the real files' names.
        OPTIONS: dict (optional)  every option with its CANDLE default; unknown option names are
            then usage errors, and options equal to their default do not change the fingerprint.
        VERSION: int (optional)   bump when the reader's output changes: cached entries are rebuilt.

    sources: role -> Source (or URL/path string); the roles are the reader's (e.g. "dose_response").
    seed: the reader's random seed (CANDLE's rng_seed: subsampling, splits).
    """

    name: str
    reader: str
    sources: Mapping[str, Source]
    options: Mapping[str, Any] = field(default_factory=dict)
    seed: int = 2017
    synthetic: bool = False

    def __post_init__(self):
        if not self.name or not all(c.isalnum() or c in "-_." for c in self.name):
            raise UsageError(f"dataset name must be letters, digits, '-', '_' or '.', got {self.name!r}")
        if not isinstance(self.reader, str) or not all(part.isidentifier() for part in self.reader.split(".")):
            raise UsageError(f"dataset {self.name!r}: reader must be a module name such as 'p1b3' or 'mylab.reader', got {self.reader!r}")
        if not isinstance(self.sources, Mapping) or not self.sources:
            raise UsageError(f"dataset {self.name!r}: sources must be a non-empty dict of role -> Source")
        for role in self.sources:
            if not isinstance(role, str) or not role.isidentifier():
                raise UsageError(f"dataset {self.name!r}: source role {role!r} must be an identifier such as 'dose_response'")
        object.__setattr__(self, "sources", {role: _as_source(src) for role, src in self.sources.items()})
        if not isinstance(self.options, Mapping):
            raise UsageError(f"dataset {self.name!r}: options must be a dict, got {type(self.options).__name__}")
        object.__setattr__(self, "options", dict(self.options))
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise UsageError(f"dataset {self.name!r}: seed must be an integer, got {self.seed!r}")
        names = [src.basename for src in self.sources.values()]
        clash = sorted({n for n in names if names.count(n) > 1})
        if clash:
            raise UsageError(f"dataset {self.name!r}: several sources share the file name {clash[0]!r}; each role needs its own file")

    __hash__ = None  # options and sources are dicts

    def resolved(self, base_dir: Path | None) -> "ReaderDataset":
        """Local relative paths made absolute file:// URLs, relative to `base_dir`."""
        return replace(self, sources={role: src.resolved(base_dir) for role, src in self.sources.items()})


# File names that say which split a table is, not what it holds: a dataset named after one is named after
# its experiment instead (Experiment), or every own matrix in a shared cache and in MLflow is "train".
SPLIT_NAMES = ("train", "training", "data", "dataset", "table", "all", "full", "input")


def file_name(source: Source) -> str:
    """A dataset name from a file's name: its stem, in the characters a dataset name may hold."""
    stem = source.basename
    for suffix in (".gz", ".csv", ".tsv", ".txt", ".parquet"):
        stem = stem.removesuffix(suffix)
    return safe_name(stem) or "table"


def safe_name(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


def TableDataset(path, label: str, *, name: str | None = None, val=None, **options) -> Dataset:
    """A user's own matrix: a CSV, TSV or Parquet file with a header and a label column.

    `TableDataset("expression.csv", label="cancer_type", scaling="std")` is a whole dataset spec;
    `TableDataset("cohort.csv", label="months", event="dead")` a survival one (task="survival" implied).
    """
    source = _as_source(path)
    if options.get("event") is not None:
        options.setdefault("task", "survival")
    if name is None:
        name = file_name(source)
    options.setdefault("scaling", "std")
    options.setdefault("scaling_fit", "train")
    return Dataset(name=name, train=source, val=val, format="table", label=label, **options)
