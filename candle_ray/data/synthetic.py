"""Synthetic stand-ins for real datasets, in the exact file format of the real ones.

Smoke runs and tests exercise the whole path (fetch, read, validate, scale, cache, train) on small
files that look like the real ones: a headerless CANDLE CSV of non-negative, FPKM-UQ-like values
with an integer label first, or a header table (CSV / TSV / Parquet) with an id column, a string
label column and gene_00001... feature columns. A subset of features carries a class signal, so a
small network beats chance within a few epochs.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from candle_ray.data.sources import file_digests
from candle_ray.data.spec import Dataset, ReaderDataset, Source, has_class_labels
from candle_ray.errors import UsageError

GENERATOR_VERSION = 2  # bump when the generated values change: cached smoke files are rebuilt
_STAMP = ".{}.synthetic.json"  # per train file: several formats of one dataset can share a folder


def _safe_name(url: str, fallback: str) -> str:
    name = url.split("?", 1)[0].split("#", 1)[0].rstrip("/").rsplit("/", 1)[-1]
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in name).lstrip(".")
    return name or fallback


def _kind(name: str, fmt: str) -> str:
    """'csv', 'tsv' or 'parquet': the file type the real dataset's file name implies."""
    if fmt == "candle_noheader":
        return "csv"
    base = name.lower().removesuffix(".gz")
    if base.endswith((".parquet", ".pq")):
        return "parquet"
    if base.endswith((".tsv", ".txt", ".tab")):
        return "tsv"
    return "csv"


