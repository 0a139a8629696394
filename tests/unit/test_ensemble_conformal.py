"""The ensemble's evaluation without Ray, members trained through the loop: its split-conformal check, pooled
on a validation split large enough that the measured coverage says something about the calibration, and
when its linear baseline joins the pool."""

import numpy as np
import pandas as pd

from candle_ray import baseline, checkpoint
from candle_ray.data.cache import Cache
from candle_ray.data.spec import TableDataset
from candle_ray.ensemble import BEATEN_MIN_ROWS, baseline_beaten, evaluate
from tests.unit.test_predict import train


def test_ensemble_conformal_sets_cover_near_nominal(tmp_path):
    rng = np.random.default_rng(3)
    n, d = 1400, 12
    y = rng.integers(0, 3, n)
    X = rng.normal(size=(n, d))
    X[:, :4] += 1.5 * np.eye(3)[y] @ rng.normal(size=(3, 4))  # overlapping classes: sets of one and two
    frame = pd.DataFrame(X, columns=[f"g{i}" for i in range(d)])
    frame.insert(0, "label", np.array(["a", "b", "c"])[y])
    frame.iloc[:400].to_csv(tmp_path / "train.csv", index=False)
    frame.iloc[400:].to_csv(tmp_path / "val.csv", index=False)
    entry = Cache(tmp_path / "cache").prepare(TableDataset(tmp_path / "train.csv", label="label",
                                                           val=tmp_path / "val.csv"), log=lambda *_: None)
    members = [train(entry, tmp_path / f"m{seed}", rng_seed=seed) for seed in (1, 2)]
    for alpha in (0.3, 0.1):
        metrics, _ = evaluate(members, entry, tmp_path / f"uq{alpha}", alpha=alpha, seed=0)
        assert metrics["ensemble_val_rows"] == 1000
        # 500 calibration rows, 500 measured: one standard error is 0.013 (alpha 0.1) to 0.02 (0.3).
        assert abs(metrics["conformal_val_coverage"] - (1 - alpha)) <= 0.05, (alpha, metrics["conformal_val_coverage"])
    assert 1 < metrics["conformal_val_set_size"] < 2.5  # at alpha 0.1: informative, not every class


def test_a_baseline_the_networks_clearly_beat_leaves_the_pool_unless_its_share_was_chosen(tmp_path):
    """XOR-like classes: no linear model separates them, a small network does. On 300 validation rows the
    networks' per-row losses are far below the baseline's, so the ensemble pools the networks alone; a
    share the user chose (`--baseline-share`) keeps the baseline in."""
    rng = np.random.default_rng(5)
    X = rng.normal(size=(700, 6))
    labels = np.where(X[:, 0] * X[:, 1] > 0, "same", "opposite")
    frame = pd.DataFrame(X, columns=[f"g{i}" for i in range(6)])
    frame.insert(0, "label", labels)
    frame.iloc[:400].to_csv(tmp_path / "train.csv", index=False)
    frame.iloc[400:].to_csv(tmp_path / "val.csv", index=False)
    entry = Cache(tmp_path / "cache").prepare(TableDataset(tmp_path / "train.csv", label="label",
                                                           val=tmp_path / "val.csv"), log=lambda *_: None)
    members = [train(entry, tmp_path / f"m{seed}", rng_seed=seed, epochs=15, dense=[32]) for seed in (1, 2)]
    checkpoint.save(tmp_path / "baseline", baseline.checkpoint_state(baseline.fit(entry), entry, 0.5), kinds=("best",))

    metrics, _ = evaluate([*members, tmp_path / "baseline"], entry, tmp_path / "uq")
    assert metrics["ensemble_baseline_share"] == 0.0 and metrics["ensemble_baseline_paired_t"] >= 3, metrics
    assert metrics["ensemble_val_accuracy"] == metrics["members_val_accuracy"] > 0.8  # the networks' own pool
    kept, _ = evaluate([*members, tmp_path / "baseline"], entry, tmp_path / "uq-kept", keep_baseline=True)
    assert kept["ensemble_baseline_share"] == 0.5
    assert kept["ensemble_baseline_paired_t"] == metrics["ensemble_baseline_paired_t"]


def test_the_baseline_stays_unless_many_rows_show_the_networks_better():
    rng = np.random.default_rng(0)
    y = rng.normal(size=400)
    networks, linear = y + rng.normal(scale=0.5, size=400), y + rng.normal(scale=1.0, size=400)
    beaten, t = baseline_beaten(networks, linear, y)
    assert beaten and t > 3
    few = BEATEN_MIN_ROWS - 1  # however clear, a handful of rows never decides
    assert baseline_beaten(networks[:few], linear[:few], y[:few])[0] is False
    assert baseline_beaten(networks, networks + 0.01 * rng.normal(size=400), y)[0] is False  # a tie keeps it
    assert baseline_beaten(linear, networks, y)[1] < 0  # the baseline better: t negative
    probs = np.array([[0.9, 0.1], [0.2, 0.8]] * 40)  # classifiers: cross-entropy of the true class
    labels = np.array([0, 1] * 40)
    assert baseline_beaten(probs, np.full_like(probs, 0.5), labels)[0]
