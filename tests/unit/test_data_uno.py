"""Uno reader: CANDLE's Pilot1/combo files (single-drug and ALMANAC responses, RNA-seq, dragon7 descriptors
and fingerprints) into joined tables; every preprocessing rule on tiny hand-written files."""

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from candle_ray.data.benchmarks import uno
from candle_ray.data.benchmarks.candle_tables import shuffle_split
from candle_ray.errors import DataError, UsageError

SINGLE = """SOURCE	DRUG_ID	CELLNAME	CONCUNIT	LOG_CONCENTRATION	EXPID	GROWTH
GDSC	GDSC.1	GDSC.C1	M	-6	e1	50
GDSC	GDSC.1	GDSC.C2	M	-5	e1	-20
GDSC	GDSC.2	GDSC.C1	M	-7	e1	80
GDSC	GDSC.2	GDSC.C2	M	-6	e1	10
CTRP	CTRP.7	GDSC.C1	M	-4	e2	-40
CTRP	CTRP.7	GDSC.C2	M	-8	e2	90
"""
PAIRS = """CELLNAME,NSC1,CONC1,NSC2,CONC2,PERCENTGROWTH,VALID,SCREENER,STUDY,PANEL
N-ONE,10,1e-06,20,1e-05,30,Y,FG,S1,P
N-ONE,10,1e-07,20,1e-07,60,N,FG,S1,P
N-ONE,20,1e-05,,,-10,Y,1A,S2,P
"""
CELL_MAP = "NCI60.ID\tCELLNAME\tName\nNCI60.N1\tLC:N-ONE\tN-ONE\n"
RNASEQ = """Sample	Cancer_type_id	G1	G2	G3
GDSC.C1	1	1.0	2.0	na
GDSC.C2	2	3.0	na	na
NCI60.N1	3	5.0	6.0	na
CCLE.X	4	7.0	8.0	-
"""
DRUG_INFO = "ID\tNAME\tCLEAN_NAME\tPUBCHEM\nGDSC.1\ta\tA\t100\nGDSC.2\tb\tB\t200\nCTRP.7\ta2\tA\t100\n"
DESCRIPTORS = "NAME\tMW\tnAT\tE\nPubChem.CID.100\t1.0\tna\tna\nPubChem.CID.200\t3.0\t4.0\tna\nPubChem.CID.300\t5.0\t6.0\tna\n"
NCI60_DESCRIPTORS = "NAME\tMW\tnAT\tE\nNSC.10\t7.0\t8.0\tna\nNSC.20\t9.0\t10.0\tna\n"
PFP = "NAME\t1\t2\nPubChem.CID.100\t1\t0\nPubChem.CID.200\t0\t1\n"
ECFP = "NAME\t1\t2\nPubChem.CID.100\t1\t1\nPubChem.CID.200\t0\t0\n"
NCI60_PFP = "NAME\t1\t2\nNSC.10\t1\t1\nNSC.20\t0\t1\n"
NCI60_ECFP = "NAME\t1\t2\nNSC.10\t0\t1\nNSC.20\t1\t0\n"
AGG = """SOURCE	CELL	DRUG	STUDY	AUC	IC50	EC50	EC50se	R2fit	HS
GDSC	GDSC.C1	GDSC.1	s	0.8	1	1	0.5	0.9	1
GDSC	GDSC.C2	GDSC.1	s	0.6	1	1	3.5	0.9	1
GDSC	GDSC.C1	GDSC.2	s	0.4	1	1	0.5	0.2	1
GDSC	GDSC.C2	GDSC.2	s	na	1	1	0.5	0.9	1
CTRP	GDSC.C1	CTRP.7	s	0.3	1	1	1.0	0.5	1
"""
TEXT = {"single_response": SINGLE, "pair_response": PAIRS, "cell_map": CELL_MAP, "rnaseq": RNASEQ,
        "drug_info": DRUG_INFO, "descriptors": DESCRIPTORS, "nci60_descriptors": NCI60_DESCRIPTORS, "pfp": PFP,
        "ecfp": ECFP, "nci60_pfp": NCI60_PFP, "nci60_ecfp": NCI60_ECFP, "agg_response": AGG,
        # the name files of by_drug, by_cell and cell_types
        "nci_drugs": "NSC\tGeneric Name\tPreffered Name\tOTHER\n10\tten\tTEN-X\t1\n20\ttwenty\tTWENTY\t2\n",
        "cell_aliases": "GDSC.C1\tCCLE.C1\n", "cell_metadata": "ANL_ID\tTUMOR_TYPE\nGDSC.C1\tBreast carcinoma\n"
                                                          "GDSC.C2\tlung\nNCI60.N1\t\n"}

