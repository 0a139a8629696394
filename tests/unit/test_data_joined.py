"""Joined datasets: ReaderDataset spec, reader registry, cache entries (kind "joined") and JoinedFeed.

This module is itself a dataset reader (reader="tests.unit.test_data_joined"): `read` turns two tiny
local files into JoinedTables by hand, so every number below can be checked against plain numpy.
"""

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from candle_ray.data import joined_cache, registry
from candle_ray.data.cache import Cache, open_split, verify
from candle_ray.data.cache_format import fingerprint
from candle_ray.data.feed import JoinedFeed, make_feed, split_labels
from candle_ray.data.joined import FeatureTable, JoinedTables, Slot
from candle_ray.data.spec import ReaderDataset
from candle_ray.data.synthetic import synthesize as synthesize_dataset
from candle_ray.errors import CacheError, DataError, UsageError

READER = "tests.unit.test_data_joined"
OPTIONS = {"rows": 23, "multi": False, "break": None}
VERSION = 1
FAILING = {"now": False}  # tests switch the reader into failing without changing the entry's fingerprint

CELLS = np.arange(15, dtype=np.float32).reshape(5, 3) / 7  # 5 cells x 3 features
DRUGS = -np.arange(8, dtype=np.float32).reshape(4, 2) / 3  # 4 drugs x 2 features


def read(paths, options, seed):
    """Rows i = 0..n-1: cell i % 5, drug1 i % 4, drug2 (i + 1) % 4, dose i / 10, y = i (or 2 tasks)."""
    n = options["rows"]
    scale = float(Path(paths["scale"]).read_text())  # the source's content reaches the data
    rows = np.arange(n)
    frame = pd.DataFrame({"cell": (rows % 5).astype(np.int32), "drug1": (rows % 4).astype(np.int32),
                          "drug2": ((rows + 1) % 4).astype(np.int32), "dose": (rows / 10).astype(np.float32),
                          "y": rows.astype(np.float32), "cell_id": [f"c{r % 5}" for r in rows]})
    tables = {"cell.x": FeatureTable("cell.x", [f"c{i}" for i in range(5)], CELLS * scale, ["a", "b", "c"]),
              "drug.d": FeatureTable("drug.d", [f"d{i}" for i in range(4)], DRUGS, ["p", "q"])}
    slots = [Slot("dose", None, "dose"), Slot("cell.x", "cell.x", "cell"), Slot("drug1.d", "drug.d", "drug1"),
             Slot("drug2.d", "drug.d", "drug2")]
    extra = {}
    if options["multi"]:
        frame["t0"] = np.where(rows % 2 == 0, rows % 3, -1).astype(np.int64)
        frame["t1"] = np.where(rows % 2 == 1, rows % 2, -1).astype(np.int64)
        extra = {"task": "classification", "num_classes": [3, 2], "label_columns": ["t0", "t1"]}
    broken = "raise" if FAILING["now"] else options["break"]
    if broken == "index":
        frame.loc[3, "cell"] = 9
    elif broken == "nan":
        tables["drug.d"] = FeatureTable("drug.d", [f"d{i}" for i in range(4)], np.full((4, 2), np.nan, np.float32), ["p", "q"])
    elif broken == "raise":
        raise DataError("reader failed on purpose")
    splits = {"train": frame.iloc[: n - 8], "val": frame.iloc[n - 8: n - 3], "test": frame.iloc[n - 3:]}
    if broken == "no_val":
        del splits["val"]
    return JoinedTables(tables=tables, slots=slots, splits=splits, info={"notes": ["kept every row"]}, **extra)


def synthesize(out_dir, options, seed, rows, features):
    path = Path(out_dir) / "scale.txt"
    path.write_text("2.0\n")
    return {"scale": path}


def expected_matrix(ids, scale=1.0):
    ids = np.asarray(ids)
    return np.hstack([(ids / 10).astype(np.float32)[:, None], CELLS[ids % 5] * scale, DRUGS[ids % 4],
                      DRUGS[(ids + 1) % 4]])


@pytest.fixture
def source(tmp_path):
    path = tmp_path / "src" / "scale.txt"
    path.parent.mkdir()
    path.write_text("1.0\n")
    return path


def dataset(source, **options):
    return ReaderDataset("tiny", reader=READER, sources={"scale": str(source)}, options=options, seed=5)


@pytest.fixture
def entry(tmp_path, source):
    return Cache(tmp_path / "cache").prepare(dataset(source), log=lambda *_: None)


