"""`train --all-rows` without Ray: the final model trains on the train and val rows together for exactly its
epochs, with no validation, and its newest epoch is the model (there is no validation metric to pick another)."""

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from candle_ray import checkpoint, loop
from candle_ray.cli import main
from candle_ray.data.cache import Cache
from candle_ray.data.features import describe
from candle_ray.data.folds import pooled_labels
from candle_ray.data.spec import TableDataset
from candle_ray.errors import UsageError
from candle_ray.job import Job
from candle_ray.train import for_all_rows
from tests.conftest import ROOT

ROWS = 100


@pytest.fixture(scope="module")
def entry(tmp_path_factory):
    """A regression table whose targets sit far from 0 (mean ~50), split 80 train / 20 val."""
    tmp = tmp_path_factory.mktemp("all-rows")
    rng = np.random.default_rng(0)
    X = rng.normal(size=(ROWS, 6))
    frame = pd.DataFrame(X, columns=[f"g{i}" for i in range(6)])
    frame.insert(0, "y", 50 + 3 * X[:, 0] + rng.normal(size=ROWS))
    frame.to_csv(tmp / "table.csv", index=False)
    spec = TableDataset(tmp / "table.csv", label="y", task="regression", val_fraction=0.2)
    return Cache(tmp / "cache").prepare(spec, log=lambda *_: None)


def _job(entry, run_dir, **settings) -> Job:
    config = {"epochs": 3, "batch_size": 10, "learning_rate": 0.01, "optimizer": "adam", "dense": [16],
              "dropout": 0.0, "activation": "relu", "rng_seed": 0, "timeout": -1}
    return Job(config=config, model="mlp", task="regression", model_shape={"input_dim": 6, "classes": 1},
               entry=str(entry.path), metric="val_loss", mode="min", run_dir=str(run_dir), threads=1,
               data=describe(entry), **settings)


def test_it_trains_on_train_and_val_rows_with_no_validation(entry, tmp_path):
    job = _job(entry, tmp_path, all_rows=True)
    feed, val_feed, _ = loop._make_feeds(job, loop.World(), 10, 0)
    assert val_feed is None and len(feed.x) == ROWS == entry.rows["train"] + entry.rows["val"]
    epochs = list(loop.train_epochs(job, loop.World()))
    assert [e["epoch"] for e in epochs] == [1, 2, 3] and all("loss" in e and "val_loss" not in e for e in epochs)
    ckpt_dir = tmp_path / "checkpoints"
    assert checkpoint.pointer(ckpt_dir, "best")["epoch"] == checkpoint.pointer(ckpt_dir, "last")["epoch"] == 3
    data = checkpoint.load(ckpt_dir, "best")["data"]
    assert data["all_rows"] is True and "cv_fold" not in data  # predict: every labelled row trained it
    # the regression target scaler is fitted on all the rows it trained on, the val rows too
    assert np.ravel(data["target_scaler"]["mean"]) == pytest.approx([np.mean(pooled_labels(entry.path))])


def test_on_the_split_the_best_validation_epoch_stays_the_model(entry, tmp_path):
    job = _job(entry, tmp_path)
    feed, val_feed, _ = loop._make_feeds(job, loop.World(), 10, 0)
    assert len(feed.x) == entry.rows["train"] == 80 and val_feed is not None
    epochs = list(loop.train_epochs(job, loop.World()))
    best = min(epochs, key=lambda e: e["val_loss"])["epoch"]
    assert checkpoint.pointer(tmp_path / "checkpoints", "best")["epoch"] == best
    assert "all_rows" not in checkpoint.load(tmp_path / "checkpoints", "best")["data"]


def test_a_plateau_schedule_and_early_stopping_are_off_and_said_so():
    said = []
    config = {"epochs": 5, "reduce_lr": True, "reduce_lr_metric": "val_auroc", "early_stop": True, "dropout": 0.1}
    assert for_all_rows(config, warn=said.append) == {**config, "reduce_lr": False, "early_stop": False}
    assert said == ["note: --all-rows trains all 5 epochs with no validation rows for reduce_lr or early_stop to "
                    "follow: reduce_lr=False, early_stop=False"]
    quiet = {"epochs": 5, "reduce_lr": False}
    assert for_all_rows(quiet, warn=said.append) == quiet and len(said) == 1


def test_without_chosen_epochs_it_is_refused_before_anything_starts(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(main, ["train", str(ROOT / "experiments" / "nt3.py"), "--smoke", "--all-rows"])
    assert r.exit_code == 2 and "pass --set epochs=N (the epoch a cv or a sweep chose) or --from-sweep NAME" in r.output


def test_a_cv_gives_its_one_epoch_or_says_what_to_do(tmp_path, mlflow_schema):
    """`train --from-sweep CV --all-rows` reads the cv's one epoch for every fold off its parent run."""
    from mlflow.tracking import MlflowClient

    from candle_ray import tracking
    from tests.conftest import mlflow_store

    uri = mlflow_store(mlflow_schema, tmp_path)
    client = MlflowClient(uri)
    run = client.create_run(client.create_experiment("cv"))
    record = {"tracking_uri": uri, "parent_run_id": run.info.run_id}
    with pytest.raises(UsageError, match=r"cv 'cv5' has no one-epoch estimate \(cv_epoch\) on its MLflow run \w+; "
                                         r"let it finish \(--resume\), or pass --set epochs=N"):
        tracking.cv_epoch(record, "cv5")
    client.log_metric(run.info.run_id, "cv_epoch", 4.0)
    assert tracking.cv_epoch(record, "cv5") == 4
