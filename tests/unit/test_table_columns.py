"""A table's text and missing feature values, without Ray: categorical columns (tissue, stage) one-hot encoded at
preparation and rebuilt from the raw column by predict; missing values filled from the train rows (impute=)."""

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from candle_ray.cli import main
from candle_ray.data.cache import Cache
from candle_ray.data.cache_format import fingerprint
from candle_ray.data.features import describe, read_for_prediction, typical_row
from candle_ray.data.spec import Dataset, TableDataset
from candle_ray.errors import DataError, UsageError
from candle_ray.loop import World, train_epochs

TISSUES = ["lung", "skin", "brain", "blood"]


def clinical(n: int, seed: int = 0) -> pd.DataFrame:
    """The class is the tissue's group (lung, skin: A; brain, blood: B), which no numeric column carries."""
    rng = np.random.default_rng(seed)
    tissue = rng.choice(TISSUES, n)
    frame = pd.DataFrame(rng.normal(size=(n, 3)), columns=["g0", "g1", "g2"])
    frame.insert(1, "tissue", tissue)
    frame.insert(0, "response", np.where(np.isin(tissue, ["lung", "skin"]), "A", "B"))
    frame.insert(0, "sample", [f"s{i}" for i in range(n)])
    return frame


def prepare(tmp_path, frame, val=None, **options):
    frame.to_csv(tmp_path / "train.csv", index=False)
    if val is not None:
        val.to_csv(tmp_path / "val.csv", index=False)
    spec = TableDataset(tmp_path / "train.csv", label="response", drop=("sample",), categorical=("tissue",),
                        val=tmp_path / "val.csv" if val is not None else None, **options)
    notes = []
    return Cache(tmp_path / "cache").prepare(spec, log=notes.append), notes


def test_a_categorical_column_becomes_one_hot_columns_in_its_place(tmp_path):
    entry, _ = prepare(tmp_path, clinical(200), scaling="none")
    names = entry.manifest["feature_names"]
    assert names == ["g0", "tissue=blood", "tissue=brain", "tissue=lung", "tissue=skin", "g1", "g2"]
    assert entry.manifest["preprocessing"]["categorical"] == ["tissue"]
    spec = TableDataset(tmp_path / "train.csv", label="response", drop=("sample",))
    assert fingerprint(spec) != entry.fingerprint  # the encoding is part of what the entry holds


def test_val_categories_follow_train_and_categories_train_lacks_are_left_out(tmp_path):
    train = clinical(120)
    train = train[train["tissue"] != "blood"]
    val = clinical(40, seed=1)
    val.loc[val.index[0], "tissue"] = "kidney"  # in neither split's train rows
    entry, notes = prepare(tmp_path, train, val)
    assert [n for n in entry.manifest["feature_names"] if n.startswith("tissue=")] == \
        ["tissue=brain", "tissue=lung", "tissue=skin"]
    # a val file's extra categories are no category; a category only held-out rows have is left out, and said
    frame = clinical(200)
    frame.loc[frame.index[-1], "tissue"] = "bone"
    frame.to_csv(tmp_path / "all.csv", index=False)
    for seed, held_out in ((7, False), (8, True)):  # seed 8 holds the bone row out into val
        spec = TableDataset(tmp_path / "all.csv", label="response", drop=("sample",), categorical=("tissue",),
                            val_fraction=0.2, seed=seed)
        said = []
        entry = Cache(tmp_path / "cache2").prepare(spec, log=said.append)
        assert ("tissue=bone" in entry.manifest["feature_names"]) is not held_out
        assert held_out is any("1 categories appear in no train row, e.g. 'tissue=bone'" in s for s in said), said
        assert entry.num_features == 8 - held_out  # g0..g2 and five tissues, bone among them


def test_bad_categorical_columns_are_refused(tmp_path):
    frame = clinical(120)
    with pytest.raises(DataError, match="categorical column 'tisue' is not a column of .*did you mean 'tissue'"):
        frame.to_csv(tmp_path / "t.csv", index=False)
        Cache(tmp_path / "c").prepare(TableDataset(tmp_path / "t.csv", label="response", drop=("sample",),
                                                   categorical=("tisue",)), log=lambda *_: None)
    with pytest.raises(DataError, match=r"categorical column 'sample' .* has 120 different values in 120 rows.*drop="):
        Cache(tmp_path / "c").prepare(TableDataset(tmp_path / "t.csv", label="response",
                                                   categorical=("sample", "tissue")), log=lambda *_: None)
    with pytest.raises(DataError, match=r"to categorical=\(\.\.\.\)"):  # the hint for a text column
        Cache(tmp_path / "c").prepare(TableDataset(tmp_path / "t.csv", label="response", drop=("sample",)),
                                      log=lambda *_: None)
    with pytest.raises(UsageError, match="categorical=\\['tissue'\\] needs format='table'"):
        Dataset(name="t", train=str(tmp_path / "t.csv"), categorical=("tissue",))


