"""`candle-ray predict` for a multi-task model (P3B1: one head per task): rows are a report's features, as the
archive's *_feature.csv files hold them; each task gets its own columns, scores and conformal sets."""

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from candle_ray.cli import _prepare, main
from candle_ray.data import joined_cache
from candle_ray.data.cache import Cache
from candle_ray.data.features import describe, read_for_prediction
from candle_ray.errors import DataError
from candle_ray.experiment import load_experiment
from candle_ray.job import make_job
from candle_ray.loop import World, train_epochs
from tests.conftest import ROOT

TASKS = ["task0", "task1", "task2"]
CLASSES = [13, 2, 4]
WIDTH = 64


@pytest.fixture(scope="module")
def p3b1_model(tmp_path_factory):
    """P3B1 trained 3 epochs on its smoke archive (the real layout: 13, 2 and 4 classes, 64 features); its val
    reports written as a user would: an id, the three label columns (-1 off-task), the features by name."""
    tmp = tmp_path_factory.mktemp("p3b1")
    exp = load_experiment(ROOT / "experiments" / "p3b1.py")
    entry = _prepare(exp, smoke=True, cache=Cache(tmp / "cache"), log=lambda *_: None)
    config = exp.resolve_config(smoke=True, sets=["epochs=3", "dropout=0.2"])
    history = list(train_epochs(make_job(exp, config, entry, run_dir=str(tmp / "run")), World()))
    rows, values = joined_cache.open_rows(entry.path, "val"), joined_cache.open_tables(entry.path)["report"]
    index = np.asarray(rows["report"])
    frame = pd.DataFrame({"report": [f"r{i}" for i in index], **{t: np.asarray(rows[t]) for t in TASKS}})
    features = pd.DataFrame(np.asarray(values)[index], columns=[f"f{j}" for j in range(WIDTH)])
    frame = pd.concat([frame, features], axis=1)
    frame.to_csv(tmp / "val_rows.csv", index=False)
    return tmp, entry, min(history, key=lambda m: m["val_loss"]), frame


def predict(tmp, data, *args):
    return CliRunner().invoke(main, ["predict", str(tmp / "run"), "--data", str(data), "--out", str(tmp / "out.tsv"),
                                     *map(str, args)])


def test_each_task_is_scored_on_its_own_rows_as_training_scored_it(p3b1_model):
    tmp, _, best, frame = p3b1_model
    r = predict(tmp, tmp / "val_rows.csv")
    assert r.exit_code == 0, r.output
    out = pd.read_csv(tmp / "out.tsv", sep="\t")
    assert out["id"].tolist() == frame["report"].tolist()
    for t, (name, classes) in enumerate(zip(TASKS, CLASSES)):
        assert {f"{name}_prediction", f"{name}_probability"} | {f"{name}_p_{c}" for c in range(classes)} <= set(out)
        assert np.allclose(out[[f"{name}_p_{c}" for c in range(classes)]].sum(axis=1), 1, atol=1e-5)
        n = int((frame[name] >= 0).sum())  # the best epoch's val accuracy of this task, recomputed from the file
        assert f"{name} ({n} rows): accuracy {best[f'val_accuracy_{t}']:.3f}" in r.output, r.output


def test_header_less_features_as_the_archive_holds_them(p3b1_model):
    """CANDLE's taskT_F_test_feature.csv layout (features only), and the same rows after one label column per task."""
    tmp, entry, _, frame = p3b1_model
    features = frame[[f"f{j}" for j in range(WIDTH)]]
    features.to_csv(tmp / "features.csv", index=False, header=False)
    r = predict(tmp, tmp / "features.csv")
    assert r.exit_code == 0 and f"{len(frame)} predictions" in r.output and "labelled" not in r.output, r.output
    plain = pd.read_csv(tmp / "out.tsv", sep="\t")
    assert "id" not in plain and plain.shape[0] == len(frame)
    pd.concat([frame[TASKS], features], axis=1).to_csv(tmp / "labelled.csv", index=False, header=False)
    X, y, _ = read_for_prediction(tmp / "labelled.csv", describe(entry))
    assert np.array_equal(X, features.to_numpy(np.float32)) and np.array_equal(y, frame[TASKS].to_numpy())
    r = predict(tmp, tmp / "labelled.csv")
    assert r.exit_code == 0 and "task1 (" in r.output, r.output
    assert pd.read_csv(tmp / "out.tsv", sep="\t")["task2_prediction"].tolist() == plain["task2_prediction"].tolist()


