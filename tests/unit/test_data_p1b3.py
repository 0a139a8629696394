"""The P1B3 reader on tiny hand-written files in the exact CANDLE formats: every preprocessing rule of
CANDLE's p1b3.py DataLoader, every bad-input error, and the synthetic files through cache and loop."""

import math

import numpy as np
import pandas as pd
import pytest

from candle_ray.data.benchmarks import p1b3
from candle_ray.data.cache import Cache
from candle_ray.data.spec import ReaderDataset, Source
from candle_ray.data.synthetic import synthesize
from candle_ray.errors import DataError, UsageError

CELLS = ["BR:A", "BR:B", "CO:C", "CO:D", "LE:E"]
DRUGS = ["1", "2", "3", "4"]
CONCENTRATIONS = [-6.0, -5.0, -4.5, -4.0, -3.0]


def growth(d, c, k):
    return round(-40.0 + 7.0 * d - 5.0 * c + 3.0 * k, 1)  # every value <= 0 + a few above: see test_y


def write(path, text):
    path.write_text(text)
    return path


@pytest.fixture
def files(tmp_path):
    """Five cell lines x four drugs x five concentrations, plus a cell and a drug without features."""
    rows = ["NSC,CELLNAME,LOG_CONCENTRATION,GROWTH"]
    for d, drug in enumerate(DRUGS):
        for c, cell in enumerate(CELLS):
            for k, conc in enumerate(CONCENTRATIONS):
                rows.append(f"{drug},{cell},{conc},{growth(d, c, k)}")
    rows += ["1,ME:Z,-4.5,-10.0", "99,BR:A,-4.5,-20.0"]  # no expression for ME:Z, no descriptors for 99
    expression = ("CellLine\tg1\tg2\tg3\n"
                  "BR.A\t1.0\t10\tna\nBR.B\t2.0\tna\tna\nCO.C\t3.0\t30\t-\nCO.D\t4.0\t40\t\nLE.E\t5.0\t50\tna\n")
    mirna = "CellLine\tmir1\nBR.A\t0.5\nBR.B\t0.7\nCO.C\t0.1\nCO.D\t0.2\nLE.E\t0.9\n"
    proteome = "CellLine\tP1\tP2\nBR.A\t1\t2\nBR.B\t3\t4\nCO.C\t5\t7\nCO.D\t6\t1\nLE.E\t2\t2\n"
    kinome = "CellLine\tK1\nBR.A\t9\nBR.B\t8\nCO.C\t7\nCO.D\t6\n"  # no LE.E: the proteome join drops it
    descriptors = "NAME\td1\td2\td3\n1\t0.5\tna\tna\n2\t1.5\t2\tna\n3\t2.5\t4\tna\n4\t3.5\t6\tna\n"
    latent = "NSC,L0,L1\n1,0.1,0.2\n2,0.3,0.1\n3,0.0,0.0\n4,0.2,0.4\n"
    paths = {
        "dose_response": write(tmp_path / "P1B3_dose_response.csv", "\n".join(rows) + "\n"),
        "cell_expressions": write(tmp_path / "P1B3_cellline_expressions.tsv", expression),
        "cell_mirna": write(tmp_path / "P1B3_cellline_mirna.tsv", mirna),
        "cell_proteome": write(tmp_path / "P1B3_cellline_proteome.tsv", proteome),
        "cell_kinome": write(tmp_path / "P1B3_cellline_kinome.tsv", kinome),
        "drug_descriptors": write(tmp_path / "P1B3_drug_descriptors.tsv", descriptors),
        "drug_latent": write(tmp_path / "P1B3_drug_latent.csv", latent),
        "test_celllines": write(tmp_path / "P1B3_test_celllines.txt", "CELLNAME\nLE:E\n"),
        "test_drugs": write(tmp_path / "P1B3_test_drugs.txt", "NSC\n4\n"),
    }
    return paths


def read(files, seed=2017, **options):
    return p1b3.read(files, {**p1b3.OPTIONS, "subsample": "none", "test_cell_split": None, **options}, seed)


def all_rows(jt):
    return pd.concat(jt.splits.values())


# ----------------------------------------------------------------------------- preprocessing rules
def test_concentration_filter_keeps_the_inclusive_range(files):
    jt = read(files)
    concentrations = sorted(set(all_rows(jt)["LOG_CONCENTRATION"].tolist()))
    assert concentrations == [-5.0, -4.5, -4.0]  # raw log10 values, bounds included, -6 and -3 out
    jt = read(files, min_logconc=-6.0, max_logconc=-6.0)
    assert set(all_rows(jt)["LOG_CONCENTRATION"]) == {-6.0}


