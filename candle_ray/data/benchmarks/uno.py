"""Uno (CANDLE Pilot1): single-drug and drug-pair response over many studies, read into joined tables.

Files of `.../benchmarks/Pilot1/combo/` (source roles in brackets; each is optional where noted):
  [single_response] rescaled_combined_single_drug_growth   tab: SOURCE, DRUG_ID, CELLNAME, LOG_CONCENTRATION,
                    EXPID, GROWTH (percent; CCLE, CTRP, gCSI, GDSC, NCI60, SCL, SCLC)
  [pair_response]   ComboDrugGrowth_Nov2017.csv             comma: CELLNAME, NSC1, CONC1 (molar), NSC2, CONC2,
                    PERCENTGROWTH, VALID, SCREENER, STUDY, ... (NCI-ALMANAC)
  [cell_map]        NCI60_CELLNAME_to_Combo.txt             tab: Name (ALMANAC's CELLNAME), NCI60.ID (the Sample id)
  [agg_response]    combined_single_response_agg            tab: SOURCE, CELL, DRUG, STUDY, AUC, IC50, EC50, EC50se,
                    R2fit, HS, AAC1, AUC1, DSS1, ... (only with agg_dose)
  [rnaseq]          combined_rnaseq_data_lincs1000          tab: Sample ("CCLE.22RV1", "NCI60.786-0"), genes...
  [drug_info]       drug_info                               tab: ID ("GDSC.1003", "CTRP.1"), PUBCHEM (CID number)
  [descriptors]     Combined_PubChem_dragon7_descriptors.tsv  tab: NAME ("PubChem.CID.<n>"), dragon7 values ('na')
  [nci60_descriptors] NCI60_dragon7_descriptors.tsv         tab: NAME ("NSC.<n>"), dragon7 values
  [pfp], [ecfp]     Combined_PubChem_dragon7_{PFP,ECFP}.tsv  tab: a header line (skipped), then id, bits
  [nci60_pfp], [nci60_ecfp] NCI60_dragon7_{PFP,ECFP}.tsv
  [nci_drugs], [cell_aliases], [cell_metadata]  NCI_IOA_AOA_drugs, cl_mapping, cl_metadata: names of drugs,
                    cell lines and tumour types, read only for by_drug, by_cell, cell_types (uno_subsets)
The PubChem sets are keyed by compound and mapped to each study's drug ids through drug_info, as
CANDLE's load_drug_descriptors does; the NCI60 sets are keyed by the NSC ids ALMANAC and NCI60 use.

What CANDLE's uno_data.py CombinedDataLoader does, and this reader with it:
* dose = -log10(molar concentration) (-LOG_CONCENTRATION for single drugs), growth / 100; ALMANAC rows
  need VALID == 'Y', their source is "ALMANAC.<SCREENER>", their cell the map's NCI60.ID, their drugs
  "NSC.<n>" (an empty NSC2 is a single-drug row). With `agg_dose` (AUC, IC50, ...) the aggregated file
  is read instead (R2fit >= min_r2_fit and EC50se <= max_ec50_se, target not missing), no doses.
* drug response filter (dose-response mode): per (Drug1, Sample) the min, max, median of growth and
  span = clip(max) - clip(min); averaged per drug; drugs kept if min <= drug_lower_response, max >=
  drug_upper_response, span >= drug_response_span, median within drug_median_response_min/max (each
  median bound only when non-zero, CANDLE's truthiness test). A removed drug removes its pairs too.
* features: RNA-seq: all-NaN columns dropped, mean-impute, `scaling` (skipped for a `preprocess_rnaseq`
  file), fit over every sample of the file; with embed_feature_source the one-hot of the sample's
  source ("rnaseq.source.CCLE", ...) comes first, unscaled. Descriptors: the sets concatenated, all-NaN
  columns set to 0 (CANDLE's dropna=None keeps all 5,270), mean-impute, `scaling`. Fingerprints: PFP
  and ECFP joined per set, sets concatenated, mean-impute, no scaling.
* rows whose cell or drug lacks any feature table are dropped (CANDLE's filter), counted in info;
  then rows outside by_drug, by_cell and cell_types (candle_ray.data.benchmarks.uno_subsets), and rows
  from neither train_sources nor test_sources ("train" = the same, "all" = every source;
  a name matches every source it prefixes, so "ALMANAC" matches "ALMANAC.FG").
* encode_response_source: one-hot of the response source, "source.L1.<prefix>" columns then "source.<name>",
  over every source in the loaded responses (CANDLE's encode_sources).
* partition: each row gets a group (partition_by "drug_pair": the drug, or the sorted "d1,d2" pair,
  with single-drug ids mapped to their PubChem CID through drug_info so one compound from several
  studies is one group; "cell": the sample; "index": the row). The groups of train-source rows, in
  order of appearance, are split by sklearn's ShuffleSplit(train_size=1-val_split, test_size=val_split,
  random_state=seed) (reproduced with numpy); train/val = rows of those groups from train sources;
  test = test-source rows of groups in neither (present only when not empty).
* pairs mode (single False): CANDLE's batch generator puts a single-drug row in as the pair (d, d) with
  its dose split in two (dose1 = dose - log10(u), dose2 = dose - log10(1 - u), u ~ U(0.001, 0.999))
  and swaps drug1/drug2 of a pair at random. Training never preprocesses here, so both draws are made
  once, seeded, when the data are prepared; CANDLE draws them anew for every batch.
* single mode: drug2 and dose2 are not inputs; pair rows are dropped (counted) rather than fed with
  their second drug silently ignored.

Row tables hold int32 indices "cell", "drug1", "drug2", "response_source", float32 "dose1", "dose2" and
"y", and the ids "cell_id", "drug1_id", "drug2_id", "source", "group" (strings, for grouping later).
info["model_shape"] has the widths the model needs (cell_feature_dims, drug_feature_dims, ...).
Not implemented: cv > 1 folds (use candle-ray cv with --group-by group), subset files / exclude lists,
mordred descriptors, use_exported_data (HDF5).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from candle_ray.data.benchmarks.candle_tables import (as_list, check_choice, check_fraction, feature_table, first_occurrence,
                                                      impute_and_scale, indices, kept_ids, non_empty, read_features,
                                                      read_fingerprints, read_table, require, shuffle_split)
from candle_ray.data.benchmarks import uno_subsets
from candle_ray.data.joined import FeatureTable, JoinedTables, Slot
from candle_ray.errors import DataError, UsageError

log = logging.getLogger(__name__)

VERSION = 1
FILES = {
    "single_response": "rescaled_combined_single_drug_growth",
    "pair_response": "ComboDrugGrowth_Nov2017.csv",
    "cell_map": "NCI60_CELLNAME_to_Combo.txt",
    "agg_response": "combined_single_response_agg",
    "rnaseq": "combined_rnaseq_data_lincs1000",
    "drug_info": "drug_info",
    "descriptors": "Combined_PubChem_dragon7_descriptors.tsv",
    "nci60_descriptors": "NCI60_dragon7_descriptors.tsv",
    "pfp": "Combined_PubChem_dragon7_PFP.tsv",
    "ecfp": "Combined_PubChem_dragon7_ECFP.tsv",
    "nci60_pfp": "NCI60_dragon7_PFP.tsv",
    "nci60_ecfp": "NCI60_dragon7_ECFP.tsv",
    "nci_drugs": "NCI_IOA_AOA_drugs",
    "cell_aliases": "cl_mapping",
    "cell_metadata": "cl_metadata",
}
# CANDLE's negative flags, which a config file may set: no_feature_source=True is embed_feature_source=False.
CANDLE_NEGATED = {"no_feature_source": "embed_feature_source", "no_response_source": "encode_response_source"}
# Files read only with an option (CANDLE downloads them only then too): the aggregated responses with
# agg_dose, the name files with by_drug, by_cell and cell_types.
OPTIONAL_ROLES = {"agg_response": "agg_dose", "nci_drugs": "by_drug", "cell_aliases": "by_cell",
                  "cell_metadata": "cell_types"}
# CANDLE's uno_default_model.txt / CombinedDataLoader.load defaults.
OPTIONS = {
    "train_sources": ["GDSC", "CTRP", "ALMANAC"],
    "test_sources": ["train"],
    "cell_features": ["rnaseq"],
    "drug_features": ["descriptors", "fingerprints"],
    "agg_dose": None,
    "single": False,
    "partition_by": "drug_pair",
    "val_split": 0.2,
    "scaling": "std",
    "preprocess_rnaseq": "none",
    "embed_feature_source": True,  # CANDLE: not no_feature_source
    "encode_response_source": True,  # CANDLE: not no_response_source
    "drug_lower_response": 1.0,
    "drug_upper_response": -1.0,
    "drug_response_span": 0.0,
    "drug_median_response_min": -1.0,
    "drug_median_response_max": 1.0,
    "min_r2_fit": 0.3,
    "max_ec50_se": 3.0,
    "by_drug": None,  # one drug's single-drug rows, by name (uno_by_drug_example.txt: 'paclitaxel')
    "by_cell": None,  # one cell line's rows, by a part of its name
    "cell_types": None,  # rows of cell lines whose tumour type holds one of these names
    # not CANDLE's: keep every cell and drug the feature files describe, not only those with response rows,
    # so that `candle-ray predict` can name unscreened ones (larger tables; training reads the same rows)
    "all_feature_ids": False,
}
# Options added after entries were first prepared: at their default they stay out of the fingerprint, so
# those entries keep their names (candle_ray.data.registry.identifying_options).
ADDED_OPTIONS = ("by_drug", "by_cell", "cell_types", "all_feature_ids")
AGG_TARGETS = ("AUC", "IC50", "EC50", "HS", "AAC1", "AUC1", "DSS1")
CELL_FEATURES = ("rnaseq",)
DRUG_FEATURES = ("descriptors", "fingerprints")
PARTITIONS = ("drug_pair", "cell", "index")
SINGLE_COLUMNS = ["SOURCE", "DRUG_ID", "CELLNAME", "LOG_CONCENTRATION", "EXPID", "GROWTH"]
PAIR_COLUMNS = ["CELLNAME", "NSC1", "CONC1", "NSC2", "CONC2", "PERCENTGROWTH", "VALID", "SCREENER", "STUDY"]
AGG_COLUMNS = ["SOURCE", "CELL", "DRUG", "STUDY", "R2fit", "EC50se"]


# --------------------------------------------------------------------------- options
def check_options(options: dict) -> dict:
    """Validated options with lists normalised; UsageError naming the option otherwise."""
    o = {**OPTIONS, **options}
    o["train_sources"] = as_list("train_sources", o["train_sources"])
    o["test_sources"] = as_list("test_sources", o["test_sources"])
    if not o["train_sources"]:
        raise UsageError("option train_sources is empty; name at least one source, e.g. ['GDSC'] or ['all']")
    o["cell_features"] = as_list("cell_features", o["cell_features"], CELL_FEATURES)
    o["drug_features"] = as_list("drug_features", o["drug_features"], DRUG_FEATURES)
    if o["agg_dose"] is not None:
        check_choice("agg_dose", o["agg_dose"], AGG_TARGETS)
    check_choice("partition_by", o["partition_by"], PARTITIONS)
    o["val_split"] = check_fraction("val_split", o["val_split"])
    check_choice("preprocess_rnaseq", o["preprocess_rnaseq"] or "none", ("none", "source_scale", "combat"))
    for key in ("single", "embed_feature_source", "encode_response_source", "all_feature_ids"):
        if not isinstance(o[key], bool):
            raise UsageError(f"option {key}={o[key]!r} must be True or False")
    for key in ("drug_lower_response", "drug_upper_response", "drug_response_span", "drug_median_response_min",
                "drug_median_response_max", "min_r2_fit", "max_ec50_se"):
        if o[key] is not None and (isinstance(o[key], bool) or not isinstance(o[key], (int, float))):
            raise UsageError(f"option {key}={o[key]!r} must be a number")
    for key in ("by_drug", "by_cell"):
        if o[key] is not None and not (isinstance(o[key], str) and o[key].strip()):
            raise UsageError(f"option {key}={o[key]!r} must be a name (a string) or None")
    o["cell_types"] = as_list("cell_types", o["cell_types"]) or None
    if o["agg_dose"]:
        o["single"] = True  # CANDLE: single = single or agg_dose (one drug, no doses)
    return o


# --------------------------------------------------------------------------- responses
def read_single_response(path: Path) -> pd.DataFrame:
    df = read_table(path, sep="\t", what="single-drug response (rescaled_combined_single_drug_growth)",
                    required=SINGLE_COLUMNS, numeric=["LOG_CONCENTRATION", "GROWTH"])
    return pd.DataFrame({"Source": df["SOURCE"], "Sample": df["CELLNAME"], "Drug1": df["DRUG_ID"],
                         "Dose1": -df["LOG_CONCENTRATION"], "Drug2": None, "Dose2": np.float32(np.nan),
                         "y": df["GROWTH"] / np.float32(100)})


def read_cell_map(path: Path) -> dict[str, str]:
    df = read_table(path, sep="\t", what="NCI60 cell-name map (NCI60_CELLNAME_to_Combo.txt)",
                    required=["Name", "NCI60.ID"])
    return dict(zip(df["Name"], df["NCI60.ID"]))


def map_cells(names: pd.Series, cellmap: dict[str, str], map_path: Path) -> pd.Series:
    mapped = names.map(cellmap)
    unknown = names[mapped.isna()]
    if len(unknown):
        raise DataError(f"ALMANAC cell name {unknown.iloc[0]!r} is not in {Path(map_path).name} (column Name); "
                        f"{unknown.nunique()} names are missing; use the cell map that belongs to the response file")
    return mapped


def read_pair_response(path: Path, cellmap: dict[str, str], map_path: Path) -> pd.DataFrame:
    df = read_table(path, sep=",", what="NCI-ALMANAC response (ComboDrugGrowth_Nov2017.csv)", required=PAIR_COLUMNS,
                    numeric=["CONC1", "CONC2", "PERCENTGROWTH"])
    df = df[df["VALID"] == "Y"]
    with np.errstate(divide="ignore", invalid="ignore"):
        dose1, dose2 = -np.log10(df["CONC1"]), -np.log10(df["CONC2"])
    drug2 = ("NSC." + df["NSC2"]).where(df["NSC2"].notna(), None)
    return pd.DataFrame({"Source": "ALMANAC." + df["SCREENER"], "Sample": map_cells(df["CELLNAME"], cellmap, map_path),
                         "Drug1": "NSC." + df["NSC1"], "Dose1": dose1, "Drug2": drug2, "Dose2": dose2,
                         "y": df["PERCENTGROWTH"] / np.float32(100)})


def read_agg_response(path: Path, target: str, min_r2_fit: float, max_ec50_se: float) -> pd.DataFrame:
    df = read_table(path, sep="\t", what="aggregated response (combined_single_response_agg)",
                    required=AGG_COLUMNS + ([target] if target not in AGG_COLUMNS else []),
                    numeric=["R2fit", "EC50se", target])
    df = df[(df["R2fit"] >= min_r2_fit) & (df["EC50se"] <= max_ec50_se)]
    df = df[df[target].notna()]
    return pd.DataFrame({"Source": df["SOURCE"], "Sample": df["CELL"], "Drug1": df["DRUG"], "Dose1": np.float32(np.nan),
                         "Drug2": None, "Dose2": np.float32(np.nan), "y": df[target]})


def load_responses(paths: dict, o: dict, notes: list[str], counts: dict) -> pd.DataFrame:
    if o["agg_dose"]:
        df = read_agg_response(require(paths, "agg_response", f"agg_dose={o['agg_dose']!r}"), o["agg_dose"],
                               o["min_r2_fit"], o["max_ec50_se"])
    else:
        parts = []
        if "single_response" in paths:
            parts.append(read_single_response(Path(paths["single_response"])))
        if "pair_response" in paths:
            map_path = require(paths, "cell_map", "ALMANAC cell names are mapped to sample ids")
            parts.append(read_pair_response(Path(paths["pair_response"]), read_cell_map(map_path), map_path))
        if not parts:
            raise UsageError("uno needs a response file: source role 'single_response' "
                             "(rescaled_combined_single_drug_growth) and/or 'pair_response' (ComboDrugGrowth_Nov2017.csv), "
                             "or 'agg_response' with agg_dose")
        df = pd.concat(parts, ignore_index=True)
    counts["response_rows"] = len(df)
    finite = np.isfinite(df["y"].to_numpy(np.float64))
    if not o["agg_dose"]:
        finite &= np.isfinite(df["Dose1"].to_numpy(np.float64))
        pairs = df["Drug2"].notna().to_numpy()
        finite &= ~pairs | np.isfinite(df["Dose2"].to_numpy(np.float64))
    if not finite.all():
        notes.append(f"uno: dropped {int((~finite).sum()):,} response rows without a finite growth or dose")
        df = df[finite]
    return df.reset_index(drop=True)


def select_drugs(df: pd.DataFrame, o: dict) -> set[str]:
    """CANDLE's select_drugs_with_response_range: drugs (as Drug1) whose averaged per-sample growth
    statistics fall in range. The median bounds apply only when truthy (non-zero), as in CANDLE."""
    stats = df.groupby(["Drug1", "Sample"])["y"].agg(["min", "max", "median"])
    stats["span"] = stats["max"].clip(lower=-1, upper=1) - stats["min"].clip(lower=-1, upper=1)
    stats = stats.groupby(level="Drug1").mean()
    mask = (stats["min"] <= o["drug_lower_response"]) & (stats["max"] >= o["drug_upper_response"]) & \
           (stats["span"] >= o["drug_response_span"])
    if o["drug_median_response_min"]:
        mask &= stats["median"] >= o["drug_median_response_min"]
    if o["drug_median_response_max"]:
        mask &= stats["median"] <= o["drug_median_response_max"]
    return set(stats.index[mask])


def matching_sources(wanted: list[str], available: list[str]) -> list[str]:
    """CANDLE: a source is selected when it starts with one of the wanted names ('all' = every one)."""
    if "all" in wanted:
        return list(available)
    return [s for s in available if any(s.startswith(w) for w in wanted)]


def encode_sources(sources: list[str]) -> FeatureTable:
    """CANDLE's encode_sources: "source.L1.<prefix>" one-hots for dotted sources, then "source.<name>"."""
    series = pd.Series(sources)
    level1 = pd.get_dummies(series.str.extract(r"^(\S+)\.", expand=False), prefix="source.L1", prefix_sep=".")
    onehot = pd.concat([level1, pd.get_dummies(series, prefix="source", prefix_sep=".")], axis=1)
    return FeatureTable("response.source", list(sources), onehot.to_numpy(np.float32), [str(c) for c in onehot.columns])


