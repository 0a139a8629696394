"""Synthetic data in the real formats: shape, format, determinism, reuse, a learnable signal."""

import csv
import hashlib

import numpy as np
import pyarrow.parquet as pq
import pytest

from candle_ray.data.cache import Cache, open_split
from candle_ray.data.formats import read_candle_noheader, read_table
from candle_ray.data.sources import local_path
from candle_ray.data.spec import Dataset, TableDataset
from candle_ray.data.synthetic import synthesize
from candle_ray.errors import UsageError

NT3 = Dataset(
    name="nt3",
    train="http://ftp.mcs.anl.gov/pub/candle/public/benchmarks/Pilot1/normal-tumor/nt_train2.csv",
    val="http://ftp.mcs.anl.gov/pub/candle/public/benchmarks/Pilot1/normal-tumor/nt_test2.csv",
    classes=2,
)


def path_of(source):
    return local_path(source.url)


def nearest_centroid_accuracy(Xt, yt, Xv, yv):
    """A no-training classifier: proves that the class signal is there to be learnt."""
    Xt, Xv = np.log1p(Xt), np.log1p(Xv)
    classes = np.unique(yt)
    centroids = np.stack([Xt[yt == c].mean(axis=0) for c in classes])
    predicted = classes[np.argmin(((Xv[:, None, :] - centroids[None]) ** 2).sum(-1), axis=1)]
    return (predicted == yv).mean()


def test_nt3_format_headerless_integer_label_first_non_negative_features(tmp_path):
    smoke = synthesize(NT3, tmp_path, rows=(60, 20), features=50)
    assert smoke.name == "nt3-smoke" and smoke.synthetic and smoke.format == "candle_noheader"
    train, val = path_of(smoke.train), path_of(smoke.val)
    assert train.name == "nt_train2.csv" and val.name == "nt_test2.csv"
    first = next(csv.reader(open(train)))
    assert len(first) == 51 and first[0] in ("0", "1") and all(float(v) >= 0 for v in first[1:])
    X, y = read_candle_noheader(train)
    assert X.shape == (60, 50) and set(y.tolist()) == {0, 1} and (X >= 0).all() and (X == 0).any()
    assert smoke.train.sha256 == hashlib.sha256(train.read_bytes()).hexdigest()
    assert read_candle_noheader(val)[0].shape == (20, 50)


def test_a_first_line_of_column_positions_is_skipped_not_read_as_a_row_of_class_0(tmp_path):
    smoke = synthesize(NT3, tmp_path, rows=(60, 20), features=50)
    train = path_of(smoke.train)
    X, y = read_candle_noheader(train)
    import pandas as pd

    pd.read_csv(train, header=None).to_csv(tmp_path / "positions.csv", index=False)  # "0,1,...,50" first
    X2, y2 = read_candle_noheader(tmp_path / "positions.csv")
    assert X2.shape == (60, 50) and np.array_equal(X2, X) and np.array_equal(y2, y)


def test_signal_is_learnable(tmp_path):
    smoke = synthesize(NT3, tmp_path)
    Xt, yt = read_candle_noheader(path_of(smoke.train))
    Xv, yv = read_candle_noheader(path_of(smoke.val))
    assert Xt.shape == (192, 1000) and Xv.shape == (48, 1000)
    assert nearest_centroid_accuracy(Xt, yt, Xv, yv) > 0.9


def test_many_classes_use_the_label_range(tmp_path):
    tc1 = Dataset(name="tc1", train="https://x/type_18_300_train.csv", val="https://x/type_18_300_test.csv", classes=36)
    smoke = synthesize(tc1, tmp_path, rows=(72, 36), features=40)
    _, y = read_candle_noheader(path_of(smoke.train))
    assert y.min() == 0 and y.max() == 35 and len(np.unique(y)) == 36


