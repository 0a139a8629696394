"""Survival models on real cancer cohorts: do a sweep and its ensemble rank new patients as well as a
tuned Cox model?

SurvSet's breast-cancer cohorts (PyPI survset, installed with --no-deps, read from the package files, never
copied into the repo): nki70 (144 patients, 70-gene signature + clinical), gse4335 (115, 12,795 genes),
gse3143 (158, 8,660 genes), gse1992 (124, 15,530 genes); the time to death or relapse, censored for many.
Per dataset and seeded split, a fifth of the patients (stratified by event) is held out before anything
(heldout.csv); on the rest the README path runs as a user would:

  1. TableDataset("train.csv", label="time", event="event", drop=("pid",), categorical=<the fac_ columns>,
     impute="median", val_fraction=0.2), model mlp, README's own-matrix defaults and search space;
  2. candle-ray tune EXP --num-samples 16 --search optuna --scheduler asha
  3. candle-ray ensemble EXP --from-sweep sweep --top 1 --members 5   (seed replicas of the best
     configuration, as bench/real_data.py; the Cox baseline pooled at its default share)
  4. candle-ray predict sweep / ensemble --data heldout.csv --times T: the concordance index on the held-out
     patients, and their mean predicted survival by T (the train patients' median follow-up) beside the
     held-out patients' Kaplan-Meier estimate at T

beside the Cox baseline the sweep fitted (candle_ray.baseline: L2-penalised, its penalty by 5-fold CV on the
train split) scored on the same held-out patients. Prints mean ± sd over the splits of each C-index and of
ensemble ÷ baseline (target >= 1.00); then, by T, each arm's calibration gap |mean predicted survival -
Kaplan-Meier| and its Brier score (IPCW), beside those of predicting every held-out patient the train patients'
Kaplan-Meier at T (the cohort's average: no ranking, and the noise floor of a fifth of a cohort).

    .venv/bin/python bench/survival.py                              # 4 cohorts x 3 splits, ~40 min here
    .venv/bin/python bench/survival.py --datasets nki70 --splits 1 --num-samples 4
"""

from __future__ import annotations

import argparse
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
DATASETS = ("nki70", "gse4335", "gse3143", "gse1992")
HELD_OUT = 0.2  # share of each event class held out before any sweep
EXPERIMENT = '''from ray import tune
from candle_ray import Experiment, TableDataset

experiment = Experiment(
    name="{name}",
    dataset=TableDataset("train.csv", name="{name}", label="time", event="event", drop=("pid",),
                         categorical={categorical!r}, impute="median", val_fraction=0.2),
    model="mlp",
    defaults={{"epochs": 60, "batch_size": 32, "learning_rate": 0.001, "optimizer": "adam", "dense": [256, 64],
              "dropout": 0.2, "weight_decay": 0.1, "activation": "relu", "rng_seed": 1}},
    search_space={{"learning_rate": tune.loguniform(3e-5, 1e-2), "dropout": tune.uniform(0.0, 0.6),
                  "weight_decay": tune.loguniform(1e-3, 3.0), "batch_size": tune.choice([16, 32, 64]),
                  "dense": tune.choice([[], [64], [256], [256, 64], [512, 128]])}},
)
'''
ARMS = ("best trial", "ensemble", "Cox baseline")


def cohort(name: str) -> pd.DataFrame:
    frame = pd.read_pickle(_real_datasets.package_dir("SurvSet") / "resources" / "pickles" / f"{name}.pickle")
    genes = sum(c.startswith("num_") for c in frame.columns)
    log(f"{name}: {len(frame)} patients, {int(frame['event'].sum())} events, {genes:,} numeric features, "
        f"{sum(c.startswith('fac_') for c in frame.columns)} clinical factors")
    return frame


