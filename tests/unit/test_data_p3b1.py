"""P3B1 reader: CANDLE's P3B1_data.tar.gz (per-task, per-fold headerless CSVs) into multi-task JoinedTables."""

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest

from candle_ray.data.benchmarks import p3b1
from candle_ray.errors import DataError, UsageError


def csv_bytes(values) -> bytes:
    buffer = io.BytesIO()
    np.savetxt(buffer, np.asarray(values, dtype=np.float64), delimiter=",")
    return buffer.getvalue()


def tiny_files(fold=0, width=3):
    """Hand-written fold: task0 3 classes, task1 2 classes; train/test rows per task 3/2 and 2/1."""
    rows = {(0, "train"): [[1, 0, 0], [0, 1, 0], [0, 0, 1]], (0, "test"): [[1, 1, 0], [0, 1, 1]],
            (1, "train"): [[2, 0, 0], [0, 2, 0]], (1, "test"): [[0, 0, 2]]}
    labels = {(0, "train"): [2, 0, 1], (0, "test"): [1, 2], (1, "train"): [1, 0], (1, "test"): [0]}
    files = {}
    for (task, kind), X in rows.items():
        X = np.asarray(X, dtype=np.float64)[:, :width] if width <= 3 else np.pad(np.asarray(X, float), ((0, 0), (0, width - 3)))
        files[f"task{task}_{fold}_{kind}_feature.csv"] = csv_bytes(X)
        files[f"task{task}_{fold}_{kind}_label.csv"] = csv_bytes(np.asarray(labels[(task, kind)])[:, None])
    return files


def write_tar(path, files: dict, folder="P3B1_data", extra=()):
    """A gzipped tar of `files` under `folder`; `extra` adds raw TarInfo members (links, hostile names)."""
    with tarfile.open(path, "w:gz") as archive:
        for name, data in files.items():
            member = tarfile.TarInfo(f"{folder}/{name}" if folder else name)
            member.size = len(data)
            archive.addfile(member, io.BytesIO(data))
        for member, data in extra:
            archive.addfile(member, io.BytesIO(data) if data is not None else None)
    return {"archive": Path(path)}


def test_tasks_become_label_columns_with_minus_one_elsewhere(tmp_path):
    jt = p3b1.read(write_tar(tmp_path / "P3B1_data.tar.gz", tiny_files()))
    assert jt.label_columns == ["task0", "task1"] and jt.num_classes == [3, 2] and jt.task == "classification"
    train, val = jt.splits["train"], jt.splits["val"]
    assert train["task"].tolist() == [0, 0, 0, 1, 1] and val["task"].tolist() == [0, 0, 1]
    assert train["task0"].tolist() == [2, 0, 1, -1, -1] and train["task1"].tolist() == [-1, -1, -1, 1, 0]
    assert val["task0"].tolist() == [1, 2, -1] and val["task1"].tolist() == [-1, -1, 0]
    assert all(train[c].dtype == np.int64 for c in jt.label_columns) and train["report"].dtype == np.int32
    assert "test" not in jt.splits  # CANDLE validates on the test files: they are the val split
    table = jt.tables["report"]
    assert [(s.name, s.table, s.key) for s in jt.slots] == [("report", "report", "report")] and jt.num_features == 3
    assert table.values.dtype == np.float32 and len(table.ids) == len(set(table.ids)) == 8
    assert table.values[train["report"].to_numpy()].tolist() == [[1, 0, 0], [0, 1, 0], [0, 0, 1], [2, 0, 0], [0, 2, 0]]
    assert table.values[val["report"].to_numpy()].tolist() == [[1, 1, 0], [0, 1, 1], [0, 0, 2]]
    assert table.ids[val["report"][2]] == "task1.test.0"
    assert jt.info["rows"] == {"train": {"task0": 3, "task1": 2}, "val": {"task0": 2, "task1": 1}}


def test_fold_option_selects_that_folds_files(tmp_path):
    files = {**tiny_files(fold=0), **{name: data for name, data in tiny_files(fold=3).items() if "label" in name}}
    fold3 = {name: csv_bytes(np.full((len(np.loadtxt(io.BytesIO(data), delimiter=",", ndmin=2)), 3), 7.0))
             for name, data in tiny_files(fold=3).items() if "feature" in name}
    paths = write_tar(tmp_path / "a.tar.gz", {**files, **fold3})
    assert p3b1.read(paths).tables["report"].values.max() == 2.0  # default fold 0
    jt = p3b1.read(paths, {"fold": 3})
    assert (jt.tables["report"].values == 7.0).all() and jt.info["fold"] == 3 and jt.info["folds_in_archive"] == [0, 3]
    with pytest.raises(DataError, match=r"no task\*_5_\*.csv files for fold 5 \(folds present: 0, 3\)"):
        p3b1.read(paths, {"fold": 5})


