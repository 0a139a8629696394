"""BatchFeed / StreamFeed: coverage, DDP-style sharding with equal batch counts, determinism."""

import warnings

import numpy as np
import pytest
import torch

from candle_ray.data import feed as feed_module
from candle_ray.data.cache import Cache, open_split
from candle_ray.data.feed import BatchFeed, StreamFeed, make_feed
from candle_ray.data.spec import Dataset
from candle_ray.errors import CacheError, UsageError


def ids_of(batches):
    """Row ids carried in feature 0 (see `entry`)."""
    return [int(v) for x, _ in batches for v in x[:, 0].tolist()]


@pytest.fixture(scope="module")
def entry(tmp_path_factory):
    """A cache entry of 103 train rows whose feature 0 is the row id (scaling none)."""
    root = tmp_path_factory.mktemp("feed")
    n, d = 103, 4
    X = np.random.default_rng(0).uniform(size=(n, d)).astype(np.float32)
    X[:, 0] = np.arange(n)
    y = np.arange(n) % 3
    lines = [",".join([str(label)] + [repr(float(v)) for v in row]) for label, row in zip(y, X)]
    (root / "train.csv").write_text("\n".join(lines) + "\n")
    (root / "val.csv").write_text("\n".join(lines[:10]) + "\n")
    ds = Dataset(name="feed", train=str(root / "train.csv"), val=str(root / "val.csv"), scaling="none", classes=3)
    return Cache(root / "cache").prepare(ds, log=lambda m: None)


# ----------------------------------------------------------------------------- BatchFeed
def test_batch_feed_serves_every_row_once_in_contiguous_float32_batches(entry):
    x, y = open_split(entry.path, "train")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a read-only memory map must not warn
        feed = BatchFeed(x, y, 10, seed=3)
    batches = list(feed.epoch(0))
    assert len(feed) == len(batches) == 11 and feed.num_samples == 103
    assert [len(b[1]) for b in batches] == [10] * 10 + [3]
    for xb, yb in batches:
        assert xb.dtype == torch.float32 and xb.is_contiguous() and xb.shape[1] == 4 and yb.dtype == torch.int64
        np.testing.assert_array_equal(yb.numpy(), xb[:, 0].numpy().astype(int) % 3)  # labels follow their rows
    assert sorted(ids_of(batches)) == list(range(103))
    assert ids_of(batches) != list(range(103))  # shuffled


def test_batch_feed_is_deterministic_per_seed_and_epoch(entry):
    x, y = open_split(entry.path, "train")
    a, b = BatchFeed(x, y, 8, seed=1), BatchFeed(x, y, 8, seed=1)
    assert ids_of(a.epoch(2)) == ids_of(b.epoch(2))
    assert ids_of(a.epoch(2)) != ids_of(a.epoch(3))
    assert ids_of(a.epoch(2)) != ids_of(BatchFeed(x, y, 8, seed=2).epoch(2))
    assert ids_of(BatchFeed(x, y, 8, shuffle=False).epoch(5)) == list(range(103))