# --------------------------------------------------------------------------- features
def drug_info_ids(paths: dict) -> pd.DataFrame | None:
    """drug_info's (ID, Drug = "PubChem.CID.<PUBCHEM>") pairs, or None without the file."""
    if "drug_info" not in paths:
        return None
    df = read_table(Path(paths["drug_info"]), sep="\t", what="drug info (drug_info)", required=["ID", "PUBCHEM"])
    return pd.DataFrame({"ID": df["ID"], "Drug": "PubChem.CID." + df["PUBCHEM"]}).dropna()


def _pubchem_to_ids(ids: list[str], values: np.ndarray, info: pd.DataFrame) -> tuple[list[str], np.ndarray]:
    """merge(drug_info[['ID', 'Drug']], table, on='Drug'): one row per study drug id, in drug_info's order."""
    position = pd.Series(np.arange(len(ids)), index=ids)
    position = position[~position.index.duplicated()]
    hits = info[info["Drug"].isin(position.index)]
    return hits["ID"].tolist(), values[position.reindex(hits["Drug"].to_numpy()).to_numpy()]


def cell_rnaseq(paths: dict, o: dict) -> tuple[list[str], np.ndarray, list[str]]:
    path = require(paths, "rnaseq", "cell_features 'rnaseq'")
    what = "RNA-seq table (combined_rnaseq_data*)"
    ids, values, columns = read_features(path, id_column="Sample", what=what, drop=("Cancer_type_id",))
    ids, values = first_occurrence(ids, values, what)
    scaling = None if (o["preprocess_rnaseq"] or "none") != "none" else o["scaling"]
    values, columns = impute_and_scale(values, [f"rnaseq.{c}" for c in columns], scaling=scaling, empty="drop",
                                       what=f"{path.name} ({what})")
    if o["embed_feature_source"]:
        prefixes = pd.Series(ids).str.extract(r"^([^.]*)", expand=False)
        onehot = pd.get_dummies(prefixes, prefix="rnaseq.source", prefix_sep=".")
        values = np.hstack([onehot.to_numpy(np.float32), values])
        columns = [str(c) for c in onehot.columns] + columns
    return ids, values, columns