def held_out_baseline(folder: Path, experiment: Path, horizon: float) -> tuple[float, float]:
    """The Cox baseline of the sweep's own train split (the prepared cache entry), on the held-out patients:
    (C-index, mean survival by `horizon` from the baseline hazard it keeps, as predict --times computes it, and
    its Brier score)."""
    from candle_ray import baseline, cox
    from candle_ray.data.cache import Cache
    from candle_ray.data.features import describe, read_for_prediction
    from candle_ray.experiment import load_experiment

    entry = Cache(folder / "cache").lookup(load_experiment(experiment).dataset)
    fitted = baseline.fit(entry)
    X, y, _ = read_for_prediction(folder / "heldout.csv", describe(entry))
    weights, bias = fitted.linear
    risk = X @ weights[0] + bias[0]
    survival = cox.survival_at(risk, fitted.objective_state["baseline_hazard"], [horizon])[:, 0]
    return cox.concordance(risk, y), float(survival.mean()), cox.brier_score(y, survival, horizon)


def scores_of(cli: str, model: str, folder: Path, horizon: float, go: dict) -> tuple[float, ...]:
    """predict's (concordance index, mean predicted survival by `horizon`, Kaplan-Meier by it, Brier score) on
    the held-out patients, as it prints them."""
    text = run_command([cli, "predict", model, "--data", str(folder / "heldout.csv"), "--out",
                        str(folder / f"{model}.tsv"), "--storage", str(folder / "sweeps"), "--times", f"{horizon:g}"],
                       log_path=folder / f"predict-{model}.log", what=f"predict {model}", **go)
    found = re.search(r"concordance index ([\d.]+).*mean predicted ([\d.]+), Kaplan-Meier ([\d.]+), "
                      r"Brier score ([\d.]+)", text)
    if not found:
        raise CommandFailed(f"predict {model} printed no concordance index or survival for the held-out patients")
    return tuple(float(g) for g in found.groups())


