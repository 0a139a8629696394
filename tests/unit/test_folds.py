"""Fold assignment for `candle-ray cv`: plain, stratified and grouped, all seeded."""

import numpy as np
import pytest

from candle_ray.data.folds import assign
from candle_ray.errors import DataError, UsageError


def test_plain_folds_are_balanced_and_seeded():
    a = assign(103, 5, seed=1)
    assert sorted(np.bincount(a)) == [20, 20, 21, 21, 21]
    assert np.array_equal(a, assign(103, 5, seed=1)) and not np.array_equal(a, assign(103, 5, seed=2))


def test_stratified_folds_keep_the_class_mix():
    labels = np.array([0] * 90 + [1] * 10)
    a = assign(100, 5, seed=0, labels=labels)
    for fold in range(5):
        assert np.sum(labels[a == fold] == 1) == 2 and np.sum(a == fold) == 20
    plain = [np.sum(labels[assign(100, 5, seed=s) == 0] == 1) for s in range(20)]
    assert plain != [2] * 20  # without stratification the minority class is spread unevenly


def test_grouped_folds_never_split_a_group():
    rng = np.random.default_rng(0)
    groups = np.array([f"drug{g}" for g in rng.integers(0, 23, 500)], dtype=object)
    a = assign(500, 4, seed=3, groups=groups)
    for g in np.unique(groups):
        assert len(set(a[groups == g])) == 1
    sizes = np.bincount(a)
    assert sizes.max() - sizes.min() < 60  # balanced by rows, like GroupKFold


def test_bad_fold_requests():
    with pytest.raises(UsageError, match="at least 2"):
        assign(10, 1)
    with pytest.raises(DataError, match="3 rows cannot make 5 folds"):
        assign(3, 5)
    with pytest.raises(DataError, match="2 distinct groups cannot make 3 folds"):
        assign(10, 3, groups=np.array(["a", "b"] * 5, dtype=object))
    with pytest.raises(UsageError, match="cannot be combined"):
        assign(10, 2, labels=np.zeros(10), groups=np.zeros(10))


def test_cv_stratifies_a_classifier_unless_told_otherwise(tmp_path):
    """`cv` and `tune --cv` by default ("auto"): a classifier's folds keep its class mix, a regressor's are plain;
    `cv --no-stratify` gives plain folds to a classifier too."""
    import pandas as pd

    from candle_ray.data import folds
    from candle_ray.data.cache import Cache
    from candle_ray.data.spec import TableDataset
    from candle_ray.sweep import fold_assignment

    labels = np.array([0] * 90 + [1] * 10)
    frame = pd.DataFrame({"y": labels, "g": np.arange(100.0)})
    frame.to_csv(tmp_path / "t.csv", index=False)
    entry = Cache(tmp_path / "c").prepare(TableDataset(str(tmp_path / "t.csv"), label="y", val_fraction=0.2),
                                          log=lambda *_: None)
    pooled = folds.pooled_labels(entry)
    cv = {"folds": 5, "group_by": None, "seed": 0}
    auto = fold_assignment(entry, {**cv, "stratify": "auto"})
    assert [int(np.sum(pooled[auto == k] == 1)) for k in range(5)] == [2] * 5
    plain = [fold_assignment(entry, {**cv, "seed": s, "stratify": False}) for s in range(10)]
    assert [int(np.sum(pooled[a == 0] == 1)) for a in plain] != [2] * 10
