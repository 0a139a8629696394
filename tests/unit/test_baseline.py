"""The linear baseline (candle_ray.baseline) on real cache entries: metrics, folds, sampling, joined data.

This module is also a joined-dataset reader (reader="tests.unit.test_baseline"): `read` builds a small
drug-response-like dataset whose target is linear in the gathered features.
"""

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import RidgeCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from candle_ray import baseline
from candle_ray.data import folds
from candle_ray.data.cache import Cache, open_split
from candle_ray.data.feed import JoinedFeed
from candle_ray.data.joined import FeatureTable, JoinedTables, Slot
from candle_ray.data.spec import Dataset, ReaderDataset
from candle_ray.errors import DataError, UsageError

READER = "tests.unit.test_baseline"
OPTIONS = {"rows": 400, "multi": False}


# ----------------------------------------------------------------------------- helpers
def quiet(message):
    pass


def matrix_entry(tmp_path, name, train, val, task="classification", classes=None):
    """A prepared matrix entry from (X, y) pairs, through CANDLE's no-header CSV format."""
    paths = []
    for split, (X, y) in (("train", train), ("val", val)):
        label = "%d" if task != "regression" else "%.8g"
        path = tmp_path / f"{name}_{split}.csv"
        np.savetxt(path, np.column_stack([y, X]), delimiter=",", fmt=[label] + ["%.7g"] * X.shape[1])
        paths.append(str(path))
    ds = Dataset(name, train=paths[0], val=paths[1], task=task, classes=classes)
    return Cache(tmp_path / "cache").prepare(ds, log=quiet)


def blobs(n, d, classes, seed, spread=0.3):
    """Well separated classes: each class a tight blob around its own centre (the same centres for every seed)."""
    centres = np.random.default_rng(0).normal(size=(classes, d)) * 3
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    return (centres[y] + spread * rng.normal(size=(n, d))).astype(np.float32), y


def linear(n, d, seed, offset=50.0, noise=0.05):
    w = np.random.default_rng(0).normal(size=d)
    X = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return X, offset + X @ w + noise * np.random.default_rng(seed + 100).normal(size=n)


def plain_floats(metrics):
    return all(type(v) is float for v in metrics.values())


# ----------------------------------------------------------------------------- classification
def test_separable_classes_give_near_perfect_accuracy_and_a_small_loss(tmp_path):
    entry = matrix_entry(tmp_path, "blobs", blobs(90, 12, 3, 1), blobs(30, 12, 3, 2), classes=3)
    result = baseline.fit(entry)
    assert isinstance(result, baseline.Baseline) and plain_floats(result.metrics)
    assert set(result.metrics) == {"val_loss", "val_accuracy"}
    assert result.metrics["val_accuracy"] >= 0.95
    assert result.metrics["val_loss"] < 0.25 * math.log(3)
    assert result.model.startswith("logistic regression (C=") and "5-fold CV" in result.model
    assert (result.rows_used, result.rows_total, result.sampled, result.note) == (90, 90, False, None)
    assert baseline.why_not(entry) is None
    assert baseline.fit(entry.path).metrics == result.metrics  # an entry's folder works as well, and is deterministic


def test_binary_task_reports_auroc_and_aupr_and_nan_when_val_holds_one_class(tmp_path):
    X, y = blobs(60, 5, 2, 1, spread=2.0)  # overlapping: AUC below 1 but well above chance
    Xv, yv = blobs(40, 5, 2, 2, spread=2.0)
    result = baseline.fit(matrix_entry(tmp_path, "bin", (X, y), (Xv, yv), classes=2))
    assert set(result.metrics) == {"val_loss", "val_accuracy", "val_auroc", "val_aupr"} and plain_floats(result.metrics)
    assert 0.7 < result.metrics["val_auroc"] <= 1 and 0.7 < result.metrics["val_aupr"] <= 1
    one_class = baseline.fit(matrix_entry(tmp_path, "bin1", (X, y), (Xv[yv == 0], yv[yv == 0]), classes=2))
    assert math.isnan(one_class.metrics["val_auroc"]) and math.isnan(one_class.metrics["val_aupr"])
    assert one_class.metrics["val_accuracy"] > 0.5


