"""P1B3 (CANDLE Pilot1 benchmark 3): NCI60 single-drug growth, read into joined tables.

The nine files of `.../benchmarks/P1B3/` (source roles in brackets):
  [dose_response]    P1B3_dose_response.csv          NSC,CELLNAME,LOG_CONCENTRATION,GROWTH (comma; extra columns ignored)
  [cell_expressions] P1B3_cellline_expressions.tsv   CellLine, then one column per gene (tab; 'na', '-' = missing)
  [cell_mirna]       P1B3_cellline_mirna.tsv         CellLine, then microRNA columns
  [cell_proteome]    P1B3_cellline_proteome.tsv      CellLine, then protein columns
  [cell_kinome]      P1B3_cellline_kinome.tsv        CellLine, then kinase columns (joined to the proteome, suffix .K)
  [drug_descriptors] P1B3_drug_descriptors.tsv       NAME (the NSC id), then Dragon7 descriptors ('na' = missing)
  [drug_latent]      P1B3_drug_latent.csv            NSC, then the 292 SMILES-autoencoder latent values
  [test_celllines]   P1B3_test_celllines.txt         header CELLNAME, one cell line per line
  [test_drugs]       P1B3_test_drugs.txt             header NSC, one drug per line
Cell lines are written "BR.MCF7" in the feature files and "BR:MCF7" in the response file; the reader
maps '.' to ':' as CANDLE does.

What CANDLE's p1b3.py DataLoader does, and this reader with it:
* keep rows with min_logconc <= LOG_CONCENTRATION <= max_logconc;
* subsample "naive_balancing": all GROWTH <= 0, 70 % of 0 < G < 50, 18 % of 50 <= G <= 100, 1 % of G > 100,
  drawn with pandas' `sample(frac, random_state=seed)` exactly as CANDLE, so the same file gives the same rows;
* per feature table: random column subsample (`feature_subsample`, numpy RandomState(seed) draws in
  CANDLE's order), drop all-NaN columns, mean-impute, scale (`scaling`, std by default) over all the
  table's rows (transductive, as CANDLE);
* rows whose cell or drug lacks features are dropped (CANDLE's inner merges); the count is logged;
* split: train+val = rows whose drug is not in the test-drug list and whose cell is not in the
  test-cell list; with `test_cell_split` > 0 the test cells are a random fraction of the train+val cells
  (they stay in train+val with other drugs), else the listed ones; test = test drugs x test cells.
  Train+val and test are shuffled (seed) and the last int(n * val_split) train+val rows are validation;
* input per row: [raw LOG_CONCENTRATION, cell features..., drug features...]; y = GROWTH / 100.
Rows with a missing GROWTH are dropped (CANDLE's balancing drops them implicitly; without it they
would reach the loss as NaN). `scramble` shuffles the targets as CANDLE's control does.

Differences: CANDLE merges features into every batch with pandas; here each feature table is stored
once and the feed gathers rows by index (candle_ray.data.joined). A duplicated id in a feature table
is an error (CANDLE's merge would silently duplicate response rows).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from candle_ray.data.joined import FeatureTable, JoinedTables, Slot, impute_and_scale
from candle_ray.errors import DataError, UsageError, data_row

VERSION = 1
FILES = {
    "dose_response": "P1B3_dose_response.csv",
    "cell_expressions": "P1B3_cellline_expressions.tsv",
    "cell_mirna": "P1B3_cellline_mirna.tsv",
    "cell_proteome": "P1B3_cellline_proteome.tsv",
    "cell_kinome": "P1B3_cellline_kinome.tsv",
    "drug_descriptors": "P1B3_drug_descriptors.tsv",
    "drug_latent": "P1B3_drug_latent.csv",
    "test_celllines": "P1B3_test_celllines.txt",
    "test_drugs": "P1B3_test_drugs.txt",
}
# CANDLE's p1b3_default_model.txt values.
OPTIONS = {
    "min_logconc": -5.0,
    "max_logconc": -4.0,
    "subsample": "naive_balancing",
    "scaling": "std",
    "feature_subsample": 0,
    "cell_features": ["expression"],
    "drug_features": ["descriptors"],
    "test_cell_split": 0.15,
    "val_split": 0.1,
    "scramble": False,
}
CELL_FEATURES = ("expression", "mirna", "proteome", "all", "categorical")
DRUG_FEATURES = ("descriptors", "latent", "all", "noise")
RESPONSE_COLUMNS = ["NSC", "CELLNAME", "LOG_CONCENTRATION", "GROWTH"]
_NA = ["na", "-", ""]
_NOISE_WIDTH = 500  # CANDLE's drug_features='noise': 500 random values per drug
# naive_balancing: (low, high, low inclusive, high inclusive, fraction kept)
_BALANCING = ((-np.inf, 0.0, True, True, 1.0), (0.0, 50.0, False, False, 0.7), (50.0, 100.0, True, True, 0.18),
              (100.0, np.inf, False, True, 0.01))


# --------------------------------------------------------------------------- options
def _check_options(options: dict) -> tuple[list[str], list[str]]:
    """Validated options; returns the cell and drug feature sets with 'all' expanded."""
    def features(key, allowed, everything):
        value = options[key]
        value = [value] if isinstance(value, str) else list(value)
        bad = [v for v in value if v not in allowed]
        if bad or not value:
            raise UsageError(f"p1b3 option {key}={options[key]!r}: each entry must be one of {', '.join(allowed)}")
        return everything if "all" in value else list(dict.fromkeys(value))

    lo, hi = options["min_logconc"], options["max_logconc"]
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (lo, hi)) or lo > hi:
        raise UsageError(f"p1b3 options min_logconc={lo!r}, max_logconc={hi!r} must be numbers with min <= max (CANDLE: -5, -4)")
    if options["subsample"] not in ("naive_balancing", "none", None):
        raise UsageError(f"p1b3 option subsample={options['subsample']!r} is not one of naive_balancing, none")
    if options["scaling"] not in ("std", "minmax", "maxabs", "none", None):
        raise UsageError(f"p1b3 option scaling={options['scaling']!r} is not one of std, minmax, maxabs, none")
    fs = options["feature_subsample"]
    if isinstance(fs, bool) or not isinstance(fs, int) or fs < 0:
        raise UsageError(f"p1b3 option feature_subsample={fs!r} must be an integer >= 0 (0 = every column)")
    split = options["test_cell_split"]
    if split is not None and (isinstance(split, bool) or not isinstance(split, (int, float)) or not 0 <= split < 1):
        raise UsageError(f"p1b3 option test_cell_split={split!r} must be in [0, 1) or None (None: the listed test cells)")
    val = options["val_split"]
    if isinstance(val, bool) or not isinstance(val, (int, float)) or not 0 < val < 1:
        raise UsageError(f"p1b3 option val_split={val!r} must be in (0, 1)")
    cells = features("cell_features", CELL_FEATURES, ["expression", "mirna", "proteome"])
    drugs = features("drug_features", DRUG_FEATURES, ["descriptors", "latent"])
    return cells, drugs


def _path(paths: dict, role: str, why: str) -> Path:
    if role not in paths:
        raise UsageError(f"p1b3 needs the source role {role!r} ({FILES[role]}) for {why}; add it to the dataset's sources")
    return Path(paths[role])


# --------------------------------------------------------------------------- file readers
def _read(path: Path, sep: str, required: list[str], *, first: bool, dtypes: dict | None = None) -> pd.DataFrame:
    """A CSV/TSV with the `required` columns (the first column itself when `first`); DataError otherwise."""
    try:
        frame = pd.read_csv(path, sep=sep, engine="c", na_values=_NA, keep_default_na=True, dtype=dtypes,
                            low_memory=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as exc:
        raise DataError(f"{path} is not a readable {'TSV' if sep == chr(9) else 'CSV'} file ({' '.join(str(exc).split())}); "
                        f"check that it is the CANDLE P1B3 file") from None
    found = [str(c) for c in frame.columns]
    ok = found[: len(required)] == required if first else set(required) <= set(found)
    if not ok:
        layout = f"first column {required[0]!r}" if first and len(required) == 1 else f"columns {required}"
        raise DataError(f"{path} does not have the P1B3 layout: expected {layout}, found columns {found[:6]}"
                        f"{' ...' if len(found) > 6 else ''}; check the file (P1B3 files are tab- or comma-separated as documented)")
    return frame


def read_dose_response(path: Path) -> pd.DataFrame:
    frame = _read(path, ",", RESPONSE_COLUMNS, first=False,
                  dtypes={"NSC": str, "CELLNAME": str})
    frame = frame[RESPONSE_COLUMNS]
    for column in ("LOG_CONCENTRATION", "GROWTH"):
        if not pd.api.types.is_numeric_dtype(frame[column]):
            bad = pd.to_numeric(frame[column], errors="coerce").isna() & frame[column].notna()
            raise DataError(f"{path}: column {column} has a non-numeric value {frame[column][bad].iloc[0]!r} at "
                            f"{data_row(np.flatnonzero(bad.to_numpy())[0])}; fix the file")
    return frame


def _feature_frame(path: Path, id_column: str, sep: str) -> tuple[list[str], np.ndarray, list[str]]:
    """(ids, float64 values with NaN for missing, column names) of one feature file."""
    frame = _read(path, sep, [id_column], first=True, dtypes={id_column: str})
    ids = frame[id_column].astype(str).tolist()
    values = frame.drop(columns=[id_column])
    if values.shape[1] == 0:
        raise DataError(f"{path} has no feature columns after {id_column!r}; check the file")
    try:
        matrix = values.apply(pd.to_numeric, errors="raise").to_numpy(dtype=np.float64)
    except (ValueError, TypeError) as exc:
        raise DataError(f"{path} has a non-numeric feature value ({' '.join(str(exc).split())}); missing values must be "
                        f"written na, - or left empty") from None
    duplicated = pd.Index(ids).duplicated()
    if duplicated.any():
        raise DataError(f"{path} lists id {ids[int(np.flatnonzero(duplicated)[0])]!r} twice; each {id_column} must appear once")
    return ids, matrix, [str(c) for c in values.columns]


def _cell_ids(ids: list[str]) -> list[str]:
    return [i.replace(".", ":") for i in ids]


def _id_list(path: Path, column: str) -> set[str]:
    frame = _read(path, ",", [column], first=True, dtypes={column: str})
    return set(frame[column].dropna().astype(str))


# --------------------------------------------------------------------------- preprocessing steps
def filter_concentration(frame: pd.DataFrame, lo: float, hi: float) -> pd.DataFrame:
    return frame[(frame["LOG_CONCENTRATION"] >= lo) & (frame["LOG_CONCENTRATION"] <= hi)]


def naive_balancing(frame: pd.DataFrame, seed: int) -> pd.DataFrame:
    """CANDLE's growth-bin subsample, with pandas' sample(frac, random_state=seed) per bin, bins concatenated."""
    parts = []
    g = frame["GROWTH"]
    for low, high, low_in, high_in, fraction in _BALANCING:
        mask = ((g >= low) if low_in else (g > low)) & ((g <= high) if high_in else (g < high))
        part = frame[mask]
        parts.append(part if fraction == 1.0 else part.sample(frac=fraction, random_state=seed))
    return pd.concat(parts)


def _subsample_columns(values, columns, ncols: int, rng: np.random.RandomState):
    """CANDLE's `np.random.choice(total, size=ncols, replace=False)`, drawn only when ncols < total."""
    total = values.shape[1]
    if ncols and ncols < total:
        use = rng.choice(total, size=ncols, replace=False)
        return values[:, use], [columns[i] for i in use]
    return values, columns