# ----------------------------------------------------------------------------- spec and registry
def test_reader_dataset_validates_its_fields():
    with pytest.raises(UsageError, match="dataset name"):
        ReaderDataset("bad name", reader="p1b3", sources={"a": "x.csv"})
    with pytest.raises(UsageError, match="reader must be a module name"):
        ReaderDataset("ok", reader="p1b3/../x", sources={"a": "x.csv"})
    with pytest.raises(UsageError, match="non-empty dict"):
        ReaderDataset("ok", reader="p1b3", sources={})
    with pytest.raises(UsageError, match="role 'a b'"):
        ReaderDataset("ok", reader="p1b3", sources={"a b": "x.csv"})
    with pytest.raises(UsageError, match="share the file name 'x.csv'"):
        ReaderDataset("ok", reader="p1b3", sources={"a": "one/x.csv", "b": "two/x.csv"})
    ds = ReaderDataset("ok", reader="p1b3", sources={"a": "rel/x.csv"})
    assert ds.resolved(Path("/data")).sources["a"].url == "file:///data/rel/x.csv"


def test_registry_finds_readers_by_name_and_rejects_unknown_ones_and_options():
    assert registry.module("p1b3").__name__ == "candle_ray.data.benchmarks.p1b3"
    with pytest.raises(UsageError, match="unknown dataset reader 'nosuch'.*p1b3"):
        registry.module("nosuch")
    with pytest.raises(UsageError, match="not a dataset reader"):
        registry.module("candle_ray.data.transforms")
    assert registry.options("p1b3", {"val_split": 0.2})["val_split"] == 0.2
    with pytest.raises(UsageError, match="unknown option 'val_splt'.*did you mean 'val_split'"):
        registry.options("p1b3", {"val_splt": 0.2})


def test_fingerprint_covers_reader_options_seed_and_source_content(source):
    base = fingerprint(dataset(source))
    assert fingerprint(dataset(source, rows=23)) == base  # an option at its default names the same entry
    assert fingerprint(dataset(source, rows=24)) != base
    assert fingerprint(replace(dataset(source), seed=6)) != base
    source.write_text("3.0\n")
    assert fingerprint(dataset(source)) != base


# ----------------------------------------------------------------------------- the cache entry
def test_prepare_writes_a_joined_entry_with_its_manifest(entry):
    m = entry.manifest
    assert entry.kind == "joined" and m["task"] == "regression" and m["num_classes"] is None
    assert entry.rows == {"train": 15, "val": 5, "test": 3} and entry.num_features == 1 + 3 + 2 + 2
    assert [(s["name"], s["offset"], s["width"]) for s in m["slots"]] == [
        ("dose", 0, 1), ("cell.x", 1, 3), ("drug1.d", 4, 2), ("drug2.d", 6, 2)]
    assert {n: (t["rows"], t["width"]) for n, t in m["tables"].items()} == {"cell.x": (5, 3), "drug.d": (4, 2)}
    assert m["label_columns"] == ["y"] and m["reader"]["name"] == READER and m["reader"]["seed"] == 5
    assert m["reader"]["options"] == OPTIONS and m["reader"]["info"]["notes"] == ["kept every row"]
    assert m["splits"]["train"]["columns"]["cell"] == "int32" and "string" in m["splits"]["train"]["columns"]["cell_id"]
    assert len(m["sources"]["scale"]["sha256"]) == 64
    verify(entry)
    names = sorted(p.name for p in entry.path.iterdir())
    assert names == ["manifest.json", "table-0-cell.x.arrow", "table-1-drug.d.arrow", "test.arrow", "train.arrow", "val.arrow"]


def test_prepare_is_idempotent_and_a_failed_rebuild_leaves_the_entry_alone(tmp_path, source, monkeypatch):
    cache = Cache(tmp_path / "cache")
    lines = []
    first = cache.prepare(dataset(source), log=lines.append)
    assert "kept every row" in lines  # the reader's notes are printed
    again = cache.prepare(dataset(source), log=lines.append)
    assert again.manifest["created"] == first.manifest["created"]
    # The reader failing while the same entry is rebuilt (--force): the old entry stays, complete, and no
    # temporary folder is left behind.
    monkeypatch.setitem(FAILING, "now", True)
    with pytest.raises(DataError, match="on purpose"):
        cache.prepare(dataset(source), force=True, log=lambda *_: None)
    assert [p.name for p in cache.datasets.iterdir()] == [first.path.name]
    kept = cache.lookup(dataset(source))
    assert kept.manifest["created"] == first.manifest["created"]
    verify(kept)
    # A failing new entry leaves nothing at all.
    failing = dataset(source, **{"break": "raise"})
    with pytest.raises(DataError, match="on purpose"):
        cache.prepare(failing, log=lambda *_: None)
    assert not cache.entry_path(failing).exists() and len(list(cache.datasets.iterdir())) == 1