def write(tmp_path, **changes):
    paths = {}
    for role, text in {**TEXT, **changes}.items():
        if text is None:
            continue
        paths[role] = Path(tmp_path) / uno.FILES[role]
        paths[role].write_text(text)
    return paths


def rows(jt):
    """Every split's rows in one frame (most tests look at rows, not at which split they went to)."""
    return pd.concat(jt.splits.values(), ignore_index=True)


def read(paths, seed=2018, **options):
    return uno.read(paths, {"train_sources": ["all"], **options}, seed)


def features_of(jt, frame):
    """The flat model input of each row: concat of the slot values, in slot order."""
    parts = []
    for slot in jt.slots:
        if slot.table is None:
            parts.append(frame[slot.key].to_numpy(np.float32)[:, None])
        else:
            parts.append(jt.tables[slot.table].values[frame[slot.key].to_numpy()])
    return np.hstack(parts)


# --------------------------------------------------------------------------- responses
def test_single_drug_dose_is_minus_log_concentration_and_growth_a_fraction(tmp_path):
    jt = read(write(tmp_path, pair_response=None, cell_map=None), single=True)
    got = rows(jt).sort_values(["drug1_id", "cell_id"]).reset_index(drop=True)
    expected = pd.read_csv(tmp_path / uno.FILES["single_response"], sep="\t").sort_values(["DRUG_ID", "CELLNAME"])
    np.testing.assert_allclose(got["dose1"], -expected["LOG_CONCENTRATION"].to_numpy())
    np.testing.assert_allclose(got["y"], expected["GROWTH"].to_numpy() / 100, rtol=1e-6)
    assert set(got["source"]) == {"GDSC", "CTRP"} and "drug2" not in got and "dose2" not in got


def test_almanac_keeps_valid_rows_maps_cells_and_names_sources_by_screener(tmp_path):
    jt = read(write(tmp_path, single_response=None), train_sources=["ALMANAC"])
    got = rows(jt)
    assert len(got) == 2  # the VALID == 'N' row is gone
    assert set(got["source"]) == {"ALMANAC.FG", "ALMANAC.1A"} and set(got["cell_id"]) == {"NCI60.N1"}
    pair = got[got["source"] == "ALMANAC.FG"].iloc[0]
    by_drug = {pair["drug1_id"]: pair["dose1"], pair["drug2_id"]: pair["dose2"]}  # drugs may be swapped
    assert by_drug == pytest.approx({"NSC.10": 6.0, "NSC.20": 5.0})
    assert pair["y"] == pytest.approx(0.30)


def test_pair_mode_feeds_a_single_drug_as_the_pair_d_d_with_its_dose_split(tmp_path):
    jt = read(write(tmp_path))
    got = rows(jt)
    single = got[got["source"].isin(["GDSC", "CTRP", "ALMANAC.1A"])]
    assert (single["drug1_id"] == single["drug2_id"]).all()
    original = pd.read_csv(tmp_path / uno.FILES["single_response"], sep="\t")
    concentration = dict(zip(zip(original["DRUG_ID"], original["CELLNAME"]), 10.0 ** original["LOG_CONCENTRATION"]))
    concentration[("NSC.20", "NCI60.N1")] = 1e-5  # the ALMANAC single agent
    for _, r in single.iterrows():
        # dose1 = dose - log10(u), dose2 = dose - log10(1 - u): the two halves add up to the concentration
        total = 10.0 ** -float(r["dose1"]) + 10.0 ** -float(r["dose2"])
        assert total == pytest.approx(concentration[(r["drug1_id"], r["cell_id"])], rel=1e-4)
        assert r["dose1"] != r["dose2"]


def test_pair_swap_is_seeded_and_keeps_each_dose_with_its_drug(tmp_path):
    paths = write(tmp_path)
    first, again = rows(read(paths, seed=5)), rows(read(paths, seed=5))
    pd.testing.assert_frame_equal(first, again)
    swapped = []
    for seed in range(12):
        r = rows(read(paths, seed=seed)).query("source == 'ALMANAC.FG'").iloc[0]
        assert {(r["drug1_id"], round(float(r["dose1"]), 4)), (r["drug2_id"], round(float(r["dose2"]), 4))} == \
               {("NSC.10", 6.0), ("NSC.20", 5.0)}
        swapped.append(r["drug1_id"] == "NSC.20")
    assert any(swapped) and not all(swapped)