def test_deterministic_and_not_rewritten(tmp_path):
    a = synthesize(NT3, tmp_path / "a", rows=(10, 4), features=8)
    b = synthesize(NT3, tmp_path / "b", rows=(10, 4), features=8)
    assert a.train.sha256 == b.train.sha256 and a.val.sha256 == b.val.sha256
    mtime = path_of(a.train).stat().st_mtime_ns
    again = synthesize(NT3, tmp_path / "a", rows=(10, 4), features=8)
    assert again == a and path_of(a.train).stat().st_mtime_ns == mtime
    other = synthesize(NT3, tmp_path / "a", rows=(10, 4), features=8, seed=1)
    assert other.train.sha256 != a.train.sha256
    assert not list((tmp_path / "a").rglob("*.tmp-*"))


@pytest.mark.parametrize("ext", ["csv", "tsv", "parquet"])
def test_table_formats_with_id_string_labels_and_gene_names(tmp_path, ext):
    ds = TableDataset(f"https://example.org/expression.{ext}", label="cancer_type")
    smoke = synthesize(ds, tmp_path, rows=(30, 10), features=12)
    path = path_of(smoke.train)
    assert path.suffix == f".{ext}" and smoke.val is None and smoke.drop == ("sample_id",)
    if ext == "parquet":
        names = pq.read_schema(path).names
    else:
        names = next(csv.reader(open(path), delimiter="\t" if ext == "tsv" else ","))
    assert names[:3] == ["sample_id", "cancer_type", "gene_00001"] and names[-1] == "gene_00012"
    X, labels, features, _ = read_table(path, "cancer_type", ("sample_id",))
    assert X.shape == (30, 12) and features[0] == "gene_00001"
    assert set(labels.tolist()) == {"tumor_type_0", "tumor_type_1"}
    entry = Cache(tmp_path / "cache").prepare(smoke, log=lambda m: None)
    assert entry.synthetic and entry.manifest["class_names"] == ["tumor_type_0", "tumor_type_1"]
    assert entry.rows == {"train": 27, "val": 3}


def test_table_keeps_declared_drop_columns_and_val_file(tmp_path):
    ds = TableDataset("data/x.csv", label="type", drop=("patient", "site"), val="data/x_val.csv", classes=3)
    smoke = synthesize(ds, tmp_path, rows=(30, 12), features=5)
    header = next(csv.reader(open(path_of(smoke.train))))
    assert header[:3] == ["patient", "site", "type"] and smoke.drop == ("patient", "site")
    entry = Cache(tmp_path / "cache").prepare(smoke, log=lambda m: None)
    assert entry.num_classes == 3 and entry.rows == {"train": 30, "val": 12}
    Xt, yt = open_split(entry.path, "train")
    assert Xt.shape == (30, 5) and set(yt.tolist()) == {0, 1, 2}


def test_regression_writes_numeric_targets(tmp_path):
    ds = TableDataset("y.parquet", label="growth", task="regression")
    smoke = synthesize(ds, tmp_path, rows=(20, 5), features=6)
    _, labels, _, _ = read_table(path_of(smoke.train), "growth", ("sample_id",))
    assert labels.dtype == np.float64 and len(np.unique(labels)) > 10


def test_bad_arguments(tmp_path):
    with pytest.raises(UsageError):
        synthesize(NT3, tmp_path, rows=(1, 4))


def test_each_smoke_shape_has_its_own_files(tmp_path):
    """A smoke and a --full-space smoke run of one experiment (or two experiments on one dataset) write
    different widths: neither rewrites the other's files, so both stay true to their checksums."""
    narrow = synthesize(NT3, tmp_path, rows=(30, 10), features=20)
    wide = synthesize(NT3, tmp_path, rows=(30, 10), features=40)
    assert path_of(narrow.train).parent != path_of(wide.train).parent and narrow.name == wide.name == "nt3-smoke"
    for smoke in (narrow, wide):
        assert smoke.train.sha256 == hashlib.sha256(path_of(smoke.train).read_bytes()).hexdigest()