@pytest.mark.parametrize("broken, message", [
    ("index", "index column 'cell' of the train rows must hold integers in \\[0, 5\\)"),
    ("nan", "feature table 'drug.d' has a non-finite value for id 'd0'"),
    ("no_val", "need train and val"),
])
def test_reader_output_breaking_the_contract_is_a_data_error(tmp_path, source, broken, message):
    with pytest.raises(DataError, match=message):
        Cache(tmp_path / "cache").prepare(dataset(source, **{"break": broken}), log=lambda *_: None)
    assert not any((tmp_path / "cache" / "datasets").iterdir())


def test_open_split_refuses_a_joined_entry_with_a_pointer_to_the_feed(entry):
    with pytest.raises(CacheError, match="joined dataset.*make_feed"):
        open_split(entry, "train")


def test_verify_detects_a_flipped_byte_in_a_feature_table(entry):
    table = next(entry.path.glob("table-0-*.arrow"))
    data = bytearray(table.read_bytes())
    position = data.rfind(np.float32(CELLS[4, 2]).tobytes())  # a feature value inside the x buffer
    data[position] ^= 0x01
    table.write_bytes(bytes(data))
    make_feed(entry, "train", 4)  # same size, same layout: the hot path does not hash
    with pytest.raises(CacheError, match="table-0-cell.x.arrow has sha256 .* rebuild it with"):
        verify(entry)


def test_a_truncated_or_missing_file_fails_on_open_with_the_rebuild_command(tmp_path, source):
    cache = Cache(tmp_path / "cache")
    entry = cache.prepare(dataset(source), rebuild_hint="candle-ray data prepare tiny.py --force", log=lambda *_: None)
    rows = entry.path / "val.arrow"
    rows.write_bytes(rows.read_bytes()[:-10])
    with pytest.raises(CacheError, match="val.arrow has .* bytes.*rebuild it with: candle-ray data prepare tiny.py --force"):
        make_feed(entry, "val", 4)
    next(entry.path.glob("table-1-*.arrow")).unlink()
    with pytest.raises(CacheError, match="table-1-drug.d.arrow is missing"):
        make_feed(entry, "train", 4)
    with pytest.raises(CacheError, match="no split 'holdout'"):
        split_labels(cache.prepare(dataset(source), force=True, log=lambda *_: None), "holdout")


# ----------------------------------------------------------------------------- the feed
def gather_epoch(feed, epoch):
    xs, ys = zip(*feed.epoch(epoch))
    return torch.cat(xs).numpy(), torch.cat(ys).numpy()


def test_feed_batches_are_the_materialised_matrix_in_index_order(entry):
    feed = make_feed(entry, "train", 4, shuffle=True, seed=3)
    assert isinstance(feed, JoinedFeed) and len(feed) == 4 and feed.num_features == 8
    x, y = gather_epoch(feed, 1)
    order = feed.indices(1).numpy()
    np.testing.assert_allclose(x, expected_matrix(order), rtol=1e-6)
    np.testing.assert_array_equal(y, order.astype(np.float32))
    assert sorted(order.tolist()) == list(range(15)) and order.tolist() != list(range(15))
    assert not np.array_equal(gather_epoch(feed, 2)[1], y)  # a new permutation each epoch


