"""`tune --cv K` trials without Ray: K fold models trained in lockstep are one model choice. Every fold's
best checkpoint is the epoch whose mean over the folds is best (the trial's rank), and early stopping follows
that mean, not each fold's own validation rows."""

import numpy as np
import pandas as pd
import pytest
import torch

from candle_ray import checkpoint, trial
from candle_ray.data.cache import Cache
from candle_ray.data.features import describe
from candle_ray.data.spec import TableDataset
from candle_ray.job import Job
from candle_ray.sweep import fold_assignment

FOLDS = 2


@pytest.fixture(scope="module")
def entry(tmp_path_factory):
    """120 noisy regression rows: at batch 8 and a high learning rate the folds' validation curves zigzag,
    so each fold's own best epoch is seldom the mean's."""
    tmp = tmp_path_factory.mktemp("cv-trial")
    rng = np.random.default_rng(0)
    X = rng.normal(size=(120, 8))
    frame = pd.DataFrame(X, columns=[f"g{i}" for i in range(8)])
    frame.insert(0, "y", X[:, 0] + rng.normal(size=120))
    frame.to_csv(tmp / "table.csv", index=False)
    return Cache(tmp / "cache").prepare(TableDataset(tmp / "table.csv", label="y", task="regression"), log=lambda *_: None)


def _job(entry, run_dir, seed: int, **config) -> Job:
    base = {"epochs": 8, "batch_size": 8, "learning_rate": 0.05, "optimizer": "adam", "dense": [32], "dropout": 0.3,
            "activation": "relu", "rng_seed": seed, "timeout": -1}
    return Job(config={**base, **config}, model="mlp", task="regression", model_shape={"input_dim": 8, "classes": 1},
               entry=str(entry.path), metric="val_loss", mode="min", run_dir=str(run_dir), threads=1,
               data=describe(entry), cv_folds=FOLDS,
               cv_assignment=fold_assignment(entry, {"folds": FOLDS, "seed": 0, "stratify": "auto"}))


def _run(job) -> list[dict]:
    return list(trial._mean_over_folds(job, torch.device("cpu")))


def _best_epoch(values) -> int:
    return int(np.argmin(values)) + 1  # the first of equal values, as the loop's rule keeps the earlier


def _pointers(run_dir, kind="best") -> list[int]:
    return [checkpoint.pointer(run_dir / f"fold-{k}" / "checkpoints", kind)["epoch"] for k in range(FOLDS)]


def test_every_fold_keeps_the_epoch_of_the_best_mean(entry, tmp_path):
    results = _run(_job(entry, tmp_path, seed=0))
    mean_best = _best_epoch([r["val_loss"] for r in results])
    own = [_best_epoch([r[f"fold{k}_val_loss"] for r in results]) for k in range(FOLDS)]
    assert any(e != mean_best for e in own), own  # else the test could not tell the two rules apart
    assert _pointers(tmp_path) == [mean_best] * FOLDS
    for k in range(FOLDS):  # the promoted pointer verifies: the file and checksum of that epoch
        state = checkpoint.load(tmp_path / f"fold-{k}" / "checkpoints", "best")
        assert state["epoch"] == mean_best
        assert checkpoint.pointer(tmp_path / f"fold-{k}" / "checkpoints", "best")["value"] == \
            pytest.approx(results[mean_best - 1][f"fold{k}_val_loss"])
    assert results[-1]["best_epoch"] == mean_best and results[-1]["best_val_loss"] == min(r["val_loss"] for r in results)


def test_early_stopping_follows_the_mean(entry, tmp_path):
    patience = 3
    results = _run(_job(entry, tmp_path, seed=1, early_stop=True, early_stop_patience=patience))
    means = [r["val_loss"] for r in results]
    stop = next(e for e in range(1, 9) if e - _best_epoch(means[:e]) >= patience)
    assert [r["epoch"] for r in results] == list(range(1, stop + 1))
    assert results[-1]["stop_reason"] == f"early stop: no val_loss improvement in {patience} epochs"
    assert "stop_reason" not in results[-2]
    own_stops = [next((e for e in range(1, stop + 1)
                       if e - _best_epoch([r[f"fold{k}_val_loss"] for r in results[:e]]) >= patience), None)
                 for k in range(FOLDS)]
    assert any(s != stop for s in own_stops), own_stops  # a fold alone would have stopped elsewhere
    assert _pointers(tmp_path) == [_best_epoch(means)] * FOLDS
    assert _pointers(tmp_path, "last") == [stop] * FOLDS


def test_a_resumed_trial_keeps_its_best_from_before_the_restart(entry, tmp_path):
    first = _run(_job(entry, tmp_path, seed=0, epochs=4))
    resumed = _run(_job(entry, tmp_path, seed=0, epochs=8))
    assert _best_epoch([r["val_loss"] for r in resumed]) <= 4  # the best is an epoch trained before the restart
    assert [r["epoch"] for r in resumed] == list(range(1, 9))
    assert [r.get("replayed", False) for r in resumed] == [True] * 4 + [False] * 4
    assert [r["val_loss"] for r in resumed[:4]] == [r["val_loss"] for r in first]
    assert _pointers(tmp_path) == [_best_epoch([r["val_loss"] for r in resumed])] * FOLDS


def test_a_tune_trials_folds_keep_last_at_its_pace_and_best_at_the_means_best(entry, tmp_path):
    """`tune_checkpoint_s` (the trial's pace of hand-overs to Tune): every fold's `last` at the same epochs, the first
    and the final one here; every fold's `best` at the mean's best epoch so far, with that fold's value there,
    and without the optimizer's state where it is no `last`."""
    from dataclasses import replace

    results, lasts, bests = [], [], []
    for result in trial._mean_over_folds(replace(_job(entry, tmp_path, seed=0), tune_checkpoint_s=3600.0),
                                         torch.device("cpu")):
        results.append(result)
        lasts.append(_pointers(tmp_path, "last"))
        bests.append(_pointers(tmp_path))
    assert "keeps" not in results[0]
    assert lasts == [[1] * FOLDS] * 7 + [[8] * FOLDS]
    assert bests == [[r["best_epoch"]] * FOLDS for r in results]
    mean_best = _best_epoch([r["val_loss"] for r in results])
    assert mean_best not in (1, 8)  # a best kept between the `last`s
    for k in range(FOLDS):
        folder = tmp_path / f"fold-{k}" / "checkpoints"
        assert checkpoint.pointer(folder, "best")["value"] == pytest.approx(results[mean_best - 1][f"fold{k}_val_loss"])
        assert "optimizer" not in checkpoint.load(folder, "best") and "optimizer" in checkpoint.load(folder, "last")


def test_a_trials_epoch_took_the_sum_of_its_folds_times():
    merged = next(trial._merged_epochs([({"epoch": 1, "epoch_time_s": 2.0, "val_loss": 1.0},
                                         {"epoch": 1, "epoch_time_s": 3.0, "val_loss": 3.0})]))
    assert merged["epoch_time_s"] == 5.0 and merged["val_loss"] == 2.0 and merged["fold1_val_loss"] == 3.0