def drug_descriptors(paths: dict, o: dict, info: pd.DataFrame | None) -> tuple[list[str], np.ndarray, list[str]]:
    what = "dragon7 descriptor table"
    parts = []
    if "descriptors" in paths:
        if info is None:
            require(paths, "drug_info", "the PubChem descriptor set is mapped to drug ids through it")
        ids, values, columns = read_features(Path(paths["descriptors"]), id_column="NAME", what=what)
        parts.append((*_pubchem_to_ids(ids, values, info), columns))
    if "nci60_descriptors" in paths:
        parts.append(read_features(Path(paths["nci60_descriptors"]), id_column="NAME", what=what))
    if not parts:
        raise UsageError("drug_features 'descriptors' needs source role 'descriptors' "
                         "(Combined_PubChem_dragon7_descriptors.tsv, with 'drug_info') and/or 'nci60_descriptors'")
    return _stack(parts, scaling=o["scaling"], what=what)


def _fingerprint_set(paths: dict, pfp: str, ecfp: str) -> tuple[list[str], np.ndarray, list[str]]:
    """PFP and ECFP of one drug set, inner-joined on the drug id (CANDLE's df_merged.merge)."""
    what = "dragon7 fingerprint table"
    p_ids, p_values, p_cols = read_fingerprints(Path(paths[pfp]), kind="PFP", what=what)
    e_ids, e_values, e_cols = read_fingerprints(Path(paths[ecfp]), kind="ECFP", what=what)
    p_ids, p_values = first_occurrence(p_ids, p_values, what)
    e_ids, e_values = first_occurrence(e_ids, e_values, what)
    e_pos = {d: k for k, d in enumerate(e_ids)}
    both = [k for k, d in enumerate(p_ids) if d in e_pos]
    ids = [p_ids[k] for k in both]
    return ids, np.hstack([p_values[both], e_values[[e_pos[d] for d in ids]]]), p_cols + e_cols


