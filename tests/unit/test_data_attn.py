"""ATTN reader: CANDLE's top_21_1fold_*.h5 (pandas HDFStore) into de-duplicated feature tables + index rows."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from candle_ray.data.benchmarks import attn
from candle_ray.errors import DataError, UsageError

RNA = {"A": [1.0, 2.0, 3.0], "B": [4.0, 5.0, 6.0], "C": [7.0, 8.0, 9.0]}
DESC = {"d1": [0.1, 0.2], "d2": [0.3, 0.4]}


def split_rows(pairs, auc):
    """(x_0 frame, x_1 frame, y frame) of rows (Sample, Drug1), as Uno's exporter writes them."""
    x0 = pd.DataFrame(np.array([RNA[s] for s, _ in pairs], dtype=np.float32))
    x1 = pd.DataFrame(np.array([DESC[d] for _, d in pairs], dtype=np.float32))
    x0.columns, x1.columns = [""] * x0.shape[1], [""] * x1.shape[1]
    y = pd.DataFrame({"AUC": np.array(auc, dtype=np.float32), "Sample": [s for s, _ in pairs],
                      "Drug1": [d for _, d in pairs]})
    return x0, x1, y


TINY = {
    "train": split_rows([("A", "d1"), ("B", "d1"), ("A", "d2"), ("C", "d2")], [0, 1, 0, 0]),
    "val": split_rows([("B", "d2"), ("C", "d1")], [1, 0]),
    "test": split_rows([("A", "d1")], [0]),
}


def write(path, splits=TINY, fmt="table", drop=(), edit=None):
    """Write `splits` as an HDFStore; `drop` leaves tables out, `edit(key, frame)` changes one before writing."""
    with pd.HDFStore(str(path), mode="w") as store:
        for split, frames in splits.items():
            for key, frame in zip((f"x_{split}_0", f"x_{split}_1", f"y_{split}"), frames):
                if key in drop:
                    continue
                frame = edit(key, frame.copy()) if edit else frame.copy()
                if fmt == "table":
                    store.append(key, frame, format="table")
                else:  # the fixed format needs unique column names
                    frame.columns = [f"c{j}" for j in range(frame.shape[1])] if key.startswith("x_") else frame.columns
                    store.put(key, frame, format="fixed", track_times=False)
    return {"h5": Path(path)}


def features(jt, split):
    """The model input rows the joined tables stand for: concat of the slot tables' rows."""
    rows = jt.splits[split]
    return np.concatenate([jt.tables[s.table].values[rows[s.key].to_numpy()] for s in jt.slots], axis=1)


def test_rows_become_indices_into_deduplicated_tables(tmp_path):
    jt = attn.read(write(tmp_path / "a.h5"))
    cells, drugs = jt.tables["cell.rnaseq"], jt.tables["drug.descriptors"]
    assert cells.ids == ["A", "B", "C"] and drugs.ids == ["d1", "d2"]
    assert cells.values.dtype == np.float32 and cells.values.tolist() == [RNA[i] for i in cells.ids]
    assert np.allclose(drugs.values, [DESC[i] for i in drugs.ids])
    assert [(s.name, s.table, s.key) for s in jt.slots] == [("cell.rnaseq", "cell.rnaseq", "cell"),
                                                           ("drug.descriptors", "drug.descriptors", "drug")]
    train = jt.splits["train"]
    assert train["cell"].tolist() == [0, 1, 0, 2] and train["drug"].tolist() == [0, 0, 1, 1]
    assert train["cell"].dtype == np.int32 and train["y"].dtype == np.int64 and train["y"].tolist() == [0, 1, 0, 0]
    assert train["cell_id"].tolist() == ["A", "B", "A", "C"] and train["drug_id"].tolist() == ["d1", "d1", "d2", "d2"]
    for split, (x0, x1, _) in TINY.items():  # no scaling: the model sees the file's values in CANDLE's order
        assert np.array_equal(features(jt, split), np.concatenate([x0.to_numpy(), x1.to_numpy()], axis=1))
    assert jt.task == "classification" and jt.num_classes == 2 and jt.label_columns == ["y"] and jt.num_features == 5
    assert jt.info["rows"] == {"train": 4, "val": 2, "test": 1} and jt.info["positives"]["val"] == 1


