"""Real cancer datasets shipped inside PyPI packages, read straight from the installed package files.

The packages (ISLP, SurvSet, gdsctools) are installed into the running interpreter's environment with
`pip install --no-deps` when missing (several declare an unpinned torch) and are never imported: their
data files are found with `importlib.util.find_spec(name).submodule_search_locations[0]`. Nothing here
is copied into the repository; see /work/shared/reference/real_data.md for the sources and licences.

Each loader returns `RealDataset`s: a feature DataFrame (column names as a user would write them), the
label Series, sample ids and a one-line description.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

# pip name, version, importable (top-level) name
PACKAGES = {"islp": ("0.6.0", "ISLP"), "survset": ("0.2.11", "SurvSet"), "gdsctools": ("1.0.1", "gdsctools")}
NEEDS = {"nci60": ("islp",), "khan": ("islp",), "gse1992": ("survset",), "gdsc": ("gdsctools",)}
MIN_CLASS_SIZE = 5  # NCI-60: keep the tissue labels with at least this many cell lines
GDSC_DRUGS = 2  # the most-tested drugs (most non-missing LN_IC50), one dataset each


@dataclass
class RealDataset:
    name: str
    task: str  # "classification" or "regression"
    label: str  # the label column's name in the written files
    X: pd.DataFrame  # features, numeric
    y: pd.Series  # labels: strings (classification) or floats (regression)
    ids: list[str]  # one text id per row (the `sample` column)
    description: str

    @property
    def n(self) -> int:
        return len(self.y)

    def summary(self) -> str:
        if self.task == "classification":
            counts = self.y.value_counts()
            what = (f"{len(counts)} classes ({', '.join(f'{k} {v}' for k, v in counts.items())})")
        else:
            what = f"{self.label} mean {self.y.mean():.2f} sd {self.y.std():.2f} [{self.y.min():.2f}, {self.y.max():.2f}]"
        return f"{self.name}: {self.n} samples x {self.X.shape[1]} features, {self.task}: {what}. {self.description}"


def ensure_packages(keys, python: str = sys.executable, log=print) -> None:
    """pip-install (no deps) whichever of the needed packages the interpreter cannot find."""
    wanted = sorted({pkg for key in keys for pkg in NEEDS[key]})
    missing = [pkg for pkg in wanted if importlib.util.find_spec(PACKAGES[pkg][1]) is None]
    if not missing:
        return
    specs = [f"{pkg}=={PACKAGES[pkg][0]}" for pkg in missing]
    log(f"installing {' '.join(specs)} (--no-deps) into {Path(python).parent.parent}")
    subprocess.run([python, "-m", "pip", "install", "--no-deps", "--quiet", *specs], check=True)
    importlib.invalidate_caches()


def package_dir(module: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"package {module} is not installed")
    return Path(spec.submodule_search_locations[0])


def _describe_frame(frame: pd.DataFrame) -> str:
    dtypes = ", ".join(f"{n} {t}" for t, n in frame.dtypes.astype(str).value_counts().items())
    return f"{frame.shape[0]} x {frame.shape[1]} ({dtypes}; {int(frame.isna().sum().sum())} missing)"


def load_nci60(log=print) -> list[RealDataset]:
    root = package_dir("ISLP") / "data"
    x = np.load(root / "NCI60data.npy")
    labels = pd.read_csv(root / "NCI60labs.csv")["label"].astype(str).str.strip()
    log(f"  NCI60data.npy {x.shape} {x.dtype}, {int(np.isnan(x).sum())} NaN; NCI60labs.csv {len(labels)} labels, "
        f"{labels.nunique()} distinct")
    counts = labels.value_counts()
    keep = labels.isin(counts[counts >= MIN_CLASS_SIZE].index).to_numpy()
    X = pd.DataFrame(x[keep], columns=[f"g{j + 1:04d}" for j in range(x.shape[1])])
    y = labels[keep].reset_index(drop=True)
    ids = [f"nci60_{i:02d}" for i in np.flatnonzero(keep)]
    dropped = ", ".join(f"{k} {v}" for k, v in counts[counts < MIN_CLASS_SIZE].items())
    return [RealDataset("nci60", "classification", "tissue", X, y.rename("tissue"), ids,
                        f"NCI-60 cell-line expression (ISLP), tissue of origin; dropped labels with < "
                        f"{MIN_CLASS_SIZE} lines ({dropped})")]


def load_khan(log=print) -> list[RealDataset]:
    root = package_dir("ISLP") / "data"
    parts = {}
    for name in ("xtrain", "xtest", "ytrain", "ytest"):
        parts[name] = pd.read_csv(root / f"Khan_{name}.csv")
        log(f"  Khan_{name}.csv {_describe_frame(parts[name])}")
    X = pd.concat([parts["xtrain"], parts["xtest"]], ignore_index=True)
    codes = pd.concat([parts["ytrain"].iloc[:, 0], parts["ytest"].iloc[:, 0]], ignore_index=True)
    # Text class names: integer labels 1..4 would be read as class indices 0..4 (an empty class 0).
    y = codes.map(lambda c: f"type{int(c)}").rename("tumour_type")
    ids = [f"khan_train_{i:02d}" for i in range(len(parts["ytrain"]))] + \
          [f"khan_test_{i:02d}" for i in range(len(parts["ytest"]))]
    return [RealDataset("khan", "classification", "tumour_type", X, y, ids,
                        "Khan SRBCT microarray (ISLP), 4 small round blue cell tumour types; published "
                        "63 + 20 split pooled and re-split")]


def load_gse1992(log=print) -> list[RealDataset]:
    path = package_dir("SurvSet") / "resources" / "pickles" / "gse1992.pickle"
    frame = pd.read_pickle(path)  # what SurvSet's own loader does (SurvLoader().load_dataset("gse1992")["df"])
    log(f"  {path.name} {_describe_frame(frame)}")
    label = "fac_er_positive" if "fac_er_positive" in frame.columns else "fac_er"
    status = frame[label].astype(str)
    log(f"  {label}: {status.value_counts(dropna=False).to_dict()}")
    keep = (~frame[label].isna() & ~status.isin(["missing", "nan", ""])).to_numpy()
    genes = [c for c in frame.columns if c.startswith("num_HS_")] or \
            [c for c in frame.columns if c.startswith("num_") and c not in ("num_age", "num_size")]
    X = frame.loc[keep, genes].reset_index(drop=True).astype(float)
    if X.isna().any().any():
        X = X.fillna(X.mean())
    y = status[keep].map({"1": "ER_pos", "0": "ER_neg"}).fillna(status[keep]).reset_index(drop=True).rename("er_status")
    ids = frame.loc[keep, "pid"].astype(str).tolist() if "pid" in frame.columns else [f"gse1992_{i}" for i in range(keep.sum())]
    return [RealDataset("gse1992", "classification", "er_status", X, y, ids,
                        f"GSE1992 breast tumours (SurvSet), ER status from {label}; gene columns num_HS_* only "
                        f"(clinical num_age/num_size left out), {int((~keep).sum())} rows without a label dropped")]


def load_gdsc(log=print) -> list[RealDataset]:
    root = package_dir("gdsctools") / "data"
    ic50 = pd.read_csv(root / "IC50_v17.csv.gz")
    features = pd.read_csv(root / "genomic_features_v17.csv.gz")
    log(f"  IC50_v17.csv.gz {_describe_frame(ic50)}; genomic_features_v17.csv.gz {_describe_frame(features)}")
    ic50 = ic50.set_index("COSMIC_ID")
    features = features.set_index("COSMIC_ID")
    tissue = pd.get_dummies(features.pop("TISSUE_FACTOR").astype(str), prefix="tissue", dtype=float)
    genomic = pd.concat([features.astype(float), tissue], axis=1)
    counts = ic50.notna().sum()
    drugs = sorted(counts.index, key=lambda d: (-counts[d], list(counts.index).index(d)))[:GDSC_DRUGS]
    names = {}
    decode = root / "DRUG_DECODE.csv"
    if decode.exists():
        table = pd.read_csv(decode)
        names = dict(zip(table["DRUG_ID"].astype(str), table["DRUG_NAME"].astype(str)))
    out = []
    for drug in drugs:
        y = ic50[drug].dropna()
        rows = y.index.intersection(genomic.index)
        short = drug.removesuffix("_IC50").lower()
        out.append(RealDataset(
            f"gdsc_{short}", "regression", "ln_ic50", genomic.loc[rows].reset_index(drop=True),
            y.loc[rows].astype(float).reset_index(drop=True).rename("ln_ic50"),
            [f"COSMIC_{c}" for c in rows],
            f"GDSC v17 (gdsctools) LN_IC50 of {drug}{' (' + names[drug] + ')' if drug in names else ''}, "
            f"{counts[drug]} cell lines tested; {features.shape[1]} binary mutation/CNA/MSI features + "
            f"{tissue.shape[1]} one-hot tissues"))
    return out


LOADERS = {"nci60": load_nci60, "khan": load_khan, "gse1992": load_gse1992, "gdsc": load_gdsc}
