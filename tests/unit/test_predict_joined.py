"""`candle-ray predict` for a model of a joined dataset (Uno's smoke data: doses, a response-source one-hot, cell and
two-drug feature tables): rows named by ids, their features gathered from the cache entry the model trained on."""

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from candle_ray.cli import _prepare, main
from candle_ray.data import joined_cache
from candle_ray.data.cache import Cache
from candle_ray.data.features import describe, read_for_prediction
from candle_ray.data.feed import JoinedFeed
from candle_ray.errors import DataError
from candle_ray.experiment import load_experiment
from candle_ray.job import make_job
from candle_ray.loop import World, train_epochs
from tests.conftest import ROOT


@pytest.fixture(scope="module")
def uno(tmp_path_factory):
    """Uno trained one epoch on its smoke entry; the val split written as a user would: ids by name, doses, y."""
    tmp = tmp_path_factory.mktemp("uno")
    exp = load_experiment(ROOT / "experiments" / "uno.py")
    entry = _prepare(exp, smoke=True, cache=Cache(tmp / "cache"), log=lambda *_: None)
    config = exp.resolve_config(smoke=True, sets=["epochs=1"])
    [metrics] = train_epochs(make_job(exp, config, entry, run_dir=str(tmp / "run")), World())
    rows, ids = joined_cache.open_rows(entry.path, "val"), joined_cache.open_table_ids(entry.path)
    frame = {}
    for slot in entry.manifest["slots"]:  # dose1, dose2, response_source, cell, drug1, drug2
        key, table = slot["key"], slot["table"]
        frame.setdefault(key, rows[key] if table is None else [ids[table][i] for i in rows[key]])
    frame = pd.DataFrame({**frame, "y": rows["y"]})
    frame[list(reversed(frame.columns))].to_csv(tmp / "val_rows.csv", index=False)  # any column order
    return tmp, entry, metrics, frame


def predict(tmp, data, *args, cache=True):
    return CliRunner().invoke(main, ["predict", str(tmp / "run"), "--data", str(data), "--out", str(tmp / "out.tsv"),
                                     *(["--cache-dir", str(tmp / "cache")] if cache else []), *args])


def test_rows_named_by_ids_are_the_rows_the_training_feed_gathered(uno):
    tmp, entry, _, frame = uno
    X, y, shown = read_for_prediction(tmp / "val_rows.csv", describe(entry), joined_entry=entry)
    feed = JoinedFeed.open(entry.path, "val", 64, shuffle=False, pad=False)
    x_feed, y_feed = feed.batch(torch.arange(len(X)))
    assert len(X) == len(frame) == 200 and X[0:len(X)].dtype == np.float32
    assert np.array_equal(X[0:len(X)], x_feed.numpy())  # every slot, in the model's order
    assert np.array_equal(X[37:41], x_feed.numpy()[37:41])  # a slice gathers only its rows
    assert np.allclose(y, y_feed.numpy())
    assert list(shown) == ["response_source", "cell", "drug1", "drug2", "dose1", "dose2"]


def test_predict_scores_the_val_rows_as_training_did(uno):
    tmp, _, metrics, frame = uno
    r = predict(tmp, tmp / "val_rows.csv")
    assert r.exit_code == 0, r.output
    out = pd.read_csv(tmp / "out.tsv", sep="\t")
    assert list(out.columns[:6]) == ["response_source", "cell", "drug1", "drug2", "dose1", "dose2"]
    assert out["cell"].tolist() == frame["cell"].tolist() and len(out) == 200
    # the one epoch is the best checkpoint: its val metrics, recomputed from the rows' ids
    assert f"(y): R² {metrics['val_r2']:.3f}, MAE {metrics['val_mae']:.4g}" in r.output, r.output


def test_calibrating_on_the_models_val_rows_is_said(uno):
    tmp, *_ = uno
    r = predict(tmp, tmp / "val_rows.csv", "--conformal", tmp / "val_rows.csv")
    assert r.exit_code == 0, r.output
    assert "is this model's own val file: its rows chose its epochs" in r.output
    assert {"lower", "upper"} <= set(pd.read_csv(tmp / "out.tsv", sep="\t").columns)


def test_new_rows_need_no_label(uno):
    tmp, _, _, frame = uno
    frame.drop(columns="y").head(5).to_parquet(tmp / "new.parquet")
    r = predict(tmp, tmp / "new.parquet")
    assert r.exit_code == 0 and "5 predictions" in r.output and "labelled" not in r.output, r.output
    r = predict(tmp, tmp / "new.parquet", "--conformal", tmp / "new.parquet")
    assert r.exit_code == 1 and "has no label column 'y'; calibration data needs the true labels" in r.output


