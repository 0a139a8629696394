"""CANDLE's noise studies (common/noise_utils.add_noise, NT3's nt3_noise_model.txt): noise put into the
training rows once, before training, to study how models and their uncertainty hold up under it.

With `add_noise` on, as CANDLE's if/elif chain reads the keys, the first that applies is the only one:
- `label_noise` p > 0: each training label is flipped with probability p (two classes: 0 <-> 1; CANDLE
  inverts the one-hot, which only two classes survive); with `noise_correlated`, only rows whose value in a
  `feature_col` column is above `feature_threshold`, column by column, as CANDLE loops (a row above the
  threshold in two columns may be flipped twice);
- else `noise_gaussian`: N(0, `std_dev`) added to every training feature;
- else `noise_cluster` / `noise_column`: not implemented, refused with one line.
Validation and test rows, the linear baseline and the class weights keep the clean data. The draws come
from the run's rng_seed, so every DDP rank adds the same noise.
"""

from __future__ import annotations

from candle_ray.errors import UsageError

# The keys and their values when unset (CANDLE's nt3_default_model.txt; feature_col a list of column indices).
NOISE_DEFAULTS = {"add_noise": False, "label_noise": 0.0, "noise_correlated": False, "feature_col": [0],
                  "feature_threshold": 0.01, "noise_gaussian": False, "std_dev": 0.5, "noise_cluster": False,
                  "noise_column": False}


def _settings(config: dict) -> dict:
    return {key: config.get(key, default) for key, default in NOISE_DEFAULTS.items()}


def check_noise_keys(config: dict) -> None:
    """What the noise keys ask for must be something this module does."""
    s = _settings(config)
    others = s["noise_cluster"] or s["noise_column"]
    if s["add_noise"] and not s["label_noise"] and not s["noise_gaussian"] and others:
        which = "noise_cluster" if s["noise_cluster"] else "noise_column"
        raise UsageError(f"add_noise with {which}=True: CANDLE's cluster and column noise are not implemented; "
                         f"use label_noise or noise_gaussian")


def add_noise(feed, config: dict, seed: int, task: str) -> None:
    """Put CANDLE's training noise into `feed`'s rows (an in-memory feed of a matrix dataset), in place."""
    s = _settings(config)
    if not s["add_noise"]:
        return
    check_noise_keys(config)
    if not (hasattr(feed, "x") and hasattr(feed, "y")):
        raise UsageError("add_noise needs the training rows in memory (a matrix dataset, --feed memory); this "
                         "dataset is joined from tables or streamed")
    import numpy as np
    import torch

    rng = np.random.default_rng([int(seed), 0x6E6F6973])
    if s["label_noise"]:
        y = feed.y.cpu().numpy().copy()
        if task != "classification" or y.ndim != 1 or not np.isin(y, (0, 1)).all():
            raise UsageError("label_noise flips the labels of a two-class classifier (CANDLE inverts its one-hot "
                             "labels); this dataset is not one: use noise_gaussian")
        x = feed.x.cpu().numpy()
        for rows in _flip_masks(x, s, rng):
            y[rows] = 1 - y[rows]
        feed.y = torch.from_numpy(y).to(feed.y.device)
    elif s["noise_gaussian"]:
        noise = rng.standard_normal(tuple(feed.x.shape), dtype=np.float32) * np.float32(s["std_dev"])
        feed.x = feed.x + torch.from_numpy(noise).to(feed.x.device)


def _flip_masks(x, s: dict, rng) -> list:
    """The rows each pass flips: one pass over all rows, or one per feature column with noise_correlated."""
    level = float(s["label_noise"])
    if not s["noise_correlated"]:
        return [rng.random(len(x)) < level]
    columns = [int(c) for c in s["feature_col"]]
    if bad := [c for c in columns if not 0 <= c < x.shape[1]]:
        raise UsageError(f"feature_col {bad[0]} is not a column of the {x.shape[1]} features; use 0..{x.shape[1] - 1}")
    return [(x[:, c] > float(s["feature_threshold"])) & (rng.random(len(x)) < level) for c in columns]