def test_members_at_top_level_are_found_too(tmp_path):
    jt = p3b1.read(write_tar(tmp_path / "a.tar.gz", tiny_files(), folder=""))
    assert jt.num_classes == [3, 2]


@pytest.mark.parametrize("name", ["../task0_0_train_feature.csv", "P3B1_data/../../evil.csv", "/etc/evil.csv"])
def test_unsafe_member_paths_are_refused(tmp_path, name):
    member = tarfile.TarInfo(name)
    member.size = 2
    paths = write_tar(tmp_path / "a.tar.gz", tiny_files(), extra=[(member, b"1\n")])
    with pytest.raises(DataError, match="unsafe member path .*refusing to read it"):
        p3b1.read(paths)
    assert not (tmp_path.parent / "evil.csv").exists()


def test_links_are_refused(tmp_path):
    link = tarfile.TarInfo("P3B1_data/task0_0_train_feature.csv")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    files = {k: v for k, v in tiny_files().items() if k != "task0_0_train_feature.csv"}
    with pytest.raises(DataError, match="is a link or device, not a file"):
        p3b1.read(write_tar(tmp_path / "a.tar.gz", files, extra=[(link, None)]))


def test_synthetic_archive_has_the_real_layout_and_round_trips(tmp_path):
    path = tmp_path / "P3B1_data.tar.gz"
    p3b1.write_synthetic(path, features=40)
    with tarfile.open(path) as archive:
        names = archive.getnames()
        first = archive.extractfile("P3B1_data/task2_1_test_label.csv").read().decode().splitlines()[0]
    assert names[0] == "P3B1_data" and len(names) == 1 + 2 * 3 * 4 and "P3B1_data/task0_1_train_feature.csv" in names
    assert first in {f"{c:.18e}" for c in range(4)}  # numpy.savetxt's format, as CANDLE's files
    jt = p3b1.read({"archive": path})
    assert jt.num_classes == [13, 2, 4] and jt.label_columns == ["task0", "task1", "task2"] and jt.num_features == 40
    assert jt.info["rows"] == {"train": {"task0": 130, "task1": 40, "task2": 60}, "val": {"task0": 26, "task1": 16, "task2": 16}}
    again = tmp_path / "again.tar.gz"
    p3b1.write_synthetic(again, features=40)
    assert again.read_bytes() == path.read_bytes()  # deterministic: the cache's checksum stays valid


def test_synthetic_signal_is_learnable(tmp_path):
    path = tmp_path / "P3B1_data.tar.gz"
    p3b1.write_synthetic(path, features=100)
    jt = p3b1.read({"archive": path})
    X = jt.tables["report"].values
    for column, n_classes in zip(jt.label_columns, jt.num_classes):
        train, val = (frame[frame[column] >= 0] for frame in (jt.splits["train"], jt.splits["val"]))
        Xt, Xv = X[train["report"].to_numpy()], X[val["report"].to_numpy()]
        centroids = np.stack([Xt[train[column].to_numpy() == c].mean(axis=0) for c in range(n_classes)])
        predicted = np.argmin(((Xv[:, None, :] - centroids[None]) ** 2).sum(-1), axis=1)
        assert (predicted == val[column].to_numpy()).mean() > 0.8, column


def test_feature_width_must_match_between_tasks(tmp_path):
    files = tiny_files()
    files["task1_0_train_feature.csv"] = tiny_files(width=4)["task1_0_train_feature.csv"]
    with pytest.raises(DataError, match="task1_0_train_feature.csv in .* has 4 feature columns but task0_0_train_feature.csv has 3"):
        p3b1.read(write_tar(tmp_path / "a.tar.gz", files))


