"""Checkpoints as MLflow models (no Ray): the pyfunc returns `candle-ray predict`'s columns, a registered
version answers `predict models:/NAME@best`, and a model `predict` cannot serve is a note, not a failure."""

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from candle_ray import checkpoint, tracking
from candle_ray.cli import main
from candle_ray.data.cache import Cache
from candle_ray.data.features import describe
from candle_ray.data.spec import TableDataset
from candle_ray.loop import World, train_epochs
from tests.conftest import mlflow_store


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Two members trained on a user's CSV (3 classes, named features, a sample id column), and new rows."""
    tmp = tmp_path_factory.mktemp("mlflow-model")
    rng = np.random.default_rng(1)
    n, d = 260, 6
    y = rng.integers(0, 3, n)
    X = rng.normal(size=(n, d)) + 5 + 2 * np.eye(3)[y] @ rng.normal(size=(3, d))
    frame = pd.DataFrame(X, columns=[f"g{i}" for i in range(d)])
    frame.insert(0, "tissue", np.array(["lung", "skin", "brain"])[y])
    frame.insert(0, "sample_id", [f"s{i}" for i in range(n)])
    frame.iloc[:200].to_csv(tmp / "train.csv", index=False)
    frame.iloc[200:].to_csv(tmp / "new.csv", index=False)
    entry = Cache(tmp / "cache").prepare(TableDataset(tmp / "train.csv", label="tissue", drop=("sample_id",)),
                                         log=lambda *_: None)
    runs = []
    for seed in (1, 2):
        job = {"config": {"epochs": 4, "batch_size": 16, "learning_rate": 0.01, "optimizer": "adam", "dense": [8],
                          "dropout": 0.2, "activation": "relu", "rng_seed": seed, "timeout": -1},
               "model": "mlp", "task": "classification", "run_dir": str(tmp / f"run{seed}"), "metric": "val_loss",
               "model_shape": {"input_dim": d, "classes": 3}, "entry": str(entry.path), "mode": "min", "threads": 1,
               "data": describe(entry)}
        list(train_epochs(job, World()))
        runs.append(tmp / f"run{seed}" / "checkpoints")
    return tmp, runs


def cli_predict(model, tmp, out, *extra):
    r = CliRunner().invoke(main, ["predict", str(model), "--data", str(tmp / "features.csv"), "--out", str(out), *extra])
    assert r.exit_code == 0, r.output
    return pd.read_csv(out, sep="\t")


def test_pyfunc_model_predicts_what_the_cli_predicts_and_registers(trained, tmp_path, monkeypatch, mlflow_schema):
    tmp, members = trained
    uri = mlflow_store(mlflow_schema, tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)  # the store's artifacts (./mlruns) land here, not in the checkout
    run = tracking.RunTracker(uri, "models")
    run.start("ens", {}, {})
    model_uri = tracking.log_model(run, members, register="tissue-mlp")
    assert model_uri == "models:/tissue-mlp@best"

    rows = pd.read_csv(tmp / "new.csv").drop(columns=["sample_id", "tissue"])
    rows.to_csv(tmp / "features.csv", index=False)  # the model's input: its features, by name
    served = mlflow.pyfunc.load_model(f"runs:/{run.run_id}/model")
    assert served.metadata.get_input_schema().input_names()[:2] == ["g0", "g1"]  # the signature: features by name
    got = served.predict(rows)
    # the same rows through `candle-ray predict` from the checkpoints themselves, and from the registry
    from_checkpoints = cli_predict(f"runs:/{run.run_id}/model", tmp, tmp_path / "a.tsv")
    from_registry = cli_predict("models:/tissue-mlp@best", tmp, tmp_path / "b.tsv")
    pd.testing.assert_frame_equal(from_checkpoints, from_registry)
    assert list(got.columns) == list(from_registry.columns)
    assert got["prediction"].tolist() == from_registry["prediction"].tolist()
    assert np.allclose(got["p_lung"], from_registry["p_lung"], atol=1e-6)
    # extra columns (ids, the label) are left out, as `candle-ray predict` leaves them
    assert served.predict(pd.read_csv(tmp / "new.csv"))["prediction"].tolist() == got["prediction"].tolist()
    assert (got["probability_std"] > 0).any()  # two members: the spread between them is there

    # a second registration moves the alias to the new version
    tracking.register_model(run, "tissue-mlp")
    client = mlflow.MlflowClient(uri)
    assert str(client.get_model_version_by_alias("tissue-mlp", "best").version) == "2"


