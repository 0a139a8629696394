"""P4: how fast each search method reaches a good model, against random search, over several seeds.

The task is one no part of candle-ray was built around: Friedman's regression #1 (scikit-learn's
make_friedman1: y = 10 sin(pi x1 x2) + 20 (x3 - 0.5)^2 + 10 x4 + 5 x5 + noise, 5 of 20 features used,
2,000 rows), as a user's own matrix (a CSV and an experiment file with the README's own-matrix search
space: learning rate, dropout, weight decay, batch size, dense layers). Smoke data of a CANDLE benchmark
would not do: a good trial reaches a validation loss of 0 there, so every method "reaches" the target.

Every method gets the same budget: `--trials` trials of up to `--epochs` epochs. Random search (FIFO)
trains every trial to the end; ASHA and BOHB stop weak trials early; TPE and GP (FIFO) train every trial
to the end but choose what to try from what finished.

The target is random search's median best val_loss over the seeds (at its full budget). For each method
and seed, the epochs spent (in time order, over all trials) until the first epoch at or below the target;
printed per method: the median over seeds, divided by random search's median (target: ASHA <= 0.33, BOHB
<= 0.25), with the per-seed range; and the median best val_loss at the method's full budget (TPE and GP,
which spend random's epochs, should end lower).
"""

import argparse
import statistics
import tempfile
from pathlib import Path

from _sweep import ROOT, run_sweep

METHODS = {"random": ("random", "fifo"), "asha": ("random", "asha"), "tpe": ("optuna", "fifo"),
           "gp": ("gp", "fifo"), "bohb": ("bohb", "asha"),
           # not run by default: early stopping from the first epoch instead of the grace-period rule's
           "asha-g1": ("random", "asha", "--grace-period", "1"), "bohb-g1": ("bohb", "asha", "--grace-period", "1")}
DEFAULT_METHODS = ["random", "asha", "tpe", "gp", "bohb"]
GOALS = {"asha": "ratio <= 0.33", "bohb": "ratio <= 0.25", "asha-g1": "ratio <= 0.33", "bohb-g1": "ratio <= 0.25",
         "tpe": "median best < random's",
         "gp": "median best < random's"}


def epochs_to(values: list[float], target: float) -> int | None:
    """Epochs spent (1-based, time order) until the first value at or below `target`; None if never."""
    return next((i for i, v in enumerate(values, 1) if v <= target), None)


def middle(values: list) -> float | None:
    """The median, a method that never got there counting as the slowest (None when most never did)."""
    ordered = sorted(values, key=lambda v: float("inf") if v is None else v)
    middle_value = ordered[(len(ordered) - 1) // 2]  # the lower median: never between a number and None
    return None if middle_value is None else float(middle_value)


# The README's own-matrix experiment (experiments/expression_table.py: its defaults and search space) on this matrix.
EXPERIMENT = """
import importlib.util
from dataclasses import replace

from candle_ray import TableDataset

_spec = importlib.util.spec_from_file_location("expression_table", {path!r})
_module = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_module)
experiment = replace(_module.experiment, name="friedman",
                     dataset=TableDataset("friedman.csv", label="y", drop=("sample",), task="regression"))
"""


def write_task(folder: Path) -> Path:
    """The Friedman #1 matrix (seeded: every method and seed sees the same rows) and its experiment file."""
    import numpy as np
    import pandas as pd
    from sklearn.datasets import make_friedman1

    X, y = make_friedman1(n_samples=2000, n_features=20, noise=1.0, random_state=0)
    frame = pd.DataFrame(X, columns=[f"f{i:02d}" for i in range(1, 21)]).round(6)
    frame.insert(0, "y", np.round(y, 6))
    frame.insert(0, "sample", [f"s{i:04d}" for i in range(len(y))])
    frame.to_csv(folder / "friedman.csv", index=False)
    (folder / "friedman.py").write_text(EXPERIMENT.format(path=str(ROOT / "experiments" / "expression_table.py")))
    return folder / "friedman.py"


def run(args) -> dict:
    """{method: [each seed's epochs' val_loss, in time order]}"""
    runs = {m: [] for m in args.methods}
    with tempfile.TemporaryDirectory(prefix="p4-", dir="/tmp") as tmp:
        experiment = write_task(Path(tmp))
        for seed in range(args.seeds):
            for method in args.methods:
                searcher, scheduler, *extra = METHODS[method]
                done = run_sweep(Path(tmp), str(experiment), "--num-samples", str(args.trials), "--set",
                                 f"epochs={args.epochs}", "--seed", str(seed), "--search", searcher, "--scheduler",
                                 scheduler, "--name", f"{method}-{seed}", "--no-baseline", *extra)
                values = [v for *_, v in done["epochs"]]
                runs[method].append(values)
                print(f"  seed {seed} {method:7s}: {len(values)} epochs, best val_loss {min(values):.4f} "
                      f"({done['wall_s']:.0f}s)", flush=True)
    return runs


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=24)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--methods", nargs="+", default=DEFAULT_METHODS, choices=list(METHODS),
                        help="random always runs first: it sets the target")
    args = parser.parse_args()
    args.methods = ["random", *(m for m in args.methods if m != "random")]
    runs = run(args)
    target = statistics.median(min(values) for values in runs["random"])
    reach = {m: [epochs_to(values, target) for values in runs[m]] for m in runs}
    random_median = middle(reach["random"])
    print(f"P4 search efficiency: target val_loss {target:.4f} (random search's median best), {args.trials} trials "
          f"x up to {args.epochs} epochs, {args.seeds} seeds")
    for method in runs:
        spent = middle(reach[method])
        ratios = [None if r is None else r / random_median for r in reach[method]]
        shown = [f"{r:.2f}" if r is not None else "never" for r in ratios]
        best = statistics.median(min(values) for values in runs[method])
        ratio = f"{spent / random_median:.2f}" if spent is not None else "n/a (most seeds never reached it)"
        print(f"P4 {method:7s}: epochs to target median {spent if spent is not None else 'never'} -> ratio {ratio} "
              f"(per seed {', '.join(shown)}); median epochs run {statistics.median(map(len, runs[method])):.0f}; "
              f"median best val_loss {best:.4f}" + (f"  [goal: {GOALS[method]}]" if method in GOALS else ""))


if __name__ == "__main__":
    main()