@pytest.mark.parametrize("world_size", [2, 3, 4])
def test_feed_sharding_gives_every_rank_the_same_batches_and_covers_every_row(entry, world_size):
    feeds = [make_feed(entry, "train", 2, shuffle=True, seed=1, rank=r, world_size=world_size) for r in range(world_size)]
    counts = {len(list(f.epoch(0))) for f in feeds}
    assert len(counts) == 1  # DDP needs the same number of batches on every rank
    rows = np.concatenate([gather_epoch(f, 0)[1] for f in feeds])
    assert len(rows) == -(-15 // world_size) * world_size and set(rows.tolist()) == set(map(float, range(15)))
    for f in feeds:
        x, y = gather_epoch(f, 0)
        np.testing.assert_allclose(x, expected_matrix(y.astype(int)), rtol=1e-6)


def test_unpadded_feed_serves_every_world_size_th_row_once(entry):
    parts = [gather_epoch(make_feed(entry, "val", 2, shuffle=False, rank=r, world_size=2, pad=False), 0)[1]
             for r in range(2)]
    assert parts[0].tolist() == [15.0, 17.0, 19.0] and parts[1].tolist() == [16.0, 18.0]


def test_unpadded_feed_of_a_matrix_entry_serves_every_world_size_th_row_too(tmp_path):
    from candle_ray.data.feed import BatchFeed
    from candle_ray.data.spec import Dataset

    csv = tmp_path / "m.csv"
    csv.write_text("".join(f"{i % 2},{i},{2 * i}\n" for i in range(7)))
    entry = Cache(tmp_path / "cache").prepare(Dataset("m", train=str(csv), val=str(csv), scaling="none"), log=lambda *_: None)
    parts = [make_feed(entry, "val", 2, shuffle=False, rank=r, world_size=3, pad=False) for r in range(3)]
    assert all(isinstance(f, BatchFeed) for f in parts)
    assert [gather_epoch(f, 0)[0][:, 0].tolist() for f in parts] == [[0, 3, 6], [1, 4], [2, 5]]
    with pytest.raises(UsageError, match="mode='memory'"):
        make_feed(entry, "val", 2, mode="stream", pad=False)


def test_model_shape_gives_shared_encoder_models_their_feature_widths(entry):
    from candle_ray.experiment import model_shape

    assert model_shape(entry) == {"input_dim": 8, "classes": 1, "cell_features": ["x"], "cell_feature_dims": [3],
                                  "drug_features": ["d"], "drug_feature_dims": [2]}  # drug2.d repeats drug1's type


def test_several_label_columns_give_int64_targets_per_task(tmp_path, source):
    entry = Cache(tmp_path / "cache").prepare(dataset(source, multi=True), log=lambda *_: None)
    assert entry.manifest["task"] == "classification" and entry.num_classes == [3, 2]
    x, y = next(make_feed(entry, "train", 6, shuffle=False).epoch(0))
    assert y.dtype == torch.int64 and y.shape == (6, 2)
    assert y[:, 0].tolist() == [0, -1, 2, -1, 1, -1] and y[:, 1].tolist() == [-1, 1, -1, 1, -1, 1]
    assert split_labels(entry, "val").shape == (5, 2)


def test_feed_moves_to_a_device_and_still_gathers_the_same_rows(entry):
    feed = make_feed(entry, "train", 5, shuffle=False)
    assert feed.nbytes == (5 * 3 + 4 * 2) * 4 + 15 * (4 * 3 + 4 + 4)  # tables + cell/drug1/drug2/dose/y columns
    before = gather_epoch(feed, 0)
    after = gather_epoch(feed.to(torch.device("cpu")), 0)
    np.testing.assert_array_equal(before[0], after[0])


def test_feed_reads_the_files_without_copying_them(entry):
    tables, rows = joined_cache.open_tables(entry), joined_cache.open_rows(entry, "train")
    assert not tables["cell.x"].flags.writeable and not rows["cell"].flags.writeable  # views of the mapped files
    np.testing.assert_array_equal(tables["cell.x"], CELLS)
    feed = JoinedFeed(tables, rows, entry.manifest["slots"], ["y"], 4)
    assert feed.tables["cell.x"].data_ptr() == tables["cell.x"].ctypes.data  # the tensor shares that memory
    assert feed.columns["cell"].data_ptr() == rows["cell"].ctypes.data


# ----------------------------------------------------------------------------- smoke data
def test_synthesize_runs_the_readers_generator_once_under_the_real_file_names(tmp_path, source):
    ds = ReaderDataset("tiny", reader=READER, sources={"scale": "https://example.org/data/scale.txt"})
    smoke = synthesize_dataset(ds, tmp_path / "syn", rows=(10, 4), features=3)
    path = Path(smoke.sources["scale"].url[len("file://"):])
    assert smoke.name == "tiny-smoke" and smoke.synthetic and path.name == "scale.txt" and path.read_text() == "2.0\n"
    stamp = json.loads(next(path.parent.glob(".*.synthetic.json")).read_text())
    assert stamp["params"]["rows"] == 14 and smoke.sources["scale"].sha256 == stamp["sha256"]["scale"]
    mtime = path.stat().st_mtime_ns
    assert synthesize_dataset(ds, tmp_path / "syn", rows=(10, 4), features=3) == smoke
    assert path.stat().st_mtime_ns == mtime  # not rewritten
    entry = Cache(tmp_path / "cache").prepare(smoke, log=lambda *_: None)
    np.testing.assert_allclose(make_feed(entry, "train", 4).tables["cell.x"].numpy(), CELLS * 2)
    with pytest.raises(UsageError, match="wrote no file for source role\\(s\\) other"):
        synthesize_dataset(replace(ds, sources={**ds.sources, "other": "x/other.txt"}), tmp_path / "syn2", rows=(10, 4))
