"""Combo (CANDLE Pilot1): NCI-ALMANAC drug-pair growth, read into joined tables.

Files of `.../benchmarks/Pilot1/combo/` (source roles in brackets):
  [response]    ComboDrugGrowth_Nov2017.csv         comma: CELLNAME, NSC1, CONC1, NSC2, CONC2, PERCENTGROWTH,
                VALID, SCORE, ... (29 columns; an empty NSC2 is a single-agent row)
  [cell_map]    NCI60_CELLNAME_to_Combo.txt         tab: Name (ALMANAC's CELLNAME), NCI60.ID (the RNA-seq Sample)
  [rnaseq]      combined_rnaseq_data_lincs1000      tab: Sample ("NCI60.786-0", "CCLE.22RV1", ...), genes...
  [descriptors] ALMANAC_drug_descriptors_dragon7.txt  tab: NAME ("NSC.740" or "740"), dragon7 values ('na')

What CANDLE's combo_baseline_keras2.py ComboDataLoader and NCI60.py do, and this reader with it:
* keep VALID == 'Y'; an empty NSC2/CONC2 takes NSC1/CONC1 (a single agent is the pair (d, d));
  average PERCENTGROWTH per (cell, NSC1, NSC2, CONC1, CONC2), then take the MINIMUM over the
  concentration pairs per (cell, NSC1, NSC2) (`use_mean_growth`: the mean; `use_combo_score`: the
  maximum SCORE instead); y = that / 100 (CANDLE divides the score by 100 too).
* cells: ALMANAC's CELLNAME goes through the cell map; CANDLE maps both the response (Name) and the
  RNA-seq samples (NCI60.ID) to the map's CELLNAME, here the response is mapped to NCI60.ID, which
  joins the same rows with one map file. A name missing from the map is an error (CANDLE: KeyError).
* RNA-seq ("expression"): the samples starting with `sample_set` ("NCI60") only, all-NaN columns dropped,
  mean-impute, `scaling` fit over those samples (CANDLE's load_cell_expression_rnaseq). Descriptors:
  NAME without its "NSC." prefix, all-NaN columns dropped, mean-impute, `scaling`.
* rows whose cell lacks expression or whose drug1/drug2 lacks descriptors are dropped (CANDLE's inner
  merges), counted in info.
* rows shuffled with pandas' sample(frac=1, random_state=seed) (`shuffle`), then `cv_partition`:
  "overlapping": the last int(n * val_split) rows are validation; "disjoint": the unique drugs
  (NSC1 then NSC2 order) shuffled the same way, the last int(n_drugs * val_split) are validation drugs,
  train = rows with both drugs in train, val = both in val (mixed rows are left out, as in CANDLE);
  "disjoint_cells": the same over cell lines (CANDLE honours it only with cv > 1, through GroupKFold,
  and falls back to "overlapping" otherwise; here it always gives a cell-disjoint validation set).
* input per row: cell.expression, drug1.descriptors, drug2.descriptors (shared table "drug.descriptors").
Row tables hold int32 "cell", "drug1", "drug2", float32 "y", and the ids "cell_id", "drug1_id", "drug2_id".
Not implemented: cv > 1 folds (use candle-ray cv with --group-by), exclude_cells/exclude_drugs, the
mirna/proteome/latent/categorical/noise feature sets.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from candle_ray.data.benchmarks.candle_tables import (as_list, check_choice, check_fraction, feature_table, first_occurrence,
                                                      impute_and_scale, indices, kept_ids, non_empty, read_features, read_table,
                                                      require)
from candle_ray.data.joined import JoinedTables, Slot
from candle_ray.errors import DataError, UsageError

log = logging.getLogger(__name__)

VERSION = 1
FILES = {
    "response": "ComboDrugGrowth_Nov2017.csv",
    "cell_map": "NCI60_CELLNAME_to_Combo.txt",
    "rnaseq": "combined_rnaseq_data_lincs1000",
    "descriptors": "ALMANAC_drug_descriptors_dragon7.txt",
}
# CANDLE's combo_default_model.txt / ComboDataLoader defaults.
OPTIONS = {
    "cell_features": ["expression"],
    "drug_features": ["descriptors"],
    "val_split": 0.2,
    "cv_partition": "overlapping",
    "scaling": "std",
    "shuffle": True,
    "use_mean_growth": False,
    "use_combo_score": False,
    "sample_set": "NCI60",
    "all_feature_ids": False,  # not CANDLE's: keep every cell and drug of the feature files (as Uno's option)
}
# Options added after entries were first prepared: at their default they stay out of the fingerprint.
ADDED_OPTIONS = ("all_feature_ids",)
PARTITIONS = ("overlapping", "disjoint", "disjoint_cells")
RESPONSE_COLUMNS = ["CELLNAME", "NSC1", "CONC1", "NSC2", "CONC2", "PERCENTGROWTH", "VALID"]
KEYS = ["Sample", "NSC1", "NSC2"]


def check_options(options: dict) -> dict:
    o = {**OPTIONS, **options}
    o["cell_features"] = as_list("cell_features", o["cell_features"], ("expression", "rnaseq"))
    o["drug_features"] = as_list("drug_features", o["drug_features"], ("descriptors",))
    if not o["cell_features"] or not o["drug_features"]:
        raise UsageError("combo needs cell_features ['expression'] and drug_features ['descriptors']; "
                        f"got {o['cell_features']} and {o['drug_features']}")
    o["val_split"] = check_fraction("val_split", o["val_split"])
    check_choice("cv_partition", o["cv_partition"], PARTITIONS)
    check_choice("scaling", o["scaling"] if o["scaling"] is not None else "none", ("std", "minmax", "maxabs", "none"))
    for key in ("shuffle", "use_mean_growth", "use_combo_score", "all_feature_ids"):
        if not isinstance(o[key], bool):
            raise UsageError(f"option {key}={o[key]!r} must be True or False")
    if not isinstance(o["sample_set"], str) or not o["sample_set"]:
        raise UsageError(f"option sample_set={o['sample_set']!r} must be a sample-id prefix such as 'NCI60'")
    return o


def read_response(path: Path, cellmap: dict[str, str], map_path: Path, o: dict) -> pd.DataFrame:
    """One row per (cell, NSC1, NSC2): the aggregated growth (or score) as y, see the module docstring."""
    score = o["use_combo_score"]
    df = read_table(path, sep=",", what="NCI-ALMANAC response (ComboDrugGrowth_Nov2017.csv)",
                    required=RESPONSE_COLUMNS + (["SCORE"] if score else []),
                    numeric=["CONC1", "CONC2", "PERCENTGROWTH"] + (["SCORE"] if score else []))
    df = df[df["VALID"] == "Y"].copy()
    df["NSC2"] = df["NSC2"].fillna(df["NSC1"])
    df["CONC2"] = df["CONC2"].fillna(df["CONC1"])
    if score:
        df["SCORE"] = df["SCORE"].fillna(0)
    mapped = df["CELLNAME"].map(cellmap)
    if mapped.isna().any():
        unknown = df["CELLNAME"][mapped.isna()]
        raise DataError(f"ALMANAC cell name {unknown.iloc[0]!r} is not in {Path(map_path).name} (column Name); "
                        f"{unknown.nunique()} names are missing; use the cell map that belongs to the response file")
    df["Sample"] = mapped
    if score:  # CANDLE: max SCORE per (cell, d1, d2) over the raw rows
        y = df.groupby(KEYS)["SCORE"].max()
    else:
        means = df.groupby(KEYS + ["CONC1", "CONC2"])["PERCENTGROWTH"].mean()
        y = means.groupby(level=KEYS).mean() if o["use_mean_growth"] else means.groupby(level=KEYS).min()
    out = y.rename("y").reset_index()
    out["y"] = (out["y"].astype(np.float64) / 100.0).astype(np.float32)
    return out


def read_cell_map(path: Path) -> dict[str, str]:
    df = read_table(path, sep="\t", what="NCI60 cell-name map (NCI60_CELLNAME_to_Combo.txt)", required=["Name", "NCI60.ID"])
    return dict(zip(df["Name"], df["NCI60.ID"]))


def cell_expression(path: Path, o: dict) -> tuple[list[str], np.ndarray, list[str]]:
    what = "RNA-seq table (combined_rnaseq_data*)"
    ids, values, columns = read_features(path, id_column="Sample", what=what, drop=("Cancer_type_id",))
    keep = np.array([i.startswith(o["sample_set"]) for i in ids], dtype=bool)
    if not keep.any():
        raise DataError(f"{path.name} has no sample starting with {o['sample_set']!r} (e.g. 'NCI60.786-0'); "
                        f"found e.g. {ids[:3]}; check the file or the sample_set option")
    ids, values = first_occurrence([i for i, k in zip(ids, keep) if k], values[keep], what)
    values, columns = impute_and_scale(values, [f"rnaseq.{c}" for c in columns], scaling=o["scaling"], empty="drop",
                                       what=f"{path.name} ({what})")
    return ids, values, columns


def drug_descriptors(path: Path, o: dict) -> tuple[list[str], np.ndarray, list[str]]:
    what = "dragon7 descriptor table"
    ids, values, columns = read_features(path, id_column="NAME", what=what)
    ids = [i[4:] if i.startswith("NSC.") else i for i in ids]  # CANDLE: NAME[4:] ("NSC.740" -> "740")
    ids, values = first_occurrence(ids, values, what)
    values, columns = impute_and_scale(values, [f"dragon7.{c}" for c in columns], scaling=o["scaling"], empty="drop",
                                       what=f"{path.name} ({what})")
    return ids, values, columns


def _held_out(ids: pd.Series, val_split: float, seed: int, shuffle: bool) -> tuple[set, set]:
    """CANDLE's disjoint split: unique ids shuffled (sample(frac=1, random_state=seed)); the last
    int(n * val_split) are validation."""
    unique = ids.drop_duplicates().reset_index(drop=True)
    if shuffle:
        unique = unique.sample(frac=1.0, random_state=seed).reset_index(drop=True)
    n_val = int(len(unique) * val_split)
    if n_val < 1 or n_val >= len(unique):
        raise DataError(f"cannot hold out int({len(unique)} x val_split {val_split}) = {n_val} of {len(unique)} "
                        f"ids for validation; each side needs at least one: use more data or cv_partition='overlapping'")
    return set(unique[: len(unique) - n_val]), set(unique[len(unique) - n_val:])


def read(paths: dict, options: dict, seed: int) -> JoinedTables:
    """The Combo files (source role -> local path) as joined tables; see the module docstring."""
    o = check_options(options)
    notes: list[str] = []
    map_path = require(paths, "cell_map", "ALMANAC cell names are mapped to RNA-seq sample ids")
    df = read_response(require(paths, "response", "the drug-pair responses"), read_cell_map(map_path), map_path, o)
    counts = {"response_sets": len(df)}
    c_ids, c_values, c_columns = cell_expression(require(paths, "rnaseq", "cell_features 'expression'"), o)
    d_ids, d_values, d_columns = drug_descriptors(require(paths, "descriptors", "drug_features 'descriptors'"), o)

    keep = df["Sample"].isin(set(c_ids)).to_numpy()
    if not keep.all():
        notes.append(f"combo: dropped {int((~keep).sum()):,} response sets whose cell has no expression")
    df = df[keep]
    counts["with_cell_expression"] = len(df)
    known = set(d_ids)
    keep = (df["NSC1"].isin(known) & df["NSC2"].isin(known)).to_numpy()
    if not keep.all():
        notes.append(f"combo: dropped {int((~keep).sum()):,} response sets whose drug1 or drug2 has no descriptors")
    df = df[keep]
    counts["with_drug_descriptors"] = len(df)
    if len(df) == 0:
        non_empty("train", df, counts)

    drug_ids = pd.concat([df["NSC1"], df["NSC2"]], ignore_index=True)
    if o["shuffle"]:
        df = df.sample(frac=1.0, random_state=seed)
    df = df.reset_index(drop=True)
    if o["cv_partition"] == "overlapping":
        n_val = int(len(df) * o["val_split"])
        parts = {"train": df.iloc[: len(df) - n_val], "val": df.iloc[len(df) - n_val:]}
    elif o["cv_partition"] == "disjoint":
        train_ids, val_ids = _held_out(drug_ids, o["val_split"], seed, o["shuffle"])
        parts = {"train": df[df["NSC1"].isin(train_ids) & df["NSC2"].isin(train_ids)],
                 "val": df[df["NSC1"].isin(val_ids) & df["NSC2"].isin(val_ids)]}
        mixed = len(df) - len(parts["train"]) - len(parts["val"])
        if mixed:
            notes.append(f"combo: {mixed:,} response sets pair a train drug with a validation drug and are left out (disjoint)")
    else:
        train_ids, val_ids = _held_out(df["Sample"], o["val_split"], seed, o["shuffle"])
        parts = {"train": df[df["Sample"].isin(train_ids)], "val": df[df["Sample"].isin(val_ids)]}
    for name in ("train", "val"):
        non_empty(name, parts[name], {**counts, "cv_partition": o["cv_partition"]})

    used = pd.concat(parts.values())
    every = o["all_feature_ids"]
    cell = feature_table("cell.expression", c_ids, c_values, c_columns, kept_ids(set(used["Sample"]), [c_ids], every))
    drug = feature_table("drug.descriptors", d_ids, d_values, d_columns,
                         kept_ids(set(used["NSC1"]) | set(used["NSC2"]), [d_ids], every))
    splits = {name: pd.DataFrame({
        "cell": indices(cell, frame["Sample"]), "drug1": indices(drug, frame["NSC1"]), "drug2": indices(drug, frame["NSC2"]),
        "y": frame["y"].to_numpy(np.float32), "cell_id": frame["Sample"].astype(str).to_numpy(),
        "drug1_id": frame["NSC1"].astype(str).to_numpy(), "drug2_id": frame["NSC2"].astype(str).to_numpy(),
    }) for name, frame in parts.items()}
    slots = [Slot("cell.expression", "cell.expression", "cell"), Slot("drug1.descriptors", "drug.descriptors", "drug1"),
             Slot("drug2.descriptors", "drug.descriptors", "drug2")]
    for note in notes:
        log.info(note)
    shape = {"cell_features": ["expression"], "cell_feature_dims": [cell.values.shape[1]],
             "drug_features": ["descriptors"], "drug_feature_dims": [drug.values.shape[1]]}
    facts = {**counts, "cells": len(cell.ids), "drugs": len(drug.ids), "rows": {k: len(v) for k, v in splits.items()},
             "model_shape": shape, "notes": notes}
    return JoinedTables(tables={cell.name: cell, drug.name: drug}, slots=slots, splits=splits, task="regression", info=facts)


# --------------------------------------------------------------------------- synthetic files (--smoke)
def synthesize(out_dir: Path, options: dict, seed: int, rows: int, features: int) -> dict[str, Path]:
    """The four Combo files: about `rows` (cell, drug1, drug2) sets on 3 x 3 concentration grids, NCI60
    cell lines named through the cell map, RNA-seq for them plus two CCLE samples (left out by
    sample_set), NSC descriptors with 'na' holes and an all-'na' column; tables at most `features` wide."""
    from candle_ray.data.benchmarks import drug_synthetic as syn

    out_dir = Path(out_dir)
    rng = np.random.default_rng([seed, 21])
    width = max(4, int(features))
    cells = syn.NCI60_CELLS[:10]
    n_drugs = 8
    while len(cells) * n_drugs * (n_drugs - 1) // 2 < 1.3 * rows:
        n_drugs += 1
    nsc = [f"NSC.{740 + 97 * k}" for k in range(n_drugs)]
    cell_profiles = syn.latent(rng, len(cells) + 2)
    cell_shift = syn.potency(rng, cell_profiles)
    drug_profiles = syn.latent(rng, n_drugs)
    drug_shift = syn.potency(rng, drug_profiles)
    files = {}
    almanac = syn.almanac_rows(rng, cells, cell_shift[: len(cells)], nsc, drug_shift, max(8, int(rows)))
    almanac.to_csv(out_dir / FILES["response"], index=False)
    files["response"] = out_dir / FILES["response"]
    files["cell_map"] = syn.write_cell_map(out_dir / FILES["cell_map"], cells)
    samples = [f"NCI60.{c}" for c in cells] + ["CCLE.SW480", "CCLE.LNCAP"]
    files["rnaseq"] = syn.write_rnaseq(out_dir / FILES["rnaseq"], rng, samples, cell_profiles, width)
    files["descriptors"] = syn.write_descriptors(out_dir / FILES["descriptors"], rng, nsc, drug_profiles, width)
    return files
