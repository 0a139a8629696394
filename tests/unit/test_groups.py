"""A table's `group` column (TableDataset(..., group="patient")): rows that belong together (a patient's
tumour and normal samples) stay on one side of the val hold-out, of every cv fold and of the linear
baseline's inner CV; the column is never a feature."""

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from candle_ray import baseline
from candle_ray.data import folds
from candle_ray.data.cache import Cache, grouped_holdout, open_split
from candle_ray.data.cache_format import fingerprint
from candle_ray.data.features import read_for_prediction
from candle_ray.data.spec import TableDataset
from candle_ray.errors import DataError, UsageError
from candle_ray.sweep import fold_assignment


def _paired(path, patients: int = 20, genes: int = 6, seed: int = 0):
    """A tumour and a normal sample per patient: a strong patient effect, a weaker tumour effect."""
    rng = np.random.default_rng(seed)
    effect = rng.normal(0, 3, (patients, genes))
    rows = []
    for p in range(patients):
        for tissue in ("normal", "tumor"):
            x = effect[p] + rng.normal(0, 0.3, genes) + (1.0 if tissue == "tumor" else 0.0)
            rows.append({"sample": f"s{len(rows)}", "patient": f"p{p:02d}", "tissue": tissue,
                         **{f"g{j}": x[j] for j in range(genes)}})
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def _prepare(tmp_path, **options):
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = _paired(tmp_path / "paired.csv")
    drop = ("sample",) if options.get("group") else ("sample", "patient")
    spec = TableDataset(str(path), label="tissue", drop=drop, val_fraction=0.25, **options)
    return Cache(tmp_path / "cache").prepare(spec, log=lambda *_: None), spec


def _groups(entry, split: str) -> set:
    return set(folds.pooled_groups(entry, "patient")[: entry.rows["train"]] if split == "train"
               else folds.pooled_groups(entry, "patient")[entry.rows["train"]:])


def test_the_hold_out_keeps_each_patient_on_one_side_and_the_column_is_no_feature(tmp_path):
    entry, spec = _prepare(tmp_path, group="patient")
    assert entry.rows == {"train": 30, "val": 10}  # 5 of 20 patients, both their samples
    assert not _groups(entry, "train") & _groups(entry, "val") and len(_groups(entry, "val")) == 5
    assert "patient" not in entry.manifest["feature_names"] and entry.num_features == 6
    _, y = open_split(entry, "val")
    assert sorted(np.bincount(y)) == [5, 5]  # paired rows: the class mix comes with the groups
    plain, _ = _prepare(tmp_path / "plain")
    assert fingerprint(spec) != fingerprint(replace(spec, group=None))  # a grouped hold-out is another entry
    assert folds.group_columns(plain) == [] and folds.group_columns(entry) == ["patient"]


def test_folds_follow_the_dataset_groups_unless_told_otherwise(tmp_path):
    entry, _ = _prepare(tmp_path, group="patient")
    groups = folds.pooled_groups(entry, "patient")
    assignment = fold_assignment(entry, {"folds": 4, "stratify": "auto", "group_by": None, "seed": 0})
    for patient in np.unique(groups):
        assert len(set(assignment[groups == patient])) == 1
    with pytest.raises(UsageError, match="drop --stratify"):
        fold_assignment(entry, {"folds": 4, "stratify": True, "group_by": None, "seed": 0})


def test_the_baseline_chooses_its_regularisation_by_group(tmp_path):
    entry, _ = _prepare(tmp_path, group="patient")
    fitted = baseline.fit(entry)
    assert fitted.model.endswith("fold CV by group)"), fitted.model
    plain, _ = _prepare(tmp_path / "plain")
    assert "by group" not in baseline.fit(plain).model


def test_predict_ignores_the_group_column(tmp_path):
    entry, _ = _prepare(tmp_path, group="patient")
    info = {**entry.manifest, "label": "tissue"}
    rows = pd.read_csv(tmp_path / "paired.csv").head(4)
    for frame in (rows, rows.drop(columns=["patient"])):  # new patients' rows may or may not name them
        frame.to_csv(tmp_path / "new.csv", index=False)
        X, _, _ = read_for_prediction(tmp_path / "new.csv", info)
        assert X.shape == (4, 6)


def test_grouped_hold_out_is_seeded_and_near_the_asked_size():
    groups = np.array([f"p{i // 3}" for i in range(60)])  # 20 groups of 3
    order, n_val = grouped_holdout(groups, 15, seed=4)
    assert n_val == 15 and np.array_equal(order, grouped_holdout(groups, 15, seed=4)[0])
    val = order[len(order) - n_val:]
    assert not set(groups[val]) & set(groups[order[: len(order) - n_val]])
    with pytest.raises(DataError, match="1 group"):
        grouped_holdout(np.array(["a"] * 6), 2, seed=0)


def test_bad_group_columns_are_refused(tmp_path):
    path = _paired(tmp_path / "paired.csv")
    with pytest.raises(UsageError, match="never a feature"):
        TableDataset(str(path), label="tissue", drop=("patient",), group="patient")
    cache = Cache(tmp_path / "cache")
    with pytest.raises(DataError, match="group column 'patiant' is not a column .* did you mean 'patient'"):
        cache.prepare(TableDataset(str(path), label="tissue", drop=("sample",), group="patiant"), log=lambda *_: None)
    frame = pd.read_csv(path)
    frame.loc[3, "patient"] = ""
    frame.to_csv(path, index=False)
    with pytest.raises(DataError, match="group column 'patient' .* is empty at"):
        cache.prepare(TableDataset(str(path), label="tissue", drop=("sample",), group="patient"), log=lambda *_: None)


