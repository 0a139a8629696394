"""CANDLE's noise studies (candle_ray.data.noise) on an in-memory feed."""

import numpy as np
import pytest
import torch

from candle_ray.data.feed import BatchFeed
from candle_ray.data.noise import add_noise
from candle_ray.errors import UsageError


def _feed(n=4000, d=6, classes=2, seed=0):
    rng = np.random.default_rng(seed)
    return BatchFeed(rng.normal(size=(n, d)).astype(np.float32), rng.integers(0, classes, n), 32)


def _noised(feed, **keys):
    clean_x, clean_y = feed.x.clone(), feed.y.clone()
    add_noise(feed, {"add_noise": True, **keys}, 7, "classification")
    return clean_x, clean_y


def test_label_noise_flips_that_share_of_the_labels_and_nothing_else():
    feed = _feed()
    x, y = _noised(feed, label_noise=0.3, noise_gaussian=True)  # CANDLE's elif: labels only
    flipped = (feed.y != y).float().mean().item()
    assert 0.27 < flipped < 0.33 and torch.equal(feed.y[feed.y != y], 1 - y[feed.y != y])
    assert torch.equal(feed.x, x)
    again = _feed()
    _noised(again, label_noise=0.3)
    assert torch.equal(again.y, feed.y)  # the run's seed decides


def test_correlated_label_noise_flips_only_rows_above_the_threshold_of_a_column():
    feed = _feed()
    x, y = _noised(feed, label_noise=1.0, noise_correlated=True, feature_col=[2], feature_threshold=0.5)
    above = x[:, 2] > 0.5
    assert torch.equal(feed.y[above], 1 - y[above]) and torch.equal(feed.y[~above], y[~above])
    with pytest.raises(UsageError, match="feature_col 9 is not a column of the 6 features"):
        _noised(_feed(), label_noise=0.5, noise_correlated=True, feature_col=[9])


def test_gaussian_noise_has_std_dev_and_leaves_the_labels():
    feed = _feed()
    x, y = _noised(feed, noise_gaussian=True, std_dev=0.5)
    assert abs((feed.x - x).std().item() - 0.5) < 0.01 and torch.equal(feed.y, y)


def test_what_candle_ray_cannot_add_is_refused_and_off_means_untouched():
    with pytest.raises(UsageError, match="label_noise flips the labels of a two-class classifier"):
        _noised(_feed(classes=3), label_noise=0.2)
    with pytest.raises(UsageError, match="noise_cluster=True: CANDLE's cluster and column noise are not implemented"):
        _noised(_feed(), noise_cluster=True)
    feed = _feed()
    x, y = feed.x.clone(), feed.y.clone()
    add_noise(feed, {"add_noise": False, "label_noise": 0.5}, 7, "classification")
    assert torch.equal(feed.x, x) and torch.equal(feed.y, y)