def test_classes_absent_or_rare_in_training_rows_still_get_a_probability(tmp_path):
    """4 classes declared; class 2 has one training row (no stratified CV: C fixed), class 3 none."""
    X, y = blobs(41, 6, 3, 1)
    keep = (y != 2) | (np.arange(len(y)) == 2)
    Xv, yv = blobs(32, 6, 4, 2)
    result = baseline.fit(matrix_entry(tmp_path, "rare", (X[keep], y[keep]), (Xv, yv), classes=4))
    assert "C=1, fixed: a class has fewer than 2 training rows" in result.model
    loss = result.metrics["val_loss"]
    # The 8 class-3 val rows get probability 0, floored: each adds -log(1e-15) / 32 to the mean.
    assert math.isfinite(loss) and loss > 8 * -math.log(baseline.PROB_FLOOR) / 32 * 0.99
    assert result.metrics["val_accuracy"] <= 0.75 + 1e-9  # class 3 can never be predicted


def test_class_metrics_follow_the_training_loops_definitions():
    proba = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [1.0, 0.0]])
    y = np.array([0, 1, 1, 1])
    metrics = baseline._class_metrics(proba, y, 2)
    expected = -(math.log(0.9) + math.log(0.8) + math.log(0.4) + math.log(baseline.PROB_FLOOR)) / 4
    assert metrics["val_loss"] == pytest.approx(expected) and metrics["val_accuracy"] == 0.5
    assert metrics["val_auroc"] == pytest.approx(2 / 3)  # positives 0.8, 0.4, 0.0 against the negative 0.1


# ----------------------------------------------------------------------------- regression
def test_linear_targets_with_a_large_offset_give_a_high_r2(tmp_path):
    entry = matrix_entry(tmp_path, "lin", linear(200, 8, 1), linear(60, 8, 2), task="regression")
    result = baseline.fit(entry)
    assert set(result.metrics) == {"val_loss", "val_r2", "val_mae", "val_corr"} and plain_floats(result.metrics)
    assert result.metrics["val_r2"] >= 0.9 and result.metrics["val_corr"] >= 0.95
    assert result.metrics["val_loss"] < 0.05 and result.model.startswith("ridge regression (alpha=")


def test_regression_metrics_follow_fit_metrics():
    y, pred = np.array([1.0, 2.0, 3.0, 4.0]), np.array([1.5, 2.0, 2.5, 5.0])
    metrics = baseline._regression_metrics(pred, y)
    assert metrics["val_loss"] == pytest.approx((0.25 + 0 + 0.25 + 1) / 4)
    assert metrics["val_r2"] == pytest.approx(1 - 1.5 / 5.0) and metrics["val_mae"] == pytest.approx(0.5)
    assert metrics["val_corr"] == pytest.approx(np.corrcoef(y, pred)[0, 1])
    flat = baseline._regression_metrics(np.ones(4), y)
    assert flat["val_corr"] == 0.0 and baseline._regression_metrics(pred, np.ones(4))["val_r2"] == 0.0


@pytest.mark.parametrize("config, task, searched, shared", [
    ({}, "regression", {}, True),
    ({"loss": "mean_squared_error"}, "regression", {}, True),
    ({"loss": "het"}, "regression", {}, False),  # a Gaussian NLL
    ({"loss": "qtl"}, "regression", {}, False),  # a pinball loss
    ({"loss": "mae"}, "regression", {}, False),
    ({}, "regression", {"loss": None}, False),  # the search varies it
    ({}, "classification", {}, True),
    ({"class_weight": "balanced"}, "classification", {}, True),  # validation cross-entropy is unweighted
    ({"abstention": True}, "classification", {}, False),
    ({}, "classification", {"abstention": None}, False),
])
def test_val_loss_is_compared_only_where_the_trials_measure_what_the_baseline_does(config, task, searched, shared):
    assert baseline.shares_val_loss(config, task, searched) is shared