def test_predict_rebuilds_the_encoding_from_the_raw_column(tmp_path):
    """A network learns the class from the tissue alone; predict takes the raw column (an unseen tissue or an
    empty cell is no category) and scores itself on the file's labels."""
    entry, _ = prepare(tmp_path, clinical(400), clinical(100, seed=1))
    job = {"config": {"epochs": 25, "batch_size": 32, "learning_rate": 0.01, "optimizer": "adam", "dense": [16],
                      "dropout": 0.0, "activation": "relu", "rng_seed": 1, "timeout": -1},
           "model": "mlp", "task": "classification", "model_shape": {"input_dim": entry.num_features, "classes": 2},
           "entry": str(entry.path), "run_dir": str(tmp_path / "run"), "metric": "val_loss", "mode": "min",
           "threads": 1, "data": describe(entry), "cv": None}
    assert max(m["val_accuracy"] for m in train_epochs(job, World())) >= 0.95
    new = clinical(60, seed=2)
    new = new[["g2", "tissue", "sample", "g1", "g0", "response"]]  # any order
    new.loc[new.index[:2], "tissue"] = ["kidney", ""]
    new.to_csv(tmp_path / "new.csv", index=False)
    X, _, ids = read_for_prediction(tmp_path / "new.csv", describe(entry))
    assert X.shape == (60, 7) and ids[0] == "s0"  # the raw text column is not taken for the rows' ids
    out = tmp_path / "p.tsv"
    r = CliRunner().invoke(main, ["predict", str(tmp_path / "run"), "--data", str(tmp_path / "new.csv"),
                                  "--out", str(out)])
    assert r.exit_code == 0, r.output
    table = pd.read_csv(out, sep="\t")
    known = table.iloc[2:]
    truth = np.where(np.isin(new["tissue"].iloc[2:], ["lung", "skin"]), "A", "B")
    assert (known["prediction"].to_numpy() == truth).mean() >= 0.95
    assert "on the 60 rows labelled in the file (response): accuracy " in r.output
    new.drop(columns=["tissue"]).to_csv(tmp_path / "without.csv", index=False)
    r = CliRunner().invoke(main, ["predict", str(tmp_path / "run"), "--data", str(tmp_path / "without.csv"),
                                  "--out", str(out)])
    assert r.exit_code == 1 and "lacks the categorical column 'tissue' the model was trained with" in r.output
    example = typical_row(describe(entry))  # an MLflow model's input example: the raw column, its commonest value
    assert list(example.columns) == ["g0", "g1", "g2", "tissue"] and example["tissue"].iloc[0] in TISSUES
    import mlflow

    from candle_ray import mlflow_model

    mlflow_model.save(tmp_path / "model", [tmp_path / "run"])
    served = mlflow.pyfunc.load_model(str(tmp_path / "model")).predict(new.iloc[2:].drop(columns=["sample"]))
    assert served["prediction"].tolist() == known["prediction"].tolist()


def test_missing_values_are_filled_from_the_train_rows_where_asked(tmp_path):
    """impute='mean' fills every split's missing values with the train rows' column means (median alike), and
    predict fills its own the same way; without it they are refused, as before."""
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"y": rng.normal(size=40), "a": np.arange(40.0), "b": rng.normal(size=40),
                          "empty": np.nan})
    frame.loc[[3, 30], "a"] = np.nan
    frame.iloc[:30].to_csv(tmp_path / "train.csv", index=False)
    frame.iloc[30:].to_csv(tmp_path / "val.csv", index=False)
    spec = dict(label="y", task="regression", val=tmp_path / "val.csv", scaling="none")
    with pytest.raises(DataError, match=r"train data has NaN at data row 1, column 'empty'.*impute='mean'"):
        Cache(tmp_path / "c").prepare(TableDataset(tmp_path / "train.csv", **spec), log=lambda *_: None)
    said = []
    entry = Cache(tmp_path / "c").prepare(TableDataset(tmp_path / "train.csv", impute="mean", **spec), log=said.append)
    from candle_ray.data.cache import open_split

    train_mean = np.mean([v for v in range(30) if v != 3])  # of the train rows' values only
    X = {split: open_split(entry.path, split)[0] for split in ("train", "val")}
    assert X["train"][3, 0] == pytest.approx(train_mean) and X["val"][0, 0] == pytest.approx(train_mean)
    assert (X["train"][:, 2] == 0).all()  # a column with no train value: 0
    assert any("imputed 42 missing values (31 in train, 11 in val) with the train rows' column mean; 1 columns "
               "have no train value, e.g. 'empty': filled with 0" in s for s in said), said
    pd.DataFrame({"a": [np.nan], "b": [1.0], "empty": [np.nan]}).to_csv(tmp_path / "new.csv", index=False)
    X_new, _, _ = read_for_prediction(tmp_path / "new.csv", describe(entry))
    assert X_new[0].tolist() == pytest.approx([train_mean, 1.0, 0.0])
    median = Cache(tmp_path / "c").prepare(TableDataset(tmp_path / "train.csv", impute="median", **spec),
                                           log=lambda *_: None)
    assert median.fingerprint != entry.fingerprint
    with pytest.raises(UsageError, match="dataset impute 'zero' is not one of mean, median"):
        TableDataset(tmp_path / "train.csv", impute="zero", **spec)