def test_naive_balancing_keeps_candles_exact_fractions_per_growth_bin():
    g = [-5.0] * 9 + [0.0] + [0.1] * 10 + [50.0] + [75.0] * 98 + [100.0] + [100.5] * 100
    frame = pd.DataFrame({"NSC": "1", "CELLNAME": "BR:A", "LOG_CONCENTRATION": -4.5, "GROWTH": g})
    kept = p1b3.naive_balancing(frame, seed=2017)
    bins = pd.cut(kept["GROWTH"], [-np.inf, 0, 49.99, 100, np.inf]).value_counts().sort_index().tolist()
    assert bins == [10, 7, 18, 1]  # all G <= 0; 70 % of 0 < G < 50; 18 % of 50 <= G <= 100; 1 % of G > 100
    assert {0.0, -5.0} <= set(kept["GROWTH"])
    again = p1b3.naive_balancing(frame, seed=2017)
    assert kept.index.tolist() == again.index.tolist()  # pandas sample(random_state=seed), as CANDLE
    assert kept.index.tolist() != p1b3.naive_balancing(frame, seed=1).index.tolist()


def test_feature_tables_drop_all_missing_columns_mean_impute_and_std_scale(files):
    jt = read(files)
    table = jt.tables["cell.expression"]
    assert table.columns == ["g1", "g2"]  # g3 has no value at all
    assert table.ids == CELLS  # 'BR.A' in the feature file is 'BR:A' in the responses
    values = table.values.astype(np.float64)
    np.testing.assert_allclose(values.mean(axis=0), 0.0, atol=1e-6)
    np.testing.assert_allclose(values.std(axis=0), 1.0, atol=1e-6)
    g1 = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    np.testing.assert_allclose(values[:, 0], (g1 - g1.mean()) / g1.std(), rtol=1e-6)
    assert values[1, 1] == pytest.approx(0.0, abs=1e-6)  # BR.B's missing g2 took the column mean
    descriptors = jt.tables["drug.descriptors"]
    assert descriptors.columns == ["d1", "d2"] and descriptors.values[0, 1] == pytest.approx(0.0, abs=1e-6)
    unscaled = read(files, scaling="none").tables["cell.expression"].values
    np.testing.assert_allclose(unscaled[:, 1], [10, 32.5, 30, 40, 50])  # the mean of 10, 30, 40, 50



def test_y_is_growth_over_100_next_to_the_raw_concentration_and_the_ids(files):
    jt = read(files)
    rows = all_rows(jt)
    d, c = DRUGS.index("3"), CELLS.index("CO:D")
    row = rows[(rows["NSC"] == "3") & (rows["CELLNAME"] == "CO:D") & (rows["LOG_CONCENTRATION"] == -4.0)]
    assert len(row) == 1 and row["y"].iloc[0] == pytest.approx(growth(d, c, 3) / 100, rel=1e-6)
    assert row["y"].dtype == np.float32 and row["cell"].dtype == np.int32
    assert jt.tables["cell.expression"].ids[row["cell"].iloc[0]] == "CO:D"
    assert jt.tables["drug.descriptors"].ids[row["drug"].iloc[0]] == "3"
    assert [(s.name, s.table, s.key) for s in jt.slots] == [
        ("drug_concentration", None, "LOG_CONCENTRATION"), ("cell.expression", "cell.expression", "cell"),
        ("drug.descriptors", "drug.descriptors", "drug")]
    assert jt.task == "regression" and jt.num_features == 1 + 2 + 2


def test_rows_without_features_are_dropped_and_counted(files):
    jt = read(files)
    rows = all_rows(jt)
    assert "ME:Z" not in set(rows["CELLNAME"]) and "99" not in set(rows["NSC"])
    notes = " ".join(jt.info["notes"])
    assert "dropped 1 response rows whose cell line has no features (e.g. ME:Z)" in notes
    assert "dropped 1 response rows whose drug has no features (e.g. 99)" in notes
    assert jt.info["with_features"] == 4 * 5 * 3  # drugs x cells x the 3 kept concentrations