def test_conformal_sets_per_task_cover_held_out_rows(p3b1_model):
    """Calibrated on half the val reports, each task's sets on the other half: near 1 - alpha (a multi-task
    model's tasks have different classes and rows, so one threshold each)."""
    tmp, _, _, frame = p3b1_model
    shuffled = frame.sample(frac=1, random_state=0)
    shuffled.iloc[::2].to_csv(tmp / "cal.csv", index=False)
    shuffled.iloc[1::2].to_csv(tmp / "test.csv", index=False)
    r = predict(tmp, tmp / "test.csv", "--conformal", tmp / "cal.csv", "--alpha", 0.2)
    assert r.exit_code == 0, r.output
    assert "cal.csv is this model's own val file: its rows chose its epochs" in r.output  # the reports, by features
    out = pd.read_csv(tmp / "out.tsv", sep="\t", dtype=str, keep_default_na=False)  # sets as written: "3", "0|3", ""
    test = shuffled.iloc[1::2].reset_index(drop=True)
    covered = []
    for name in TASKS:
        labelled = test[name] >= 0
        sets = out.loc[labelled, f"{name}_prediction_set"].str.split("|")
        covered += [str(label) in s for label, s in zip(test.loc[labelled, name], sets)]
        assert f"{name} (" in r.output and "80% set coverage" in r.output
    assert 0.65 <= np.mean(covered) <= 1.0, np.mean(covered)  # ~60 test labels over the three tasks


def test_mc_dropout_pools_its_passes_per_task(p3b1_model):
    tmp, _, _, frame = p3b1_model
    r = predict(tmp, tmp / "val_rows.csv", "--mc-dropout", 4, "--member-columns")
    assert r.exit_code == 0 and "1 member(s) x 4 MC-dropout passes" in r.output, r.output
    out = pd.read_csv(tmp / "out.tsv", sep="\t")
    for name, classes in zip(TASKS, CLASSES):
        assert [c for c in out if c.startswith(f"{name}_member_")] == [f"{name}_member_{k}" for k in range(4)]
        assert (out[f"{name}_probability_std"] > 0).all()  # the passes differ: dropout was on
        assert np.allclose(out[[f"{name}_p_{c}" for c in range(classes)]].sum(axis=1), 1, atol=1e-5)


def test_its_mlflow_model_takes_the_features_and_predicts_the_same(p3b1_model, tmp_path):
    import mlflow.pyfunc

    from candle_ray import mlflow_model

    tmp, _, _, frame = p3b1_model
    mlflow_model.save(tmp_path / "model", [tmp / "run" / "checkpoints"])
    served = mlflow.pyfunc.load_model(str(tmp_path / "model"))
    assert served.metadata.get_input_schema().input_names() == [str(j) for j in range(WIDTH)]
    rows = frame[[f"f{j}" for j in range(WIDTH)]].head(12).set_axis([str(j) for j in range(WIDTH)], axis=1)
    got = served.predict(rows)
    assert predict(tmp, tmp / "val_rows.csv").exit_code == 0
    want = pd.read_csv(tmp / "out.tsv", sep="\t").head(12)
    for name, classes in zip(TASKS, CLASSES):
        assert got[f"{name}_prediction"].astype(str).tolist() == want[f"{name}_prediction"].astype(str).tolist()
        assert np.allclose(got[[f"{name}_p_{c}" for c in range(classes)]], want[[f"{name}_p_{c}" for c in range(classes)]],
                           atol=1e-6)


