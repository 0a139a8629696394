"""Uno's row subsets by name, as CANDLE's uno_data.py partition_data selects them: `by_drug`, `by_cell`,
`cell_types` (uno_by_drug_example.txt trains on paclitaxel alone).

Files (source roles in brackets; each read only when its option is set, as CANDLE downloads it only then):
  [drug_info]     drug_info          tab: ID, NAME, CLEAN_NAME, PUBCHEM  (the study drug ids)
  [nci_drugs]     NCI_IOA_AOA_drugs  tab: NSC, Generic Name, Preffered Name (sic)  (the NSC ids, "NSC.<n>")
  [cell_map]      NCI60_CELLNAME_to_Combo.txt  tab: NCI60.ID, CELLNAME, Name
  [cell_aliases]  cl_mapping         tab, no header: two names of one cell line ("CCLE.A549", "CTRP.A549")
  [cell_metadata] cl_metadata        tab: ANL_ID (the Sample id), TUMOR_TYPE, ...
CANDLE's rules: a drug name matches an id whose row holds it whole in any of those columns (case
ignored); a cell name or tumour type matches where it appears inside one (case ignored). by_drug keeps
single-drug rows of the matched ids; by_cell and cell_types keep rows of the matched samples. With
partition_by at its default, by_drug alone splits by cell and by_drug with by_cell by row (CANDLE's
automatic choice when partition_by is unset: one drug would be one drug group).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from candle_ray.data.benchmarks.candle_tables import read_table, require
from candle_ray.errors import DataError

NCI_DRUG_COLUMNS = ["NSC", "Generic Name", "Preffered Name"]


def _whole(frame: pd.DataFrame, query: str, columns) -> pd.Series:
    wanted = query.upper()
    return pd.concat([frame[c].astype(str).str.upper() == wanted for c in columns], axis=1).any(axis=1)


def _inside(frame: pd.DataFrame, query: str, columns) -> pd.Series:
    return pd.concat([frame[c].astype(str).str.contains(query, case=False, regex=False, na=False) for c in columns],
                     axis=1).any(axis=1)


def drug_ids(paths: dict, name: str) -> set[str]:
    """CANDLE's drug_name_to_ids: the study ids (drug_info) and NSC ids (NCI_IOA_AOA_drugs) named `name`."""
    why = f"by_drug={name!r} names drugs"
    info = read_table(require(paths, "drug_info", why), sep="\t", what="drug info (drug_info)",
                      required=["ID", "NAME", "CLEAN_NAME", "PUBCHEM"])
    nci = read_table(require(paths, "nci_drugs", why), sep="\t", what="NCI drug names (NCI_IOA_AOA_drugs)",
                     required=NCI_DRUG_COLUMNS)
    nci = nci.assign(NSC="NSC." + nci["NSC"])
    return (set(info.loc[_whole(info, name, ["ID", "NAME", "CLEAN_NAME", "PUBCHEM"]), "ID"])
            | set(nci.loc[_whole(nci, name, NCI_DRUG_COLUMNS), "NSC"]))


def cell_ids(paths: dict, name: str) -> set[str]:
    """CANDLE's cell_name_to_ids: NCI60 ids whose map row holds `name`, and both names of each cl_mapping row
    that holds it."""
    why = f"by_cell={name!r} names cell lines"
    cells = read_table(require(paths, "cell_map", why), sep="\t", required=["NCI60.ID", "CELLNAME", "Name"],
                       what="NCI60 cell-name map (NCI60_CELLNAME_to_Combo.txt)")
    path = require(paths, "cell_aliases", why)
    aliases = pd.read_csv(path, sep="\t", header=None, dtype=str)
    if aliases.shape[1] < 2:
        raise DataError(f"{Path(path).name}: cell aliases (cl_mapping) need two tab-separated names per line; "
                        f"found {aliases.shape[1]} column(s); use CANDLE's cl_mapping file")
    matched = aliases.loc[_inside(aliases, name, [0, 1]), [0, 1]]
    return set(cells.loc[_inside(cells, name, ["NCI60.ID", "CELLNAME", "Name"]), "NCI60.ID"]) | set(matched.stack())


def typed_cells(paths: dict, types: list[str]) -> set[str]:
    """CANDLE's cell_types: samples whose TUMOR_TYPE contains any of `types`."""
    meta = read_table(require(paths, "cell_metadata", f"cell_types={types!r} names tumour types"), sep="\t",
                      what="cell line metadata (cl_metadata)", required=["ANL_ID", "TUMOR_TYPE"])
    meta = meta[meta["TUMOR_TYPE"].notna()]
    return set(meta.loc[pd.concat([_inside(meta, t, ["TUMOR_TYPE"]) for t in types], axis=1).any(axis=1), "ANL_ID"])


def subset(df: pd.DataFrame, paths: dict, o: dict) -> tuple[pd.Series | None, list[str]]:
    """The rows `o`'s by_drug, by_cell and cell_types keep (None: all of them), and what each matched; a name
    that matches no id at all is a DataError, since CANDLE then trains on nothing."""
    keep, said = None, []
    for option, ids_of, column in (("by_drug", drug_ids, "Drug1"), ("by_cell", cell_ids, "Sample"),
                                   ("cell_types", typed_cells, "Sample")):
        if not o[option]:
            continue
        ids = ids_of(paths, o[option])
        if not ids:
            raise DataError(f"{option}={o[option]!r} matches no id in the name files; check the spelling "
                            f"(by_drug matches a whole name, by_cell and cell_types a part of one)")
        rows = df[column].isin(ids) & (df["Drug2"].isna() if option == "by_drug" else True)
        keep = rows if keep is None else keep & rows
        said.append(f"{option}={o[option]!r}: {len(ids)} id(s), {int(rows.sum()):,} response rows")
    return keep, said


def partition(o: dict, default: str) -> str:
    """CANDLE's automatic partition_by under by_drug / by_cell, where partition_by is at its default."""
    if o["partition_by"] != default or not (o["by_drug"] or o["by_cell"]):
        return o["partition_by"]
    if o["by_drug"] and o["by_cell"]:
        return "index"
    return "cell" if o["by_drug"] else default