def test_drug_response_filter_removes_a_drug_that_never_inhibits_and_its_pairs(tmp_path):
    # NSC.20 (as Drug1: its single-agent row) grows 150 %: its averaged per-cell minimum is above
    # drug_lower_response = 1. The pair (NSC.10, NSC.20) goes with it although NSC.10 itself passes.
    pairs = PAIRS.replace(",-10,Y,1A", ",150,Y,1A")
    jt = read(write(tmp_path, pair_response=pairs))
    got = rows(jt)
    assert not set(got["source"]) & {"ALMANAC.FG", "ALMANAC.1A"}
    assert any("dropped 2 response rows whose drug failed the drug response filter" in n for n in jt.info["notes"])
    # a looser minimum lets it in unless the median bound (1) stops it; a 0 bound is skipped (CANDLE's truthiness)
    loose = write(tmp_path, pair_response=pairs)
    assert "NSC.20" not in set(rows(read(loose, drug_lower_response=2.0))["drug1_id"])
    assert "NSC.20" in set(rows(read(loose, drug_lower_response=2.0, drug_median_response_max=0))["drug1_id"])


def test_agg_dose_reads_the_aggregated_file_with_the_fit_filters(tmp_path):
    jt = read(write(tmp_path), agg_dose="AUC", train_sources=["GDSC", "CTRP"], partition_by="index")
    got = rows(jt).sort_values(["drug1_id", "cell_id"])
    # EC50se 3.5 > 3, R2fit 0.2 < 0.3 and a missing AUC are filtered out
    assert list(zip(got["drug1_id"], got["cell_id"])) == [("CTRP.7", "GDSC.C1"), ("GDSC.1", "GDSC.C1")]
    np.testing.assert_allclose(got["y"], [0.3, 0.8], rtol=1e-6)
    assert [s.name for s in jt.slots] == ["response.source", "cell.rnaseq", "drug1.descriptors", "drug1.fingerprints"]
    assert jt.info["model_shape"]["single"] is True and jt.info["model_shape"]["agg_dose"] == "AUC"


# --------------------------------------------------------------------------- features
def test_rnaseq_drops_empty_columns_imputes_scales_and_embeds_the_source_unscaled(tmp_path):
    jt = read(write(tmp_path), single=True)
    table = jt.tables["cell.rnaseq"]
    assert table.columns == ["rnaseq.source.CCLE", "rnaseq.source.GDSC", "rnaseq.source.NCI60", "rnaseq.G1", "rnaseq.G2"]
    # statistics over all four samples of the file (CCLE.X has no response but counts), as CANDLE does
    g1 = np.array([1.0, 3.0, 5.0, 7.0])
    g2 = np.array([2.0, np.mean([2.0, 6.0, 8.0]), 6.0, 8.0])
    expected = {"GDSC.C1": 0, "GDSC.C2": 1, "NCI60.N1": 2}
    for sample, k in expected.items():
        row = table.values[table.ids.index(sample)]
        assert row[:3].tolist() == [0.0, sample.startswith("GDSC"), sample.startswith("NCI60")]
        assert row[3] == pytest.approx((g1[k] - g1.mean()) / g1.std(), rel=1e-5, abs=1e-6)
        assert row[4] == pytest.approx((g2[k] - g2.mean()) / g2.std(), rel=1e-5, abs=1e-6)
    assert "CCLE.X" not in table.ids  # only rows a split uses are stored
    plain = read(write(tmp_path), single=True, embed_feature_source=False).tables["cell.rnaseq"]
    assert plain.columns == ["rnaseq.G1", "rnaseq.G2"]


def test_preprocessed_rnaseq_is_not_rescaled(tmp_path):
    table = read(write(tmp_path), single=True, embed_feature_source=False,
                 preprocess_rnaseq="source_scale").tables["cell.rnaseq"]
    assert table.values[table.ids.index("GDSC.C2")].tolist() == [3.0, pytest.approx(16 / 3)]