def _table(name: str, ids, values, columns, options, rng, what: str) -> FeatureTable:
    values, columns = _subsample_columns(values, columns, options["feature_subsample"], rng)
    values, columns = impute_and_scale(values, columns, options["scaling"] or "none", what)
    return FeatureTable(name=name, ids=list(ids), values=values, columns=columns)


def _cell_tables(paths, wanted, options, rng, response) -> list[FeatureTable]:
    tables = []
    for feature in wanted:
        if feature == "expression":
            path = _path(paths, "cell_expressions", "cell_features 'expression'")
            ids, values, columns = _feature_frame(path, "CellLine", "\t")
        elif feature == "mirna":
            path = _path(paths, "cell_mirna", "cell_features 'mirna'")
            ids, values, columns = _feature_frame(path, "CellLine", "\t")
        elif feature == "proteome":
            path = _path(paths, "cell_proteome", "cell_features 'proteome'")
            ids, values, columns = _feature_frame(path, "CellLine", "\t")
            k_ids, k_values, k_columns = _feature_frame(_path(paths, "cell_kinome", "cell_features 'proteome'"),
                                                        "CellLine", "\t")
            # CANDLE: proteome.merge(kinome.add_suffix('.K'), on the cell line): an inner join.
            position = {c: i for i, c in enumerate(k_ids)}
            both = [i for i, c in enumerate(ids) if c in position]
            ids = [ids[i] for i in both]
            values = np.hstack([values[both], k_values[[position[ids_] for ids_ in ids]]])
            columns = columns + [f"{c}.K" for c in k_columns]
        else:  # categorical: one-hot of the response's cell lines, columns sorted as pandas.get_dummies does
            cells = pd.unique(response["CELLNAME"])
            names = sorted(c.replace(":", ".") for c in cells)
            order = {n: j for j, n in enumerate(names)}
            values = np.zeros((len(cells), len(names)), dtype=np.float32)
            values[np.arange(len(cells)), [order[c.replace(":", ".")] for c in cells]] = 1.0
            tables.append(FeatureTable("cell.categorical", list(cells), values, names))
            continue
        tables.append(_table(f"cell.{feature}", _cell_ids(ids), values, columns, options, rng, str(path)))
    return tables


