"""The Arrow cache: prepare, fingerprint, validation rules, manifest, open_split, verify, locking."""

import json
import multiprocessing
import os

import numpy as np
import pyarrow as pa
import pytest

from candle_ray.data.cache import Cache, open_split, verify
from candle_ray.data.cache_format import DEFAULT_REBUILD, FORMAT_VERSION, Entry, fingerprint, named
from candle_ray.data.spec import Dataset, Source, TableDataset
from candle_ray.errors import CacheError, DataError, UsageError


# ----------------------------------------------------------------------------- helpers
def write_noheader(path, X, y):
    """CANDLE's format written by hand (independent of the synthetic generator)."""
    with open(path, "w") as f:
        for label, row in zip(y, X):
            f.write(",".join([str(label)] + [repr(float(v)) for v in row]) + "\n")
    return path


def write_csv(path, header, rows, sep=","):
    with open(path, "w") as f:
        f.write(sep.join(header) + "\n")
        for row in rows:
            f.write(sep.join(str(v) for v in row) + "\n")
    return path


def data(n, d, seed=0, classes=2):
    rng = np.random.default_rng(seed)
    X = rng.uniform(0, 10, size=(n, d)).astype(np.float32)
    X[:, 0] = np.arange(n)  # a row id, to follow rows through shuffles
    y = np.arange(n) % classes
    return X, y


@pytest.fixture
def nt3(tmp_path):
    """A small NT3-format dataset: train 12 x 5 features, val 6 x 5."""
    Xt, yt = data(12, 5)
    Xv, yv = data(6, 5, seed=1)
    Xv[:, 0] += 100
    train = write_noheader(tmp_path / "nt_train2.csv", Xt, yt)
    val = write_noheader(tmp_path / "nt_test2.csv", Xv, yv)
    ds = Dataset(name="nt3", train=train.as_uri(), val=val.as_uri(), classes=2)
    return ds, (Xt, yt, Xv, yv)


def quiet(message):
    pass


def one_line(error) -> str:
    message = str(error.value)
    assert "\n" not in message, message
    return message