def test_descriptors_map_pubchem_through_drug_info_zero_empty_columns_and_scale(tmp_path):
    jt = read(write(tmp_path))
    table = jt.tables["drug.descriptors"]
    assert table.columns == ["dragon7.MW", "dragon7.nAT", "dragon7.E"]  # E is all 'na': kept as zeros (dropna=None)
    values = {i: table.values[k] for k, i in enumerate(table.ids)}
    np.testing.assert_array_equal(values["GDSC.1"], values["CTRP.7"])  # one compound, two study ids
    # statistics over the concatenated sets: GDSC.1, GDSC.2, CTRP.7 (PubChem, drug_info order), NSC.10, NSC.20
    mw = np.array([1.0, 3.0, 1.0, 7.0, 9.0])
    nat = np.array([22 / 3, 4.0, 22 / 3, 8.0, 10.0])
    for k, drug in enumerate(["GDSC.1", "GDSC.2", "CTRP.7", "NSC.10", "NSC.20"]):
        if drug in values:
            assert values[drug][0] == pytest.approx((mw[k] - mw.mean()) / mw.std(), rel=1e-5, abs=1e-6)
            assert values[drug][1] == pytest.approx((nat[k] - nat.mean()) / nat.std(), rel=1e-5, abs=1e-6)
            assert values[drug][2] == 0.0


def test_descriptor_sets_are_aligned_by_column_name(tmp_path):
    nci60 = "NAME\tnAT\tMW\tX\nNSC.10\t8.0\t7.0\t1.0\nNSC.20\t10.0\t9.0\t3.0\n"  # other order, one more column
    table = read(write(tmp_path, nci60_descriptors=nci60), scaling="none").tables["drug.descriptors"]
    assert table.columns == ["dragon7.MW", "dragon7.nAT", "dragon7.E", "dragon7.X"]
    values = {i: table.values[k].tolist() for k, i in enumerate(table.ids)}
    assert values["NSC.10"] == [7.0, 8.0, 0.0, 1.0]
    assert values["GDSC.2"] == [3.0, 4.0, 0.0, 2.0]  # X missing from the PubChem set: the mean of the others


def test_fingerprints_join_pfp_and_ecfp_and_are_not_scaled(tmp_path):
    table = read(write(tmp_path)).tables["drug.fingerprints"]
    assert table.columns == ["dragon7.PFP.1", "dragon7.PFP.2", "dragon7.ECFP.1", "dragon7.ECFP.2"]
    values = {i: table.values[k].tolist() for k, i in enumerate(table.ids)}
    assert values["GDSC.1"] == values["CTRP.7"] == [1, 0, 1, 1]
    assert values["NSC.20"] == [0, 1, 1, 0]


def test_drug1_and_drug2_share_one_table_per_feature_type_in_candle_input_order(tmp_path):
    jt = read(write(tmp_path))
    assert [(s.name, s.table, s.key) for s in jt.slots] == [
        ("dose1", None, "dose1"), ("dose2", None, "dose2"), ("response.source", "response.source", "response_source"),
        ("cell.rnaseq", "cell.rnaseq", "cell"),
        ("drug1.descriptors", "drug.descriptors", "drug1"), ("drug1.fingerprints", "drug.fingerprints", "drug1"),
        ("drug2.descriptors", "drug.descriptors", "drug2"), ("drug2.fingerprints", "drug.fingerprints", "drug2")]
    assert sorted(jt.tables) == ["cell.rnaseq", "drug.descriptors", "drug.fingerprints", "response.source"]
    assert jt.tables["drug.descriptors"].ids == jt.tables["drug.fingerprints"].ids  # one index serves both


def test_rows_index_the_right_cell_drug_and_source(tmp_path):
    jt = read(write(tmp_path))
    for frame in jt.splits.values():
        for key, table, id_column in (("cell", "cell.rnaseq", "cell_id"), ("drug1", "drug.descriptors", "drug1_id"),
                                      ("drug2", "drug.fingerprints", "drug2_id"),
                                      ("response_source", "response.source", "source")):
            ids = np.asarray(jt.tables[table].ids)[frame[key].to_numpy()]
            assert ids.tolist() == frame[id_column].tolist()
        x = features_of(jt, frame)
        assert x.shape == (len(frame), jt.num_features) and np.isfinite(x).all()