@pytest.mark.parametrize("edit, said", [
    (lambda f: f.assign(cell=["NOPE.1"] + f["cell"].tolist()[1:]),
     "1 of 4 rows of {path} name a cell the model has no features for, e.g. 'NOPE.1' (data row 1); use one of its"),
    (lambda f: f.drop(columns=["drug2"]), "lacks column(s) ['drug2']; a model of uno-smoke takes one row per"),
    (lambda f: f.assign(dose1=["x"] + f["dose1"].tolist()[1:]), "has a missing or non-number dose1 at data row 1"),
])
def test_rows_the_model_cannot_read_are_refused_in_one_line(uno, edit, said):
    tmp, _, _, frame = uno
    path = tmp / "bad.csv"
    edit(frame.head(4)).to_csv(path, index=False)
    (tmp / "out.tsv").unlink(missing_ok=True)
    r = predict(tmp, path)
    assert r.exit_code == 1 and said.format(path=path) in r.output and len(r.output.strip().splitlines()) == 1, r.output
    assert not (tmp / "out.tsv").exists()
    with pytest.raises(DataError):
        read_for_prediction(path, describe(uno[1]), joined_entry=uno[1])


def test_the_entry_is_found_by_fingerprint_or_where_it_was_trained_from(uno, tmp_path, monkeypatch):
    tmp, entry, *_ = uno
    monkeypatch.setenv("CANDLE_RAY_CACHE", str(tmp_path / "empty"))
    assert predict(tmp, tmp / "val_rows.csv", cache=False).exit_code == 0  # where it was trained from
    moved = tmp_path / "moved"
    (tmp / "cache").rename(moved)
    try:
        r = predict(tmp, tmp / "val_rows.csv", cache=False)
        assert r.exit_code == 2, r.output
        assert (f"dataset uno-smoke (fingerprint {entry.fingerprint}), which is not in the cache {tmp_path / 'empty'}; "
                f"pass --cache-dir (or set CANDLE_RAY_CACHE) where it is, or prepare it: candle-ray data "
                f"prepare") in r.output
        r = CliRunner().invoke(main, ["predict", str(tmp / "run"), "--data", str(tmp / "val_rows.csv"), "--out",
                                      str(tmp_path / "p.tsv"), "--cache-dir", str(moved)])
        assert r.exit_code == 0 and "200 predictions" in r.output, r.output  # another root, the same fingerprint
    finally:
        moved.rename(tmp / "cache")


def test_its_mlflow_model_takes_the_same_rows_and_predicts_the_same(uno, tmp_path):
    import mlflow.pyfunc

    from candle_ray import mlflow_model

    tmp, _, _, frame = uno
    mlflow_model.save(tmp_path / "model", [tmp / "run" / "checkpoints"])
    served = mlflow.pyfunc.load_model(str(tmp_path / "model"))
    schema = served.metadata.get_input_schema()
    assert schema.input_names() == ["response_source", "cell", "drug1", "drug2", "dose1", "dose2"]
    got = served.predict(frame.drop(columns="y").head(20).astype({"dose1": float, "dose2": float}))
    assert predict(tmp, tmp / "val_rows.csv").exit_code == 0
    want = pd.read_csv(tmp / "out.tsv", sep="\t").head(20)
    assert got["cell"].tolist() == want["cell"].tolist()
    assert np.allclose(got["prediction"], want["prediction"], atol=1e-6)


def test_data_ids_lists_what_rows_may_name_and_those_rows_predict(uno, tmp_path):
    tmp, entry, *_ = uno
    import io

    ids = CliRunner().invoke(main, ["data", "ids", f"{entry.name}-{entry.fingerprint[:6]}", "--cache-dir",
                                    str(tmp / "cache")])
    assert ids.exit_code == 0, ids.output
    listed = pd.read_csv(io.StringIO(ids.output), sep="\t", header=None, names=["column", "id"], dtype=str)
    assert list(dict.fromkeys(listed["column"])) == ["response_source", "cell", "drug1", "drug2"]
    tables = joined_cache.open_table_ids(entry.path)
    assert listed[listed["column"] == "cell"]["id"].tolist() == tables["cell.rnaseq"]
    first = {key: listed[listed["column"] == key]["id"].iloc[0] for key in listed["column"].unique()}
    pd.DataFrame([{**first, "dose1": 5.0, "dose2": 5.5}]).to_csv(tmp_path / "one.csv", index=False)
    assert predict(tmp, tmp_path / "one.csv").exit_code == 0
    r = CliRunner().invoke(main, ["data", "ids", entry.name, "--column", "dose1", "--cache-dir", str(tmp / "cache")])
    assert r.exit_code == 2 and "use one of response_source, cell, drug1, drug2" in r.output, r.output
    r = CliRunner().invoke(main, ["data", "ids", "uno", "--cache-dir", str(tmp / "cache")])
    assert r.exit_code == 2 and "no cache entry is named 'uno'" in r.output, r.output


def test_a_served_model_builds_its_id_lookups_once_per_entry(uno):
    """Every request of an MLflow model gathers its rows' features: the ids' positions come from one lookup per
    entry, the positions ids_by_column lists them at."""
    from candle_ray.data import joined_input

    _, entry, *_ = uno
    lookups, tables = joined_input._opened(entry)
    assert joined_input._opened(entry)[0] is lookups and set(tables) == set(joined_cache.open_tables(entry.path))
    for key, ids in joined_input.ids_by_column(entry).items():
        assert lookups[key].index.tolist() == ids and lookups[key].tolist() == list(range(len(ids)))
    found = joined_input._indices(pd.Series([f" {ids[-1]} ", ids[0]]), key, lookups[key], "rows.csv")
    assert found.tolist() == [len(ids) - 1, 0]  # stripped, as the rows' ids always were