@pytest.mark.parametrize("world_size", [2, 3, 5])
def test_batch_feed_shards_cover_all_rows_with_equal_batch_counts(entry, world_size):
    x, y = open_split(entry.path, "train")
    feeds = [BatchFeed(x, y, 7, seed=0, rank=r, world_size=world_size) for r in range(world_size)]
    per_rank = [ids_of(f.epoch(1)) for f in feeds]
    counts = [len(list(f.epoch(1))) for f in feeds]
    assert len(set(counts)) == 1 and counts[0] == len(feeds[0])
    assert all(len(ids) == feeds[0].num_samples == -(-103 // world_size) for ids in per_rank)
    everything = sum(per_rank, [])
    assert set(everything) == set(range(103))
    assert len(everything) - 103 == feeds[0].num_samples * world_size - 103  # only the padding repeats


def test_batch_feed_matches_distributed_sampler(entry):
    x, y = open_split(entry.path, "train")
    from torch.utils.data.distributed import DistributedSampler

    sampler = DistributedSampler(range(103), num_replicas=2, rank=1, shuffle=True, seed=4)
    sampler.set_epoch(6)
    feed = BatchFeed(x, y, 103, seed=4, rank=1, world_size=2)
    # DistributedSampler seeds with seed + epoch as well; the same permutation and the same padding.
    assert feed.indices(6).tolist() == list(sampler)


def test_batch_feed_rejects_bad_arguments(entry):
    x, y = open_split(entry.path, "train")
    with pytest.raises(UsageError):
        BatchFeed(x, y, 0)
    with pytest.raises(UsageError):
        BatchFeed(x, y, 4, rank=2, world_size=2)
    with pytest.raises(UsageError):
        BatchFeed(x, y[:-1], 4)


# ----------------------------------------------------------------------------- StreamFeed
def stream(entry, **kw):
    return StreamFeed(entry.path / "train.arrow", kw.pop("batch_size", 10), chunk_rows=kw.pop("chunk_rows", 9), **kw)


def test_stream_feed_covers_each_row_once_per_epoch(entry):
    feed = stream(entry, seed=5)
    for epoch in (0, 1):
        batches = list(feed.epoch(epoch))
        assert sorted(ids_of(batches)) == list(range(103))
        assert [len(b[1]) for b in batches] == [10] * 10 + [3] and len(feed) == 11
        for xb, yb in batches:
            assert xb.dtype == torch.float32 and xb.is_contiguous()
            np.testing.assert_array_equal(yb.numpy(), xb[:, 0].numpy().astype(int) % 3)
    assert ids_of(feed.epoch(0)) != ids_of(feed.epoch(1))
    assert ids_of(feed.epoch(0)) == ids_of(stream(entry, seed=5).epoch(0))


def test_stream_feed_without_shuffle_reads_in_file_order(entry):
    assert ids_of(stream(entry, shuffle=False).epoch(0)) == list(range(103))
    x, y = open_split(entry.path, "train")
    assert ids_of(stream(entry, shuffle=False, chunk_rows=None).epoch(0)) == ids_of(BatchFeed(x, y, 10, shuffle=False).epoch(0))


@pytest.mark.parametrize("world_size", [2, 3])
def test_stream_feed_shards_cover_all_rows_with_equal_batch_counts(entry, world_size):
    feeds = [stream(entry, seed=1, rank=r, world_size=world_size, batch_size=6) for r in range(world_size)]
    per_rank = [ids_of(f.epoch(3)) for f in feeds]
    counts = [len(list(f.epoch(3))) for f in feeds]
    assert len(set(counts)) == 1 and counts[0] == len(feeds[0])
    assert all(len(ids) == feeds[0].num_samples for ids in per_rank)
    assert set(sum(per_rank, [])) == set(range(103))
    assert len(set(sum(per_rank, []))) == 103


def test_stream_feed_memory_is_one_chunk(entry, monkeypatch):
    """Reads go through pread, one chunk at a time: no read ever asks for more than a chunk."""
    sizes = []
    real = feed_module.os.preadv

    def spy(fd, buffers, offset):
        sizes.append(sum(len(b) for b in buffers))
        return real(fd, buffers, offset)

    monkeypatch.setattr(feed_module.os, "preadv", spy)
    list(stream(entry, chunk_rows=9).epoch(0))
    assert max(sizes) <= 9 * 4 * 4


# ----------------------------------------------------------------------------- make_feed
def test_make_feed_modes(entry, monkeypatch):
    assert isinstance(make_feed(entry.path, "train", 8, mode="memory"), BatchFeed)
    assert isinstance(make_feed(entry.path, "train", 8, mode="stream"), StreamFeed)
    assert isinstance(make_feed(entry.path, "val", 8), BatchFeed)
    monkeypatch.setattr(feed_module, "available_memory", lambda: 1000)  # file > half of "free" memory
    streamed = make_feed(entry.path, "train", 8, shuffle=False, rank=1, world_size=2)
    assert isinstance(streamed, StreamFeed) and len(streamed) == 7
    with pytest.raises(UsageError):
        make_feed(entry.path, "train", 8, mode="disk")


def test_available_memory_reads_meminfo():
    assert feed_module.available_memory() > 0


def test_make_feed_checks_the_file(tmp_path, entry):
    import shutil

    copy = tmp_path / entry.path.name
    shutil.copytree(entry.path, copy)
    with open(copy / "train.arrow", "r+b") as f:
        f.truncate(100)
    with pytest.raises(CacheError, match="corrupt"):
        make_feed(copy, "train", 8, mode="stream")