def run_split(name: str, frame: pd.DataFrame, k: int, args, data_dir: Path, address: str | None) -> dict:
    seed = args.seed * 1000 + k
    rng, held = np.random.default_rng(seed), np.zeros(len(frame), dtype=bool)
    for event in (0, 1):
        rows = np.flatnonzero(frame["event"].to_numpy() == event)
        held[rng.permutation(rows)[: round(HELD_OUT * len(rows))]] = True
    folder = data_dir / f"{name}-{k}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    frame[~held].to_csv(folder / "train.csv", index=False)
    frame[held].to_csv(folder / "heldout.csv", index=False)
    exp = folder / "experiment.py"
    exp.write_text(EXPERIMENT.format(name=name, categorical=tuple(c for c in frame if c.startswith("fac_"))))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(MLFLOW_TRACKING_URI=f"sqlite:///{folder / 'mlflow.db'}", CANDLE_RAY_CACHE=str(folder / "cache"),
               CANDLE_RAY_OUTPUT=str(folder / "runs"), RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    cli, go = str(venv_bin() / "candle-ray"), dict(env=env, cwd=folder)
    where = ["--storage", str(folder / "sweeps"), *(["--address", address] if address else [])]
    run_command([cli, "tune", str(exp), "--num-samples", str(args.num_samples), "--search", "optuna", "--scheduler",
                 "asha", "--seed", str(seed), "--name", "sweep", *where], log_path=folder / "tune.log",
                what=f"{name} tune", **go)
    run_command([cli, "ensemble", str(exp), "--from-sweep", "sweep", "--top", str(min(args.top, args.num_samples)),
                 "--members", str(args.members), "--name", "ensemble", *where],
                log_path=folder / "ensemble.log", what=f"{name} ensemble", **go)
    horizon = float(np.round(frame["time"][~held].median(), 3))
    (best, best_s, km, best_b), (ens, ens_s, _, ens_b) = (scores_of(cli, m, folder, horizon, go)
                                                          for m in ("sweep", "ensemble"))
    cox_c, cox_s, cox_b = held_out_baseline(folder, exp, horizon)
    average = train_km(frame[~held], horizon)
    out = {"best trial": best, "ensemble": ens, "Cox baseline": cox_c,
           "gap": {"best trial": abs(best_s - km), "ensemble": abs(ens_s - km), "Cox baseline": abs(cox_s - km),
                   "train KM": abs(average - km)},
           "brier": {"best trial": best_b, "ensemble": ens_b, "Cox baseline": cox_b,
                     "train KM": brier_of_average(frame[held], average, horizon)}}
    log(f"  {name} split {k}: held-out C-index " + ", ".join(f"{arm} {out[arm]:.3f}" for arm in ARMS)
        + f" ({int(frame['event'][held].sum())} events in {int(held.sum())} patients); survival by {horizon:g}: "
        f"Kaplan-Meier {km:.3f}, best trial {best_s:.3f}, ensemble {ens_s:.3f}, Cox {cox_s:.3f}")
    if not args.keep:
        shutil.rmtree(folder, ignore_errors=True)
    return out


def signed_times(rows: pd.DataFrame):
    from candle_ray import cox

    return cox.encode(rows["time"].to_numpy(float), rows["event"].to_numpy())


def train_km(rows: pd.DataFrame, horizon: float) -> float:
    from candle_ray import cox

    return float(cox.kaplan_meier(signed_times(rows), [horizon])[0])


def brier_of_average(held: pd.DataFrame, survival: float, horizon: float) -> float:
    from candle_ray import cox

    return cox.brier_score(signed_times(held), np.full(len(held), survival), horizon)


def pm(values: list[float]) -> str:
    return f"{statistics.fmean(values):.3f} ± {statistics.stdev(values) if len(values) > 1 else 0.0:.3f}"


def report(results: dict[str, list[dict]]) -> None:
    log(f"\n{'dataset':<9} " + " ".join(f"{arm:>15}" for arm in ARMS) + f" {'ens ÷ base':>15}   (held-out C-index, "
        f"mean ± sd over splits)")
    for name, splits in results.items():
        ratios = [r["ensemble"] / r["Cox baseline"] for r in splits]
        log(f"{name:<9} " + " ".join(f"{pm([r[arm] for r in splits]):>15}" for arm in ARMS) + f" {pm(ratios):>15}")
    gaps = (*ARMS, "train KM")
    log(f"\n{'dataset':<9} " + " ".join(f"{arm:>15}" for arm in gaps) + "   (|mean predicted survival - held-out "
        "Kaplan-Meier| by the train median follow-up, mean ± sd over splits)")
    for name, splits in results.items():
        log(f"{name:<9} " + " ".join(f"{pm([r['gap'][arm] for r in splits]):>15}" for arm in gaps))
    log(f"\n{'dataset':<9} " + " ".join(f"{arm:>15}" for arm in gaps) + "   (Brier score by the train median "
        "follow-up, held-out patients; train KM: every patient given the train Kaplan-Meier)")
    for name, splits in results.items():
        log(f"{name:<9} " + " ".join(f"{pm([r['brier'][arm] for r in splits]):>15}" for arm in gaps))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", default=",".join(DATASETS), help=f"[default {','.join(DATASETS)}]")
    p.add_argument("--splits", type=int, default=3, help="seeded held-out fifths per dataset [default 3]")
    p.add_argument("--num-samples", type=int, default=16, help="trials per sweep [default 16]")
    p.add_argument("--top", type=int, default=1, help="configurations the ensemble takes [default 1]")
    p.add_argument("--members", type=int, default=5, help="seed replicas of each [default 5]")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", default="~/.cache/candle-ray-bench/survival")
    p.add_argument("--keep", action="store_true", help="keep the run folders")
    args = p.parse_args(argv)
    names = [n for n in args.datasets.split(",") if n]
    if unknown := sorted(set(names) - set(DATASETS)):
        p.error(f"--datasets: unknown {unknown}; choose from {', '.join(DATASETS)}")
    data_dir = Path(args.data_dir).expanduser().resolve()
    if REPO in data_dir.parents or data_dir == REPO:
        sys.exit(f"--data-dir {data_dir} is inside the repository; the data must stay outside it")
    t0 = time.monotonic()
    _real_datasets.ensure_packages(["gse1992"], str(venv_bin() / "python"), log=log)  # the survset package
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    head = RayHead(data_dir / "ray-head", env)
    results = {}
    try:
        address = head.start()
        for name in names:
            frame = cohort(name)
            results[name] = [run_split(name, frame, k, args, data_dir, address) for k in range(args.splits)]
    finally:
        head.stop()
    report(results)
    log(f"total {time.monotonic() - t0:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