def drug_fingerprints(paths: dict, info: pd.DataFrame | None) -> tuple[list[str], np.ndarray, list[str]]:
    parts = []
    if "pfp" in paths or "ecfp" in paths:
        require(paths, "pfp", "the PubChem fingerprints come as a PFP and an ECFP file")
        require(paths, "ecfp", "the PubChem fingerprints come as a PFP and an ECFP file")
        if info is None:
            require(paths, "drug_info", "the PubChem fingerprint set is mapped to drug ids through it")
        ids, values, columns = _fingerprint_set(paths, "pfp", "ecfp")
        parts.append((*_pubchem_to_ids(ids, values, info), columns))
    if "nci60_pfp" in paths or "nci60_ecfp" in paths:
        require(paths, "nci60_pfp", "the NCI60 fingerprints come as a PFP and an ECFP file")
        require(paths, "nci60_ecfp", "the NCI60 fingerprints come as a PFP and an ECFP file")
        parts.append(_fingerprint_set(paths, "nci60_pfp", "nci60_ecfp"))
    if not parts:
        raise UsageError("drug_features 'fingerprints' needs source roles 'pfp' + 'ecfp' (Combined_PubChem_dragon7_*, "
                         "with 'drug_info') and/or 'nci60_pfp' + 'nci60_ecfp'")
    return _stack(parts, scaling=None, what="dragon7 fingerprint table")