def test_split_holds_out_test_drugs_on_the_listed_test_cells(files):
    jt = read(files, val_split=0.2)
    train_val = pd.concat([jt.splits["train"], jt.splits["val"]])
    assert "4" not in set(train_val["NSC"]) and "LE:E" not in set(train_val["CELLNAME"])
    assert len(train_val) == 3 * 4 * 3 and len(jt.splits["val"]) == int(36 * 0.2)
    test = jt.splits["test"]
    assert set(test["NSC"]) == {"4"} and set(test["CELLNAME"]) == {"LE:E"} and len(test) == 3
    again = read(files, val_split=0.2)
    assert again.splits["val"]["y"].tolist() == jt.splits["val"]["y"].tolist()  # seeded shuffle
    other = read(files, seed=1, val_split=0.2)
    assert other.splits["train"]["y"].tolist() != jt.splits["train"]["y"].tolist()


def test_test_cell_split_samples_test_cells_among_the_training_cells(files):
    jt = read(files, test_cell_split=0.5)
    test_cells = set(jt.splits["test"]["CELLNAME"])
    train_cells = set(jt.splits["train"]["CELLNAME"]) | set(jt.splits["val"]["CELLNAME"])
    assert len(test_cells) == 2 and test_cells <= train_cells  # round(0.5 x 4) of the train+val cells
    assert set(jt.splits["test"]["NSC"]) == {"4"} and len(jt.splits["test"]) == 2 * 3
    assert jt.info["test_cells"] == sorted(test_cells)


def test_feature_subsample_draws_candles_columns_from_one_seeded_stream(files):
    jt = read(files, feature_subsample=2, seed=7)
    rng = np.random.RandomState(7)
    expression = rng.choice(3, size=2, replace=False)
    descriptors = rng.choice(3, size=2, replace=False)
    assert jt.tables["cell.expression"].columns == [c for c in (["g1", "g2", "g3"][i] for i in expression) if c != "g3"]
    assert jt.tables["drug.descriptors"].columns == [c for c in (["d1", "d2", "d3"][i] for i in descriptors) if c != "d3"]


def test_cell_and_drug_feature_sets(files):
    jt = read(files, cell_features=["all"], drug_features=["all"])
    assert [s.name for s in jt.slots] == ["drug_concentration", "cell.expression", "cell.mirna", "cell.proteome",
                                          "drug.descriptors", "drug.latent"]
    proteome = jt.tables["cell.proteome"]
    assert proteome.columns == ["P1", "P2", "K1.K"]  # kinome joined to the proteome, suffix .K
    assert "LE:E" not in proteome.ids and all(t.ids == proteome.ids for n, t in jt.tables.items() if n.startswith("cell."))
    assert "LE:E" not in set(all_rows(jt)["CELLNAME"])  # the inner join over every cell table drops it
    jt = read(files, cell_features=["categorical"], drug_features=["noise"])
    assert jt.tables["cell.categorical"].values.shape == (6, 6)  # the response's 6 cell lines, one-hot
    assert jt.tables["drug.noise"].values.shape == (5, 500)


# ----------------------------------------------------------------------------- bad input
def test_a_file_with_other_columns_names_the_file_and_both_column_lists(files):
    files["dose_response"].write_text("NSC,CELL,LOG_CONCENTRATION,GROWTH\n1,BR:A,-4.5,10\n")
    with pytest.raises(DataError, match=r"P1B3_dose_response.csv does not have the P1B3 layout: expected columns "
                                        r"\['NSC', 'CELLNAME', 'LOG_CONCENTRATION', 'GROWTH'\], found columns \['NSC', 'CELL'"):
        read(files)


def test_a_feature_file_without_its_id_column_is_refused(files):
    files["cell_expressions"].write_text("Sample\tg1\nBR.A\t1\n")
    with pytest.raises(DataError, match=r"P1B3_cellline_expressions.tsv .* expected first column 'CellLine', found columns \['Sample', 'g1'\]"):
        read(files)


def test_a_feature_table_without_any_value_is_refused(files):
    files["drug_descriptors"].write_text("NAME\td1\td2\n1\tna\t\n2\t-\tna\n")
    with pytest.raises(DataError, match="P1B3_drug_descriptors.tsv has no values at all"):
        read(files)