def test_response_source_one_hot_has_level1_columns_first(tmp_path):
    table = read(write(tmp_path)).tables["response.source"]
    assert table.ids == ["GDSC", "CTRP", "ALMANAC.FG", "ALMANAC.1A"]
    assert table.columns == ["source.L1.ALMANAC", "source.ALMANAC.1A", "source.ALMANAC.FG", "source.CTRP", "source.GDSC"]
    assert table.values[table.ids.index("ALMANAC.FG")].tolist() == [1, 0, 1, 0, 0]
    assert table.values[table.ids.index("CTRP")].tolist() == [0, 0, 0, 1, 0]
    assert "response.source" not in read(write(tmp_path), encode_response_source=False).tables


def test_model_shape_info_builds_a_model_that_takes_the_rows(tmp_path):
    import torch

    from models import uno as uno_model

    jt = read(write(tmp_path))
    shape = jt.info["model_shape"]
    assert shape["cell_feature_dims"] == [5] and shape["drug_feature_dims"] == [3, 4] and shape["response_source_dim"] == 5
    model = uno_model.build({**shape, "input_dim": jt.num_features, "dense": [8], "dense_feature_layers": [4]})
    x = torch.from_numpy(features_of(jt, jt.splits["train"]))
    assert model(x).shape == (len(x), 1)


# --------------------------------------------------------------------------- filters and partitions
def test_rows_without_features_are_dropped_and_counted(tmp_path):
    single = SINGLE + "GDSC\tGDSC.1\tGDSC.NOPE\tM\t-6\te1\t10\nGDSC\tGDSC.9\tGDSC.C1\tM\t-6\te1\t10\n"
    jt = read(write(tmp_path, single_response=single))
    notes = " ".join(jt.info["notes"])
    assert "dropped 1 response rows whose cell has no rnaseq features" in notes
    assert "dropped 1 response rows whose drug has no descriptors" in notes
    assert not {"GDSC.NOPE"} & set(rows(jt)["cell_id"]) and "GDSC.9" not in set(rows(jt)["drug1_id"])


def test_train_and_test_sources_filter_and_fill_the_test_split(tmp_path):
    jt = read(write(tmp_path), train_sources=["GDSC"], test_sources=["CTRP"], val_split=0.5, partition_by="index")
    assert set(pd.concat([jt.splits["train"], jt.splits["val"]])["source"]) == {"GDSC"}
    assert set(jt.splits["test"]["source"]) == {"CTRP"}
    with pytest.raises(DataError, match=r"train_sources \['gCSI'\] match none of the response sources"):
        read(write(tmp_path), train_sources=["gCSI"])


def test_partitions_keep_groups_disjoint_and_candle_drug_pair_groups(tmp_path):
    files = uno.synthesize(tmp_path, dict(uno.OPTIONS), 3, 600, 24)
    for partition, column in (("drug_pair", "group"), ("cell", "cell_id"), ("index", "group")):
        jt = uno.read(files, {"partition_by": partition}, 2018)
        train, val = jt.splits["train"], jt.splits["val"]
        assert len(train) and len(val) and not set(train[column]) & set(val[column])
        assert jt.info["groups"]["val"] == math.ceil(0.2 * jt.info["groups"]["total"]) > 0
    jt = uno.read(files, {}, 2018)
    everything = rows(jt)
    # GDSC.1001 and CTRP.1 are one PubChem compound: one group, on one side of the split
    shared = everything[everything["drug1_id"].isin(["GDSC.1001", "CTRP.1"]) & everything["source"].isin(["GDSC", "CTRP"])]
    assert shared["group"].nunique() == 1 and shared["group"].iloc[0].startswith("PubChem.CID.")
    pairs = everything[everything["source"].str.startswith("ALMANAC") & (everything["drug1_id"] != everything["drug2_id"])]
    assert all(g == ",".join(sorted(g.split(","))) for g in pairs["group"])


def test_shuffle_split_sizes_follow_sklearn_and_depend_on_the_seed():
    train, val = shuffle_split(11, 0.2, 2018)
    assert len(val) == 3 and len(train) == 8 and not set(train) & set(val)
    assert shuffle_split(11, 0.2, 2018)[1].tolist() == val.tolist()
    assert np.random.RandomState(2018).permutation(11)[:3].tolist() == val.tolist()  # ShuffleSplit's test = first n_test
    assert any(shuffle_split(11, 0.2, s)[1].tolist() != val.tolist() for s in range(3))
    with pytest.raises(DataError, match="cannot split 1 groups"):
        shuffle_split(1, 0.2, 0)