def _drug_tables(paths, wanted, options, rng, response) -> list[FeatureTable]:
    tables = []
    for feature in wanted:
        if feature == "descriptors":
            path = _path(paths, "drug_descriptors", "drug_features 'descriptors'")
            ids, values, columns = _feature_frame(path, "NAME", "\t")
        elif feature == "latent":
            path = _path(paths, "drug_latent", "drug_features 'latent'")
            ids, values, columns = _feature_frame(path, "NSC", ",")
        else:  # noise: CANDLE's control, N(0, 1) values per drug from the same random stream
            drugs = pd.unique(response["NSC"])
            values = rng.normal(size=(len(drugs), _NOISE_WIDTH)).astype(np.float32)
            tables.append(FeatureTable("drug.noise", list(drugs), values, [f"RAND-{j:03d}" for j in range(_NOISE_WIDTH)]))
            continue
        tables.append(_table(f"drug.{feature}", ids, values, columns, options, rng, str(path)))
    return tables


def _common_ids(tables: list[FeatureTable]) -> list[str]:
    """Ids present in every table, in the first table's order."""
    shared = set(tables[0].ids)
    for t in tables[1:]:
        shared &= set(t.ids)
    return [i for i in tables[0].ids if i in shared]


def _reindexed(table: FeatureTable, ids: list[str]) -> FeatureTable:
    position = {i: k for k, i in enumerate(table.ids)}
    if list(ids) == table.ids:
        return table
    return FeatureTable(table.name, list(ids), np.ascontiguousarray(table.values[[position[i] for i in ids]]), table.columns)


