"""Synthetic stand-ins for CANDLE's Pilot1 drug-response files (Uno, Combo), in their exact formats.

A small world of cell lines and drugs, each with a 3-d latent profile. Every feature file expresses the
profiles linearly plus noise (RNA-seq, dragon7 descriptors with 'na' holes and one all-'na' column,
0/1 fingerprints); growth falls with the dose and with the cell's and drugs' potency, which the
profiles set. A small network learns the signal in a few epochs, also on unseen drug groups (the
dose and the cell carry most of it). Deterministic for a seed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

LATENT = 3
# Names in the styles of the real files.
NCI60_CELLS = ["786-0", "A549/ATCC", "HOP-62", "MCF7", "SF-295", "UACC-62", "HCT-116", "OVCAR-3", "PC-3", "K-562",
               "SK-MEL-5", "T-47D", "NCI-H460", "U251", "DU-145", "ACHN"]
NCI60_PANELS = ["RE", "LC", "LC", "BR", "CNS", "ME", "CO", "OV", "PR", "LE", "ME", "BR", "LC", "CNS", "PR", "RE"]
GENES = ["AARS", "ABCB6", "ABCC5", "ABCF1", "ABCF3", "ABHD4", "ABHD6", "ABL1", "ACAA1", "ACAT2", "ACBD3", "ACD"]
DESCRIPTORS = ["MW", "AMW", "Sv", "Se", "Sp", "Si", "Mv", "Me", "Mp", "Mi", "GD", "nAT", "nSK", "nTA", "nBT", "nBO"]
ALMANAC_COLUMNS = ["COMBODRUGSEQ", "SCREENER", "STUDY", "TESTDATE", "PLATE", "PANELNBR", "CELLNBR", "PREFIX1", "NSC1",
                   "SAMPLE1", "CONCINDEX1", "CONC1", "CONCUNIT1", "PREFIX2", "NSC2", "SAMPLE2", "CONCINDEX2", "CONC2",
                   "CONCUNIT2", "PERCENTGROWTH", "PERCENTGROWTHNOTZ", "TESTVALUE", "CONTROLVALUE", "TZVALUE",
                   "EXPECTEDGROWTH", "SCORE", "VALID", "PANEL", "CELLNAME"]
ALMANAC_CONCENTRATIONS = np.array([1e-8, 1e-7, 1e-6, 1e-5])  # molar
SINGLE_LOG_CONCENTRATIONS = np.array([-8.0, -7.0, -6.0, -5.0, -4.0])


def latent(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.normal(size=(n, LATENT))


def potency(rng: np.random.Generator, profiles: np.ndarray) -> np.ndarray:
    """A per-entity shift of the dose-response curve (about +-0.7 log units), set by the profile."""
    weights = rng.normal(size=LATENT)
    return 0.7 * profiles @ weights / np.linalg.norm(weights)


def growth_fraction(excess: np.ndarray) -> np.ndarray:
    """Growth (fraction of control) for a dose excess over the EC50 in log units: 1.0 down to -0.4."""
    return 1.0 - 1.4 / (1.0 + np.exp(-1.6 * excess))


def pair_excess(dose1, dose2, shift1, shift2) -> np.ndarray:
    """Loewe-like additivity of two drugs: the doses add in EC50 units."""
    return np.log10(10.0 ** (dose1 - 6.0 + shift1) + 10.0 ** (dose2 - 6.0 + shift2))


def feature_text(rng: np.random.Generator, profiles: np.ndarray, width: int, *, offset=(-1.0, 6.0), holes=0.03,
                 empty_column=True) -> np.ndarray:
    """Linear expressions of the profiles plus noise, printed with 4 decimals; 'na' holes."""
    loading = rng.normal(size=(LATENT, width))
    values = profiles @ loading + 0.3 * rng.normal(size=(len(profiles), width)) + rng.uniform(*offset, size=width)
    text = np.char.mod("%.4f", values).astype(object)
    text[rng.random(values.shape) < holes] = "na"
    if empty_column and width > 1:
        text[:, -1] = "na"
    return text


def names(base: list[str], width: int, prefix: str) -> list[str]:
    return [base[j] if j < len(base) else f"{prefix}{j:04d}" for j in range(width)]


def write_tsv(path: Path, frame: pd.DataFrame) -> Path:
    frame.to_csv(path, sep="\t", index=False)
    return path


def write_features(path: Path, id_column: str, ids: list[str], text: np.ndarray, columns: list[str]) -> Path:
    frame = pd.DataFrame(text, columns=columns)
    frame.insert(0, id_column, ids)
    return write_tsv(path, frame)


def write_rnaseq(path: Path, rng, samples: list[str], profiles: np.ndarray, width: int) -> Path:
    width = max(2, width)
    text = feature_text(rng, profiles, width, offset=(0.0, 8.0), holes=0.0, empty_column=False)
    return write_features(path, "Sample", samples, text, names(GENES, width, "GENE"))


def write_descriptors(path: Path, rng, drug_names: list[str], profiles: np.ndarray, width: int) -> Path:
    width = max(3, width)
    return write_features(path, "NAME", drug_names, feature_text(rng, profiles, width),
                          names(DESCRIPTORS, width, "D"))


def write_fingerprints(path: Path, rng, drug_names: list[str], profiles: np.ndarray, width: int) -> Path:
    """A header line (CANDLE skips it), then the drug id and 0/1 bits."""
    width = max(2, width)
    bits = (profiles @ rng.normal(size=(LATENT, width)) + 0.5 * rng.normal(size=(len(profiles), width)) > 0)
    frame = pd.DataFrame(bits.astype(np.int8), columns=[str(j) for j in range(1, width + 1)])
    frame.insert(0, "NAME", drug_names)
    return write_tsv(path, frame)


def write_cell_map(path: Path, cells: list[str]) -> Path:
    panel = dict(zip(NCI60_CELLS, NCI60_PANELS))
    return write_tsv(path, pd.DataFrame({"NCI60.ID": [f"NCI60.{c}" for c in cells], "CELLNAME": [f"{panel[c]}:{c}" for c in cells],
                                         "Name": cells}))


def almanac_rows(rng, cells: list[str], cell_shift: np.ndarray, nsc: list[str], drug_shift: np.ndarray,
                 triples: int, *, replicate: float = 0.2) -> pd.DataFrame:
    """ALMANAC measurements: `triples` (cell, drug1, drug2) sets on a 3 x 3 concentration grid (some
    replicated), a few single-agent rows (NSC2 empty) and a few invalid ones (VALID 'N')."""
    pairs = [(a, b) for a in range(len(nsc)) for b in range(a + 1, len(nsc))]
    combos = [(c, a, b) for c in range(len(cells)) for a, b in pairs]
    chosen = rng.choice(len(combos), size=min(triples, len(combos)), replace=False)
    records = []
    for index in sorted(chosen):
        c, a, b = combos[index]
        conc1 = rng.choice(ALMANAC_CONCENTRATIONS, 3, replace=False)
        conc2 = rng.choice(ALMANAC_CONCENTRATIONS, 3, replace=False)
        for x in conc1:
            for z in conc2:
                for _ in range(2 if rng.random() < replicate else 1):
                    records.append((c, a, b, x, z))
        records.append((c, a, -1, conc1[0], np.nan))  # single agent: NSC2 and CONC2 empty
    c, a, b, x, z = (np.array(v) for v in zip(*records))
    single = b < 0
    shift2 = np.where(single, 0.0, drug_shift[np.maximum(b, 0)])
    dose2 = np.where(single, -np.inf, -np.log10(np.where(single, 1.0, z)))
    excess = np.where(single, -np.log10(x) - 6.0 + drug_shift[a],
                      pair_excess(-np.log10(x), dose2, drug_shift[a], shift2)) + cell_shift[c]
    growth = 100.0 * growth_fraction(excess) + 3.0 * rng.normal(size=len(c))
    n = len(c)
    valid = np.where(rng.random(n) < 0.05, "N", "Y")
    screener = rng.choice(["FG", "FF", "1A"], n)
    nsc_arr = np.asarray(nsc, dtype=object)
    frame = pd.DataFrame({
        "COMBODRUGSEQ": np.arange(1, n + 1), "SCREENER": screener, "STUDY": [f"{s}{k % 9}" for k, s in enumerate(screener)],
        "TESTDATE": "20131101", "PLATE": [f"{k // 60:04d}" for k in range(n)], "PANELNBR": 1, "CELLNBR": c + 1,
        "PREFIX1": "S", "NSC1": [s.split(".", 1)[1] for s in nsc_arr[a]], "SAMPLE1": 1, "CONCINDEX1": 1,
        "CONC1": x, "CONCUNIT1": "M", "PREFIX2": np.where(single, "", "S"),
        "NSC2": np.where(single, "", [s.split(".", 1)[1] for s in nsc_arr[np.maximum(b, 0)]]),
        "SAMPLE2": np.where(single, "", "1"), "CONCINDEX2": np.where(single, "", "1"),
        "CONC2": np.where(single, "", np.char.mod("%g", np.nan_to_num(z))), "CONCUNIT2": np.where(single, "", "M"),
        "PERCENTGROWTH": np.round(growth, 2), "PERCENTGROWTHNOTZ": np.round(growth, 2), "TESTVALUE": 1.0,
        "CONTROLVALUE": 1.0, "TZVALUE": 0.5, "EXPECTEDGROWTH": np.round(growth, 2),
        "SCORE": np.round(rng.normal(0, 20, n), 1), "VALID": valid, "PANEL": "P", "CELLNAME": np.asarray(cells)[c],
    })
    return frame[ALMANAC_COLUMNS]
