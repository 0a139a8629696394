"""The training loop without Ray: determinism, exact resume, CANDLE's callbacks (early stop, timeout)."""

import pytest

from candle_ray.data.cache import Cache
from candle_ray.data.synthetic import synthesize
from candle_ray.experiment import load_experiment
from candle_ray.loop import World, train_epochs
from tests.conftest import ROOT


@pytest.fixture(scope="module")
def entry(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("loop")
    nt3 = load_experiment(ROOT / "experiments" / "nt3.py")
    ds = synthesize(nt3.dataset, tmp / "files", rows=(64, 16), features=200, seed=5)
    return Cache(tmp / "cache").prepare(ds, log=lambda *_: None)


def job(entry, run_dir, **config):
    base = {"epochs": 4, "batch_size": 16, "learning_rate": 0.05, "optimizer": "sgd", "momentum": 0.9,
            "dropout": 0.2, "activation": "relu", "conv": [4, 10, 1], "pool": [2], "dense": [8], "rng_seed": 3,
            "timeout": -1}
    return {"config": {**base, **config}, "model": "nt3", "task": "classification",
            "model_shape": {"input_dim": entry.num_features, "classes": 2}, "entry": str(entry.path),
            "run_dir": str(run_dir), "metric": "val_loss", "mode": "min", "threads": 1, "precision": "auto"}


KEYS = ("epoch", "loss", "accuracy", "val_loss", "val_accuracy", "lr")


def numbers(history):
    return [tuple(m[k] for k in KEYS) for m in history]


def test_same_seed_same_numbers(entry, tmp_path):
    a = list(train_epochs(job(entry, tmp_path / "a"), World()))
    b = list(train_epochs(job(entry, tmp_path / "b"), World()))
    assert numbers(a) == numbers(b) and len(a) == 4
    c = list(train_epochs(job(entry, tmp_path / "c", rng_seed=4), World()))
    assert numbers(c) != numbers(a)


def test_resume_continues_exactly(entry, tmp_path):
    """Stopping after 2 epochs and resuming from `last` gives the uninterrupted run's numbers."""
    whole = numbers(train_epochs(job(entry, tmp_path / "whole"), World()))
    first = numbers(train_epochs(job(entry, tmp_path / "split", epochs=2), World()))
    resumed = list(train_epochs(job(entry, tmp_path / "split"), World()))
    assert [m["replayed"] for m in resumed[:2]] == [True, True]  # the driver can fill in what it missed
    assert numbers(resumed[:2]) == first
    assert numbers(resumed) == whole


def test_early_stop(entry, tmp_path):
    out = list(train_epochs(job(entry, tmp_path, epochs=30, learning_rate=1e-9, early_stop=True,
                                early_stop_patience=2), World()))
    assert len(out) < 30 and out[-1]["stop_reason"].startswith("early stop")


def test_timeout(entry, tmp_path):
    out = list(train_epochs(job(entry, tmp_path, epochs=50, timeout=1e-6), World()))
    assert len(out) == 1 and out[0]["stop_reason"].startswith("timeout")


def test_reduce_lr_on_plateau_can_be_turned_off(entry, tmp_path):
    args = dict(epochs=4, learning_rate=1e-9, reduce_lr_patience=1)
    on = [m["lr"] for m in train_epochs(job(entry, tmp_path / "on", **args), World())]
    off = [m["lr"] for m in train_epochs(job(entry, tmp_path / "off", reduce_lr=False, **args), World())]
    assert on[-1] < on[0] and off == [1e-9] * 4


def test_checkpoints_best_and_last(entry, tmp_path):
    from candle_ray import checkpoint

    out = list(train_epochs(job(entry, tmp_path), World()))
    best = min(out, key=lambda m: m["val_loss"])
    assert checkpoint.pointer(tmp_path / "checkpoints", "best")["epoch"] == best["epoch"]
    assert checkpoint.pointer(tmp_path / "checkpoints", "last")["epoch"] == 4


def test_autoencoder_reports_reconstruction_correlation(tmp_path):
    """P1B1-style: the target is the input; val_corr is Pearson's r of inputs and reconstructions."""
    exp = load_experiment(ROOT / "experiments" / "p1b1.py")
    ds = synthesize(exp.dataset, tmp_path / "files", rows=(60, 20), features=80, seed=2)
    entry = Cache(tmp_path / "cache").prepare(ds, log=lambda *_: None)
    from candle_ray.experiment import model_shape

    assert model_shape(entry) == {"input_dim": 80, "classes": 80}
    job = {"config": {**exp.defaults, "epochs": 3, "dense": [32, 8], "learning_rate": 0.01, "batch_size": 20},
           "model": "p1b1", "task": "autoencoder", "model_shape": model_shape(entry), "entry": str(entry.path),
           "run_dir": str(tmp_path / "run"), "metric": "val_loss", "mode": "min", "threads": 1}
    out = list(train_epochs(job, World()))
    assert len(out) == 3 and all(-1 <= m["val_corr"] <= 1 for m in out) and "accuracy" not in out[0]
    assert out[-1]["val_loss"] < out[0]["val_loss"]


def test_regression_reports_r2_mae_corr(tmp_path):
    from candle_ray import TableDataset
    from candle_ray.experiment import model_shape

    ds = TableDataset((tmp_path / "growth.csv").as_uri(), label="growth", drop=("sample_id",), task="regression")
    ds = synthesize(ds, tmp_path / "files", rows=(120, 2), features=40, seed=4)  # val: 10 % of train
    entry = Cache(tmp_path / "cache").prepare(ds, log=lambda *_: None)
    assert model_shape(entry) == {"input_dim": 40, "classes": 1}
    job = {"config": {"epochs": 6, "batch_size": 16, "learning_rate": 0.01, "optimizer": "adam", "dense": [32],
                      "dropout": 0.0, "activation": "relu", "rng_seed": 1},
           "model": "mlp", "task": "regression", "model_shape": model_shape(entry), "entry": str(entry.path),
           "run_dir": str(tmp_path / "run"), "metric": "val_loss", "mode": "min", "threads": 1}
    out = list(train_epochs(job, World()))
    last = out[-1]
    assert {"val_r2", "val_mae", "val_corr"} <= set(last) and "accuracy" not in last
    assert last["val_loss"] < out[0]["val_loss"] and last["val_r2"] > out[0]["val_r2"]
    assert last["val_mae"] > 0 and -1 <= last["val_corr"] <= 1