def test_a_model_predict_cannot_serve_is_a_note(tmp_path, mlflow_schema):
    run = tracking.RunTracker(mlflow_store(mlflow_schema, tmp_path), "models")
    run.start("r", {}, {})
    said = []
    assert tracking.log_model_or_warn(run, [tmp_path / "nothing"], warn=said.append) is None
    assert said and said[0].startswith(f"note: no MLflow model logged on run {run.run_id}")
    with pytest.raises(Exception, match="could not be registered as 'x'"):
        tracking.log_model_or_warn(run, [tmp_path / "nothing"], register="x")


def test_a_trials_own_model_is_registered_not_logged_again(trained, tmp_path, monkeypatch, mlflow_schema):
    """A trial's weights are its model (tracking.log_weights): --register reuses it, not logging it again."""
    tmp, members = trained
    uri = mlflow_store(mlflow_schema, tmp_path)
    monkeypatch.chdir(tmp_path)
    run = tracking.RunTracker(uri, "models")
    run.start("trial", {}, {})
    assert tracking.logged_model(run, "per-trial") is None  # nothing to register: the caller logs one
    tracking.log_model(run, members[:1])
    files = {f.path for f in run.client.list_artifacts(run.run_id, "model")}
    assert tracking.logged_model(run) == f"runs:/{run.run_id}/model"
    assert tracking.logged_model(run, "per-trial") == "models:/per-trial@best"
    assert {f.path for f in run.client.list_artifacts(run.run_id, "model")} == files  # logged once
    assert len(run.client.search_model_versions("name='per-trial'")) == 1
    assert run.client.get_model_version_by_alias("per-trial", "best").run_id == run.run_id


def test_a_runs_weights_are_stored_once_and_read_back_either_way(trained, tmp_path, monkeypatch, mlflow_schema):
    """`log_weights`: a finished run's best checkpoint is its model, with no `checkpoints/` copy beside it; a run
    without a model keeps `checkpoints/`; `predict RUN_ID` reads the weights back from either, and dropping a
    trial's weights (`delete_artifacts`) leaves neither."""
    tmp, members = trained
    uri = mlflow_store(mlflow_schema, tmp_path)
    monkeypatch.chdir(tmp_path)
    runs = {}
    for as_model in (True, False):
        run = runs[as_model] = tracking.RunTracker(uri, "weights")
        run.start(f"model-{as_model}", {}, {})
        got = tracking.log_weights(run, {"": members[0]}, as_model)
        assert got == (f"runs:/{run.run_id}/model" if as_model else None)
        stored = {f.path for f in run.client.list_artifacts(run.run_id)}
        assert stored == ({"model"} if as_model else {"checkpoints"}), stored
        run.finish()
        folders = tracking.run_checkpoints(uri, run.run_id, tmp_path / f"read-{as_model}")
        assert len(folders) == 1 and (folders[0] / "best.json").exists(), folders
        # either holds the best epoch's weights without the optimizer's state, which only resuming needs (from
        # the run's own folder)
        trial, served = checkpoint.load(members[0], "best"), checkpoint.load(folders[0], "best")  # sha256 checked
        assert served["epoch"] == trial["epoch"] and "optimizer" in trial and "optimizer" not in served
        assert all(torch.equal(served["weights"][k], v) for k, v in trial["weights"].items())
        size = lambda folder: (folder / checkpoint.pointer(folder, "best")["file"]).stat().st_size  # noqa: E731
        assert size(folders[0]) < size(members[0])
    runs[True].delete_artifacts(tracking.CHECKPOINTS, tracking.MODEL_ARTIFACT)  # the one it has, the one it lacks
    assert not runs[True].client.list_artifacts(runs[True].run_id)