def test_single_mode_drops_pairs_and_has_no_drug2(tmp_path):
    jt = read(write(tmp_path), single=True)
    got = rows(jt)
    assert "ALMANAC.FG" not in set(got["source"]) and "ALMANAC.1A" in set(got["source"])
    assert [s.name for s in jt.slots if s.name.startswith(("drug2", "dose2"))] == []
    assert any("of drug pairs (single=True)" in n for n in jt.info["notes"])


def test_synthetic_files_round_trip_with_a_dose_signal(tmp_path):
    files = uno.synthesize(tmp_path, dict(uno.OPTIONS), 0, 800, 32)
    assert set(files) == set(uno.FILES) and all(p.name == uno.FILES[r] for r, p in files.items())
    jt = uno.read(files, {}, 2018)
    assert {"train", "val"} <= set(jt.splits) and jt.info["rows"]["train"] > 300
    assert all(t.values.shape[1] <= 32 for t in jt.tables.values())
    single = uno.read(files, {"single": True, "train_sources": ["GDSC", "CTRP", "NCI60"]}, 2018)
    frame = rows(single)
    assert np.corrcoef(frame["dose1"], frame["y"])[0, 1] < -0.5  # growth falls with the dose
    agg = uno.read(files, {"agg_dose": "AUC", "train_sources": ["all"]}, 2018)
    assert rows(agg)["y"].between(0, 1).all()


# --------------------------------------------------------------------------- by_drug, by_cell, cell_types
def test_names_map_to_ids_as_candle_looks_them_up(tmp_path):
    """A drug name matches whole (any case) in drug_info's ID, NAME, CLEAN_NAME, PUBCHEM or the NCI names; a cell
    name and a tumour type match inside a name."""
    from candle_ray.data.benchmarks.uno_subsets import cell_ids, drug_ids, typed_cells

    paths = write(tmp_path)
    assert drug_ids(paths, "a") == {"GDSC.1", "CTRP.7"}  # NAME 'a' of GDSC.1; CLEAN_NAME 'A' of both
    assert drug_ids(paths, "twenty") == {"NSC.20"} and drug_ids(paths, "200") == {"GDSC.2"}
    assert drug_ids(paths, "tw") == set()  # not a whole name
    assert cell_ids(paths, "c1") == {"GDSC.C1", "CCLE.C1"} and cell_ids(paths, "n-one") == {"NCI60.N1"}
    assert typed_cells(paths, ["BREAST", "kidney"]) == {"GDSC.C1"}


def test_by_drug_keeps_its_single_drug_rows_and_splits_by_cell(tmp_path):
    jt = read(write(tmp_path), by_drug="A", single=True, val_split=0.5)
    everything = rows(jt)
    assert set(everything["drug1_id"]) == {"GDSC.1", "CTRP.7"} and len(everything) == 4
    assert set(jt.splits["train"]["cell_id"]).isdisjoint(jt.splits["val"]["cell_id"])  # CANDLE: by cell
    assert any("partition_by 'cell'" in n for n in jt.info["notes"])
    by_cell = rows(read(write(tmp_path), by_cell="C1", val_split=0.5))
    assert set(by_cell["cell_id"]) == {"GDSC.C1"} and by_cell["drug1_id"].nunique() == 3
    typed = rows(read(write(tmp_path), cell_types=["lung"], val_split=0.5))
    assert set(typed["cell_id"]) == {"GDSC.C2"}
    with pytest.raises(DataError, match="by_drug='tw' matches no id in the name files"):
        read(write(tmp_path), by_drug="tw")
    with pytest.raises(UsageError, match="dataset source role 'nci_drugs' is missing"):
        read(write(tmp_path, nci_drugs=None), by_drug="A")


def test_candles_automatic_partition_under_by_drug_and_by_cell():
    from candle_ray.data.benchmarks.uno_subsets import partition

    o = {**uno.OPTIONS}
    assert partition({**o, "by_drug": "x"}, "drug_pair") == "cell"
    assert partition({**o, "by_drug": "x", "by_cell": "y"}, "drug_pair") == "index"
    assert partition({**o, "by_cell": "y"}, "drug_pair") == "drug_pair"
    assert partition({**o, "by_drug": "x", "partition_by": "index"}, "drug_pair") == "index"  # set: kept


