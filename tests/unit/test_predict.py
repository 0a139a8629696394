"""`candle-ray predict` without Ray: checkpoints carry what prediction needs (features, scaler, classes)."""

import shutil

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from candle_ray import predict as predicting
from candle_ray import uq
from candle_ray.cli import main
from candle_ray.data.cache import Cache
from candle_ray.data.features import describe, read_for_prediction
from candle_ray.data.spec import TableDataset
from candle_ray.errors import DataError, UsageError
from candle_ray.loop import World, train_epochs


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    """A user's CSV with a header: 3 classes, signal in the first 4 of 12 features; beside the training
    rows, new rows, and held-out calibration and test rows for conformal coverage."""
    tmp = tmp_path_factory.mktemp("predict")
    rng = np.random.default_rng(0)
    n, d = 1040, 12
    y = rng.integers(0, 3, n)
    X = rng.normal(size=(n, d)) * 2 + 10
    X[:, :4] += 3 * np.eye(3)[y] @ rng.normal(size=(3, 4))
    frame = pd.DataFrame(X, columns=[f"g{i}" for i in range(d)])
    frame.insert(0, "cancer_type", np.array(["lung", "skin", "brain"])[y])
    frame.insert(0, "sample_id", [f"s{i}" for i in range(n)])
    frame.iloc[:180].to_csv(tmp / "train.csv", index=False)
    frame.iloc[180:240].to_csv(tmp / "new.csv", index=False)
    frame.iloc[240:640].to_csv(tmp / "calibration.csv", index=False)
    frame.iloc[640:].to_csv(tmp / "held_out.csv", index=False)
    entry = Cache(tmp / "cache").prepare(TableDataset(tmp / "train.csv", label="cancer_type", drop=("sample_id",)),
                                         log=lambda *_: None)
    return tmp, entry


def train(entry, run_dir, cv=None, **config):
    base = {"epochs": 6, "batch_size": 16, "learning_rate": 0.01, "optimizer": "adam", "dense": [16],
            "dropout": 0.2, "activation": "relu", "rng_seed": 1, "timeout": -1}
    job = {"config": {**base, **config}, "model": "mlp", "task": "classification",
           "model_shape": {"input_dim": entry.num_features, "classes": entry.num_classes}, "entry": str(entry.path),
           "run_dir": str(run_dir), "metric": "val_loss", "mode": "min", "threads": 1, "data": describe(entry),
           "cv": cv}
    history = list(train_epochs(job, World()))
    assert history[-1]["val_accuracy"] > 0.6
    return run_dir


def test_features_are_read_by_name_and_scaled_like_training(table):
    tmp, entry = table
    info = describe(entry)
    shuffled = pd.read_csv(tmp / "new.csv")
    shuffled = shuffled[["cancer_type", *reversed(info["feature_names"]), "sample_id"]]
    shuffled.to_csv(tmp / "shuffled.tsv", sep="\t", index=False)
    X, y, ids = read_for_prediction(tmp / "shuffled.tsv", info)
    X2, y2, _ = read_for_prediction(tmp / "new.csv", info)
    assert np.array_equal(X, X2) and np.array_equal(y, y2) and ids[:2] == ["s180", "s181"]
    assert abs(float(X.mean())) < 1.0  # std-scaled with the training statistics, not the raw ~10
    assert set(y) <= {0, 1, 2}


def test_feature_mismatch_is_refused(table):
    tmp, entry = table
    frame = pd.read_csv(tmp / "new.csv").drop(columns=["g3"])
    frame.to_csv(tmp / "missing.csv", index=False)
    with pytest.raises(DataError, match=r"lacks 1 of the model's 12 features, e.g. \['g3'\]"):
        read_for_prediction(tmp / "missing.csv", describe(entry))
    frame = pd.read_csv(tmp / "new.csv")
    frame.loc[2, "g7"] = np.nan
    frame.to_csv(tmp / "gap.csv", index=False)
    with pytest.raises(DataError, match=r"missing or non-finite value at data row 3, column 'g7'"):
        read_for_prediction(tmp / "gap.csv", describe(entry))
    pd.DataFrame(np.zeros((3, 5))).to_csv(tmp / "narrow.csv", index=False, header=False)
    info = {**describe(entry), "feature_names": None}
    with pytest.raises(DataError, match="has 5 columns but the model takes 12"):
        read_for_prediction(tmp / "narrow.csv", info)