def _stack(parts, *, scaling, what: str) -> tuple[list[str], np.ndarray, list[str]]:
    """Concatenate drug sets as CANDLE's pd.concat does (columns aligned by name, their union in order of
    appearance, NaN where a set lacks one), impute and scale over all their rows, then keep one row per
    drug id."""
    columns = list(dict.fromkeys(c for _, _, cols in parts for c in cols))
    blocks = []
    for ids, values, cols in parts:
        if cols != columns:
            frame = pd.DataFrame(values, columns=cols).reindex(columns=columns)
            values = frame.to_numpy(np.float32)
        blocks.append(values)
    ids = [i for p in parts for i in p[0]]
    values, columns = impute_and_scale(np.vstack(blocks), [f"dragon7.{c}" for c in columns], scaling=scaling,
                                       empty="zero", what=what)
    ids, values = first_occurrence(ids, values, what)
    return ids, values, columns


# --------------------------------------------------------------------------- partition
def partition_groups(df: pd.DataFrame, partition_by: str, info: pd.DataFrame | None) -> pd.Series:
    """CANDLE's assign_partition_groups."""
    if partition_by == "cell":
        return df["Sample"].astype(str)
    if partition_by == "index":
        return pd.Series(np.arange(len(df)).astype(str), index=df.index)
    group = df["Drug1"].astype(object).copy()
    pair = df["Drug2"].notna()
    d1, d2 = df["Drug1"].astype(str), df["Drug2"].astype(str)
    group[pair & (d1 <= d2)] = d1 + "," + d2
    group[pair & (d1 > d2)] = d2 + "," + d1
    if info is not None:
        cid = info.drop_duplicates("ID").set_index("ID")["Drug"]
        mapped = group.map(cid)
        group = group.where(mapped.isna(), mapped)
    return group.astype(str)


def augment_pairs(df: pd.DataFrame, seed: int) -> pd.DataFrame:
    """CANDLE's pair-mode batch rule, drawn once (seeded): swap a pair's drugs at random; a single drug
    becomes the pair (d, d) with its dose split by u ~ U(0.001, 0.999)."""
    rng = np.random.RandomState(seed)
    swap = rng.choice([True, False], len(df)) & df["Drug2"].notna().to_numpy()
    split = rng.uniform(0.001, 0.999, len(df))
    out = df.astype({"Dose1": np.float64, "Dose2": np.float64})
    out.loc[swap, ["Drug1", "Drug2"]] = df.loc[swap, ["Drug2", "Drug1"]].to_numpy()
    out.loc[swap, ["Dose1", "Dose2"]] = df.loc[swap, ["Dose2", "Dose1"]].to_numpy()
    single = df["Drug2"].isna().to_numpy()
    dose = df["Dose1"].to_numpy(np.float64)
    out.loc[single, "Drug2"] = df.loc[single, "Drug1"]
    out.loc[single, "Dose1"] = (dose - np.log10(split))[single]
    out.loc[single, "Dose2"] = (dose - np.log10(1.0 - split))[single]
    return out


def _drop(df: pd.DataFrame, keep: np.ndarray, why: str, notes: list[str], counts: dict, key: str) -> pd.DataFrame:
    gone = int((~keep).sum())
    if gone:
        notes.append(f"uno: dropped {gone:,} response rows {why}")
    df = df[keep]
    counts[key] = len(df)
    return df