def test_blank_column_names_are_numbered_and_real_names_kept(tmp_path):
    jt = attn.read(write(tmp_path / "a.h5"))
    assert jt.tables["cell.rnaseq"].columns == ["rnaseq.0", "rnaseq.1", "rnaseq.2"]
    named = {s: (x0.set_axis(["g1", "g2", "g3"], axis=1), x1, y) for s, (x0, x1, y) in TINY.items()}
    jt = attn.read(write(tmp_path / "b.h5", named))
    assert jt.tables["cell.rnaseq"].columns == ["g1", "g2", "g3"]
    assert jt.tables["drug.descriptors"].columns == ["descriptor.0", "descriptor.1"]


@pytest.mark.parametrize("chunk", [1, 3, 13])
def test_chunked_read_equals_whole_read(tmp_path, chunk):
    path = tmp_path / "top_21_1fold_001.h5"
    attn.write_synthetic(path, samples=12, drugs=10)
    whole = attn.read({"h5": path}, {"chunk_rows": 1_000_000})
    part = attn.read({"h5": path}, {"chunk_rows": chunk})
    for name, table in whole.tables.items():
        assert part.tables[name].ids == table.ids and np.array_equal(part.tables[name].values, table.values)
    for split, frame in whole.splits.items():
        pd.testing.assert_frame_equal(part.splits[split], frame)


def test_fixed_format_store_reads_like_table_format(tmp_path):
    table = attn.read(write(tmp_path / "t.h5"), {"chunk_rows": 2})
    fixed = attn.read(write(tmp_path / "f.h5", fmt="fixed"), {"chunk_rows": 2})
    for split in attn.SPLITS:
        assert np.array_equal(features(table, split), features(fixed, split))
        assert table.splits[split]["y"].tolist() == fixed.splits[split]["y"].tolist()


def test_synthetic_file_has_the_real_layout_and_round_trips(tmp_path):
    path = tmp_path / "top_21_1fold_001.h5"
    counts = attn.write_synthetic(path, samples=30, drugs=20, genes=40, descriptors=60)
    with pd.HDFStore(str(path), mode="r") as store:
        assert {k.lstrip("/") for k in store.keys()} == {f"{t}" for s in attn.SPLITS
                                                         for t in (f"x_{s}_0", f"x_{s}_1", f"y_{s}")}
        y = store.select("y_train")
        assert list(y.columns) == ["AUC", "Sample", "Drug1"] and y["AUC"].dtype == np.float32
        x0 = store.select("x_train_0", start=0, stop=2)
        assert list(x0.columns) == [""] * 40 and (x0.dtypes == np.float32).all()
        assert store.get_storer("x_train_1").is_table
    jt = attn.read({"h5": path})
    assert counts == jt.info["rows"] and sum(counts.values()) == 600
    assert jt.tables["cell.rnaseq"].values.shape == (30, 40) and jt.tables["drug.descriptors"].values.shape == (20, 60)
    positives = sum(jt.info["positives"].values()) / 600
    assert 0.02 <= positives <= 0.06 and all(jt.info["positives"][s] >= 1 for s in attn.SPLITS)
    again = tmp_path / "again.h5"
    attn.write_synthetic(again, samples=30, drugs=20, genes=40, descriptors=60)
    assert np.array_equal(features(attn.read({"h5": again}), "val"), features(jt, "val"))


def auroc(scores, labels):
    order = np.argsort(scores)
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    pos = labels == 1
    return (ranks[pos].sum() - pos.sum() * (pos.sum() + 1) / 2) / (pos.sum() * (~pos).sum())