def test_a_first_line_of_column_positions_is_a_header_not_a_row(table):
    """pandas writes "0,1,...,n-1" over a frame with default column names (header-less rows read with
    header=None, an MLflow input example saved to CSV): names, not a row to predict."""
    tmp, entry = table
    info = {**describe(entry), "feature_names": None, "class_names": None}  # a model of a header-less file
    plain = pd.read_csv(tmp / "new.csv")[["cancer_type", *describe(entry)["feature_names"]]]
    plain["cancer_type"] = plain["cancer_type"].map({"brain": 0, "lung": 1, "skin": 2})  # CANDLE's class indices
    plain.to_csv(tmp / "plain.csv", index=False, header=False)
    X, y, _ = read_for_prediction(tmp / "plain.csv", info)
    rows = pd.read_csv(tmp / "plain.csv", header=None)
    rows.to_csv(tmp / "positions.csv", index=False)  # the label first
    rows.iloc[:, 1:].T.reset_index(drop=True).T.to_csv(tmp / "features.csv", index=False)
    for name, labels in (("positions.csv", y), ("features.csv", None)):
        assert (tmp / name).read_text().startswith("0,1,2,3,")
        X2, y2, _ = read_for_prediction(tmp / name, info)
        assert X2.shape == (60, 12) and np.array_equal(X2, X)
        assert (y2 is None) if labels is None else np.array_equal(y2, labels)


def test_predict_cli_with_conformal_sets(table, tmp_path):
    tmp, entry = table
    run = train(entry, tmp_path / "run")
    out = tmp_path / "p.tsv"
    r = CliRunner().invoke(main, ["predict", str(run), "--data", str(tmp / "held_out.csv"), "--out", str(out),
                                  "--conformal", str(tmp / "calibration.csv"), "--alpha", "0.2", "--mc-dropout", "5",
                                  "--member-columns"])
    assert r.exit_code == 0, r.output
    frame = pd.read_csv(out, sep="\t")
    assert len(frame) == 400 and frame["id"].iloc[0] == "s640"
    assert set(frame["prediction"]) <= {"lung", "skin", "brain"}
    assert np.allclose(frame[["p_brain", "p_lung", "p_skin"]].sum(axis=1), 1, atol=1e-5)
    assert (frame["probability_std"] > 0).any()  # dropout passes differ
    assert [c for c in frame if c.startswith("member_")] == [f"member_{i}" for i in range(5)]
    truth = pd.read_csv(tmp / "held_out.csv")["cancer_type"]
    covered = [t in s.split("|") for t, s in zip(truth, frame["prediction_set"].fillna(""))]
    # Split conformal on 400 exchangeable calibration rows: coverage 0.8 to 0.8 + 1/401 in expectation;
    # 400 test rows put one standard error near 0.02.
    assert abs(np.mean(covered) - 0.8) <= 0.06, np.mean(covered)
    assert frame["set_size"].mean() < 3  # informative sets, not every class
    # the file's own labels score the predictions: the line matches the table
    hits = (frame["prediction"] == truth).sum()
    assert (f"on the 400 rows labelled in the file (cancer_type): accuracy {hits / 400:.3f} ({hits}/400), "
            f"80% set coverage {np.mean(covered):.3f} (mean size {frame['set_size'].mean():.2f})") in r.output


