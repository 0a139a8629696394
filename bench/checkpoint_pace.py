"""Checkpoint writes a trial pays for, on wide data (targets: paced <= 0.8 of every epoch's time, <= 0.25 of
its bytes written).

A `tune --cv 5` trial's own code (candle_ray.trial._mean_over_folds, in this process, no Ray) on a matrix
as wide as RNA-seq (60,000 genes; 100 rows, 2 classes), a [256, 64] MLP with Adam: 61 MB of weights and
123 MB of Adam's state per fold. Two settings, interleaved over rounds (this machine is noisy):
- every epoch: each fold writes a resumable `last` (weights + optimizer state) every epoch, as a `train`
  run does and as every trial did before the pace (a pace of 0);
- paced: `last` only at the trial's hand-overs to Tune (the default --checkpoint-every, 30 s) and at its
  final epoch, `best` as weights alone (what a sweep's trials do now).
Prints each setting's median seconds per trial epoch, the bytes it wrote per trial, and the ratios. The
time saved shrinks as the rows (compute per epoch) grow: on 28 real samples of 61,860 genes the paced
sweep spent 0.46 of the time in Tune (README); here, 100 rows, 0.75 when this bench was written.
"""

import argparse
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from candle_ray import trial
from candle_ray.data.cache import Cache
from candle_ray.data.features import describe
from candle_ray.data.spec import TableDataset
from candle_ray.job import Job
from candle_ray.sweep import fold_assignment

FOLDS = 5
CONFIG = {"batch_size": 32, "learning_rate": 1e-4, "optimizer": "adam", "dense": [256, 64], "dropout": 0.2,
          "activation": "relu", "rng_seed": 1, "timeout": -1, "reduce_lr": False}


def wide_entry(folder: Path, rows: int, genes: int):
    """A seeded expression-like matrix with a weak class signal in 50 genes, prepared in the cache."""
    rng = np.random.default_rng(0)
    y = np.arange(rows) % 2
    x = rng.normal(size=(rows, genes)).astype(np.float32)
    x[:, :50] += 0.5 * y[:, None]
    header = "label," + ",".join(f"g{j}" for j in range(genes))
    np.savetxt(folder / "wide.csv", np.column_stack([y, x]), delimiter=",", header=header, comments="", fmt="%.4g")
    return Cache(folder / "cache").prepare(TableDataset(str(folder / "wide.csv"), label="label"), log=lambda *_: None)


def written_bytes() -> int:
    """Bytes this process has written through write() calls (Linux /proc/self/io wchar)."""
    with open("/proc/self/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("wchar:"))


def one_trial(job: Job, run_dir: Path) -> tuple[float, int]:
    """(seconds per trial epoch, bytes written) for one cv trial from scratch."""
    job = replace(job, run_dir=str(run_dir))
    before, start = written_bytes(), time.perf_counter()
    results = list(trial._mean_over_folds(job, torch.device("cpu")))
    return (time.perf_counter() - start) / len(results), written_bytes() - before


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100)
    parser.add_argument("--genes", type=int, default=60000)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="candle-ray-pace-") as tmp:
        tmp = Path(tmp)
        entry = wide_entry(tmp, args.rows, args.genes)
        base = Job(config={**CONFIG, "epochs": args.epochs}, model="mlp", task="classification",
                   model_shape={"input_dim": entry.num_features, "classes": 2}, entry=str(entry.path),
                   metric="val_loss", mode="min", threads=1, data=describe(entry), cv_folds=FOLDS,
                   cv_assignment=fold_assignment(entry, {"folds": FOLDS, "seed": 0, "stratify": "auto"}))
        settings = {"every epoch": 0.0, "paced": 30.0}
        seen = {name: [] for name in settings}
        for r in range(args.rounds):
            for name, every_s in settings.items():
                seen[name].append(one_trial(replace(base, tune_checkpoint_s=every_s), tmp / f"{name}-{r}".replace(" ", "-")))
    per_epoch = {name: statistics.median(s for s, _ in runs) for name, runs in seen.items()}
    for name, runs in seen.items():
        print(f"{name:12s} {per_epoch[name]:.3f} s per trial epoch ({FOLDS} folds), "
              f"{statistics.median(b for _, b in runs) / 1e9:.2f} GB written per trial of {args.epochs} epochs")
    ratio = per_epoch["paced"] / per_epoch["every epoch"]
    written = statistics.median(b for _, b in seen["paced"]) / statistics.median(b for _, b in seen["every epoch"])
    print(f"checkpoint pace: {args.rows} rows x {args.genes:,} genes, --cv {FOLDS}: paced / every epoch: time "
          f"{ratio:.2f} (target <= 0.8: {'met' if ratio <= 0.8 else 'NOT met'}), bytes written {written:.2f} "
          f"(target <= 0.25: {'met' if written <= 0.25 else 'NOT met'})")


if __name__ == "__main__":
    main()
