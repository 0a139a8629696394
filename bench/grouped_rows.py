"""Rows that belong together: how far a sweep's validation score is from its model's score on new groups.

GDSC v17 drug response (PyPI gdsctools, installed with --no-deps, never copied into the repo): LN_IC50 of
the most-tested drugs, one row per (cell line, drug), features the cell line's 678 genomic features with
its tissue and the drug one-hot (`categorical=`). Each cell line has a row per drug, so a random val split
scores rows of cell lines the model trained on: the leave-cells-out question ("how well for a new cell
line?") needs whole cell lines held out. Per split, a seeded fifth of the cell lines is held out before
anything (heldout.csv); on the rest, two arms run the README path (`tune`, then `predict SWEEP` on
heldout.csv):

  rows     TableDataset(..., drop=("cell",))     the val split is random rows
  grouped  TableDataset(..., group="cell")       the val split is whole cell lines (README "Your own matrix")

It prints each arm's best trial's val R² (the sweep's own estimate), its held-out R², their gap (the
estimate's optimism), and the ratios grouped ÷ rows. Targets: the grouped estimate within 0.1 of its
held-out R², and held-out R² grouped ÷ rows >= 1.00 (choosing on whole cell lines picks models for new ones).

    .venv/bin/python bench/grouped_rows.py                 # 3 splits, 16 trials each, ~4 min here
    .venv/bin/python bench/grouped_rows.py --splits 1 --num-samples 4
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _real_datasets  # noqa: E402
from real_data import CommandFailed, RayHead, log, run_command, venv_bin  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
DRUGS = 6
HELD_OUT = 0.2  # share of the cell lines held out before any sweep
EPOCHS = 20
EXPERIMENT = '''from ray import tune
from candle_ray import Experiment, TableDataset

experiment = Experiment(
    name="gdsc_{arm}",
    dataset=TableDataset("train.csv", label="ln_ic50", task="regression", categorical=("drug", "tissue"),
                         {grouping}, val_fraction=0.2),
    model="mlp",
    defaults={{"epochs": {epochs}, "batch_size": 64, "learning_rate": 0.001, "optimizer": "adam", "dense": [256, 64],
              "dropout": 0.2, "weight_decay": 0.1, "activation": "relu", "rng_seed": 1}},
    search_space={{"learning_rate": tune.loguniform(3e-5, 1e-2), "dropout": tune.uniform(0.0, 0.6),
                  "weight_decay": tune.loguniform(1e-3, 3.0), "batch_size": tune.choice([32, 64, 128]),
                  "dense": tune.choice([[], [64], [256], [256, 64], [512, 128]])}},
)
'''
ARMS = {"rows": 'drop=("cell",)', "grouped": 'group="cell"'}


def long_table() -> pd.DataFrame:
    """One row per (cell line, drug) with a measured LN_IC50, for the DRUGS most-tested drugs."""
    root = _real_datasets.package_dir("gdsctools") / "data"
    ic50 = pd.read_csv(root / "IC50_v17.csv.gz").set_index("COSMIC_ID")
    features = pd.read_csv(root / "genomic_features_v17.csv.gz").set_index("COSMIC_ID")
    drugs = ic50.notna().sum().sort_values(ascending=False, kind="stable").index[:DRUGS]
    pairs = ic50[drugs].stack().dropna().rename("ln_ic50").reset_index().rename(columns={"level_1": "drug"})
    pairs = pairs[pairs["COSMIC_ID"].isin(features.index)]
    genomic = features.drop(columns=["TISSUE_FACTOR"]).astype(np.float32)
    frame = pd.concat([pd.DataFrame({"cell": "COSMIC_" + pairs["COSMIC_ID"].astype(str).to_numpy(),
                                     "drug": pairs["drug"].to_numpy(),
                                     "tissue": features.loc[pairs["COSMIC_ID"], "TISSUE_FACTOR"].astype(str).to_numpy(),
                                     "ln_ic50": pairs["ln_ic50"].to_numpy()}),
                       genomic.loc[pairs["COSMIC_ID"]].reset_index(drop=True)], axis=1)
    log(f"GDSC v17: {len(frame):,} (cell line, drug) rows, {frame['cell'].nunique()} cell lines, {len(drugs)} drugs "
        f"({', '.join(drugs)}), {genomic.shape[1]} genomic features + tissue + drug")
    return frame


def run_arm(arm: str, split_dir: Path, seed: int, args, address: str | None) -> dict:
    folder = split_dir / arm
    folder.mkdir()
    for name in ("train.csv", "heldout.csv"):
        os.link(split_dir / name, folder / name)
    exp = folder / "experiment.py"
    exp.write_text(EXPERIMENT.format(arm=arm, grouping=ARMS[arm], epochs=args.epochs))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(MLFLOW_TRACKING_URI=f"sqlite:///{folder / 'mlflow.db'}", CANDLE_RAY_CACHE=str(folder / "cache"),
               CANDLE_RAY_OUTPUT=str(folder / "runs"), RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    cli, go = str(venv_bin() / "candle-ray"), dict(env=env, cwd=folder)
    where = ["--storage", str(folder / "sweeps"), *(["--address", address] if address else [])]
    run_command([cli, "tune", str(exp), "--num-samples", str(args.num_samples), "--search", "optuna", "--scheduler",
                 "asha", "--seed", str(seed), "--name", "sweep", *where], log_path=folder / "tune.log",
                what=f"{arm} tune", **go)
    best = json.loads((folder / "sweeps" / "sweep" / "best_config.json").read_text())
    text = run_command([cli, "predict", "sweep", "--data", str(folder / "heldout.csv"), "--out",
                        str(folder / "pred.tsv"), "--storage", str(folder / "sweeps")],
                       log_path=folder / "predict.log", what=f"{arm} predict", **go)
    held = re.search(r"R² (-?[\d.]+)", text)
    if not held:
        raise CommandFailed(f"{arm}: predict printed no R² for the labelled held-out rows")
    return {"val_r2": float(best["metrics"]["val_r2"]), "heldout_r2": float(held.group(1))}


def run_split(frame: pd.DataFrame, k: int, args, data_dir: Path, address: str | None) -> dict:
    seed = args.seed * 1000 + k
    cells = np.sort(frame["cell"].unique())
    held = set(np.random.default_rng(seed).choice(cells, int(round(HELD_OUT * len(cells))), replace=False))
    split_dir = data_dir / f"split{k}"
    shutil.rmtree(split_dir, ignore_errors=True)
    split_dir.mkdir(parents=True)
    frame[~frame["cell"].isin(held)].to_csv(split_dir / "train.csv", index=False)
    frame[frame["cell"].isin(held)].to_csv(split_dir / "heldout.csv", index=False)
    log(f"split {k} (seed {seed}): {len(held)} of {len(cells)} cell lines held out "
        f"({int(frame['cell'].isin(held).sum()):,} rows)")
    out = {arm: run_arm(arm, split_dir, seed, args, address) for arm in ARMS}
    for arm, r in out.items():
        log(f"  {arm:<8} val R² {r['val_r2']:.3f}  held-out R² {r['heldout_r2']:.3f}  "
            f"optimism {r['val_r2'] - r['heldout_r2']:+.3f}")
    if not args.keep:
        shutil.rmtree(split_dir, ignore_errors=True)
    return out


def report(results: list[dict]) -> None:
    def mean(arm, key):
        return statistics.fmean(r[arm][key] for r in results)

    log(f"\n{'arm':<8} {'val R²':>7} {'held-out R²':>12} {'optimism':>9}   ({len(results)} split(s), means)")
    for arm in ARMS:
        log(f"{arm:<8} {mean(arm, 'val_r2'):>7.3f} {mean(arm, 'heldout_r2'):>12.3f} "
            f"{mean(arm, 'val_r2') - mean(arm, 'heldout_r2'):>+9.3f}")
    ratio = mean("grouped", "heldout_r2") / mean("rows", "heldout_r2")
    optimism = mean("grouped", "val_r2") - mean("grouped", "heldout_r2")
    log(f"held-out R² grouped ÷ rows: {ratio:.3f} (target >= 1.00); grouped estimate's optimism {optimism:+.3f} "
        f"(target within ±0.10); rows' {mean('rows', 'val_r2') - mean('rows', 'heldout_r2'):+.3f}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--splits", type=int, default=3, help="seeded cell-line hold-outs [default 3]")
    p.add_argument("--num-samples", type=int, default=16, help="trials per sweep [default 16]")
    p.add_argument("--epochs", type=int, default=EPOCHS, help=f"[default {EPOCHS}]")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", default="~/.cache/candle-ray-bench/grouped")
    p.add_argument("--keep", action="store_true", help="keep the run folders")
    args = p.parse_args(argv)
    data_dir = Path(args.data_dir).expanduser().resolve()
    if REPO in data_dir.parents or data_dir == REPO:
        sys.exit(f"--data-dir {data_dir} is inside the repository; the data must stay outside it")
    t0 = time.monotonic()
    _real_datasets.ensure_packages(["gdsc"], str(venv_bin() / "python"), log=log)
    frame = long_table()
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    head = RayHead(data_dir / "ray-head", env)
    try:
        address = head.start()
        results = [run_split(frame, k, args, data_dir, address) for k in range(args.splits)]
    finally:
        head.stop()
    report(results)
    log(f"total {time.monotonic() - t0:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