def test_non_numeric_and_duplicated_values_are_refused(files):
    files["cell_mirna"].write_text("CellLine\tmir1\nBR.A\thigh\n")
    with pytest.raises(DataError, match="P1B3_cellline_mirna.tsv has a non-numeric feature value"):
        read(files, cell_features=["mirna"])
    files["cell_mirna"].write_text("CellLine\tmir1\nBR.A\t1\nBR.A\t2\n")
    with pytest.raises(DataError, match="lists id 'BR.A' twice"):
        read(files, cell_features=["mirna"])
    files["dose_response"].write_text("NSC,CELLNAME,LOG_CONCENTRATION,GROWTH\n1,BR:A,-4.5,lots\n")
    with pytest.raises(DataError, match="column GROWTH has a non-numeric value 'lots' at data row 1"):
        read(files)


def test_empty_results_are_refused_with_what_to_change(files):
    with pytest.raises(DataError, match="no response rows .* remain with -2.0 <= LOG_CONCENTRATION <= -1.0.*widen"):
        read(files, min_logconc=-2.0, max_logconc=-1.0)
    with pytest.raises(DataError, match="the p1b3 val split is empty .*val_split"):
        read(files, val_split=0.01)
    files["cell_expressions"].write_text("CellLine\tg1\tg2\nXX.Q\t1\t2\nXX.R\t2\t3\n")
    with pytest.raises(DataError, match="no response row .* has both cell and drug features"):
        read(files)


def test_bad_options_and_missing_sources_are_usage_errors(files):
    for options, message in [({"cell_features": ["rnaseq"]}, r"cell_features=\['rnaseq'\]"),
                             ({"min_logconc": -3.0, "max_logconc": -4.0}, "min <= max"),
                             ({"subsample": "smart"}, "subsample='smart'"),
                             ({"val_split": 1.5}, "val_split=1.5"),
                             ({"test_cell_split": 1.0}, "test_cell_split=1.0"),
                             ({"feature_subsample": -1}, "feature_subsample=-1")]:
        with pytest.raises(UsageError, match=message):
            read(files, **options)
    del files["drug_latent"]
    with pytest.raises(UsageError, match=r"needs the source role 'drug_latent' \(P1B3_drug_latent.csv\)"):
        read(files, drug_features=["latent"])


# ----------------------------------------------------------------------------- synthetic files, cache, loop
def test_synthetic_files_have_the_real_layout_and_read_back(tmp_path):
    written = p1b3.synthesize(tmp_path, dict(p1b3.OPTIONS), seed=0, rows=600, features=40)
    assert {r: p.name for r, p in written.items()} == p1b3.FILES
    assert written["cell_expressions"].read_text().startswith("CellLine\tGENE_00000")
    assert written["drug_descriptors"].read_text().startswith("NAME\tD00000")
    assert written["dose_response"].read_text().startswith("NSC,CELLNAME,LOG_CONCENTRATION,GROWTH\n")
    jt = p1b3.read(written, dict(p1b3.OPTIONS), 2017)
    assert {n: t.values.shape for n, t in jt.tables.items()} == {"cell.expression": (12, 39), "drug.descriptors": (10, 19)}
    assert all(len(jt.splits[s]) > 0 for s in ("train", "val", "test"))
    rows = pd.concat([jt.splits["train"], jt.splits["val"]])
    # the signal: growth falls with concentration
    assert np.corrcoef(rows["LOG_CONCENTRATION"], rows["y"])[0, 1] < -0.3


def test_p1b3_smoke_data_trains_through_cache_feed_and_loop(tmp_path):
    from candle_ray.experiment import load_experiment, model_shape
    from candle_ray.loop import World, train_epochs
    from tests.conftest import ROOT

    exp = load_experiment(ROOT / "experiments" / "p1b3.py")
    smoke = synthesize(exp.dataset, tmp_path / "syn", rows=exp.smoke.rows, features=exp.smoke.features)
    entry = Cache(tmp_path / "cache").prepare(smoke, log=lambda *_: None)
    assert isinstance(smoke, ReaderDataset) and all(isinstance(s, Source) for s in smoke.sources.values())
    shape = model_shape(entry)
    assert shape["input_dim"] == entry.num_features == 1 + shape["cell_feature_dims"][0] + shape["drug_feature_dims"][0]
    config = {**exp.resolve_config(smoke=True), "epochs": 2}
    job = {"config": config, "model": "p1b3", "task": entry.manifest["task"], "model_shape": shape,
           "entry": str(entry.path), "run_dir": str(tmp_path / "run"), "metric": "val_loss", "mode": "min", "threads": 1}
    history = list(train_epochs(job, World()))
    assert len(history) == 2 and all(math.isfinite(m["val_loss"]) and math.isfinite(m["val_r2"]) for m in history)
