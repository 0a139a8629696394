"""`train_fraction`: train on a seeded share of the training rows (worker side), for learning curves.

A learning curve (`candle-ray lc`, CANDLE's data-scaling studies of drug response) trains one configuration
on growing shares of the training split and scores each on the same validation rows: how much would more
data help? The share is drawn once per run from its rng_seed (every DDP rank draws the same rows), by class
for a classifier so that a small share keeps every class's part of the rows; the count is always
`rows(n, fraction)` of the n rows, so the driver knows each run's training size without asking it. The
class weights and a regressor's target scaler are fitted on the rows the run trains on.
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


def chosen(labels: np.ndarray, share: float, seed: int, by_class: bool) -> np.ndarray | None:
    """The sorted indices of the training rows a run keeps, or None for all of them. `by_class` (a classifier
    with one label column): each class keeps its part of the rows (largest remainders to the classes that
    lose the most to rounding), so a class is gone only where its part rounds to 0 rows."""
    n = len(labels)
    want = rows(n, share)
    if want >= n:
        return None
    rng = np.random.default_rng([seed, 20260])  # its own stream: the run's other draws stay as they were
    if not by_class or labels.ndim != 1:
        return np.sort(rng.choice(n, size=want, replace=False))
    classes, counts = np.unique(labels, return_counts=True)
    exact = counts * want / n
    take = np.floor(exact).astype(int)
    take[np.argsort(-(exact - take), kind="stable")[: want - int(take.sum())]] += 1
    picked = [rng.choice(np.flatnonzero(labels == c), size=k, replace=False) for c, k in zip(classes, take) if k]
    return np.sort(np.concatenate(picked))


def keep_rows(feed, keep: np.ndarray | None):
    """`feed` (a training feed) over only the rows `keep`; the same feed where `keep` is None."""
    if keep is None:
        return feed
    from candle_ray.data.feed import BatchFeed, JoinedFeed

    if not isinstance(feed, (BatchFeed, JoinedFeed)):
        raise UsageError("train_fraction needs the training rows in memory, but this split is streamed from disk "
                         "(larger than half the free memory); run on a machine with more memory or leave it at 1")
    index = keep.tolist()
    shard = {"shuffle": feed.shuffle, "seed": feed.seed, "rank": feed.rank, "world_size": feed.world_size,
             "pad": feed.pad}
    if isinstance(feed, BatchFeed):
        return BatchFeed(feed.x[index].numpy(), feed.y[index].numpy(), feed.batch_size, **shard)
    columns = {name: values[index].numpy() for name, values in feed.columns.items()}
    slots = [{"table": table, "key": key} for table, key in feed.slots]
    tables = {name: values.numpy() for name, values in feed.tables.items()}
    return JoinedFeed(tables, columns, slots, feed.label_columns, feed.batch_size, **shard)
