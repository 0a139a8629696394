"""Regression done right: targets standardised on the training rows, the head starting at the target
mean, metrics and predictions in the targets' own units (checkpoint -> predict round trip)."""

import numpy as np
import pandas as pd
import pytest
import torch

from candle_ray import objectives
from candle_ray import predict as predicting
from candle_ray.data.cache import Cache
from candle_ray.data.features import read_for_prediction
from candle_ray.data.spec import TableDataset
from candle_ray.loop import World, train_epochs

OFFSET, SPREAD = 1000.0, 30.0  # far from 0 and 1: a net fitting raw targets starts ~1000 off


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("regression")
    rng = np.random.default_rng(0)
    X = rng.standard_normal((500, 20))
    w = rng.standard_normal(20) / np.sqrt(20)
    y = OFFSET + SPREAD * (X @ w) + rng.normal(0, SPREAD * 0.1, 500)
    frame = pd.DataFrame(X, columns=[f"g{i}" for i in range(20)]).assign(response=y)
    frame.iloc[:400].to_csv(tmp / "train.csv", index=False)
    frame.iloc[400:].to_csv(tmp / "new.csv", index=False)
    ds = TableDataset(str(tmp / "train.csv"), label="response", task="regression", val_fraction=0.2)
    entry = Cache(tmp / "cache").prepare(ds, log=lambda *_: None)
    return tmp, entry


def job(entry, run_dir, **config):
    from candle_ray.data.features import describe
    from candle_ray.experiment import model_shape

    base = {"epochs": 25, "batch_size": 32, "learning_rate": 0.003, "optimizer": "adam", "dropout": 0.0,
            "activation": "relu", "dense": [32], "rng_seed": 1}
    return {"config": {**base, **config}, "model": "mlp", "task": "regression", "model_shape": model_shape(entry),
            "data": describe(entry), "entry": str(entry.path), "run_dir": str(run_dir), "metric": "val_loss",
            "mode": "min", "threads": 1}


def test_large_target_offset_reaches_r2_09_and_predicts_in_target_units(table, tmp_path):
    tmp, entry = table
    history = list(train_epochs(job(entry, tmp_path), World()))
    # The first epoch is already near the targets (the head starts at their mean): no 1000-unit start.
    assert history[0]["loss"] < 5 * SPREAD ** 2
    best = max(m["val_r2"] for m in history)
    assert best >= 0.9
    member = predicting.load_member(tmp_path)
    scaler = member.data["target_scaler"]
    assert scaler["mean"][0] == pytest.approx(OFFSET, abs=10) and scaler["scale"][0] == pytest.approx(SPREAD, rel=0.3)
    X, y, _ = read_for_prediction(tmp / "new.csv", member.data)
    pred = predicting.predict([member], predicting.array_batches(X))
    r2 = 1 - np.sum((y - pred.mean) ** 2) / np.sum((y - y.mean()) ** 2)
    assert r2 >= 0.85 and abs(pred.mean.mean() - OFFSET) < 10  # held-out rows, in the targets' units


def test_val_metrics_do_not_depend_on_target_scaling_at_the_start(table, tmp_path):
    """The metrics are in target units either way; standardising changes how training goes, not units."""
    _, entry = table
    scaled = next(iter(train_epochs(job(entry, tmp_path / "std", learning_rate=1e-9), World())))
    raw = next(iter(train_epochs(job(entry, tmp_path / "none", learning_rate=1e-9, target_scaling="none"),
                                 World())))
    # An untrained net predicts the training targets' mean for every row (mean in the bias, zero output
    # kernel), both ways: R² just below 0, that of a constant. Without the mean in the bias val_loss would
    # be ~OFFSET²; with Keras' random output kernel the standardised net started at R² -0.76 here.
    for m in (scaled, raw):
        assert m["val_loss"] < 2 * SPREAD ** 2 and -0.1 < m["val_r2"] <= 1e-9
    assert scaled["val_r2"] == pytest.approx(raw["val_r2"], abs=1e-4)


@pytest.mark.parametrize("heads", [1, 2, 3])
def test_to_original_inverts_standardising_for_numpy_and_torch(heads):
    scaler = {"mean": [5.0, -2.0], "scale": [3.0, 0.5]}
    rng = np.random.default_rng(1)
    raw = rng.standard_normal((2, 7, 2 * heads)).astype(np.float32)
    a = objectives.to_original(raw, scaler, heads)
    b = objectives.to_original(torch.from_numpy(raw), scaler, heads).numpy()
    assert np.allclose(a, b, atol=1e-5)
    per = raw.reshape(2, 7, 2, heads)
    assert np.allclose(a.reshape(2, 7, 2, heads)[..., 0], per[..., 0] * [3.0, 0.5] + [5.0, -2.0], atol=1e-5)
    if heads == 2:  # log σ² shifts by 2 log(scale)
        assert np.allclose(a.reshape(2, 7, 2, 2)[..., 1], per[..., 1] + 2 * np.log([3.0, 0.5]), atol=1e-5)
    y = torch.tensor([[8.0, -1.5], [2.0, -2.5]])
    z = objectives.standardize_targets(y, scaler)
    assert torch.allclose(objectives.to_original(z, scaler, 1), y)


def test_het_loss_in_target_units_matches_candle_loss_on_original_outputs():
    scaler = {"mean": [100.0], "scale": [10.0]}
    reg = objectives.Regression("het", target_stats=scaler)
    out = torch.tensor([[0.5, -1.0], [-0.2, 0.3]])
    y = torch.tensor([104.0, 99.0])
    sums = reg.eval_sums(out, y)
    expected = objectives.heteroscedastic_loss(objectives.to_original(out, scaler, 2), y).item()
    assert reg.eval_metrics(sums)["val_loss"] == pytest.approx(expected, rel=1e-5)
    # training fits z: the same loss on standardised targets
    assert reg.loss(out, y).item() == pytest.approx(objectives.heteroscedastic_loss(out, (y - 100) / 10).item(), rel=1e-5)