def test_a_het_sweep_logs_no_baseline_val_loss(tmp_path):
    """A het sweep's val_loss is a Gaussian NLL: "best trial val_loss 1.426 vs linear baseline 1.554" (GDSC,
    a squared error) said the trial was better where its R² was worse. Its other metrics stay."""
    from candle_ray.sweep import fit_baseline

    entry = matrix_entry(tmp_path, "lin", linear(200, 8, 1), linear(60, 8, 2), task="regression")
    said = []
    het = fit_baseline(entry, None, None, said.append, trials_config={"loss": "het"})
    assert set(het) == {"val_r2", "val_mae", "val_corr"} and "no val_loss: the trials' loss" in said[0]
    assert set(fit_baseline(entry, None, None, said.append, trials_config={"loss": "mse"})) == \
        {"val_loss", "val_r2", "val_mae", "val_corr"}


# ----------------------------------------------------------------------------- no baseline
def test_autoencoder_entry_gets_no_baseline_and_a_one_line_reason(tmp_path):
    X, y = blobs(20, 4, 2, 1)
    csv = tmp_path / "ae.csv"
    np.savetxt(csv, np.column_stack([y, X]), delimiter=",", fmt=["%d"] + ["%.6g"] * 4)
    entry = Cache(tmp_path / "cache").prepare(Dataset("p1b1", train=str(csv), val=str(csv), task="autoencoder"), log=quiet)
    assert baseline.fit(entry) is None
    reason = baseline.why_not(entry)
    assert reason == "no linear baseline for an autoencoder (p1b1 reconstructs its input)"


def test_multi_task_labels_get_no_baseline(tmp_path):
    entry = Cache(tmp_path / "cache").prepare(joined_dataset(tmp_path, multi=True), log=quiet)
    assert baseline.fit(entry) is None
    assert "multi-task labels" in baseline.why_not(entry) and "\n" not in baseline.why_not(entry)


# ----------------------------------------------------------------------------- folds
def test_cv_assignment_gives_the_mean_over_folds_of_fits_done_by_hand(tmp_path):
    train, val = linear(90, 5, 1, noise=1.0), linear(30, 5, 2, noise=1.0)
    entry = matrix_entry(tmp_path, "cv", train, val, task="regression")
    assignment = folds.assign(120, 3, seed=4)
    result = baseline.fit(entry, cv_assignment=assignment, folds=3)
    parts = [open_split(entry, split) for split in ("train", "val")]
    X, y = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]).astype(np.float64)
    by_hand = []
    for k in range(3):
        model = make_pipeline(StandardScaler(), RidgeCV(alphas=baseline.ALPHA_GRID)).fit(X[assignment != k], y[assignment != k])
        by_hand.append(baseline._regression_metrics(model.predict(X[assignment == k]), y[assignment == k]))
    for key in ("val_loss", "val_r2", "val_mae", "val_corr"):
        assert result.metrics[key] == pytest.approx(np.mean([m[key] for m in by_hand]), rel=1e-6)
    assert "mean of 3 folds" in result.model and result.rows_total == 80 and not result.sampled


def test_cv_of_a_classifier_stratifies_its_inner_folds_and_averages(tmp_path):
    entry = matrix_entry(tmp_path, "cvc", blobs(60, 6, 3, 1), blobs(30, 6, 3, 2), classes=3)
    assignment = folds.assign(90, 3, seed=0, labels=folds.pooled_labels(entry))
    result = baseline.fit(entry, cv_assignment=assignment, folds=3)
    assert result.metrics["val_accuracy"] >= 0.95 and "fold" in result.model.split("C=")[1] and "mean of 3 folds" in result.model


def test_bad_fold_arguments_are_refused(tmp_path):
    entry = matrix_entry(tmp_path, "bad", linear(20, 3, 1), linear(10, 3, 2), task="regression")
    with pytest.raises(UsageError, match="cv_assignment"):
        baseline.fit(entry, folds=3)
    with pytest.raises(DataError, match="has 29 rows but the dataset has 30"):
        baseline.fit(entry, cv_assignment=np.zeros(29, dtype=np.int8), folds=2)
    with pytest.raises(DataError, match="fold 2 leaves no validation rows"):
        baseline.fit(entry, cv_assignment=np.arange(30, dtype=np.int8) % 2, folds=3)