def test_rows_to_predict_need_no_label_but_calibration_rows_do(table, tmp_path):
    """New rows often carry an empty label column, or a class the model never saw: predict scores the rows
    it can and leaves the others out; calibration refuses them."""
    tmp, entry = table
    run = train(entry, tmp_path / "run")
    rows = pd.read_csv(tmp / "new.csv").iloc[:10]
    rows.loc[:2, "cancer_type"] = ""
    rows.loc[3, "cancer_type"] = "kidney"
    rows.to_csv(tmp_path / "partly.csv", index=False)
    _, y, _ = read_for_prediction(tmp_path / "partly.csv", describe(entry))
    assert list(y[:4]) == [-1] * 4 and (y[4:] >= 0).all()
    out = tmp_path / "p.tsv"
    r = CliRunner().invoke(main, ["predict", str(run), "--data", str(tmp_path / "partly.csv"), "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert len(pd.read_csv(out, sep="\t")) == 10
    assert "on the 6 rows labelled in the file (cancer_type): accuracy " in r.output
    assert "4 of 10 rows left out: their label is empty or one the model does not know" in r.output
    r = CliRunner().invoke(main, ["predict", str(run), "--data", str(tmp / "new.csv"), "--out", str(out),
                                  "--conformal", str(tmp_path / "partly.csv")])
    assert r.exit_code == 1 and "3 of 10 calibration rows have no label, e.g. data row 1" in r.output, r.output
    rows.loc[:2, "cancer_type"] = "lung"
    rows.to_csv(tmp_path / "unseen.csv", index=False)
    r = CliRunner().invoke(main, ["predict", str(run), "--data", str(tmp / "new.csv"), "--out", str(out),
                                  "--conformal", str(tmp_path / "unseen.csv")])
    assert r.exit_code == 1 and "labels ['kidney'] were not classes in training" in r.output, r.output


def test_a_regressors_labelled_rows_are_scored_in_the_targets_units():
    frame = pd.DataFrame({"prediction": [1.0, 2.0, 3.0, 4.0], "lower": [0.0, 1.5, 3.5, 3.0], "upper": [2.0, 2.5, 4.5, 5.0]})
    y = np.array([1.5, 2.0, 3.0, np.nan])  # the last row has no label
    line = predicting.labelled_line(frame, y, {"task": "regression", "label": "ln_ic50"}, alpha=0.1)
    # R² = 1 - 0.25 / 1.1667; MAE 0.5 / 3; rows 1 and 2 inside their bounds, row 3 not; widths 2, 1, 1
    assert line == ("on the 3 rows labelled in the file (ln_ic50): R² 0.786, MAE 0.1667, 90% interval coverage 0.667 "
                    "(mean width 1.333); 1 of 4 rows left out: their label is empty or one the model does not know")
    assert predicting.labelled_line(frame, np.full(4, np.nan), {"task": "regression"}, alpha=0.1) is None


def test_mc_dropout_needs_dropout(table, tmp_path):
    tmp, entry = table
    run = train(entry, tmp_path / "run", dropout=0.0)
    r = CliRunner().invoke(main, ["predict", str(run), "--data", str(tmp / "new.csv"), "--out", str(tmp_path / "p.tsv"),
                                  "--mc-dropout", "10"])
    assert r.exit_code == 2 and "needs a model trained with dropout > 0" in r.output
    assert not (tmp_path / "p.tsv").exists()


def test_bad_model_argument(tmp_path):
    r = CliRunner().invoke(main, ["predict", "no-such-thing", "--data", "x.csv", "--out", str(tmp_path / "p.tsv")])
    assert r.exit_code == 2 and "is not a checkpoint path, an MLflow run id (32 hex digits), a models:/ URI or a sweep" in r.output


def test_top_is_for_sweeps_only(table, tmp_path):
    tmp, entry = table
    run = train(entry, tmp_path / "run")
    r = CliRunner().invoke(main, ["predict", str(run), "--data", str(tmp / "new.csv"), "--out", str(tmp_path / "p.tsv"),
                                  "--top", "2"])
    assert r.exit_code == 2 and "--top picks among a sweep's trials" in r.output and not (tmp_path / "p.tsv").exists()


def test_too_little_calibration_data(table, tmp_path):
    tmp, entry = table
    run = train(entry, tmp_path / "run")
    pd.read_csv(tmp / "new.csv").iloc[:5].to_csv(tmp_path / "cal.csv", index=False)
    r = CliRunner().invoke(main, ["predict", str(run), "--data", str(tmp / "new.csv"), "--out", str(tmp_path / "p.tsv"),
                                  "--conformal", str(tmp_path / "cal.csv"), "--alpha", "0.1"])
    assert r.exit_code == 1 and "calibration set has 5 rows, too few for alpha=0.1" in r.output
    # Enough rows to calibrate, too few for the rank rule's threshold to be anything but the worst row's
    # score: said so. Smoothed sets have no such threshold and cover 90 % with 12 exchangeable rows too.
    pd.read_csv(tmp / "new.csv").iloc[:12].to_csv(tmp_path / "cal12.csv", index=False)
    args = ["predict", str(run), "--data", str(tmp / "new.csv"), "--out", str(tmp_path / "p.tsv"),
            "--conformal", str(tmp_path / "cal12.csv"), "--alpha", "0.1"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0 and "with 12 calibration rows at alpha 0.1 the conformal threshold is the largest" in r.output
    assert "19 or more rows" in r.output
    r = CliRunner().invoke(main, [*args, "--smoothed-sets"])
    assert r.exit_code == 0 and "threshold" not in r.output, r.output
    # At alpha 0.9 most sets are empty (10 % coverage); the command counts them, as in the file.
    r = CliRunner().invoke(main, [*args[:-1], "0.9"])
    empty = int((pd.read_csv(tmp_path / "p.tsv", sep="\t")["set_size"] == 0).sum())
    assert r.exit_code == 0 and empty > 0, r.output
    assert f"note: {empty} of 60 rows have an empty prediction set (set_size 0)" in r.output, r.output


def test_calibrating_on_the_models_own_rows_is_said(table, tmp_path):
    """Split conformal covers 1 - alpha for calibration rows exchangeable with new ones; a model is surer of
    the rows it was fitted or chosen on, so predict says so when the calibration file is, byte for byte, one
    of the files the model's data came from (here its val file, under another name, and its train file)."""
    tmp, _ = table
    spec = TableDataset(tmp / "train.csv", label="cancer_type", drop=("sample_id",), val=tmp / "calibration.csv")
    run = train(Cache(tmp_path / "cache").prepare(spec, log=lambda *_: None), tmp_path / "run")
    shutil.copy(tmp / "calibration.csv", tmp_path / "val_copy.csv")
    pd.read_csv(tmp / "calibration.csv").iloc[:-1].to_csv(tmp_path / "fewer.csv", index=False)
    args = ["predict", str(run), "--data", str(tmp / "held_out.csv"), "--out", str(tmp_path / "p.tsv"),
            "--alpha", "0.2", "--conformal"]
    r = CliRunner().invoke(main, [*args, str(tmp_path / "val_copy.csv")])
    assert r.exit_code == 0, r.output
    assert (f"note: {tmp_path / 'val_copy.csv'} is this model's own val file: its rows chose its epochs (in a "
            f"sweep, its trial too), so the model is surer of them than of new rows and its sets or intervals may "
            f"cover less than 80%; calibrate on labelled rows it never saw") in r.output, r.output
    r = CliRunner().invoke(main, [*args, str(tmp / "train.csv")])
    assert r.exit_code == 0 and "is this model's own train file: its rows trained it" in r.output, r.output
    r = CliRunner().invoke(main, [*args, str(tmp_path / "fewer.csv")])  # other bytes: no such claim
    assert r.exit_code == 0 and "is this model's own" not in r.output, r.output


def test_a_cv_fold_models_val_file_is_said_to_have_trained_it(table, tmp_path):
    """A `tune --cv` or `cv` fold model trained on the other folds of train+val: its val file's rows trained
    it, not only chose its epochs (a trial's folds, pooled, were each trained on most of them)."""
    from candle_ray.data import folds

    tmp, _ = table
    spec = TableDataset(tmp / "train.csv", label="cancer_type", drop=("sample_id",), val=tmp / "calibration.csv")
    entry = Cache(tmp_path / "cache").prepare(spec, log=lambda *_: None)
    fold = {"assignment": folds.assign(len(folds.pooled_labels(entry)), 2, seed=0), "fold": 1}
    run = train(entry, tmp_path / "fold-1", cv=fold)
    r = CliRunner().invoke(main, ["predict", str(run), "--data", str(tmp / "held_out.csv"), "--out",
                                  str(tmp_path / "p.tsv"), "--conformal", str(tmp / "calibration.csv")])
    assert r.exit_code == 0 and "is this model's own val file: its rows trained it, so the model" in r.output, r.output


def test_pool_regression_heads():
    rng = np.random.default_rng(1)
    # two members x one pass, 4 rows: het outputs interleave (mean, log variance)
    het = [np.stack([np.stack([rng.normal(size=4) + m, np.full(4, np.log(0.25))], axis=1)]) for m in (0.0, 1.0)]
    p = predicting.pool("het", het)
    assert np.allclose(p.aleatoric, 0.25) and np.allclose(p.epistemic, 0.25 * (het[0][0, :, 0] - het[1][0, :, 0]) ** 2)
    assert np.allclose(p.sigma ** 2, p.aleatoric + p.epistemic)
    qtl = [np.array([[[1.0, 0.0, 2.56]]])]
    q = predicting.pool("qtl", qtl)
    assert q.mean[0] == 1.0 and np.isclose(q.sigma[0], 1.0)
    # two qtl members: their noise is the pooled q10..q90's σ (CANDLE's / 2.56), their spread the epistemic part
    q = predicting.pool("qtl", [np.array([[[1.0, 0.0, 2.56]]]), np.array([[[3.0, 0.0, 7.68]]])])
    assert np.isclose(q.aleatoric[0], 4.0) and np.isclose(q.epistemic[0], 1.0) and np.isclose(q.sigma[0], 5 ** 0.5)
    plain = predicting.pool("regression", [np.ones((3, 2, 1))])
    assert np.all(plain.epistemic == 0)
    weighted = predicting.pool("regression", [np.zeros((1, 2, 1)), np.ones((1, 2, 1))], weights=np.array([0.25, 0.75]))
    assert np.allclose(weighted.mean, 0.75) and np.allclose(weighted.epistemic, 0.25 * 0.75 ** 2 + 0.75 * 0.25 ** 2)


def test_interval_bounds_only_where_sigma_holds_the_datas_noise():
    """mse members' spread alone is no interval: a 90 % Gaussian one from it covered 19 % of GDSC's held-out
    rows. Such a table has std, no bounds, and predict says why; het and qtl heads (and conformal) keep them."""
    rng = np.random.default_rng(2)
    mse = predicting.pool("regression", [rng.normal(size=(1, 6, 1)) for _ in range(5)])
    frame = predicting.table(mse, {})
    assert list(frame) == ["prediction", "std"] and (frame["std"] > 0).all()
    assert "no interval bounds: std is the spread of the members' predictions alone" in \
        predicting.spread_only_note(mse, None, {})
    het = predicting.pool("het", [np.stack([np.stack([rng.normal(size=6), np.full(6, np.log(0.25))], axis=1)])
                                  for _ in range(2)])
    assert {"lower", "upper"} <= set(predicting.table(het, {})) and predicting.spread_only_note(het, None, {}) is None
    # qtl: bounds at 1 - alpha from its σ, as the ensemble's coverage metric; its q10..q90 is an 80 % interval
    # (it covered 71 % of those GDSC rows at --alpha 0.1, the Gaussian bounds 86 %), kept under its own name
    qtl = predicting.pool("qtl", [np.array([[[1.0, 0.0, 2.56]]])])
    frame = predicting.table(qtl, {}, alpha=0.1)
    assert list(frame) == ["prediction", "std", "lower", "upper", "q10", "q90"], list(frame)
    assert np.allclose(frame[["lower", "upper"]].iloc[0], np.ravel(uq.gaussian_interval(qtl.mean, qtl.sigma, 0.1)), atol=1e-9)
    assert np.allclose(frame[["q10", "q90"]].iloc[0], [0.0, 2.56]) and predicting.spread_only_note(qtl, None, {}) is None
    one = predicting.pool("regression", [np.ones((1, 6, 1))])  # one member, no spread: nothing to say
    assert list(predicting.table(one, {})) == ["prediction"] and predicting.spread_only_note(one, None, {}) is None


def test_members_must_match():
    a = predicting.Member(model=None, state={"config": {}, "data": {"fingerprint": "a", "num_features": 3, "task": "regression"}}, source="a")
    b = predicting.Member(model=None, state={"config": {}, "data": {"fingerprint": "b", "num_features": 3, "task": "regression"}}, source="b")
    with pytest.raises(UsageError, match="disagree on fingerprint"):
        predicting.check_compatible([a, b])


def test_a_member_with_a_share_takes_it_and_the_others_split_the_rest(table, tmp_path):
    """An ensemble's linear baseline (a checkpoint with pool_share) takes its share of the pooled
    probabilities whatever the members' count or MC passes; it passes once (no dropout) and has its own
    column; alone, it is the whole prediction."""
    from candle_ray import baseline, checkpoint

    tmp, entry = table
    nets = [predicting.load_member(train(entry, tmp_path / f"net{i}", rng_seed=i)) for i in range(2)]
    fitted = baseline.fit(entry)
    checkpoint.save(tmp_path / "linear", baseline.checkpoint_state(fitted, entry, share=0.25), kinds=("best",))
    linear = predicting.load_member(tmp_path / "linear")
    X, _, _ = read_for_prediction(tmp / "new.csv", describe(entry))
    batches = predicting.array_batches(X)
    alone = [predicting.predict([m], batches).probs for m in (*nets, linear)]
    pooled = predicting.predict([*nets, linear], batches)
    assert np.allclose(pooled.probs, 0.75 * (alone[0] + alone[1]) / 2 + 0.25 * alone[2], atol=1e-6)
    assert pooled.names == ["member_0", "member_1", "baseline"]
    mc = predicting.predict([*nets, linear], batches, mc_passes=3)
    assert mc.samples.shape[0] == 7 and mc.names[-2:] == ["member_5", "baseline"]
    assert np.allclose(mc.probs, 0.75 * mc.samples[:6].mean(axis=0) + 0.25 * alone[2], atol=1e-6)
    assert np.allclose(predicting.predict([linear], batches).probs, alone[2])
    frame = predicting.table(pooled, describe(entry), member_columns=True)
    assert list(frame.columns[-3:]) == ["member_0", "member_1", "baseline"]
    weights = predicting.pool_weights([*nets, linear], [1, 1, 1])
    assert np.allclose(weights, [0.375, 0.375, 0.25])
    spread = np.sqrt(np.average((pooled.samples - pooled.probs) ** 2, axis=0, weights=weights))
    assert np.allclose(pooled.prob_std, spread)


def test_a_cv_trial_folder_pools_its_fold_models(table, tmp_path):
    """`tune --cv` leaves a trial's models in fold-k/checkpoints: predict on the trial folder pools them, as
    the trial's MLflow model does, where it used to stop at 'no best checkpoint under' the folder."""
    tmp, entry = table
    trial = tmp_path / "trials" / "3fbc5e8d"
    for k, seed in enumerate((1, 2)):
        train(entry, trial / f"fold-{k}", rng_seed=seed)
    single = []
    for source in (trial, trial / "fold-0", trial / "fold-1"):
        out = tmp_path / f"{source.name}.tsv"
        r = CliRunner().invoke(main, ["predict", str(source), "--data", str(tmp / "new.csv"), "--out", str(out),
                                      "--member-columns"])
        assert r.exit_code == 0, r.output
        single.append(pd.read_csv(out, sep="\t"))
    pooled, fold0, fold1 = single
    assert [c for c in pooled if c.startswith("member_")] == ["member_0", "member_1"]
    probabilities = ["p_brain", "p_lung", "p_skin"]
    assert not np.allclose(fold0[probabilities], fold1[probabilities], atol=1e-3)  # two different models
    assert np.allclose(pooled[probabilities], (fold0[probabilities] + fold1[probabilities]) / 2, atol=1e-5)


def test_trial_folders_are_its_folds_in_fold_order(tmp_path):
    from candle_ray.checkpoint import trial_folders

    assert trial_folders(tmp_path) == []
    (tmp_path / "checkpoints").mkdir()
    assert trial_folders(tmp_path) == [tmp_path / "checkpoints"]
    for k in (10, 2, 0):
        (tmp_path / f"fold-{k}" / "checkpoints").mkdir(parents=True)
    assert trial_folders(tmp_path) == [tmp_path / f"fold-{k}" / "checkpoints" for k in (0, 2, 10)]


def test_members_with_different_heads_are_not_pooled():
    data = {"fingerprint": "f", "num_features": 3, "task": "regression"}
    qtl, mse = (predicting.Member(model=None, state={"config": {"loss": loss}, "data": data}, source=loss)
                for loss in ("qtl", "mse"))
    predicting.check_compatible([qtl, qtl])
    with pytest.raises(UsageError, match=r"different heads \(qtl vs regression\), whose outputs do not pool; .* --top K"):
        predicting.check_compatible([qtl, mse])