def test_name_files_are_fetched_and_fingerprinted_only_with_their_option():
    """Entries prepared before by_drug, by_cell and cell_types existed keep their fingerprints."""
    from candle_ray.data import registry

    sources = dict.fromkeys(uno.FILES, "x")
    assert not {"nci_drugs", "cell_aliases", "cell_metadata"} & set(registry.needed_sources("uno", sources, {}))
    assert "nci_drugs" in registry.needed_sources("uno", sources, {"by_drug": "paclitaxel"})
    assert not set(uno.ADDED_OPTIONS) & set(registry.identifying_options("uno", {"by_drug": None, "cell_types": []}))
    assert registry.identifying_options("uno", {"by_drug": "paclitaxel"})["by_drug"] == "paclitaxel"


def test_synthetic_files_answer_the_names_a_candle_file_asks_for(tmp_path):
    """uno_by_drug_example.txt's by_drug='paclitaxel' on smoke data: the synthetic GDSC.1001 / CTRP.1 carry it."""
    options = {**uno.OPTIONS, "by_drug": "paclitaxel", "train_sources": ["CTRP"], "single": True, "partition_by": "cell"}
    files = uno.synthesize(tmp_path, options, 0, 800, 32)
    everything = rows(uno.read(files, options, 2018))
    assert set(everything["drug1_id"]) == {"CTRP.1"} and len(everything) > 20
    both = {**uno.OPTIONS, "by_cell": "MY-CELL", "cell_types": ["renal"], "train_sources": ["GDSC"]}
    (tmp_path / "b").mkdir()
    files = uno.synthesize(tmp_path / "b", both, 0, 800, 32)
    assert set(rows(uno.read(files, both, 2018))["cell_id"]) == {"GDSC.22RV1"}


# --------------------------------------------------------------------------- bad input
def test_a_file_with_the_wrong_columns_names_it_and_the_columns(tmp_path):
    bad = SINGLE.replace("LOG_CONCENTRATION", "LOGCONC")
    with pytest.raises(DataError, match=r"rescaled_combined_single_drug_growth is not CANDLE's single-drug response.*"
                                        r"missing \[LOG_CONCENTRATION\], found \[SOURCE, DRUG_ID"):
        read(write(tmp_path, single_response=bad))
    with pytest.raises(DataError, match=r"ComboDrugGrowth_Nov2017.csv .*missing \[VALID\]"):
        read(write(tmp_path, pair_response=PAIRS.replace("VALID", "OK")))


def test_a_non_numeric_growth_is_an_error(tmp_path):
    with pytest.raises(DataError, match="column 'GROWTH' holds 'lots', not a number"):
        read(write(tmp_path, single_response=SINGLE.replace("\t90\n", "\tlots\n")))


def test_an_almanac_cell_missing_from_the_map_is_an_error(tmp_path):
    with pytest.raises(DataError, match=r"ALMANAC cell name 'N-ONE' is not in NCI60_CELLNAME_to_Combo.txt"):
        read(write(tmp_path, cell_map="NCI60.ID\tCELLNAME\tName\nNCI60.N2\tLC:X\tX\n"))


def test_an_all_nan_feature_table_is_an_error(tmp_path):
    empty = "Sample\tG1\tG2\nGDSC.C1\tna\tna\nGDSC.C2\t\tna\n"
    with pytest.raises(DataError, match="no usable values: all 2 feature columns are empty"):
        read(write(tmp_path, rnaseq=empty))


def test_ids_missing_from_the_feature_tables_leave_an_empty_split(tmp_path):
    rnaseq = "Sample\tG1\nCCLE.A\t1.0\nCCLE.B\t2.0\n"
    with pytest.raises(DataError, match=r"the train split is empty after filtering \(response_rows 8.*with_cell_rnaseq 0"):
        read(write(tmp_path, rnaseq=rnaseq))


def test_missing_roles_and_bad_options_are_usage_errors(tmp_path):
    paths = write(tmp_path)
    with pytest.raises(UsageError, match="source role 'cell_map' is missing"):
        read({k: v for k, v in paths.items() if k != "cell_map"})
    with pytest.raises(UsageError, match="source role 'agg_response' is missing"):
        read({k: v for k, v in paths.items() if k != "agg_response"}, agg_dose="AUC")
    with pytest.raises(UsageError, match="partition_by='drug' is not one of"):
        read(paths, partition_by="drug")
    with pytest.raises(UsageError, match="val_split=1.5 must be a number between 0 and 1"):
        read(paths, val_split=1.5)
    with pytest.raises(UsageError, match="drug_features has 'mordred'"):
        read(paths, drug_features=["mordred"])