# ----------------------------------------------------------------------------- sampling
def test_a_small_cell_budget_samples_the_training_rows_and_says_so(tmp_path):
    entry = matrix_entry(tmp_path, "big", blobs(300, 10, 3, 1), blobs(30, 10, 3, 2), classes=3)
    result = baseline.fit(entry, max_cells=600, seed=7)  # 600 cells / 10 features = 60 rows
    assert (result.rows_used, result.rows_total, result.sampled) == (60, 300, True)
    assert result.note == "the baseline trained on a seeded random sample of 60 of 300 training rows"
    assert result.metrics["val_accuracy"] >= 0.9
    assert baseline.fit(entry, max_cells=600, seed=7) == result  # seeded
    assert baseline.fit(entry, max_rows=100).rows_used == 100


# ----------------------------------------------------------------------------- joined entries
def read(paths, options, seed):
    """Rows: a cell (20, 4 features), a drug (10, 3 features) and a dose; y linear in those 8 features."""
    rng = np.random.default_rng(int(Path(paths["seed"]).read_text()))
    cells, drugs = rng.normal(size=(20, 4)).astype(np.float32), rng.normal(size=(10, 3)).astype(np.float32)
    n = options["rows"]
    frame = pd.DataFrame({"cell": (np.arange(n) % 20).astype(np.int32), "drug": rng.integers(0, 10, n).astype(np.int32),
                          "dose": rng.uniform(-1, 1, n).astype(np.float32)})
    y = cells[frame["cell"]] @ [1.0, -2.0, 0.5, 1.5] + drugs[frame["drug"]] @ [2.0, 1.0, -1.0] + 3 * frame["dose"]
    frame["y"] = (y + 0.05 * rng.normal(size=n)).astype(np.float32)
    extra = {}
    if options["multi"]:
        frame["t0"], frame["t1"] = np.arange(n) % 3, np.where(np.arange(n) % 2 == 0, 1, -1)
        extra = {"task": "classification", "num_classes": [3, 2], "label_columns": ["t0", "t1"]}
    tables = {"cell": FeatureTable("cell", [f"c{i}" for i in range(20)], cells, list("abcd")),
              "drug": FeatureTable("drug", [f"d{i}" for i in range(10)], drugs, list("xyz"))}
    slots = [Slot("dose", None, "dose"), Slot("cell", "cell", "cell"), Slot("drug", "drug", "drug")]
    cut = int(n * 0.75)
    return JoinedTables(tables=tables, slots=slots, splits={"train": frame.iloc[:cut], "val": frame.iloc[cut:]}, **extra)


def joined_dataset(tmp_path, **options):
    source = tmp_path / "seed.txt"
    source.write_text("3\n")
    return ReaderDataset("drugs", reader=READER, sources={"seed": str(source)}, options=options)


def test_a_joined_entry_gathers_only_its_sampled_rows_in_chunks(tmp_path, monkeypatch):
    entry = Cache(tmp_path / "cache").prepare(joined_dataset(tmp_path), log=quiet)
    batches = []
    real_batch = JoinedFeed.batch
    monkeypatch.setattr(JoinedFeed, "batch", lambda self, index: batches.append(len(index)) or real_batch(self, index))
    monkeypatch.setattr(baseline, "_CHUNK_CELLS", 8 * 32)  # 32 rows of 8 features per gather
    result = baseline.fit(entry, max_rows=120)
    assert (result.rows_used, result.rows_total, result.sampled) == (120, 300, True)
    assert "120 of 300 training rows" in result.note
    assert max(batches) <= 32 and sum(batches) == 120 + 100  # the sample and the val rows, nothing else
    assert result.metrics["val_r2"] >= 0.95


def test_pooled_rows_of_a_joined_entry_are_the_feeds_rows(tmp_path):
    entry = Cache(tmp_path / "cache").prepare(joined_dataset(tmp_path), log=quiet)
    data = baseline._Pooled(entry, entry.manifest)
    rows = np.array([0, 5, 299, 300, 350, 399])
    train_feed = JoinedFeed.open(entry, "train", 4, shuffle=False, pad=False)
    val_feed = JoinedFeed.open(entry, "val", 4, shuffle=False, pad=False)
    import torch

    expected = np.concatenate([train_feed.batch(torch.tensor([0, 5, 299]))[0].numpy(),
                               val_feed.batch(torch.tensor([0, 50, 99]))[0].numpy()])
    np.testing.assert_array_equal(data.gather(rows), expected)
    assert data.labels.shape == (400,) and data.labels.dtype == np.float32