def test_a_run_still_training_logs_its_best_file_and_the_pointer_that_names_it(trained, tmp_path, monkeypatch,
                                                                              mlflow_schema):
    """A Ctrl-C'd run's driver logs its best checkpoint while its workers may still train: a newer best that
    replaces the pointer and deletes the file it named, between the driver's read of the pointer and of the
    file, is read again. Its driver once retried that vanished file for the whole MLflow retry budget (300 s)
    instead of exiting."""
    import shutil

    tmp, members = trained
    folder = shutil.copytree(members[0], tmp_path / "live")
    uri = mlflow_store(mlflow_schema, tmp_path)
    monkeypatch.chdir(tmp_path)
    run = tracking.RunTracker(uri, "live")
    run.start("cut-short", {}, {})
    load, newer = checkpoint.load, []

    def training_goes_on(path, *args, **kwargs):
        if not newer:  # the worker's next best lands between the driver's read of the pointer and of its file
            state = load(folder, "best")
            newer.append(checkpoint.save(folder, {**state, "epoch": state["epoch"] + 1}, kinds=("last", "best")))
        return load(path, *args, **kwargs)

    monkeypatch.setattr(checkpoint, "load", training_goes_on)
    assert tracking.log_weights(run, {"": folder}, False) is None
    logged = {f.path for f in run.client.list_artifacts(run.run_id, tracking.CHECKPOINTS)}
    assert logged == {f"checkpoints/{newer[0].name}", "checkpoints/best.json"}
    read = tracking.run_checkpoints(uri, run.run_id, tmp_path / "read")[0]
    assert checkpoint.pointer(read, "best")["file"] == newer[0].name
    assert checkpoint.load(read, "best")["epoch"] == checkpoint.pointer(members[0], "best")["epoch"] + 1  # sha256 checked


def test_models_of_one_dataset_share_their_signature_files_not_their_weights(trained, tmp_path, monkeypatch):
    """The second model of the same data and head reuses the first's MLflow files (signature, input example,
    environment), with its own weights and identity; it loads and predicts as its own checkpoint does. Another
    head or member count is saved in full."""
    from mlflow.models import Model

    from candle_ray import mlflow_model

    tmp, members = trained
    monkeypatch.setattr(mlflow_model, "_TEMPLATES", {})
    rows = pd.read_csv(tmp / "new.csv").drop(columns=["sample_id", "tissue"])
    rows.to_csv(tmp / "features.csv", index=False)
    saved = {}
    for name, folders in (("first", members[:1]), ("second", members[1:]), ("pair", members)):
        mlflow_model.save(tmp_path / name / "model", folders)
        saved[name] = tmp_path / name / "model"
        assert len(mlflow_model._TEMPLATES) == (1 if name != "pair" else 2), name
    meta = {name: Model.load(folder) for name, folder in saved.items()}
    assert meta["second"].signature == meta["first"].signature and meta["second"].metadata["members"] == 1
    assert len({m.model_uuid for m in meta.values()}) == 3
    for name in ("input_example.json", "serving_input_example.json", "requirements.txt", "mlflow_model.py"):
        assert (saved["second"] / name).read_bytes() == (saved["first"] / name).read_bytes()
    weights = sum(f.stat().st_size for f in (saved["second"] / "artifacts").rglob("*") if f.is_file())
    assert weights < meta["second"].model_size_bytes < weights + 10**6
    got = {}
    for name, checkpoint_dir in (("first", members[0]), ("second", members[1])):
        got[name] = mlflow.pyfunc.load_model(str(saved[name])).predict(rows)
        own = cli_predict(checkpoint_dir, tmp, tmp_path / f"{name}.tsv")  # its own checkpoint, not the template's
        assert np.allclose(got[name]["p_lung"], own["p_lung"], atol=1e-6), name
    assert not np.allclose(got["first"]["p_lung"], got["second"]["p_lung"], atol=1e-3)  # two seeds, two models
    assert meta["pair"].metadata["members"] == 2


def test_a_model_that_fails_midway_leaves_plain_checkpoints_only(trained, tmp_path, monkeypatch, mlflow_schema):
    """An upload cut off after part of the model (a store that went away) is noted, its part removed, and the
    weights logged as `checkpoints/`, which `predict RUN_ID` then reads."""
    tmp, members = trained
    uri = mlflow_store(mlflow_schema, tmp_path)
    monkeypatch.chdir(tmp_path)
    run = tracking.RunTracker(uri, "weights")
    run.start("cut", {}, {})

    def cut_off(run_id, local_dir, artifact_path=None):  # the model's upload: one file lands, then the store goes
        (tmp_path / "part").write_text("half a model")
        run.client.log_artifact(run_id, str(tmp_path / "part"), artifact_path)
        raise ConnectionError("the store went away")

    monkeypatch.setattr(run.client, "log_artifacts", cut_off)
    notes = []
    assert tracking.log_weights(run, {"": members[0]}, True, warn=notes.append) is None
    assert len(notes) == 1 and "the store went away" in notes[0] and "checkpoints are logged" in notes[0]
    assert {f.path for f in run.client.list_artifacts(run.run_id)} == {"checkpoints"}
    run.finish()
    assert [p.name for p in tracking.run_checkpoints(uri, run.run_id, tmp_path / "read")] == ["checkpoints"]