# --------------------------------------------------------------------------- the reader
def read(paths: dict, options: dict, seed: int) -> JoinedTables:
    """The Uno files (source role -> local path) as joined tables; see the module docstring."""
    o = check_options(options)
    notes: list[str] = []
    counts: dict[str, int] = {}
    df = load_responses(paths, o, notes, counts)
    all_sources = [str(s) for s in pd.unique(df["Source"])]
    train_sources = matching_sources(o["train_sources"], all_sources)
    # CANDLE: 'all' first, then 'train' (= the train sources)
    test_names = o["test_sources"] if "all" in o["test_sources"] or "train" not in o["test_sources"] else o["train_sources"]
    test_sources = matching_sources(test_names, all_sources)
    if not train_sources:
        raise DataError(f"train_sources {o['train_sources']} match none of the response sources {all_sources}; "
                        f"choose among them (a prefix such as 'ALMANAC' matches 'ALMANAC.FG')")

    info = drug_info_ids(paths)
    selected = None if o["agg_dose"] else select_drugs(df, o)
    cells: dict[str, tuple] = {}
    for feature in o["cell_features"]:
        cells[feature] = cell_rnaseq(paths, o)
    drugs: dict[str, tuple] = {}
    for feature in o["drug_features"]:
        drugs[feature] = drug_descriptors(paths, o, info) if feature == "descriptors" else drug_fingerprints(paths, info)

    pair = df["Drug2"].notna().to_numpy()
    if selected is not None:
        keep = df["Drug1"].isin(selected).to_numpy() & (~pair | df["Drug2"].isin(selected).to_numpy())
        df = _drop(df, keep, "whose drug failed the drug response filter", notes, counts, "after_response_filter")
    for feature, (ids, _, _) in cells.items():
        df = _drop(df, df["Sample"].isin(set(ids)).to_numpy(), f"whose cell has no {feature} features", notes, counts,
                   f"with_cell_{feature}")
    for feature, (ids, _, _) in drugs.items():
        known = set(ids)
        keep = df["Drug1"].isin(known).to_numpy() & (df["Drug2"].isna() | df["Drug2"].isin(known)).to_numpy()
        df = _drop(df, keep, f"whose drug has no {feature}", notes, counts, f"with_drug_{feature}")
    keep, matched = uno_subsets.subset(df, paths, o)
    notes += [f"uno: {m}" for m in matched]
    if keep is not None:
        df = _drop(df, keep.to_numpy(), "outside by_drug / by_cell / cell_types", notes, counts, "in_subset")
    df = _drop(df, df["Source"].isin(set(train_sources + test_sources)).to_numpy(),
               "from sources outside train_sources and test_sources", notes, counts, "in_sources")
    if o["single"] and not o["agg_dose"]:
        df = _drop(df, df["Drug2"].isna().to_numpy(), "of drug pairs (single=True)", notes, counts, "single_drug")
    df = df.reset_index(drop=True)
    if len(df) == 0:
        non_empty("train", df, counts)

    partition_by = uno_subsets.partition(o, OPTIONS["partition_by"])
    if partition_by != o["partition_by"]:
        notes.append(f"uno: partition_by {partition_by!r}, CANDLE's choice for by_drug / by_cell")
    df = df.assign(Group=partition_groups(df, partition_by, info))
    train_mask = df["Source"].isin(set(train_sources)).to_numpy()
    test_mask = df["Source"].isin(set(test_sources)).to_numpy()
    groups = df.loc[train_mask, "Group"].drop_duplicates().to_numpy()
    if len(groups) == 0:
        non_empty("train", df.iloc[:0], counts)
    train_pos, val_pos = shuffle_split(len(groups), o["val_split"], seed)
    in_train = df["Group"].isin(set(groups[train_pos])).to_numpy()
    in_val = df["Group"].isin(set(groups[val_pos])).to_numpy()
    if not o["single"]:
        df = augment_pairs(df, seed)
    parts = {"train": df[in_train & train_mask], "val": df[in_val & train_mask]}
    test = df[~in_train & ~in_val & test_mask]
    if len(test):
        parts["test"] = test
    for name in ("train", "val"):
        non_empty(name, parts[name], counts)

    used = pd.concat(parts.values())
    kept_cells = kept_ids(set(used["Sample"]), [ids for ids, _, _ in cells.values()], o["all_feature_ids"])
    kept_drugs = kept_ids(set(used["Drug1"]) | (set() if o["single"] else set(used["Drug2"])),
                          [ids for ids, _, _ in drugs.values()], o["all_feature_ids"])
    tables: dict[str, FeatureTable] = {}
    for feature, (ids, values, columns) in cells.items():
        tables[f"cell.{feature}"] = feature_table(f"cell.{feature}", ids, values, columns, kept_cells)
    for feature, (ids, values, columns) in drugs.items():
        tables[f"drug.{feature}"] = feature_table(f"drug.{feature}", ids, values, columns, kept_drugs)
    if o["encode_response_source"]:
        tables["response.source"] = encode_sources(all_sources)

    drug_slots = ["drug1"] if o["single"] else ["drug1", "drug2"]
    slots = [] if o["agg_dose"] else [Slot(d.replace("drug", "dose"), None, d.replace("drug", "dose")) for d in drug_slots]
    if o["encode_response_source"]:
        slots.append(Slot("response.source", "response.source", "response_source"))
    slots += [Slot(f"cell.{f}", f"cell.{f}", "cell") for f in cells]
    slots += [Slot(f"{d}.{f}", f"drug.{f}", d) for d in drug_slots for f in drugs]
    splits = {name: _rows(frame, tables, cells, drugs, o, drug_slots) for name, frame in parts.items()}

    shape = {"cell_features": list(cells), "cell_feature_dims": [tables[f"cell.{f}"].values.shape[1] for f in cells],
             "drug_features": list(drugs), "drug_feature_dims": [tables[f"drug.{f}"].values.shape[1] for f in drugs],
             "response_source_dim": tables["response.source"].values.shape[1] if o["encode_response_source"] else 0,
             "single": o["single"], "agg_dose": o["agg_dose"]}
    for note in notes:
        log.info(note)
    facts = {**counts, "train_sources": train_sources, "test_sources": test_sources,
             "groups": {"total": int(len(groups)), "train": int(len(train_pos)), "val": int(len(val_pos))},
             "rows": {k: len(v) for k, v in splits.items()}, "model_shape": shape, "notes": notes}
    return JoinedTables(tables=tables, slots=slots, splits=splits, task="regression", info=facts)