def test_synthetic_signal_is_learnable(tmp_path):
    path = tmp_path / "s.h5"
    attn.write_synthetic(path, samples=40, drugs=30)
    jt = attn.read({"h5": path})
    X, y = features(jt, "train"), jt.splits["train"]["y"].to_numpy()
    X1 = np.c_[X, np.ones(len(X))]
    w = np.linalg.solve(X1.T @ X1 + 1.0 * np.eye(X1.shape[1]), X1.T @ y)  # ridge: no training loop needed
    held = pd.concat([jt.splits["val"], jt.splits["test"]])
    Xh = np.concatenate([features(jt, "val"), features(jt, "test")])
    assert auroc(np.c_[Xh, np.ones(len(Xh))] @ w, held["y"].to_numpy()) > 0.85


def test_inconsistent_duplicate_rows_name_the_id(tmp_path):
    def edit(key, frame):
        if key == "x_val_0":
            frame.iloc[1, 2] = 99.0  # row ("C", "d1") now disagrees with C's row in train
        return frame

    with pytest.raises(DataError, match=r"Sample 'C' has two different cell.rnaseq rows \(column 2: 9.0 vs 99.0\)"):
        attn.read(write(tmp_path / "a.h5", edit=edit))
    with pytest.raises(DataError, match="Drug1 'd1' has two different"):
        attn.read(write(tmp_path / "b.h5", edit=lambda k, f: f.mul(2.0) if k == "x_test_1" else f))


@pytest.mark.parametrize("drop, message", [
    (("x_val_1",), r"has no table 'x_val_1' \(it has x_test_0, x_test_1, x_train_0"),
    (("y_test",), r"has no table 'y_test'"),
])
def test_missing_table(tmp_path, drop, message):
    with pytest.raises(DataError, match=message):
        attn.read(write(tmp_path / "a.h5", drop=drop))


def test_y_without_auc_or_ids(tmp_path):
    paths = write(tmp_path / "a.h5", edit=lambda k, f: f.rename(columns={"AUC": "Growth"}) if k == "y_val" else f)
    with pytest.raises(DataError, match=r"table y_val has no column\(s\) \['AUC'\] \(it has \['Growth', 'Sample', 'Drug1'\]\)"):
        attn.read(paths)
    paths = write(tmp_path / "b.h5", edit=lambda k, f: f.drop(columns="Drug1") if k == "y_train" else f)
    with pytest.raises(DataError, match=r"no column\(s\) \['Drug1'\]"):
        attn.read(paths)


def test_row_counts_and_widths_must_match(tmp_path):
    paths = write(tmp_path / "a.h5", edit=lambda k, f: f.iloc[:3] if k == "x_train_1" else f)
    with pytest.raises(DataError, match=r"the train tables have different row counts \{'y_train': 4, 'x_train_0': 4, 'x_train_1': 3\}"):
        attn.read(paths)
    paths = write(tmp_path / "b.h5", edit=lambda k, f: f.iloc[:, :2] if k == "x_test_0" else f)
    with pytest.raises(DataError, match=r"x_\*_0 tables have different or zero widths .*'x_test_0': 2"):
        attn.read(paths)


def test_labels_must_be_binarised(tmp_path):
    paths = write(tmp_path / "a.h5", edit=lambda k, f: f.assign(AUC=np.float32(0.73)) if k == "y_val" else f)
    with pytest.raises(DataError, match=r"AUC is 0.730\d* at data row 1; ATTN's AUC must be binarised to 0 or 1"):
        attn.read(paths)
    paths = write(tmp_path / "b.h5", edit=lambda k, f: f.assign(AUC=np.float32("nan")) if k == "y_test" else f)
    with pytest.raises(DataError, match="AUC is nan at data row 1"):
        attn.read(paths)