def test_the_grouped_ridge_path_picks_the_alpha_refitting_would():
    """One SVD per fold gives every alpha's held-out error: the same choice as a Ridge fitted per alpha."""
    from sklearn.linear_model import Ridge
    from sklearn.model_selection import GroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(1)
    groups = np.repeat(np.arange(30), 4)
    x = rng.normal(size=(120, 40)) + rng.normal(size=(30, 40))[groups]
    y = x[:, :5].sum(axis=1) + rng.normal(0, 2, 30)[groups] + rng.normal(0, 1, 120)
    splits = list(GroupKFold(5).split(x, y, groups))
    errors = [sum(float(((make_pipeline(StandardScaler(), Ridge(alpha=a)).fit(x[tr], y[tr]).predict(x[te]) - y[te]) ** 2)
                        .sum()) for tr, te in splits) for a in baseline.ALPHA_GRID]
    assert baseline._grouped_alpha(x, y, splits) == baseline.ALPHA_GRID[int(np.argmin(errors))]
    model, how = baseline._ridge(x, y, groups.astype(str))
    assert how[3] == "5-fold CV by group" and model[-1].alpha == baseline._grouped_alpha(x, y, splits)


def test_smoke_data_has_the_group_column_and_a_val_file_sharing_groups_is_named(tmp_path):
    from candle_ray.data.synthetic import synthesize

    spec = TableDataset("data/expression.csv", label="cancer_type", drop=("sample_id",), group="patient")
    said = []
    entry = Cache(tmp_path / "cache").prepare(synthesize(spec, tmp_path / "smoke", rows=(40, 8), features=5),
                                              log=said.append)
    assert not _groups(entry, "train") & _groups(entry, "val")
    assert any(line.startswith("val: 2 of 20 patient groups held out whole (4 rows)") for line in said), said
    frame = pd.read_csv(_paired(tmp_path / "paired.csv"))
    frame[frame.patient < "p15"].to_csv(tmp_path / "train.csv", index=False)
    frame[frame.patient >= "p14"].to_csv(tmp_path / "val.csv", index=False)  # p14 in both files
    said.clear()
    Cache(tmp_path / "cache").prepare(TableDataset(str(tmp_path / "train.csv"), val=str(tmp_path / "val.csv"),
                                                   label="tissue", drop=("sample",), group="patient"), log=said.append)
    assert any("note: 1 patient value(s) have rows in both the train and the val file, e.g. 'p14'" in s for s in said), said


def test_an_ensembles_conformal_check_calibrates_and_measures_on_different_groups(tmp_path):
    from candle_ray.ensemble import _halves, _val_groups

    entry, _ = _prepare(tmp_path, group="patient")
    groups = _val_groups(entry)
    assert len(groups) == entry.rows["val"] and set(groups) == _groups(entry, "val")
    calibrating, measuring = _halves(len(groups), 0, groups)
    assert len(calibrating) + len(measuring) == len(groups) and not set(groups[calibrating]) & set(groups[measuring])
    assert _val_groups(_prepare(tmp_path / "plain")[0]) is None


def test_a_learning_curve_draws_whole_groups_and_counts_them(tmp_path):
    from candle_ray import learning_curve
    from candle_ray.data import subsample
    from candle_ray.sweep import _curve_size

    groups = np.repeat([f"p{i:02d}" for i in range(20)], 2)
    keep = subsample.chosen(np.zeros(40), 0.25, seed=3, by_class=True, groups=groups)
    assert len(set(groups[keep])) == 5 and len(keep) == 10  # 5 of 20 patients, both samples of each
    assert np.array_equal(keep, subsample.chosen(np.zeros(40), 0.25, seed=3, by_class=True, groups=groups))
    assert subsample.chosen(np.zeros(40), 1.0, seed=3, by_class=True, groups=groups) is None
    entry, _ = _prepare(tmp_path, group="patient")
    assert _curve_size(entry) == (15, "patient groups")
    curve = learning_curve.points([(0.5, 0.4), (0.5, 0.5), (1.0, 0.3), (1.0, 0.32)], 15)
    said = learning_curve.lines(curve, None, "val_loss", "min", unit="patient groups")
    assert "train patient groups" in said[1] and [p.rows for p in curve] == [8, 15]


def test_val_groups_that_lack_a_class_are_noted_with_the_grouped_remedy(tmp_path):
    """Batches confounded with the class (as in bladderbatch: a batch of cancer samples alone): whichever batch
    the hold-out takes whole, the val rows miss a class, and preparing says so and what scores every group."""
    rows = [{"sample": f"s{i}", "batch": f"b{i // 6}", "label": "cancer" if i < 12 else ("normal", "biopsy")[i % 2],
             "g0": float(i % 5), "g1": float(i % 3)} for i in range(18)]
    pd.DataFrame(rows).to_csv(tmp_path / "batches.csv", index=False)
    said = []
    Cache(tmp_path / "cache").prepare(TableDataset(str(tmp_path / "batches.csv"), label="label", drop=("sample",),
                                                   group="batch"), log=said.append)
    notes = [line for line in said if line.startswith("note: the val rows hold no row of class(es)")]
    assert len(notes) == 1 and notes[0].endswith(
        "the val split took whole batch groups, which lack them: `candle-ray cv` (or `tune --cv K`) scores every "
        "group once"), said