def _rows(frame: pd.DataFrame, tables, cells, drugs, o, drug_slots) -> pd.DataFrame:
    """One split's row table: index columns for the slots, doses, y, and the ids for grouping."""
    out = {}
    if not o["agg_dose"]:
        for d in drug_slots:
            dose = "Dose" + d[-1]
            out[f"dose{d[-1]}"] = frame[dose].to_numpy(np.float32)
    if o["encode_response_source"]:
        out["response_source"] = indices(tables["response.source"], frame["Source"])
    # Every table of a kind holds the same ids in the same order (feature_table), so one index column
    # serves all of them.
    if cells:
        out["cell"] = indices(tables[f"cell.{next(iter(cells))}"], frame["Sample"])
    if drugs:
        for d in drug_slots:
            out[d] = indices(tables[f"drug.{next(iter(drugs))}"], frame["Drug" + d[-1]])
    out["y"] = frame["y"].to_numpy(np.float32)
    out["cell_id"] = frame["Sample"].astype(str).to_numpy()
    for d in drug_slots:
        out[f"{d}_id"] = frame["Drug" + d[-1]].astype(str).to_numpy()
    out["source"] = frame["Source"].astype(str).to_numpy()
    out["group"] = frame["Group"].astype(str).to_numpy()
    return pd.DataFrame(out)


# --------------------------------------------------------------------------- synthetic files (--smoke)
_GDSC_CELLS = ["22RV1", "5637", "A101D", "A172", "A204", "A375"]
_CTRP_CELLS = ["A549", "BT-474", "CAL-51", "HCC1937", "HT-29", "JURKAT"]


def _extra_studies(options: dict) -> list[str]:
    """The single-drug studies `train_sources` names beyond those the synthetic files always hold."""
    return [s for s in options.get("train_sources") or () if s not in ("GDSC", "CTRP", "NCI60", "all")
            and not s.startswith("ALMANAC")]