def test_prepared_entry_gives_the_model_every_width_it_needs(tmp_path):
    """Through the cache: experiment.model_shape carries the reader's model_shape (response-source width,
    single, agg_dose) next to the slot-derived feature dims, and the Uno model builds for the rows."""
    from candle_ray.data.cache import Cache
    from candle_ray.data.synthetic import synthesize
    from candle_ray.experiment import load_experiment, model_shape
    from models import uno as uno_model
    from tests.conftest import ROOT

    exp = load_experiment(ROOT / "experiments" / "uno.py")
    ds = synthesize(exp.dataset, tmp_path / "files", rows=(300, 100), features=24, seed=1)
    entry = Cache(tmp_path / "cache").prepare(ds, log=lambda *_: None)
    shape = model_shape(entry)
    assert shape["response_source_dim"] == 7 and shape["single"] is False and shape["agg_dose"] is None
    assert shape["drug_features"] == ["descriptors", "fingerprints"] and shape["input_dim"] == entry.num_features
    uno_model.build({**exp.defaults, "dense": [8], "dense_feature_layers": [4], **shape})


def test_the_aggregated_file_is_fetched_only_with_agg_dose(tmp_path):
    """experiments/uno.py lists the aggregated-response file so that CANDLE's uno_auc_model.txt (agg_dose='AUC',
    train_sources=['CCLE']) runs through --config-file; a growth run neither fetches it nor changes its entry,
    and the smoke files hold the CCLE rows that file trains on."""
    from dataclasses import replace

    from candle_ray.data.cache import Cache
    from candle_ray.data.cache_format import fingerprint
    from candle_ray.data.synthetic import synthesize
    from candle_ray.experiment import load_experiment, model_shape
    from tests.conftest import ROOT

    growth = load_experiment(ROOT / "experiments" / "uno.py").dataset
    assert "agg_response" in growth.sources
    without = replace(growth, sources={k: v for k, v in growth.sources.items() if k != "agg_response"})
    assert fingerprint(growth) == fingerprint(without)  # the entries users have already prepared
    auc = replace(growth, options={**growth.options, "agg_dose": "AUC", "train_sources": ["CCLE"], "single": True})
    assert fingerprint(auc) != fingerprint(replace(auc, sources=without.sources))
    cache = Cache(tmp_path / "cache")
    entry = cache.prepare(synthesize(auc, tmp_path / "auc", rows=(800, 200), features=24, seed=1), log=lambda *_: None)
    assert model_shape(entry)["agg_dose"] == "AUC" and "agg_response" in entry.manifest["sources"]
    assert entry.manifest["splits"]["train"]["rows"] >= 20  # CCLE's own rows, aggregated per cell and drug
    entry = cache.prepare(synthesize(growth, tmp_path / "growth", rows=(300, 100), features=24, seed=1),
                          log=lambda *_: None)
    assert "agg_response" not in entry.manifest["sources"]


def test_all_feature_ids_keeps_cells_without_responses_and_trains_on_the_same_rows(tmp_path):
    """`all_feature_ids`: the tables keep every cell the RNA-seq file describes (CCLE.X has no response rows), so
    predict can name it; the rows, their features (scaled over the whole file either way) and the fingerprint
    at the default stay as they were."""
    from candle_ray.data import registry

    paths = write(tmp_path)
    used, every = read(paths), read(paths, all_feature_ids=True)
    assert used.tables["cell.rnaseq"].ids == ["GDSC.C1", "GDSC.C2", "NCI60.N1"]
    assert every.tables["cell.rnaseq"].ids == ["CCLE.X", "GDSC.C1", "GDSC.C2", "NCI60.N1"]
    assert every.tables["drug.descriptors"].ids == every.tables["drug.fingerprints"].ids  # one index serves both
    for split in ("train", "val"):
        assert np.array_equal(features_of(used, used.splits[split]), features_of(every, every.splits[split]))
        assert used.splits[split]["cell_id"].tolist() == every.splits[split]["cell_id"].tolist()
    assert "all_feature_ids" not in registry.identifying_options("uno", {})
    assert registry.identifying_options("uno", {"all_feature_ids": True})["all_feature_ids"] is True
    with pytest.raises(UsageError, match="all_feature_ids='yes' must be True or False"):
        read(paths, all_feature_ids="yes")