def test_missing_id(tmp_path):
    def edit(key, frame):
        if key == "y_train":
            frame["Sample"] = frame["Sample"].astype(object)
            frame.loc[2, "Sample"] = None
        return frame

    with pytest.raises(DataError, match="Sample is missing at data row 3; every row needs a Sample"):
        attn.read(write(tmp_path / "a.h5", edit=edit), {"chunk_rows": 1})


def test_empty_split(tmp_path):
    splits = dict(TINY, test=tuple(f.iloc[:0] for f in TINY["test"]))
    with pytest.raises(DataError, match="the test split is empty"):
        attn.read(write(tmp_path / "a.h5", splits, fmt="fixed"))


def test_non_finite_features(tmp_path):
    all_nan = lambda k, f: f.map(lambda v: np.float32("nan")) if k.startswith("x_") and k.endswith("_1") else f  # noqa: E731
    with pytest.raises(DataError, match="the drug.descriptors features are all NaN or infinite"):
        attn.read(write(tmp_path / "a.h5", edit=all_nan))

    def one_nan(key, frame):
        if key == "x_val_0":
            frame.iloc[0, 1] = np.nan  # row ("B", "d2"): B's row elsewhere differs -> first check the NaN in train
        return frame

    def nan_everywhere_for_b(key, frame):
        if key.startswith("x_") and key.endswith("_0"):
            ids = TINY[key.split("_")[1]][2]["Sample"].to_numpy()
            frame.iloc[np.flatnonzero(ids == "B"), 1] = np.nan
        return frame

    with pytest.raises(DataError, match="Sample 'B' has two different"):
        attn.read(write(tmp_path / "b.h5", edit=one_nan))
    with pytest.raises(DataError, match=r"cell.rnaseq of 'B' has the non-finite value nan in column 'rnaseq.1'"):
        attn.read(write(tmp_path / "c.h5", edit=nan_everywhere_for_b))


def test_unreadable_file_and_bad_usage(tmp_path):
    bad = tmp_path / "top_21_1fold_001.h5"
    bad.write_text("not hdf5\n")
    with pytest.raises(DataError, match="cannot open .* as HDF5: .*re-download it"):
        attn.read({"h5": bad})
    paths = write(tmp_path / "a.h5")
    with pytest.raises(UsageError, match=r"needs a source with role 'h5'.*got roles \['train'\]"):
        attn.read({"train": paths["h5"]})
    with pytest.raises(UsageError, match=r"unknown ATTN reader option\(s\) \['chunk'\]"):
        attn.read(paths, {"chunk": 3})
    with pytest.raises(UsageError, match="chunk_rows must be a positive integer, got 0"):
        attn.read(paths, {"chunk_rows": 0})
    with pytest.raises(UsageError, match="positive_fraction"):
        attn.write_synthetic(tmp_path / "s.h5", positive_fraction=0.7)


def test_registry_smoke_files_prepare_into_a_joined_cache_entry(tmp_path):
    from candle_ray.data import registry
    from candle_ray.data.cache import Cache
    from candle_ray.data.feed import make_feed
    from candle_ray.data.spec import ReaderDataset

    paths = registry.synthesize("attn", tmp_path / "files", {}, 0, 600, 30)
    assert set(paths) == {"h5"} and paths["h5"].name == "top_21_1fold_001.h5"
    jt = registry.read("attn", paths, {}, 0)
    assert 550 <= sum(jt.info["rows"].values()) <= 650 and jt.num_features == 15 + 30
    ds = ReaderDataset("attn", reader="attn", sources={"h5": str(paths["h5"])})
    entry = Cache(tmp_path / "cache").prepare(ds, log=lambda *_: None)
    assert entry.num_features == 45 and entry.num_classes == 2 and entry.rows == jt.info["rows"]
    x, y = next(make_feed(entry, "val", 8, shuffle=False).epoch(0))
    assert tuple(x.shape) == (8, 45) and y.tolist() == jt.splits["val"]["y"].tolist()[:8]
    assert np.allclose(x.numpy(), features(jt, "val")[:8])