def listing(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


# ----------------------------------------------------------------------------- prepare / open_split
def test_prepare_writes_entry_with_one_tensor_column_and_manifest(tmp_path, nt3):
    ds, (Xt, yt, Xv, yv) = nt3
    cache = Cache(tmp_path / "cache")
    entry = cache.prepare(ds, rebuild_hint="candle-ray data prepare experiments/nt3.py --force", log=quiet)
    assert isinstance(entry, Entry)
    assert entry.path == tmp_path / "cache" / "datasets" / f"nt3-{fingerprint(ds)}"
    assert sorted(p.name for p in entry.path.iterdir()) == ["manifest.json", "scaler.json", "train.arrow", "val.arrow"]
    assert (entry.name, entry.num_features, entry.num_classes, entry.rows, entry.synthetic) == ("nt3", 5, 2, {"train": 12, "val": 6}, False)

    with pa.memory_map(str(entry.path / "train.arrow")) as source:
        reader = pa.ipc.open_file(source)
        assert reader.schema.field("x").type == pa.list_(pa.float32(), 5)
        assert reader.schema.field("y").type == pa.int64()
        assert reader.num_record_batches == 1

    m = json.loads((entry.path / "manifest.json").read_text())
    assert m["format_version"] == FORMAT_VERSION and m["fingerprint"] == fingerprint(ds)
    assert m["task"] == "classification" and m["class_names"] is None and m["feature_names"] is None
    assert m["sources"]["train"]["url"] == ds.train.url and m["sources"]["train"]["bytes"] == os.path.getsize(ds.train.url[7:])
    assert m["sources"]["train"]["download"] is None  # a local source is not copied into the cache
    assert m["preprocessing"]["scaling"] == "maxabs" and m["preprocessing"]["scaling_fit"] == "train+val"
    assert m["splits"]["val"]["rows"] == 6 and m["splits"]["val"]["bytes"] == os.path.getsize(entry.path / "val.arrow")
    assert m["rebuild"] == "candle-ray data prepare experiments/nt3.py --force"
    assert m["created"].endswith("+00:00")

    # maxabs fitted on train+val concatenated (CANDLE's transductive rule).
    scale = np.abs(np.concatenate([Xt, Xv])).max(axis=0)
    X, y = open_split(entry.path, "train")
    np.testing.assert_allclose(X, Xt / scale, rtol=1e-6)
    np.testing.assert_array_equal(y, yt)
    X, y = open_split(entry.path, "val")
    np.testing.assert_allclose(X, Xv / scale, rtol=1e-6)
    assert json.loads((entry.path / "scaler.json").read_text())["scale"] == pytest.approx(scale.tolist())


def test_open_split_is_a_read_only_zero_copy_view(tmp_path, nt3):
    entry = Cache(tmp_path / "c").prepare(nt3[0], log=quiet)
    X, y = open_split(entry.path, "train")
    assert X.dtype == np.float32 and X.shape == (12, 5) and y.dtype == np.int64
    assert not X.flags.writeable and not X.flags.owndata and X.flags.c_contiguous
    np.testing.assert_array_equal(open_split(entry, "train")[0], X)  # an Entry works as the path
    with pytest.raises(CacheError) as error:
        open_split(entry.path, "test")
    assert "has no split 'test'" in one_line(error)


def test_scaling_fit_on_train_only(tmp_path, nt3):
    ds, (Xt, _, Xv, _) = nt3
    from dataclasses import replace

    entry = Cache(tmp_path / "c").prepare(replace(ds, scaling_fit="train", scaling="minmax"), log=quiet)
    low, high = Xt.min(axis=0), Xt.max(axis=0)
    X, _ = open_split(entry.path, "val")
    np.testing.assert_allclose(X, (Xv - low) / (high - low), rtol=1e-5)


def test_prepare_is_idempotent_and_does_no_work_the_second_time(tmp_path, nt3, monkeypatch):
    cache = Cache(tmp_path / "c")
    first = cache.prepare(nt3[0], log=quiet)
    stat = (first.path / "train.arrow").stat()
    monkeypatch.setattr("candle_ray.data.sources.fetch", lambda *a, **k: pytest.fail("second prepare fetched"))
    lines = []
    second = cache.prepare(nt3[0], log=lines.append)
    assert second.manifest == first.manifest
    assert (first.path / "train.arrow").stat().st_ino == stat.st_ino
    assert (first.path / "train.arrow").stat().st_mtime_ns == stat.st_mtime_ns
    assert any("already prepared" in line for line in lines)


def test_force_rebuilds_in_place_and_leaves_nothing_behind(tmp_path, nt3):
    cache = Cache(tmp_path / "c")
    first = cache.prepare(nt3[0], log=quiet)
    inode = (first.path / "train.arrow").stat().st_ino
    X_before, _ = open_split(first.path, "train")  # a reader holding the old files keeps valid data
    again = cache.prepare(nt3[0], force=True, log=quiet)
    assert again.path == first.path and again.manifest["created"] != first.manifest["created"]
    assert (again.path / "train.arrow").stat().st_ino != inode
    assert [p.name for p in (tmp_path / "c" / "datasets").iterdir()] == [first.path.name]
    np.testing.assert_array_equal(X_before, open_split(again.path, "train")[0])


def test_leftovers_of_a_crashed_preparer_are_removed(tmp_path, nt3):
    cache = Cache(tmp_path / "c")
    key = f"nt3-{fingerprint(nt3[0])}"
    stale = cache.datasets / f".tmp-{key}-999999"
    stale.mkdir(parents=True)
    (stale / "train.arrow").write_bytes(b"half")
    cache.prepare(nt3[0], log=quiet)
    assert sorted(p.name for p in cache.datasets.iterdir()) == [key]


def test_lookup_and_entries(tmp_path, nt3):
    from dataclasses import replace

    cache = Cache(tmp_path / "c")
    assert cache.lookup(nt3[0]) is None and cache.entries() == []
    a = cache.prepare(nt3[0], log=quiet)
    b = cache.prepare(replace(nt3[0], name="another", scaling="std"), log=quiet)
    assert cache.lookup(nt3[0]).path == a.path
    assert [e.path for e in cache.entries()] == sorted([a.path, b.path])


def test_val_split_from_fraction_is_a_seeded_shuffle(tmp_path):
    X, y = data(40, 3)
    train = write_noheader(tmp_path / "all.csv", X, y.astype(float) / 3)
    ds = Dataset(name="frac", train=str(train), scaling="none", val_fraction=0.25, seed=7, task="regression")
    entry = Cache(tmp_path / "c").prepare(ds, log=quiet)
    assert entry.rows == {"train": 30, "val": 10}
    assert entry.manifest["preprocessing"]["val_fraction"] == 0.25 and "val" not in entry.manifest["sources"]
    Xt, yt = open_split(entry.path, "train")
    Xv, yv = open_split(entry.path, "val")
    order = np.random.default_rng(7).permutation(40)
    np.testing.assert_array_equal(Xt[:, 0], order[:30])
    np.testing.assert_array_equal(Xv[:, 0], order[30:])
    np.testing.assert_allclose(yv, (y[order[30:]] / 3).astype(np.float32))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_classifiers_val_split_from_fraction_is_stratified(tmp_path, seed):
    """Khan-like: 63 rows of 4 uneven classes (8 to 23 rows), 20 % held out: each class's share of val is its
    share of the rows, and every class keeps train rows (a plain shuffle held out 0 to 6 of the rarest's 8)."""
    y = np.repeat([0, 1, 2, 3], [23, 20, 12, 8])
    X = np.column_stack([np.arange(63), np.ones(63)]).astype(np.float32)
    path = write_noheader(tmp_path / "all.csv", X, y)
    ds = Dataset(name="khanlike", train=str(path), scaling="none", val_fraction=0.2, seed=seed)
    entry = Cache(tmp_path / "c").prepare(ds, log=quiet)
    (Xt, yt), (Xv, yv) = open_split(entry.path, "train"), open_split(entry.path, "val")
    assert entry.rows == {"train": 50, "val": 13} and sorted(np.concatenate([Xt[:, 0], Xv[:, 0]])) == list(range(63))
    assert np.bincount(yv, minlength=4).tolist() == [5, 4, 2, 2]  # 4.6, 4.1, 2.5, 1.6 by largest remainders
    assert np.bincount(yt, minlength=4).tolist() == [18, 16, 10, 6]
    assert np.array_equal(y[Xv[:, 0].astype(int)], yv)  # rows keep their labels
    again = Cache(tmp_path / "d").prepare(ds, log=quiet)
    assert np.array_equal(open_split(again.path, "val")[0], Xv)  # seeded
    from candle_ray.data.cache import stratified_holdout

    order, n_val = stratified_holdout(np.array([0, 0, 0, 1, 2, 3]), 3, seed)  # one-row classes keep theirs
    assert n_val == 2 and sorted(order) == list(range(6)) and set(order[-2:]) < {0, 1, 2}


def test_regression_targets_are_float32(tmp_path):
    X, _ = data(10, 3)
    path = tmp_path / "r.csv"
    with open(path, "w") as f:
        for i, row in enumerate(X):
            f.write(",".join([str(i * 0.5)] + [str(v) for v in row]) + "\n")
    entry = Cache(tmp_path / "c").prepare(Dataset(name="reg", train=str(path), task="regression", val_fraction=0.2), log=quiet)
    _, y = open_split(entry.path, "train")
    assert y.dtype == np.float32 and entry.num_classes is None


def test_feature_subsample_keeps_the_first_columns(tmp_path, nt3):
    from dataclasses import replace

    entry = Cache(tmp_path / "c").prepare(replace(nt3[0], feature_subsample=3, scaling="none"), log=quiet)
    X, _ = open_split(entry.path, "train")
    np.testing.assert_allclose(X, nt3[1][0][:, :3], rtol=1e-6)


# ----------------------------------------------------------------------------- table format
def test_table_with_string_labels_maps_sorted_names_to_indices(tmp_path):
    header = ["sample", "cancer_type", "g1", "g2"]
    names = ["lung", "breast", "colon", "lung", "breast", "colon", "lung", "breast"]
    rows = [[f"s{i}", name, i, i * 2.5] for i, name in enumerate(names)]
    path = write_csv(tmp_path / "expr.csv", header, rows)
    val = write_csv(tmp_path / "expr_val.csv", header, [["v0", "colon", 1, 1], ["v1", "lung", 2, 2]])
    ds = TableDataset(str(path), label="cancer_type", drop=("sample",), val=str(val))
    entry = Cache(tmp_path / "c").prepare(ds, log=quiet)
    assert entry.manifest["class_names"] == ["breast", "colon", "lung"] and entry.num_classes == 3
    assert entry.manifest["feature_names"] == ["g1", "g2"]
    _, y = open_split(entry.path, "train")
    np.testing.assert_array_equal(y, [2, 0, 1, 2, 0, 1, 2, 0])
    np.testing.assert_array_equal(open_split(entry.path, "val")[1], [1, 2])


def test_table_tsv_and_parquet(tmp_path):
    import pyarrow.parquet as pq

    header = ["id", "y", "a", "b"]
    rows = [[f"r{i}", i % 2, float(i), 1.0] for i in range(10)]
    tsv = write_csv(tmp_path / "m.tsv", header, rows, sep="\t")
    table = pa.table({"id": [r[0] for r in rows], "y": [r[1] for r in rows], "a": [r[2] for r in rows], "b": [r[3] for r in rows]})
    pq.write_table(table, tmp_path / "m.parquet")
    cache = Cache(tmp_path / "c")
    for path in (tsv, tmp_path / "m.parquet"):
        entry = cache.prepare(TableDataset(str(path), label="y", drop=("id",), scaling="none", val_fraction=0.2), log=quiet)
        assert entry.num_features == 2 and entry.num_classes == 2 and entry.manifest["class_names"] is None
        X, _ = open_split(entry.path, "train")
        assert sorted(X[:, 0].tolist() + open_split(entry.path, "val")[0][:, 0].tolist()) == [float(i) for i in range(10)]


def test_table_missing_label_suggests_close_matches(tmp_path):
    path = write_csv(tmp_path / "t.csv", ["id", "cancer_type", "g1"], [["a", "x", 1], ["b", "y", 2]])
    with pytest.raises(DataError) as error:
        Cache(tmp_path / "c").prepare(TableDataset(str(path), label="cancer_typ", drop=("id",)), log=quiet)
    assert "'cancer_typ'" in one_line(error) and "did you mean 'cancer_type'" in str(error.value)


@pytest.mark.parametrize("task, missing", [("classification", ""), ("classification", "NA"), ("regression", ""),
                                           ("regression", " nan ")])
def test_a_row_without_a_label_is_refused(tmp_path, task, missing):
    """An empty label cell was a class of its own ("") and made a regression column 'not numbers'."""
    labels = ["x", "y", missing, "x", "y"] if task == "classification" else ["0.5", "1.5", "2.5", missing, "0.1"]
    path = write_csv(tmp_path / "t.csv", ["id", "label", "g1"], [[f"r{i}", v, i] for i, v in enumerate(labels)])
    with pytest.raises(DataError) as error:
        Cache(tmp_path / "c").prepare(TableDataset(str(path), label="label", drop=("id",), task=task), log=quiet)
    row = labels.index(missing)
    assert f"label column 'label' of {path} is empty at data row {row + 1} (1 of 5 rows have no label)" in one_line(error)


def test_a_numeric_target_without_task_regression_is_refused(tmp_path):
    """A drug response column under the default task: each value would be a class of one row."""
    path = write_csv(tmp_path / "t.csv", ["id", "ln_ic50", "g1"], [[f"r{i}", 0.25 + i / 3, i] for i in range(20)])
    with pytest.raises(DataError) as error:
        Cache(tmp_path / "c").prepare(TableDataset(str(path), label="ln_ic50", drop=("id",)), log=quiet)
    assert "are numbers that are not whole (e.g. 0.25, 0.583333, 0.916667), and task='classification'" in str(error.value)
    assert "pass task='regression'" in str(error.value)


def test_labels_that_leave_a_class_out_are_noted(tmp_path):
    """Integer labels are class indices, as in CANDLE's files: Khan's own coding 1..4 makes 5 outputs. A class
    with val rows only cannot be learnt."""
    path = write_csv(tmp_path / "t.csv", ["id", "label", "g1"], [[f"r{i}", 1 + i % 4, i] for i in range(12)])
    said = []
    entry = Cache(tmp_path / "c").prepare(TableDataset(str(path), label="label", drop=("id",), val_fraction=0.34),
                                          log=said.append)
    assert entry.num_classes == 5 and [line for line in said if line.startswith("note:")] == [
        "note: integer labels are class indices 0..4; class(es) 0 have no rows, and the model will still have an "
        "output for them; relabel from 0, or give the labels as names"]
    zero_based = write_csv(tmp_path / "z.csv", ["id", "label", "g1"], [[f"r{i}", i % 4, i] for i in range(12)])
    said.clear()
    Cache(tmp_path / "c").prepare(TableDataset(str(zero_based), label="label", drop=("id",), val_fraction=0.34),
                                  log=said.append)
    assert said and not [line for line in said if line.startswith("note:")]  # a val row of every class
    said.clear()
    Cache(tmp_path / "c").prepare(TableDataset(str(zero_based), label="label", drop=("id",), val_fraction=0.25),
                                  log=said.append)
    assert [line for line in said if line.startswith("note:")] == [
        "note: the val rows hold no row of class(es) 3 (3 of 4 classes): val_loss and val_accuracy cannot say how the "
        "model tells those apart, and a sweep chooses without them; raise val_fraction"]
    val = write_csv(tmp_path / "v.csv", ["id", "label", "g1"], [["v0", "z", 0], ["v1", "a", 1], ["v2", "z", 2]])
    train = write_csv(tmp_path / "tr.csv", ["id", "label", "g1"], [[f"r{i}", "ab"[i % 2], i] for i in range(6)])
    said.clear()
    Cache(tmp_path / "c").prepare(TableDataset(str(train), label="label", drop=("id",), val=str(val)), log=said.append)
    assert [line for line in said if line.startswith("note:")] == [
        "note: class(es) 'z' have 2 val row(s) but no train rows: the model cannot learn them, and those rows count "
        "against it",
        "note: the val rows hold no row of class(es) 'b' (2 of 3 classes): val_loss and val_accuracy cannot say how "
        "the model tells those apart, and a sweep chooses without them; add rows of those classes to the val file"]


def test_table_non_numeric_feature_names_the_column(tmp_path):
    path = write_csv(tmp_path / "t.csv", ["id", "label", "g1"], [["a", 0, 1], ["b", 1, 2]])
    with pytest.raises(DataError) as error:
        Cache(tmp_path / "c").prepare(TableDataset(str(path), label="label"), log=quiet)
    assert "'id'" in one_line(error) and "drop" in str(error.value)


def test_table_more_names_than_classes(tmp_path):
    path = write_csv(tmp_path / "t.csv", ["label", "g1"], [["a", 1], ["b", 2], ["c", 3], ["a", 4]])
    with pytest.raises(DataError) as error:
        Cache(tmp_path / "c").prepare(TableDataset(str(path), label="label", classes=2, val_fraction=0.5), log=quiet)
    assert "3 distinct labels" in one_line(error) and "classes=2" in str(error.value)


# ----------------------------------------------------------------------------- validation rules
@pytest.mark.parametrize("bad,kind", [(float("nan"), "NaN"), (float("inf"), "inf"), (float("-inf"), "inf")])
def test_non_finite_features_name_split_row_and_column(tmp_path, nt3, bad, kind):
    ds, (Xt, yt, Xv, yv) = nt3
    Xv = Xv.copy()
    Xv[3, 2] = bad
    write_noheader(ds.val.url[7:], Xv, yv)
    with pytest.raises(DataError) as error:
        Cache(tmp_path / "c").prepare(ds, log=quiet)
    message = one_line(error)
    # counted from 1, as a person counts the file's data rows: the 4th row, its 3rd feature
    assert kind in message and "val" in message and "data row 4, feature 3" in message and "impute" in message


def test_empty_cell_is_nan(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("0,1.0,2.0\n1,,3.0\n0,1.0,2.0\n1,1.0,2.0\n")
    with pytest.raises(DataError, match=r"NaN at data row 2, feature 1"):
        Cache(tmp_path / "c").prepare(Dataset(name="t", train=str(path), val=str(path)), log=quiet)


def test_label_out_of_range_for_classes(tmp_path, nt3):
    ds, (Xt, yt, Xv, yv) = nt3
    yt = yt.copy()
    yt[4] = 5
    write_noheader(ds.train.url[7:], Xt, yt)
    with pytest.raises(DataError) as error:
        Cache(tmp_path / "c").prepare(ds, log=quiet)
    message = one_line(error)
    assert "label 5" in message and "data row 5" in message and "classes=2" in message and "[0, 2)" in message


def test_negative_label_without_classes(tmp_path, nt3):
    from dataclasses import replace

    ds, (Xt, yt, Xv, yv) = nt3
    write_noheader(ds.val.url[7:], Xv, np.where(np.arange(len(yv)) == 1, -1, yv))
    with pytest.raises(DataError, match="label -1 at data row 2"):
        Cache(tmp_path / "c").prepare(replace(ds, classes=None), log=quiet)


def test_classes_inferred_from_labels(tmp_path, nt3):
    from dataclasses import replace

    entry = Cache(tmp_path / "c").prepare(replace(nt3[0], classes=None), log=quiet)
    assert entry.num_classes == 2


def test_non_integer_label_in_candle_format(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("0,1.0\n0.5,2.0\n")
    with pytest.raises(DataError) as error:
        Cache(tmp_path / "c").prepare(Dataset(name="t", train=str(path), val=str(path)), log=quiet)
    assert "non-integer label 0.5 at data row 2" in one_line(error)


def test_non_numeric_cell_in_candle_format(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("0,1.0,2.0\n1,abc,2.0\n")
    with pytest.raises(DataError) as error:
        Cache(tmp_path / "c").prepare(Dataset(name="t", train=str(path), val=str(path)), log=quiet)
    assert "abc" in one_line(error) and "in column 1" in str(error.value)


def test_feature_count_mismatch_names_both_counts(tmp_path, nt3):
    ds, (Xt, yt, Xv, yv) = nt3
    write_noheader(ds.val.url[7:], Xv[:, :4], yv)
    with pytest.raises(DataError) as error:
        Cache(tmp_path / "c").prepare(ds, log=quiet)
    message = one_line(error)
    assert "train has 5 features but val has 4" in message


@pytest.mark.parametrize("where", ["val file", "fraction"])
def test_a_split_needs_two_rows(tmp_path, nt3, where):
    ds, (Xt, yt, Xv, yv) = nt3
    if where == "val file":
        write_noheader(ds.val.url[7:], Xv[:1], yv[:1])
    else:
        from dataclasses import replace

        ds = replace(ds, val=None, val_fraction=0.05)  # 12 rows x 0.05 -> 1 val row
    with pytest.raises(DataError) as error:
        Cache(tmp_path / "c").prepare(ds, log=quiet)
    assert "val split" in one_line(error) and "1 row" in str(error.value)


def test_nothing_is_left_behind_after_a_failed_prepare(tmp_path, nt3):
    ds, (Xt, yt, Xv, yv) = nt3
    Xv = Xv.copy()
    Xv[0, 0] = np.nan
    write_noheader(ds.val.url[7:], Xv, yv)
    cache = Cache(tmp_path / "c")
    with pytest.raises(DataError):
        cache.prepare(ds, log=quiet)
    assert list(cache.datasets.iterdir()) == []


def test_missing_source_is_a_download_error(tmp_path):
    from candle_ray.errors import DownloadError

    with pytest.raises(DownloadError):
        Cache(tmp_path / "c").prepare(Dataset(name="x", train=str(tmp_path / "missing.csv")), log=quiet)


# ----------------------------------------------------------------------------- fingerprint
def test_fingerprint_is_stable_and_sensitive_to_what_matters(tmp_path, nt3):
    from dataclasses import replace

    ds = nt3[0]
    fp = fingerprint(ds)
    assert len(fp) == 16 and int(fp, 16) >= 0 and fingerprint(ds) == fp
    assert fingerprint(replace(ds, scaling="std")) != fp
    assert fingerprint(replace(ds, classes=3)) != fp
    assert fingerprint(replace(ds, val_fraction=0.3, seed=1)) == fp  # no effect when val is a file
    assert fingerprint(replace(ds, val=None)) != fingerprint(replace(ds, val=None, seed=1))
    path = ds.train.url[7:]
    with open(path, "a") as f:
        f.write("1,1,1,1,1,1\n")
    assert fingerprint(ds) != fp  # a local source without checksum is identified by its content


def test_fingerprint_uses_declared_checksums_without_reading(tmp_path):
    ds = Dataset(name="x", train=Source("file:///does/not/exist.csv", sha256="a" * 64))
    assert fingerprint(ds) == fingerprint(Dataset(name="x", train=Source("https://elsewhere/exist.csv", sha256="A" * 64)))
    assert fingerprint(Dataset(name="x", train="https://a/b.csv")) != fingerprint(Dataset(name="x", train="https://a/c.csv"))


# ----------------------------------------------------------------------------- corruption / verify
def test_truncated_split_is_caught_by_open_split_with_the_rebuild_command(tmp_path, nt3):
    entry = Cache(tmp_path / "c").prepare(nt3[0], rebuild_hint="candle-ray data prepare exp.py --force", log=quiet)
    path = entry.path / "train.arrow"
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size - 10)
    with pytest.raises(CacheError) as error:
        open_split(entry.path, "train")
    message = one_line(error)
    assert f"cache entry {entry.path} is corrupt" in message and "rebuild it with: candle-ray data prepare exp.py --force" in message
    with pytest.raises(CacheError):
        verify(entry)


def test_flipped_byte_passes_the_quick_check_and_fails_verify(tmp_path, nt3):
    entry = Cache(tmp_path / "c").prepare(nt3[0], log=quiet)
    verify(entry)
    path = entry.path / "val.arrow"
    X, _ = open_split(entry.path, "val")
    raw = bytearray(path.read_bytes())
    position = raw.find(X[2].tobytes())  # inside the feature values, so the Arrow structure stays valid
    assert position > 0
    raw[position + 1] ^= 0xFF
    path.write_bytes(bytes(raw))
    open_split(entry.path, "val")  # same size, same schema: the hot path does not hash
    with pytest.raises(CacheError) as error:
        Cache(tmp_path / "c").verify(entry)
    message = one_line(error)
    assert "val.arrow has sha256" in message and DEFAULT_REBUILD in message


def test_missing_manifest_and_wrong_format_version(tmp_path, nt3):
    entry = Cache(tmp_path / "c").prepare(nt3[0], log=quiet)
    manifest = json.loads((entry.path / "manifest.json").read_text())
    manifest["format_version"] = 999
    (entry.path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CacheError, match="format version 999"):
        open_split(entry.path, "train")
    (entry.path / "manifest.json").unlink()
    with pytest.raises(CacheError, match="no manifest.json"):
        open_split(entry.path, "train")


def test_schema_mismatch_is_corruption(tmp_path, nt3):
    entry = Cache(tmp_path / "c").prepare(nt3[0], log=quiet)
    manifest = json.loads((entry.path / "manifest.json").read_text())
    manifest["num_features"] = 6
    (entry.path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CacheError, match="schema"):
        open_split(entry.path, "train")


def test_s3_root_is_refused():
    with pytest.raises(UsageError, match="not a local path"):
        Cache("s3://bucket/cache")


# ----------------------------------------------------------------------------- concurrency
def _prepare_in_child(root, ds, barrier):
    lines = []
    barrier.wait()
    entry = Cache(root).prepare(ds, log=lines.append)
    return str(entry.path), entry.manifest["created"], lines


def _worker(root, ds, barrier, results):
    results.put(_prepare_in_child(root, ds, barrier))


def test_concurrent_prepare_from_two_processes_builds_once(tmp_path, nt3):
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(2), context.Queue()
    root = tmp_path / "c"
    workers = [context.Process(target=_worker, args=(root, nt3[0], barrier, results)) for _ in range(2)]
    for w in workers:
        w.start()
    got = [results.get(timeout=120) for _ in workers]
    for w in workers:
        w.join(timeout=60)
        assert w.exitcode == 0
    assert got[0][0] == got[1][0] and got[0][1] == got[1][1], "both must get the same, single build"
    built = [any(line.startswith("prepared ") for line in lines) for _, _, lines in got]
    assert sorted(built) == [False, True]
    assert listing(root / "datasets") == sorted(
        [f"nt3-{fingerprint(nt3[0])}"] + [f"nt3-{fingerprint(nt3[0])}/{n}" for n in ("manifest.json", "scaler.json", "train.arrow", "val.arrow")]
    )
    assert not list(root.rglob("*.part-*")) and not list(root.rglob(".tmp-*"))


def test_a_split_file_of_several_record_batches_is_still_readable(tmp_path, nt3):
    """Files this module writes hold one batch (zero-copy); others with several batches load with one copy."""
    from candle_ray.data.feed import StreamFeed

    entry = Cache(tmp_path / "c").prepare(nt3[0], log=quiet)
    X, y = (a.copy() for a in open_split(entry.path, "train"))
    path = entry.path / "train.arrow"
    with pa.memory_map(str(path)) as source:
        table = pa.ipc.open_file(source).read_all()
    rewritten = tmp_path / "several.arrow"  # not in place: `table` still maps the original file
    with pa.OSFile(str(rewritten), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        for batch in table.to_batches(max_chunksize=5):
            writer.write_batch(batch)
    os.replace(rewritten, path)
    manifest = json.loads((entry.path / "manifest.json").read_text())
    manifest["splits"]["train"]["bytes"] = path.stat().st_size
    (entry.path / "manifest.json").write_text(json.dumps(manifest))
    X2, y2 = open_split(entry.path, "train")
    np.testing.assert_array_equal(X2, X)
    np.testing.assert_array_equal(y2, y)
    streamed = StreamFeed(path, 4, shuffle=False, chunk_rows=3)
    rows = np.concatenate([xb.numpy() for xb, _ in streamed.epoch(0)])
    np.testing.assert_array_equal(rows, X)


def test_val_columns_in_another_order_are_aligned_to_train_and_other_columns_refused():
    from candle_ray.data.cache import _align

    want = [f"g{i}" for i in range(5)]
    have = want[::-1]
    X = np.arange(10, dtype=np.float32).reshape(2, 5)  # column j holds have[j]'s values
    aligned = _align(X, have, want, "val.csv")
    assert np.array_equal(aligned, X[:, ::-1])  # train's order
    with pytest.raises(DataError, match=r"feature columns of val.csv differ from train's .*missing \['g0'\]"):
        _align(X, ["x", *have[:-1]], want, "val.csv")
    with pytest.raises(DataError, match=r"extra \['x'\]"):
        _align(np.zeros((2, 6)), [*have, "x"], want, "val.csv")


# ----------------------------------------------------------------------------- removing entries and downloads
@pytest.fixture
def served(tmp_path, nt3):
    """nt3's files over HTTP (a real server on 127.0.0.1): its entries are built from downloads."""
    from dataclasses import replace

    from tests.support.http_server import serve_directory

    with serve_directory(tmp_path) as url:
        yield replace(nt3[0], train=Source(f"{url}/nt_train2.csv"), val=Source(f"{url}/nt_test2.csv"))


def test_removing_an_entry_frees_the_downloads_no_other_entry_was_built_from(tmp_path, served):
    from dataclasses import replace

    cache = Cache(tmp_path / "c")
    a = cache.prepare(served, log=quiet)
    b = cache.prepare(replace(served, scaling="std"), log=quiet)  # another entry of the same downloads
    other = cache.prepare(replace(served, name="other"), log=quiet)  # its own downloads
    with pytest.raises(UsageError, match=r"2 cache entries match 'nt3' \(nt3-\w+, nt3-\w+\); pass one of them"):
        named(cache.entries(), "nt3")
    assert named(cache.entries(), f"nt3-{a.fingerprint[:3]}") == a
    X_read, _ = open_split(a.path, "train")
    expected = X_read.copy()
    files = sum(f.stat().st_size for f in a.path.iterdir())
    assert cache.remove(a, log=quiet) == files and cache.lookup(served) is None
    np.testing.assert_array_equal(X_read, expected)  # a reader of the removed entry keeps its data
    assert cache.remove(a, log=quiet) == 0  # gone already
    assert cache.drop_downloads([a.manifest], log=quiet) == 0  # b was built from them too
    own = [p for p in (cache.downloads / "other").iterdir()]
    assert {p.name for p in own} == {"nt_train2.csv", "nt_train2.csv.sha256", "nt_test2.csv", "nt_test2.csv.sha256"}
    own_bytes = sum(p.stat().st_size for p in own)
    cache.remove(other, log=quiet)
    assert cache.drop_downloads([other.manifest], log=quiet) == own_bytes > 0
    assert not (cache.downloads / "other").exists() and (cache.downloads / "nt3" / "nt_train2.csv").is_file()
    assert [p.name for p in cache.datasets.iterdir()] == [b.path.name]  # nothing set aside is left
    again = cache.prepare(served, log=quiet)  # from the kept downloads, as before
    assert again.path == a.path and again.manifest["splits"] == a.manifest["splits"]


def test_downloads_stay_while_an_entry_cannot_be_read(tmp_path, served):
    from dataclasses import replace

    cache = Cache(tmp_path / "c")
    a = cache.prepare(served, log=quiet)
    b = cache.prepare(replace(served, name="other"), log=quiet)
    (b.path / "manifest.json").write_text("{")
    said = []
    cache.remove(a, log=quiet)
    assert cache.drop_downloads([a.manifest], log=said.append) == 0 and (cache.downloads / "nt3").is_dir()
    assert said == ["kept the downloads: 1 cache entry cannot be read and may use them (`candle-ray data verify` "
                    "names the problem)"]