def test_labels_must_align_and_be_class_indices(tmp_path):
    files = dict(tiny_files(), **{"task0_0_train_label.csv": csv_bytes([[2], [0]])})
    with pytest.raises(DataError, match="task0_0_train_label.csv has 2 labels for the 3 rows of task0_0_train_feature.csv"):
        p3b1.read(write_tar(tmp_path / "a.tar.gz", files))
    files = dict(tiny_files(), **{"task1_0_test_label.csv": csv_bytes([[0.5]])})
    with pytest.raises(DataError, match="has the label 0.5 at data row 1; P3B1 labels are class indices"):
        p3b1.read(write_tar(tmp_path / "b.tar.gz", files))
    files = dict(tiny_files(), **{"task0_0_train_label.csv": csv_bytes([[2, 1], [0, 1], [1, 1]])})
    with pytest.raises(DataError, match="has 2 columns; a P3B1 label file has one class index per line"):
        p3b1.read(write_tar(tmp_path / "c.tar.gz", files))
    files = dict(tiny_files(), **{"task1_0_test_label.csv": csv_bytes([[2]])})
    with pytest.raises(DataError, match="has the class 2 but task 1's training labels stop at 1"):
        p3b1.read(write_tar(tmp_path / "d.tar.gz", files))


def test_missing_member_empty_split_and_non_finite_features(tmp_path):
    files = {k: v for k, v in tiny_files().items() if k != "task0_0_test_label.csv"}
    with pytest.raises(DataError, match=r"has no task0_0_test_label.csv \(tasks 0..1 are expected for fold 0\)"):
        p3b1.read(write_tar(tmp_path / "a.tar.gz", files))
    files = dict(tiny_files(), **{"task1_0_test_feature.csv": b"", "task1_0_test_label.csv": b""})
    with pytest.raises(DataError, match="task1_0_test_feature.csv in .* has no rows; the val split of task 1 would be empty"):
        p3b1.read(write_tar(tmp_path / "b.tar.gz", files))
    files = dict(tiny_files(), **{"task0_0_train_feature.csv": csv_bytes(np.full((3, 3), np.nan))})
    with pytest.raises(DataError, match=r"task0_0_train_feature.csv in .* has the non-finite value nan at data row 1, column 0"):
        p3b1.read(write_tar(tmp_path / "c.tar.gz", files))
    files = dict(tiny_files(), **{"task0_0_train_feature.csv": b"a,b,c\n1,2,3\n4,5,6\n7,8,9\n"})
    with pytest.raises(DataError, match="cannot parse task0_0_train_feature.csv in .*headerless comma-separated numbers"):
        p3b1.read(write_tar(tmp_path / "d.tar.gz", files))


def test_unreadable_archive_and_bad_usage(tmp_path):
    bad = tmp_path / "P3B1_data.tar.gz"
    bad.write_bytes(b"not a tar archive")
    with pytest.raises(DataError, match="cannot read .* as a tar archive: .*re-download it"):
        p3b1.read({"archive": bad})
    paths = write_tar(tmp_path / "a.tar.gz", tiny_files())
    with pytest.raises(UsageError, match=r"needs a source with role 'archive'"):
        p3b1.read({"train": paths["archive"]})
    with pytest.raises(UsageError, match=r"unknown P3B1 reader option\(s\) \['folds'\]"):
        p3b1.read(paths, {"folds": 1})
    with pytest.raises(UsageError, match="fold must be an integer >= 0, got -1"):
        p3b1.read(paths, {"fold": -1})
    with pytest.raises(UsageError, match="train rows >= classes"):
        p3b1.write_synthetic(tmp_path / "s.tar.gz", train_rows=(5, 40, 60))


def test_registry_smoke_files_prepare_into_a_multi_task_cache_entry(tmp_path):
    from candle_ray.data import registry
    from candle_ray.data.cache import Cache
    from candle_ray.data.feed import make_feed
    from candle_ray.data.spec import ReaderDataset

    paths = registry.synthesize("p3b1", tmp_path / "files", {"fold": 1}, 0, 600, 50)
    assert set(paths) == {"archive"} and paths["archive"].name == "P3B1_data.tar.gz"
    jt = registry.read("p3b1", paths, {"fold": 1}, 0)
    assert jt.info["folds_in_archive"] == [0, 1] and jt.num_classes == [13, 2, 4] and jt.num_features == 50
    assert sum(jt.info["rows"]["train"].values()) == pytest.approx(600, abs=10)
    ds = ReaderDataset("p3b1", reader="p3b1", sources={"archive": str(paths["archive"])}, options={"fold": 1})
    entry = Cache(tmp_path / "cache").prepare(ds, log=lambda *_: None)
    assert entry.num_features == 50 and entry.num_classes == [13, 2, 4]
    x, y = next(make_feed(entry, "train", 6, shuffle=False).epoch(0))
    assert tuple(x.shape) == (6, 50) and tuple(y.shape) == (6, 3) and y.dtype.is_floating_point is False
    assert y.tolist() == jt.splits["train"][jt.label_columns].to_numpy()[:6].tolist()