def _drop_unmatched(frame, column, ids, kind, notes) -> pd.DataFrame:
    known = frame[column].isin(set(ids))
    missing = int((~known).sum())
    if missing:
        examples = ", ".join(sorted(map(str, pd.unique(frame.loc[~known, column])))[:3])
        notes.append(f"p1b3: dropped {missing:,} response rows whose {kind} has no features (e.g. {examples}), as CANDLE's merge does")
    return frame[known]


# --------------------------------------------------------------------------- the reader
def read(paths: dict, options: dict, seed: int) -> JoinedTables:
    """The P1B3 files (source role -> local path) as joined tables; see the module docstring."""
    options = {**OPTIONS, **options}
    cell_features, drug_features = _check_options(options)
    notes: list[str] = []
    response_path = _path(paths, "dose_response", "the responses")
    response = read_dose_response(response_path)
    counts = {"response_rows": len(response)}
    response = filter_concentration(response, options["min_logconc"], options["max_logconc"])
    counts["after_concentration_filter"] = len(response)
    missing_growth = int(response["GROWTH"].isna().sum())
    if missing_growth:
        notes.append(f"p1b3: dropped {missing_growth:,} response rows without a GROWTH value")
        response = response[response["GROWTH"].notna()]
    if options["subsample"] == "naive_balancing":
        response = naive_balancing(response, seed)
    counts["after_subsample"] = len(response)
    if response.empty:
        raise DataError(f"no response rows of {response_path} remain with {options['min_logconc']} <= LOG_CONCENTRATION <= "
                        f"{options['max_logconc']} (and subsample={options['subsample']!r}); widen min_logconc/max_logconc")

    rng = np.random.RandomState(seed)  # CANDLE: np.random.seed(seed), then column draws in this order
    cells = _cell_tables(paths, cell_features, options, rng, response)
    drugs = _drug_tables(paths, drug_features, options, rng, response)
    cell_ids, drug_ids = _common_ids(cells), _common_ids(drugs)
    response = _drop_unmatched(response, "CELLNAME", cell_ids, "cell line", notes)
    response = _drop_unmatched(response, "NSC", drug_ids, "drug", notes)
    counts["with_features"] = len(response)
    if response.empty:
        raise DataError(f"no response row of {response_path} has both cell and drug features: its cell lines and NSC ids "
                        f"do not match the feature files' CellLine / NAME / NSC ids; check that the files belong together")

    # The split, as CANDLE's DataLoader does it.
    test_drugs = _id_list(_path(paths, "test_drugs", "the test split"), "NSC")
    listed_cells = _id_list(_path(paths, "test_celllines", "the test split"), "CELLNAME")
    train_val = response[~response["NSC"].isin(test_drugs) & ~response["CELLNAME"].isin(listed_cells)]
    split = options["test_cell_split"]
    if split:
        test_cells = set(train_val[["CELLNAME"]].drop_duplicates().sample(frac=split, random_state=seed)["CELLNAME"])
    else:
        test_cells = listed_cells
    test = response[response["CELLNAME"].isin(test_cells) & response["NSC"].isin(test_drugs)]
    train_val = train_val.sample(frac=1.0, random_state=seed)
    test = test.sample(frac=1.0, random_state=seed)
    if options["scramble"]:  # CANDLE's control: targets shuffled over train+val+test
        both = pd.concat([train_val, test])
        growth = both["GROWTH"].to_numpy()[rng.permutation(len(both))]
        train_val = train_val.assign(GROWTH=growth[: len(train_val)])
        test = test.assign(GROWTH=growth[len(train_val):])
    n_val = int(len(train_val) * options["val_split"])
    parts = {"train": train_val.iloc[: len(train_val) - n_val], "val": train_val.iloc[len(train_val) - n_val:]}
    if len(test):
        parts["test"] = test
    else:
        notes.append("p1b3: the test split is empty (no response row pairs a test drug with a test cell line)")
    for name in ("train", "val"):
        if parts[name].empty:
            raise DataError(f"the p1b3 {name} split is empty ({len(train_val)} train+val rows, val_split "
                            f"{options['val_split']}); add rows, widen the concentration range or change val_split")

    cells = [_reindexed(t, cell_ids) for t in cells]
    drugs = [_reindexed(t, drug_ids) for t in drugs]
    cell_index = {c: k for k, c in enumerate(cell_ids)}
    drug_index = {d: k for k, d in enumerate(drug_ids)}
    splits = {}
    for name, frame in parts.items():
        splits[name] = pd.DataFrame({
            "LOG_CONCENTRATION": frame["LOG_CONCENTRATION"].to_numpy(np.float32),  # raw, as CANDLE feeds it
            "cell": frame["CELLNAME"].map(cell_index).to_numpy(np.int32),
            "drug": frame["NSC"].map(drug_index).to_numpy(np.int32),
            "y": (frame["GROWTH"].to_numpy(np.float64) / 100.0).astype(np.float32),
            "NSC": frame["NSC"].to_numpy(str),
            "CELLNAME": frame["CELLNAME"].to_numpy(str),
        })
    slots = [Slot("drug_concentration", None, "LOG_CONCENTRATION")]
    slots += [Slot(t.name, t.name, "cell") for t in cells]
    slots += [Slot(t.name, t.name, "drug") for t in drugs]
    info = {**counts, "cells": len(cell_ids), "drugs": len(drug_ids), "test_cells": sorted(test_cells),
            "rows": {k: len(v) for k, v in splits.items()}, "notes": notes}
    return JoinedTables(tables={t.name: t for t in cells + drugs}, slots=slots, splits=splits, task="regression",
                        num_classes=None, label_columns=["y"], info=info)