def test_training_rows_of_one_class_give_the_constant_prior(tmp_path):
    X, y = blobs(20, 4, 2, 1)
    Xv, yv = blobs(10, 4, 2, 2)
    result = baseline.fit(matrix_entry(tmp_path, "one", (X, np.zeros_like(y)), (Xv, yv), classes=2))
    assert result.model == "constant class prior (the training rows hold one class)"
    assert result.metrics["val_accuracy"] == 0.5 and result.metrics["val_auroc"] == 0.5


# ----------------------------------------------------------------------------- the baseline as a checkpoint
@pytest.mark.parametrize("case", ["three classes", "more features than rows", "binary", "a class absent from training",
                                  "one training class", "regression"])
def test_the_baseline_as_a_checkpoint_predicts_what_it_scored(tmp_path, case):
    """The fitted pipeline folded into one linear layer (scaler and row basis included) and saved as an `mlp`
    checkpoint: `candle-ray predict`'s pooling of it alone gives the baseline's own validation metrics."""
    from candle_ray import checkpoint
    from candle_ray import predict as predicting

    train, val, task, classes = {
        "three classes": (blobs(90, 12, 3, 1, spread=2.0), blobs(30, 12, 3, 2, spread=2.0), "classification", 3),
        "more features than rows": (blobs(20, 50, 3, 1, spread=2.0), blobs(30, 50, 3, 2, spread=2.0), "classification", 3),
        "binary": (blobs(60, 5, 2, 1, spread=2.0), blobs(40, 5, 2, 2, spread=2.0), "classification", 2),
        "a class absent from training": ((blobs(60, 5, 2, 1, spread=2.0)[0], blobs(60, 5, 2, 1)[1] * 2),
                                         blobs(40, 5, 3, 2, spread=2.0), "classification", 3),
        "one training class": ((blobs(20, 4, 2, 1)[0], np.zeros(20, int)), blobs(10, 4, 2, 2), "classification", 2),
        "regression": (linear(80, 6, 1), linear(30, 6, 2), "regression", None),
    }[case]
    entry = matrix_entry(tmp_path, "case", train, val, task=task, classes=classes)
    fitted = baseline.fit(entry)
    checkpoint.save(tmp_path / "ckpt", baseline.checkpoint_state(fitted, entry, share=0.5), kinds=("best",))
    member = predicting.load_member(tmp_path / "ckpt")
    assert member.share == 0.5 and member.state["model"] == "mlp" and member.head in ("classification", "regression")
    X, y = (np.asarray(a) for a in open_split(entry, "val"))
    pred = predicting.predict([member], predicting.array_batches(X))
    if task == "regression":
        assert np.mean((pred.mean - y.ravel()) ** 2) == pytest.approx(fitted.metrics["val_loss"], rel=1e-4)
    else:
        scored = baseline._class_metrics(pred.probs, y, classes)
        assert scored == pytest.approx(fitted.metrics, rel=1e-4, abs=1e-6, nan_ok=True)


def test_no_single_model_under_cv(tmp_path):
    entry = matrix_entry(tmp_path, "cv", blobs(60, 5, 2, 1), blobs(30, 5, 2, 2), classes=2)
    assignment = folds.assign(90, 3, seed=0)
    assert baseline.fit(entry, cv_assignment=assignment, folds=3).linear is None


def test_the_baselines_description_names_each_folds_choice_once():
    lr = "logistic regression"
    assert baseline._describe([(lr, "C", 1.0, "5-fold CV")]) == "logistic regression (C=1, 5-fold CV)"
    assert baseline._describe([("ridge regression", "alpha", 1e3, "leave-one-out CV")] * 3) == \
        "ridge regression (alpha=1e+03 in every fold, leave-one-out CV; mean of 3 folds)"
    # NCI-60's 4 cv folds: one fold's rarest tissue had 3 training rows, so its inner CV had 3 folds
    assert baseline._describe([(lr, "C", 1.0, "4-fold CV")] * 3 + [(lr, "C", 0.01, "3-fold CV")]) == \
        "logistic regression (C=1/1/1/0.01 by fold, inner 4/4/4/3-fold CV; mean of 4 folds)"
