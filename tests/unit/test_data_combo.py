"""Combo reader: NCI-ALMANAC drug-pair growth (ComboDrugGrowth_Nov2017.csv), the NCI60 cell map, RNA-seq and
dragon7 descriptors into joined tables; every preprocessing rule on tiny hand-written files."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from candle_ray.data.benchmarks import combo
from candle_ray.errors import DataError, UsageError

RESPONSE = """CELLNAME,NSC1,CONC1,NSC2,CONC2,PERCENTGROWTH,VALID,SCORE,SCREENER,STUDY
A,10,1e-06,20,1e-06,40,Y,5,FG,S1
A,10,1e-06,20,1e-06,20,Y,7,FG,S1
A,10,1e-05,20,1e-06,50,Y,1,FG,S1
A,10,1e-05,20,1e-05,-90,N,0,FG,S1
A,20,1e-06,,,70,Y,,FG,S1
B,10,1e-06,30,1e-06,10,Y,2,FF,S2
B,20,1e-06,30,1e-06,0,Y,3,FF,S2
C,30,1e-06,10,1e-06,-10,Y,4,1A,S3
C,20,1e-05,10,1e-06,25,Y,9,1A,S3
C,30,1e-06,20,1e-06,35,Y,6,1A,S3
"""
CELL_MAP = "NCI60.ID\tCELLNAME\tName\nNCI60.A\tLC:A\tA\nNCI60.B\tBR:B\tB\nNCI60.C\tCO:C\tC\n"
RNASEQ = """Sample	Cancer_type_id	G1	G2	G3
NCI60.A	1	1.0	2.0	na
NCI60.B	2	2.0	na	na
NCI60.C	3	6.0	5.0	na
CCLE.Z	4	100.0	100.0	na
"""
DESCRIPTORS = "NAME\tMW\tnAT\tE\nNSC.10\t1.0\tna\tna\nNSC.20\t2.0\t4.0\tna\nNSC.30\t6.0\t8.0\tna\nNSC.99\t0.0\t0.0\tna\n"
TEXT = {"response": RESPONSE, "cell_map": CELL_MAP, "rnaseq": RNASEQ, "descriptors": DESCRIPTORS}
# (cell, drug1, drug2) -> growth fraction: VALID rows averaged per concentration pair, then the minimum
EXPECTED_MIN = {("NCI60.A", "10", "20"): 0.30, ("NCI60.A", "20", "20"): 0.70, ("NCI60.B", "10", "30"): 0.10,
                ("NCI60.B", "20", "30"): 0.0, ("NCI60.C", "30", "10"): -0.10, ("NCI60.C", "20", "10"): 0.25,
                ("NCI60.C", "30", "20"): 0.35}


def write(tmp_path, **changes):
    paths = {}
    for role, text in {**TEXT, **changes}.items():
        if text is not None:
            paths[role] = Path(tmp_path) / combo.FILES[role]
            paths[role].write_text(text)
    return paths


def rows(jt):
    return pd.concat(jt.splits.values(), ignore_index=True)


def targets(jt):
    return {(r.cell_id, r.drug1_id, r.drug2_id): float(r.y) for r in rows(jt).itertuples()}


def test_growth_is_averaged_per_concentration_pair_then_the_minimum_over_pairs(tmp_path):
    jt = combo.read(write(tmp_path), {}, 2017)
    assert targets(jt) == pytest.approx(EXPECTED_MIN)  # VALID 'N' (-90 %) ignored; a single agent is (d, d)


def test_mean_growth_and_combo_score_variants(tmp_path):
    means = targets(combo.read(write(tmp_path), {"use_mean_growth": True}, 2017))
    assert means[("NCI60.A", "10", "20")] == pytest.approx((0.30 + 0.50) / 2)
    scores = targets(combo.read(write(tmp_path), {"use_combo_score": True}, 2017))
    assert scores[("NCI60.A", "10", "20")] == pytest.approx(0.07)  # max SCORE, / 100 as CANDLE does
    assert scores[("NCI60.A", "20", "20")] == 0.0  # an empty SCORE counts as 0


def test_cells_go_through_the_map_and_expression_is_scaled_over_the_sample_set(tmp_path):
    jt = combo.read(write(tmp_path), {}, 2017)
    table = jt.tables["cell.expression"]
    assert table.ids == ["NCI60.A", "NCI60.B", "NCI60.C"] and table.columns == ["rnaseq.G1", "rnaseq.G2"]
    g1, g2 = np.array([1.0, 2.0, 6.0]), np.array([2.0, 3.5, 5.0])  # CCLE.Z is outside sample_set: not in the stats
    np.testing.assert_allclose(table.values[:, 0], (g1 - g1.mean()) / g1.std(), rtol=1e-5)
    np.testing.assert_allclose(table.values[:, 1], (g2 - g2.mean()) / g2.std(), rtol=1e-5, atol=1e-6)


def test_descriptors_drop_the_nsc_prefix_and_empty_columns_then_impute_and_scale(tmp_path):
    jt = combo.read(write(tmp_path), {}, 2017)
    table = jt.tables["drug.descriptors"]
    assert table.ids == ["10", "20", "30"] and table.columns == ["dragon7.MW", "dragon7.nAT"]  # E dropped
    # statistics over every drug of the file (NSC.99 too), as CANDLE scales the whole table
    mw, nat = np.array([1.0, 2.0, 6.0, 0.0]), np.array([4.0, 4.0, 8.0, 0.0])
    np.testing.assert_allclose(table.values[:, 0], ((mw - mw.mean()) / mw.std())[:3], rtol=1e-5)
    np.testing.assert_allclose(table.values[:, 1], ((nat - nat.mean()) / nat.std())[:3], rtol=1e-5)


def test_drug1_and_drug2_share_the_descriptor_table_and_rows_index_it(tmp_path):
    jt = combo.read(write(tmp_path), {}, 2017)
    assert [(s.name, s.table, s.key) for s in jt.slots] == [
        ("cell.expression", "cell.expression", "cell"), ("drug1.descriptors", "drug.descriptors", "drug1"),
        ("drug2.descriptors", "drug.descriptors", "drug2")]
    assert sorted(jt.tables) == ["cell.expression", "drug.descriptors"]
    assert jt.num_features == 2 + 2 * 2
    for frame in jt.splits.values():
        for key, table, column in (("cell", "cell.expression", "cell_id"), ("drug1", "drug.descriptors", "drug1_id"),
                                   ("drug2", "drug.descriptors", "drug2_id")):
            assert np.asarray(jt.tables[table].ids)[frame[key].to_numpy()].tolist() == frame[column].tolist()
    assert jt.info["model_shape"] == {"cell_features": ["expression"], "cell_feature_dims": [2],
                                      "drug_features": ["descriptors"], "drug_feature_dims": [2]}


def test_overlapping_split_is_the_last_fifth_of_candles_shuffle(tmp_path):
    jt = combo.read(write(tmp_path), {}, 2017)
    # CANDLE: the groupby result (sorted by cell, NSC1, NSC2) shuffled with pandas' sample(random_state=seed)
    order = pd.DataFrame(sorted(EXPECTED_MIN), columns=["cell", "d1", "d2"]).sample(frac=1.0, random_state=2017)
    n_val = int(len(order) * 0.2)
    keys = [tuple(r) for r in order.to_numpy()]
    got = {name: list(zip(f["cell_id"], f["drug1_id"], f["drug2_id"])) for name, f in jt.splits.items()}
    assert got == {"train": keys[: len(keys) - n_val], "val": keys[len(keys) - n_val:]}
    other = combo.read(write(tmp_path), {}, 7)
    assert list(other.splits["train"]["cell_id"]) != list(jt.splits["train"]["cell_id"]) or \
        list(other.splits["train"]["drug1_id"]) != list(jt.splits["train"]["drug1_id"])


def test_disjoint_partitions_share_no_drug_or_cell(tmp_path):
    files = combo.synthesize(tmp_path, dict(combo.OPTIONS), 1, 400, 16)
    jt = combo.read(files, {"cv_partition": "disjoint"}, 2017)
    train, val = jt.splits["train"], jt.splits["val"]
    assert len(train) and len(val)
    assert not (set(train["drug1_id"]) | set(train["drug2_id"])) & (set(val["drug1_id"]) | set(val["drug2_id"]))
    assert any("left out (disjoint)" in n for n in jt.info["notes"])
    jt = combo.read(files, {"cv_partition": "disjoint_cells"}, 2017)
    assert len(jt.splits["val"]) and not set(jt.splits["train"]["cell_id"]) & set(jt.splits["val"]["cell_id"])
    with pytest.raises(DataError, match=r"cannot hold out int\(3 x val_split 0.2\) = 0 of 3 ids"):
        combo.read(write(tmp_path), {"cv_partition": "disjoint_cells"}, 2017)


def test_sets_without_features_are_dropped_and_counted(tmp_path):
    response = RESPONSE + "A,10,1e-06,55,1e-06,5,Y,1,FG,S1\n"  # NSC 55 has no descriptors
    rnaseq = RNASEQ.replace("NCI60.C\t3\t6.0\t5.0\tna\n", "")  # cell C has no expression
    jt = combo.read(write(tmp_path, response=response, rnaseq=rnaseq), {"val_split": 0.25}, 2017)
    notes = " ".join(jt.info["notes"])
    assert "dropped 3 response sets whose cell has no expression" in notes
    assert "dropped 1 response sets whose drug1 or drug2 has no descriptors" in notes
    assert jt.info["response_sets"] == 8 and sum(jt.info["rows"].values()) == 4


def test_ids_missing_from_the_feature_tables_leave_an_empty_split(tmp_path):
    descriptors = "NAME\tMW\nNSC.1\t1.0\nNSC.2\t2.0\n"
    with pytest.raises(DataError, match=r"the train split is empty after filtering \(response_sets 7, .*with_drug_descriptors 0"):
        combo.read(write(tmp_path, descriptors=descriptors), {}, 2017)


def test_bad_files_and_options(tmp_path):
    with pytest.raises(DataError, match=r"ComboDrugGrowth_Nov2017.csv is not CANDLE's NCI-ALMANAC response.*"
                                        r"missing \[PERCENTGROWTH\], found \[CELLNAME, NSC1"):
        combo.read(write(tmp_path, response=RESPONSE.replace("PERCENTGROWTH", "GROWTH")), {}, 2017)
    with pytest.raises(DataError, match=r"NCI60_CELLNAME_to_Combo.txt is not CANDLE's NCI60 cell-name map.*missing \[NCI60.ID\]"):
        combo.read(write(tmp_path, cell_map="ID\tName\nNCI60.A\tA\n"), {}, 2017)
    with pytest.raises(DataError, match="ALMANAC cell name 'C' is not in NCI60_CELLNAME_to_Combo.txt"):
        combo.read(write(tmp_path, cell_map=CELL_MAP.replace("NCI60.C\tCO:C\tC\n", "")), {}, 2017)
    with pytest.raises(DataError, match="column 'PERCENTGROWTH' holds 'high', not a number"):
        combo.read(write(tmp_path, response=RESPONSE.replace(",35,Y", ",high,Y")), {}, 2017)
    with pytest.raises(DataError, match="no usable values: all 1 feature columns are empty"):
        combo.read(write(tmp_path, descriptors="NAME\tE\nNSC.10\tna\nNSC.20\t-\n"), {}, 2017)
    with pytest.raises(DataError, match="has no sample starting with 'NCI60'"):
        combo.read(write(tmp_path, rnaseq="Sample\tG1\nCCLE.Z\t1.0\n"), {}, 2017)
    with pytest.raises(UsageError, match="source role 'descriptors' is missing"):
        combo.read({k: v for k, v in write(tmp_path).items() if k != "descriptors"}, {}, 2017)
    with pytest.raises(UsageError, match="cv_partition='drugs' is not one of"):
        combo.read(write(tmp_path), {"cv_partition": "drugs"}, 2017)
    with pytest.raises(UsageError, match="use_mean_growth=1 must be True or False"):
        combo.read(write(tmp_path), {"use_mean_growth": 1}, 2017)


def test_synthetic_files_round_trip_with_a_learnable_signal(tmp_path):
    files = combo.synthesize(tmp_path, dict(combo.OPTIONS), 0, 500, 24)
    assert set(files) == set(combo.FILES) and all(p.name == combo.FILES[r] for r, p in files.items())
    jt = combo.read(files, {}, 2017)
    assert sum(jt.info["rows"].values()) >= 400 and all(t.values.shape[1] <= 24 for t in jt.tables.values())
    assert "CCLE.SW480" not in jt.tables["cell.expression"].ids
    # the cell and the drugs carry the signal: their mean train growth predicts the validation growth
    train, val = jt.splits["train"], jt.splits["val"]
    effect = {k: train.groupby(k)["y"].mean() for k in ("cell_id", "drug1_id", "drug2_id")}
    guess = sum(val[k].map(effect[k]).fillna(train["y"].mean()) for k in effect)
    assert np.corrcoef(guess, val["y"])[0, 1] > 0.5


def test_all_feature_ids_keeps_drugs_without_responses_and_the_same_rows(tmp_path):
    paths = write(tmp_path)
    used, every = combo.read(paths, {}, 2018), combo.read(paths, {"all_feature_ids": True}, 2018)
    assert used.tables["drug.descriptors"].ids == ["10", "20", "30"]
    assert every.tables["drug.descriptors"].ids == ["10", "20", "30", "99"]  # NSC.99 has no response rows
    assert every.tables["cell.expression"].ids == ["NCI60.A", "NCI60.B", "NCI60.C"]  # CCLE.Z: not the sample set
    assert targets(used) == targets(every)
    for split in used.splits:
        for key, table in (("cell", "cell.expression"), ("drug1", "drug.descriptors"), ("drug2", "drug.descriptors")):
            before = used.tables[table].values[used.splits[split][key].to_numpy()]
            assert np.array_equal(before, every.tables[table].values[every.splits[split][key].to_numpy()])