# --------------------------------------------------------------------------- synthetic files (--smoke)
_PANELS = ("BR", "CNS", "CO", "LC", "LE", "ME", "OV", "PR", "RE")
_CONCENTRATIONS = (-5.5, -5.0, -4.7, -4.3, -4.0)  # 4 of 5 inside CANDLE's default [-5, -4]


def synthesize(out_dir: Path, options: dict, seed: int, rows: int, features: int) -> dict[str, Path]:
    """The nine P1B3 files with ~`rows` response rows and feature tables at most `features` wide.

    12 cell lines and rows / 60 drugs (at least 10) on a 5-concentration grid. Cells and drugs each
    have a 3-d latent profile that every feature table expresses linearly (plus noise, a few 'na'
    values and one all-missing column); GROWTH falls with concentration and with the cell-drug
    affinity, mostly below 50 % so that naive_balancing keeps most rows. A small MLP learns it.
    """
    out_dir = Path(out_dir)
    rng = np.random.default_rng([seed, 3])
    n_cells, n_conc = 12, len(_CONCENTRATIONS)
    n_drugs = max(10, int(round(rows / (n_cells * n_conc))))
    cells = [f"{_PANELS[i % len(_PANELS)]}:C{i:02d}" for i in range(n_cells)]
    drugs = [str(700 + 37 * j) for j in range(n_drugs)]
    cell_latent = rng.normal(size=(n_cells, 3))
    drug_latent = rng.normal(size=(n_drugs, 3))

    def matrix(latent, width):
        width = max(4, int(width))
        loading = rng.normal(size=(3, width))
        values = latent @ loading + 0.3 * rng.normal(size=(len(latent), width)) + rng.uniform(-2, 8, size=width)
        text = np.char.mod("%.4f", values).astype(object)
        holes = rng.random(values.shape) < 0.03
        text[holes] = "na"
        text[:, -1] = "na"  # one all-missing column, dropped by the reader
        return text

    def write_table(name, id_column, ids, values, sep, prefix):
        frame = pd.DataFrame(values, columns=[f"{prefix}{j:05d}" for j in range(values.shape[1])])
        frame.insert(0, id_column, ids)
        frame.to_csv(out_dir / name, sep=sep, index=False)
        return out_dir / name

    feature_cells = [c.replace(":", ".") for c in cells]
    files = {
        "cell_expressions": write_table(FILES["cell_expressions"], "CellLine", feature_cells,
                                        matrix(cell_latent, features), "\t", "GENE_"),
        "cell_mirna": write_table(FILES["cell_mirna"], "CellLine", feature_cells,
                                  matrix(cell_latent, features // 4), "\t", "hsa-miR-"),
        "cell_proteome": write_table(FILES["cell_proteome"], "CellLine", feature_cells,
                                     matrix(cell_latent, features // 2), "\t", "PROT_"),
        "cell_kinome": write_table(FILES["cell_kinome"], "CellLine", feature_cells,
                                   matrix(cell_latent, features // 4), "\t", "KIN_"),
        "drug_descriptors": write_table(FILES["drug_descriptors"], "NAME", drugs,
                                        matrix(drug_latent, features // 2), "\t", "D"),
        "drug_latent": write_table(FILES["drug_latent"], "NSC", drugs,
                                   matrix(drug_latent, min(292, max(4, features // 4))), ",", "L"),
    }
    grid = np.array(np.meshgrid(np.arange(n_drugs), np.arange(n_cells), np.arange(n_conc), indexing="ij")).reshape(3, -1)
    d, c, k = grid
    conc = np.asarray(_CONCENTRATIONS)[k]
    affinity = np.einsum("ij,ij->i", cell_latent[c], drug_latent[d]) / np.sqrt(3)
    growth = 100 * (0.15 - 0.55 * np.tanh(affinity + 1.5 * (conc + 4.5))) + 4 * rng.normal(size=len(d))
    pd.DataFrame({"NSC": np.asarray(drugs)[d], "CELLNAME": np.asarray(cells)[c], "LOG_CONCENTRATION": conc,
                  "GROWTH": np.round(growth, 1)}).to_csv(out_dir / FILES["dose_response"], index=False)
    files["dose_response"] = out_dir / FILES["dose_response"]
    # Two held-out drugs; one listed test cell line (excluded from train+val, as CANDLE's list is).
    (out_dir / FILES["test_drugs"]).write_text("NSC\n" + "".join(f"{x}\n" for x in drugs[-2:]))
    (out_dir / FILES["test_celllines"]).write_text("CELLNAME\n" + f"{cells[-1]}\n")
    files["test_drugs"] = out_dir / FILES["test_drugs"]
    files["test_celllines"] = out_dir / FILES["test_celllines"]
    return files