def synthesize(out_dir: Path, options: dict, seed: int, rows: int, features: int) -> dict[str, Path]:
    """Every Uno file (all roles of FILES) with about `rows` response rows, tables at most `features` wide.

    GDSC and CTRP single-drug rows (their drugs keyed by study ids, mapped to PubChem compounds through
    drug_info, one compound shared by both studies), NCI60 single-drug rows and ALMANAC pairs (NSC ids,
    NCI60 cells named through the cell map), an aggregated-response file for agg_dose, RNA-seq for
    every response cell plus two CCLE samples without responses. Another study `train_sources` names
    (uno_auc_model.txt's CCLE, uno_defaultUQ_model.txt's gCSI) gets single-drug rows of its own, as in the
    real files; without one the files are as they always were. The name files for by_drug, by_cell and
    cell_types name the first GDSC and CTRP compound, the first GDSC cell line, and the first cell lines' tumour
    type after the options' values, so a CANDLE file that sets them runs on smoke data too.
    """
    from candle_ray.data.benchmarks import drug_synthetic as syn

    out_dir = Path(out_dir)
    rng = np.random.default_rng([seed, 11])
    width = max(4, int(features))
    nci60 = syn.NCI60_CELLS[:8]
    extra = _extra_studies(options)
    # an extra study measures 12 cells: its aggregated file (one row per cell and drug) is not a handful of rows
    cells = {"GDSC": _GDSC_CELLS, "CTRP": _CTRP_CELLS, **{x: _GDSC_CELLS + _CTRP_CELLS for x in extra}}
    samples = ([f"GDSC.{c}" for c in _GDSC_CELLS] + [f"CTRP.{c}" for c in _CTRP_CELLS]
               + [f"NCI60.{c}" for c in nci60] + ["CCLE.SW480", "CCLE.LNCAP"]
               + [f"{x}.{c}" for x in extra for c in cells[x]])
    cell_profiles = syn.latent(rng, len(samples))
    cell_shift = syn.potency(rng, cell_profiles)
    n_compounds, n_nsc = 8, 8
    cids = [str(5330286 + 977 * k) for k in range(n_compounds)]
    study_ids = ([f"GDSC.{1001 + k}" for k in range(5)] + [f"CTRP.{k + 1}" for k in range(5)]
                 + [f"{x}.{k + 1}" for x in extra for k in range(5)])
    study_cid = ([cids[k] for k in range(5)] + [cids[0]] + [cids[k] for k in range(4, 8)]  # GDSC.1001 = CTRP.1
                 + [cids[k] for _ in extra for k in range(2, 7)])
    first_id = {study: 5 * i for i, study in enumerate(["GDSC", "CTRP", *extra])}  # its drugs in study_ids
    nsc = [f"NSC.{n}" for n in (740, 752, 755, 3053, 26271, 123127, 125973, 226080)][:n_nsc]
    compound_profiles = syn.latent(rng, n_compounds)
    nsc_profiles = syn.latent(rng, n_nsc)
    drug_weights = syn.potency(rng, np.vstack([compound_profiles, nsc_profiles]))
    compound_shift, nsc_shift = drug_weights[:n_compounds], drug_weights[n_compounds:]
    sample_index = {s: k for k, s in enumerate(samples)}

    files: dict[str, Path] = {}
    # single-drug responses: GDSC, CTRP on their drugs, NCI60 on NSC drugs
    n_single = max(40, int(rows * 0.55))
    weights = np.array([0.4, 0.4, 0.2] + [0.4] * len(extra))
    source = rng.choice(["GDSC", "CTRP", "NCI60", *extra], n_single, p=weights / weights.sum())
    records = []
    for s in source:
        if s == "NCI60":
            cell = f"NCI60.{rng.choice(nci60)}"
            d = int(rng.integers(n_nsc))
            drug, shift = nsc[d], nsc_shift[d]
        else:
            cell = f"{s}.{rng.choice(cells[s])}"
            k = int(rng.integers(5)) + first_id[s]
            drug, shift = study_ids[k], compound_shift[cids.index(study_cid[k])]
        logc = float(rng.choice(syn.SINGLE_LOG_CONCENTRATIONS))
        g = syn.growth_fraction(-logc - 6.0 + shift + cell_shift[sample_index[cell]]) + 0.03 * rng.normal()
        records.append((s, drug, cell, "M", logc, f"{s}_{len(records) % 7}", round(100 * g, 2)))
    single = pd.DataFrame(records, columns=["SOURCE", "DRUG_ID", "CELLNAME", "CONCUNIT", "LOG_CONCENTRATION", "EXPID",
                                            "GROWTH"])
    files["single_response"] = syn.write_tsv(out_dir / FILES["single_response"], single)

    # ALMANAC pairs on the NCI60 cells
    nci60_shift = cell_shift[[sample_index[f"NCI60.{c}"] for c in nci60]]
    triples = max(6, int(rows * 0.45) // 10)
    almanac = syn.almanac_rows(rng, nci60, nci60_shift, nsc, nsc_shift, triples)
    almanac.to_csv(out_dir / FILES["pair_response"], index=False)
    files["pair_response"] = out_dir / FILES["pair_response"]
    files["cell_map"] = syn.write_cell_map(out_dir / FILES["cell_map"], nci60)

    # aggregated responses (agg_dose): one row per (source, cell, drug) measured above
    agg = single.groupby(["SOURCE", "CELLNAME", "DRUG_ID"], sort=False)["GROWTH"].mean().reset_index()
    auc = np.clip((agg["GROWTH"] / 100.0 + 0.4) / 1.4, 0.0, 1.0)  # larger = less sensitive, as CANDLE's AUC
    n = len(agg)
    files["agg_response"] = syn.write_tsv(out_dir / FILES["agg_response"], pd.DataFrame({
        "SOURCE": agg["SOURCE"], "CELL": agg["CELLNAME"], "DRUG": agg["DRUG_ID"], "STUDY": agg["SOURCE"] + "_1",
        "AUC": np.round(auc, 4), "IC50": np.round(-6 + rng.normal(size=n), 3), "EC50": np.round(-6 + rng.normal(size=n), 3),
        "EC50se": np.round(rng.uniform(0, 3.6, n), 3), "R2fit": np.round(rng.uniform(0.15, 1.0, n), 3),
        "Einf": np.round(rng.uniform(0, 1, n), 3), "HS": np.round(rng.uniform(0.5, 3, n), 3),
        "AAC1": np.round(1 - auc, 4), "AUC1": np.round(auc, 4), "DSS1": np.round(rng.uniform(0, 0.5, n), 4)}))

    # genes + the source one-hots CANDLE embeds (GDSC, CTRP, NCI60, CCLE and any other study) stay within `features`
    studies = len({sample.split(".")[0] for sample in samples})
    files["rnaseq"] = syn.write_rnaseq(out_dir / FILES["rnaseq"], rng, samples, cell_profiles, width - studies)
    names = [f"drug_{k}" for k in range(len(study_ids))]
    if options.get("by_drug"):  # GDSC.1001 and CTRP.1: one compound in both studies
        names[0] = names[5] = options["by_drug"]
    files["drug_info"] = syn.write_tsv(out_dir / FILES["drug_info"], pd.DataFrame({
        "ID": study_ids, "NAME": names, "CLEAN_NAME": [f"DRUG{k}" for k in range(len(study_ids))],
        "PUBCHEM": study_cid}))
    pubchem_names = [f"PubChem.CID.{c}" for c in cids]
    files["descriptors"] = syn.write_descriptors(out_dir / FILES["descriptors"], np.random.default_rng([seed, 12]),
                                                 pubchem_names, compound_profiles, width)
    files["nci60_descriptors"] = syn.write_descriptors(out_dir / FILES["nci60_descriptors"],
                                                       np.random.default_rng([seed, 12]), nsc, nsc_profiles, width)
    bits = max(2, min(width, 64) // 2)
    for role, ids, profiles, key in (("pfp", pubchem_names, compound_profiles, 13), ("ecfp", pubchem_names, compound_profiles, 14),
                                     ("nci60_pfp", nsc, nsc_profiles, 13), ("nci60_ecfp", nsc, nsc_profiles, 14)):
        # the same generator per kind: both drug sets share the bit meanings, as the real files do
        files[role] = syn.write_fingerprints(out_dir / FILES[role], np.random.default_rng([seed, key]), ids, profiles, bits)
    files.update(_name_files(out_dir, options, nsc, samples))
    return files


_TUMOUR_TYPES = ["breast carcinoma", "lung adenocarcinoma", "melanoma", "glioblastoma", "colorectal carcinoma"]


def _name_files(out_dir: Path, options: dict, nsc: list[str], samples: list[str]) -> dict[str, Path]:
    """NCI_IOA_AOA_drugs, cl_mapping (each study's name of a cell line beside CCLE's) and cl_metadata."""
    from candle_ray.data.benchmarks import drug_synthetic as syn

    numbers = [n.split(".", 1)[1] for n in nsc]
    drugs = pd.DataFrame({"NSC": numbers, "Generic Name": [f"nsc drug {n}" for n in numbers],
                          "Preffered Name": [f"NSC-{n}" for n in numbers]})
    studied = [s for s in samples if not s.startswith(("CCLE.", "NCI60."))]
    aliases = pd.DataFrame({0: studied, 1: ["CCLE." + s.split(".", 1)[1] for s in studied]})
    if options.get("by_cell"):
        aliases.loc[len(aliases)] = [options["by_cell"], samples[0]]
    types = [_TUMOUR_TYPES[k % len(_TUMOUR_TYPES)] for k in range(len(samples))]
    for k, wanted in enumerate(as_list("cell_types", options.get("cell_types"))):
        types[k] = wanted
    out = {"nci_drugs": syn.write_tsv(out_dir / FILES["nci_drugs"], drugs),
           "cell_metadata": syn.write_tsv(out_dir / FILES["cell_metadata"],
                                          pd.DataFrame({"ANL_ID": samples, "TUMOR_TYPE": types}))}
    aliases.to_csv(out_dir / FILES["cell_aliases"], sep="\t", header=False, index=False)
    return {**out, "cell_aliases": out_dir / FILES["cell_aliases"]}