@pytest.mark.parametrize("edit, said", [
    (lambda f: f.drop(columns="f7"), "has 63 feature columns but the model takes 64"),
    (lambda f: f.drop(columns=TASKS), "has no label columns; calibration rows need"),
    (lambda f: f.assign(task1=np.where(f["task1"] >= 0, 5, -1)), "has the label 5 for task1 at"),
    (lambda f: f.assign(task0=-1, task1=-1, task2=-1), "has no label in any of task0, task1, task2"),
])
def test_rows_the_model_cannot_read_are_refused_in_one_line(p3b1_model, edit, said):
    tmp, _, _, frame = p3b1_model
    edit(frame).to_csv(tmp / "bad.csv", index=False)
    r = predict(tmp, tmp / "val_rows.csv", "--conformal", tmp / "bad.csv")
    assert r.exit_code == 1 and said in r.output and len(r.output.strip().splitlines()) == 1, r.output
    with pytest.raises(DataError):
        read_for_prediction(tmp / "bad.csv", describe(p3b1_model[1]), need_labels=True)


def test_a_calibration_file_without_a_tasks_labels_says_that_task_gets_no_sets(p3b1_model):
    tmp, _, _, frame = p3b1_model
    frame.assign(task2=-1).to_csv(tmp / "cal.csv", index=False)
    r = predict(tmp, tmp / "val_rows.csv", "--conformal", tmp / "cal.csv")
    assert r.exit_code == 0 and "no row of" in r.output and "has a task2 label, so task2 gets no prediction sets" in r.output
    out = pd.read_csv(tmp / "out.tsv", sep="\t")
    assert "task0_prediction_set" in out and "task2_prediction_set" not in out


def test_data_ids_says_its_rows_are_features(p3b1_model):
    tmp, entry, *_ = p3b1_model
    r = CliRunner().invoke(main, ["data", "ids", entry.name, "--cache-dir", str(tmp / "cache")])
    assert r.exit_code == 2 and "is multi-task: its rows to predict hold a report's 64 features" in r.output


def test_an_ensemble_scores_each_task_on_its_own_val_rows(p3b1_model, tmp_path):
    """`ensemble.evaluate` of two P3B1 members: per task the pooled accuracy (its mean is val_accuracy, as
    training's), calibration and a conformal check, named with the task's index as training names them."""
    from candle_ray.conformal import minimum_calibration_rows
    from candle_ray.ensemble import evaluate

    tmp, entry, _, frame = p3b1_model
    exp = load_experiment(ROOT / "experiments" / "p3b1.py")
    config = exp.resolve_config(smoke=True, sets=["epochs=2", "dropout=0.2", "rng_seed=7"])
    list(train_epochs(make_job(exp, config, entry, run_dir=str(tmp_path / "second")), World()))
    metrics, files = evaluate([tmp / "run" / "checkpoints", tmp_path / "second" / "checkpoints"], entry, tmp_path / "uq")
    assert metrics["ensemble_members"] == 2 and metrics["ensemble_val_rows"] == len(frame)
    assert metrics["ensemble_val_accuracy"] == pytest.approx(np.mean([metrics[f"ensemble_val_accuracy_{t}"] for t in range(3)]))
    for t, name in enumerate(TASKS):
        assert {f"ensemble_val_{k}_{t}" for k in ("nll", "brier", "ece", "prob_std")} <= set(metrics)
        halves = (frame[name] >= 0).sum() // 2  # half the task's rows calibrate, where there are enough
        assert (f"conformal_val_coverage_{t}" in metrics) == (halves >= minimum_calibration_rows(0.1)), halves
        assert tmp_path / "uq" / f"reliability_{name}.png" in files
    table = pd.read_csv(tmp_path / "uq" / "val_predictions.tsv", sep="\t")
    assert list(table.columns[:3]) == [f"{name}_target" for name in TASKS]
    assert table["task1_target"].tolist() == frame["task1"].tolist()
    pooled = (table["task0_prediction"] == table["task0_target"])[table["task0_target"] >= 0].mean()
    assert pooled == pytest.approx(metrics["ensemble_val_accuracy_0"])
