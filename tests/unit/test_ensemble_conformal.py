"""The ensemble's split-conformal check, without Ray: two members trained through the loop, pooled on a
validation split large enough that the measured coverage says something about the calibration."""

import numpy as np
import pandas as pd

from candle_ray.data.cache import Cache
from candle_ray.data.spec import TableDataset
from candle_ray.ensemble import evaluate
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
