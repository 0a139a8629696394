"""`train_fraction`: train on a seeded share of the training rows (worker side), for learning curves.

A learning curve (`candle-ray lc`, CANDLE's data-scaling studies of drug response) trains one configuration
on growing shares of the training split and scores each on the same validation rows: how much would more
data help? The share is drawn once per run from its rng_seed (every DDP rank draws the same rows), by class
for a classifier so that a small share keeps every class's part of the rows; the count is always
`rows(n, fraction)` of the n rows, so the driver knows each run's training size without asking it. A dataset
with a group column (a patient's samples) draws whole groups instead, `rows(groups, fraction)` of them: the
curve then asks whether more patients would help, its sizes in groups. The
class weights and a regressor's target scaler are fitted on the rows the run trains on. The kept rows are
gathered into memory from the memory-mapped split, also where the whole split would stream (`feed_mode`).
"""

from __future__ import annotations

import numpy as np

from candle_ray.errors import UsageError

DEFAULTS = {"train_fraction": 1.0}  # known on every experiment: all the training rows unless set


def fraction(config: dict) -> float:
    return float(config.get("train_fraction", DEFAULTS["train_fraction"]))


def rows(n: int, share: float) -> int:
    """How many of n training rows a run with this `train_fraction` trains on (at least one)."""
    return max(1, min(n, round(share * n)))


def chosen(labels: np.ndarray, share: float, seed: int, by_class: bool,
           groups: np.ndarray | None = None) -> np.ndarray | None:
    """The sorted indices of the training rows a run keeps, or None for all of them. `by_class` (a classifier
    with one label column): each class keeps its part of the rows (largest remainders to the classes that
    lose the most to rounding), so a class is gone only where its part rounds to 0 rows. With `groups` (each
    row's, a dataset's group column): `rows(groups, share)` whole groups, every row of each, unstratified."""
    rng = np.random.default_rng([seed, 20260])  # its own stream: the run's other draws stay as they were
    if groups is not None:
        keys = np.unique(groups)
        want = rows(len(keys), share)
        return None if want >= len(keys) else np.flatnonzero(np.isin(groups, rng.choice(keys, size=want, replace=False)))
    n = len(labels)
    want = rows(n, share)
    if want >= n:
        return None
    if not by_class or labels.ndim != 1:
        return np.sort(rng.choice(n, size=want, replace=False))
    classes, counts = np.unique(labels, return_counts=True)
    exact = counts * want / n
    take = np.floor(exact).astype(int)
    take[np.argsort(-(exact - take), kind="stable")[: want - int(take.sum())]] += 1
    picked = [rng.choice(np.flatnonzero(labels == c), size=k, replace=False) for c, k in zip(classes, take) if k]
    return np.sort(np.concatenate(picked))


def feed_mode(entry_path, keep: np.ndarray | None, mode: str) -> str:
    """The training feed's mode for a run that keeps the rows `keep`: "memory" where they take at most half
    the free memory, even if the whole split would stream (`make_feed` maps the split without reading it,
    and `keep_rows` copies out only these rows: a learning curve's small shares of a split larger than
    memory); `mode` otherwise, and for all the rows."""
    if keep is None or mode == "memory":
        return mode
    from candle_ray.data.cache_format import read_manifest
    from candle_ray.data.feed import fits_in_memory

    manifest = read_manifest(entry_path)
    if manifest.get("kind") == "joined":
        return mode  # a joined split's feed is memory-mapped whatever the mode
    split = manifest["splits"]["train"]
    return "memory" if fits_in_memory(int(split["bytes"]) * len(keep) / max(int(split["rows"]), 1)) else mode


def keep_rows(feed, keep: np.ndarray | None):
    """`feed` (a training feed) over only the rows `keep`; the same feed where `keep` is None."""
    if keep is None:
        return feed
    from candle_ray.data.feed import BatchFeed, JoinedFeed

    if not isinstance(feed, (BatchFeed, JoinedFeed)):
        raise UsageError(f"train_fraction keeps {len(keep):,} training rows, more than half the free memory holds; "
                         f"use a smaller train_fraction (1 streams the whole split from disk) or a machine with more "
                         f"memory")
    index = keep.tolist()
    shard = {"shuffle": feed.shuffle, "seed": feed.seed, "rank": feed.rank, "world_size": feed.world_size,
             "pad": feed.pad}
    if isinstance(feed, BatchFeed):
        return BatchFeed(feed.x[index].numpy(), feed.y[index].numpy(), feed.batch_size, **shard)
    columns = {name: values[index].numpy() for name, values in feed.columns.items()}
    slots = [{"table": table, "key": key} for table, key in feed.slots]
    tables = {name: values.numpy() for name, values in feed.tables.items()}
    return JoinedFeed(tables, columns, slots, feed.label_columns, feed.batch_size, **shard)