def _structure(d: int, classes: int, seed: int):
    """What train and val share: per-feature log-means, the signal features and each class's code.

    The signal sits in contiguous blocks of genes (like co-expressed modules), each shifted up or down
    as a whole per class: a small NT3 conv stack picks it up within a few epochs, as it does on the
    real tumour/normal data.
    """
    rng = np.random.default_rng([seed, 0])
    mu = rng.uniform(-1.0, 3.0, d).astype(np.float32)
    block = max(1, min(50, d // 20))
    starts = np.sort(rng.choice(max(1, d // block), size=max(1, min(d // block, 4)), replace=False)) * block
    signal = np.unique(np.concatenate([np.arange(s, min(s + block, d)) for s in starts]))
    block_codes = rng.choice(np.array([-1.5, 1.5], dtype=np.float32), size=(classes, starts.size))
    codes = np.repeat(block_codes, [min(s + block, d) - s for s in starts], axis=1)[:, : signal.size]
    weights = rng.normal(size=signal.size).astype(np.float32) / np.sqrt(signal.size)
    return mu, signal, codes, weights


def _sample(n: int, d: int, classes: int, task: str, seed: int, split_index: int):
    """(X float32 [n, d] >= 0, labels): class indices, or float targets for regression."""
    mu, signal, codes, weights = _structure(d, classes, seed)
    rng = np.random.default_rng([seed, 1 + split_index])
    z = rng.standard_normal((n, d), dtype=np.float32)
    z *= 0.5
    z += mu
    if has_class_labels(task):
        y = rng.permutation(np.arange(n) % classes).astype(np.int64)
        z[:, signal] += codes[y]
    else:
        y = (z[:, signal] - mu[signal]) @ weights + 0.05 * rng.standard_normal(n, dtype=np.float32)
    if task == "survival":  # months to an event whose hazard grows with the signal; a third censored earlier
        from candle_ray import cox

        months = rng.exponential(24.0 * np.exp(-6.0 * y)) + 0.1
        censored = rng.random(n) < 1 / 3
        months[censored] *= rng.uniform(0.1, 1.0, int(censored.sum()))
        y = cox.encode(np.round(months, 2), ~censored)
    # FPKM-UQ-like: exp of a normal, zero where the gene is not expressed, three decimals as printed.
    X = np.round(np.expm1(np.clip(z, 0.0, None)), 3).astype(np.float32)
    return X, y


def _write(path: Path, table: pa.Table, kind: str, header: bool) -> None:
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        if kind == "parquet":
            import pyarrow.parquet as pq

            pq.write_table(table, str(tmp))
        else:
            options = pacsv.WriteOptions(include_header=header, delimiter="\t" if kind == "tsv" else ",",
                                          batch_size=256, quoting_header="none")
            sink = pa.CompressedOutputStream(str(tmp), "gzip") if path.name.endswith(".gz") else pa.OSFile(str(tmp), "wb")
            with sink:
                pacsv.write_csv(table, sink, write_options=options)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _table(ds: Dataset, X: np.ndarray, y: np.ndarray, drop: tuple, label_name: str, offset: int) -> pa.Table:
    n, d = X.shape
    columns: list[tuple[str, pa.Array]] = []
    for i, name in enumerate(drop):
        prefix = "sample" if i == 0 else name
        columns.append((name, pa.array([f"{prefix}_{offset + r:05d}" for r in range(n)])))
    columns += [(f"gene_{j + 1:05d}", pa.array(X[:, j])) for j in range(d)]
    labels = pa.array([f"tumor_type_{int(v)}" for v in y]) if has_class_labels(ds.task) else pa.array(y.astype(np.float32))
    position = ds.label if isinstance(ds.label, int) else len(drop)
    if ds.event:  # survival: months to the event or censoring, then whether the event was seen
        labels = pa.array(np.abs(y).astype(np.float32))
        columns.insert(min(position, len(columns)), (ds.event, pa.array((y > 0).astype(np.int64))))
    columns.insert(min(position, len(columns)), (label_name, labels))
    if ds.group:  # rows in pairs, as a patient's tumour and normal samples; last, so no label index moves
        columns.append((ds.group, pa.array([f"{ds.group}_{(offset + r) // 2:05d}" for r in range(n)])))
    return pa.table(dict(columns))


def synthesize(ds: Dataset | ReaderDataset, out_dir, *, rows=(192, 48), features: int = 1000,
               seed: int = 0) -> Dataset | ReaderDataset:
    """Write deterministic synthetic files in the format of `ds` and return a dataset spec reading them.

    Files go to `<out_dir>/<name>-smoke-<train>x<val>x<features>/` under the real files' names (one folder per
    shape: a smoke and a `--full-space` smoke run of one experiment, or two experiments on one dataset,
    never rewrite each other's files); they are not rewritten when already there with the same parameters. Without a val file in `ds` only a train file (rows[0]
    rows) is written and the split comes from `val_fraction` as usual.
    """
    if isinstance(ds, ReaderDataset):
        return _synthesize_reader(ds, out_dir, rows=rows, features=features, seed=seed)
    if len(rows) != 2 or min(rows) < 2 or features < 1:
        raise UsageError(f"synthesize needs rows=(train, val) of at least 2 each and features >= 1, got rows={rows!r}, features={features!r}")
    classes = ds.classes or 2
    drop = ds.drop
    label_name = ds.label if isinstance(ds.label, str) else "label"
    if ds.format == "table" and not drop:
        drop = ("sample_id",)  # the id column the real tables have must be dropped to read the file
    if ds.format == "table" and label_name in drop:
        raise UsageError(f"dataset {ds.name!r} drops its own label column {label_name!r}; remove it from drop")
    out = Path(out_dir) / f"{ds.name}-smoke-{rows[0]}x{rows[1]}x{features}"  # plain characters: it goes into URLs
    names = {"train": _safe_name(ds.train.url, "train.csv")}
    if ds.val is not None:
        names["val"] = _safe_name(ds.val.url, "val.csv")
        if names["val"] == names["train"]:
            names["val"] = "val_" + names["val"]
    params = {
        "generator": GENERATOR_VERSION, "format": ds.format, "task": ds.task, "label": ds.label, "drop": list(drop),
        "classes": classes, "rows": list(rows), "features": features, "seed": seed, "files": names,
        **({"group": ds.group} if ds.group else {}),  # ungrouped files keep their stamp
    }
    stamp = out / _STAMP.format(names["train"])
    recorded = _read_stamp(stamp)
    if recorded.get("params") == params and all(
        (out / name).is_file() and (out / name).stat().st_size == recorded["bytes"][split] for split, name in names.items()
    ):
        digests = recorded["sha256"]
    else:
        out.mkdir(parents=True, exist_ok=True)
        digests, sizes = {}, {}
        for index, (split, name) in enumerate(names.items()):
            X, y = _sample(rows[index], features, classes, ds.task, seed, index)
            path = out / name
            kind = _kind(name, ds.format)
            if ds.format == "candle_noheader":
                table = pa.Table.from_arrays([pa.array(y)] + [pa.array(X[:, j]) for j in range(features)],
                                             names=[f"c{j}" for j in range(features + 1)])
                _write(path, table, "csv", header=False)
            else:
                _write(path, _table(ds, X, y, drop, label_name, offset=index * rows[0]), kind, header=True)
            digests[split], _, sizes[split] = file_digests(path)
        tmp = stamp.with_name(f"{stamp.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps({"params": params, "sha256": digests, "bytes": sizes}, indent=1))
        os.replace(tmp, stamp)  # written last: its presence means the files are complete
    sources = {split: Source((out / name).absolute().as_uri(), sha256=digests[split]) for split, name in names.items()}
    return replace(ds, name=f"{ds.name}-smoke", train=sources["train"], val=sources.get("val"), drop=tuple(drop), synthetic=True)


def _synthesize_reader(ds: ReaderDataset, out_dir, *, rows, features: int, seed: int) -> ReaderDataset:
    """The reader's synthetic files under the real files' names, written once per parameter set.

    The generator writes into a fresh temporary folder; the files are then renamed into
    `<out_dir>/<name>-smoke-<rows>x<features>/` and a stamp (written last) records their sizes and digests, so an
    interrupted run never leaves a half-written set that a later run would trust.
    """
    from candle_ray.data import registry

    total = int(sum(rows)) if isinstance(rows, (tuple, list)) else int(rows)
    if total < 4 or features < 1:
        raise UsageError(f"synthesize needs at least 4 rows and features >= 1, got rows={rows!r}, features={features!r}")
    out = Path(out_dir) / f"{ds.name}-smoke-{total}x{features}"
    names = {role: _safe_name(src.url, f"{role}.txt") for role, src in ds.sources.items()}
    params = {"generator": GENERATOR_VERSION, "reader": ds.reader, "reader_version": registry.version(ds.reader),
              "options": registry.options(ds.reader, ds.options), "seed": seed, "rows": total,
              "features": features, "files": names}
    stamp = out / _STAMP.format(f"{ds.reader}-reader")
    recorded = _read_stamp(stamp)
    if recorded.get("params") == json.loads(json.dumps(params)) and all(
        (out / name).is_file() and (out / name).stat().st_size == recorded["bytes"][role] for role, name in names.items()
    ):
        digests = recorded["sha256"]
    else:
        out.mkdir(parents=True, exist_ok=True)
        work = out / f".tmp-{os.getpid()}"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir()
        try:
            written = registry.synthesize(ds.reader, work, ds.options, seed, total, features)
            missing = sorted(set(names) - set(written))
            if missing:
                raise UsageError(f"the {ds.reader} synthesizer wrote no file for source role(s) {', '.join(missing)}; "
                                 f"it wrote roles {', '.join(sorted(written))}")
            digests, sizes = {}, {}
            for role, name in names.items():
                os.replace(written[role], out / name)
                digests[role], _, sizes[role] = file_digests(out / name)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        tmp = stamp.with_name(f"{stamp.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps({"params": params, "sha256": digests, "bytes": sizes}, indent=1))
        os.replace(tmp, stamp)  # written last: its presence means the files are complete
    sources = {role: Source((out / name).absolute().as_uri(), sha256=digests[role]) for role, name in names.items()}
    return replace(ds, name=f"{ds.name}-smoke", sources=sources, synthetic=True)


def _read_stamp(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
