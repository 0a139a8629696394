"""P2: per-trial overhead of `candle-ray tune` = (time in Tune - pure compute) / trials.

Targets: <= 1 s per 1-worker trial, <= 8 s per 2-worker DDP trial. Trials run one at a time (so the
overhead is not hidden by overlap), on the tiny NT3-format smoke data, 2 epochs each.
"""

import argparse
import tempfile
from pathlib import Path

from _sweep import TINY, run_sweep


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--ddp-trials", type=int, default=3)
    args = parser.parse_args()
    common = ["--smoke", "--scheduler", "fifo", "--max-concurrent", "1", "--set", "epochs=2"]
    with tempfile.TemporaryDirectory(prefix="p2-", dir="/tmp") as tmp:
        one = run_sweep(Path(tmp), str(TINY), *common, "--num-samples", str(args.trials), "--name", "one")
        ddp = run_sweep(Path(tmp), str(TINY), *common, "--num-samples", str(args.ddp_trials),
                        "--workers-per-trial", "2", "--name", "ddp")
    for label, r, target in (("1-worker", one, 1.0), ("2-worker DDP", ddp, 8.0)):
        per = (r["fit_s"] - r["compute_s"]) / r["trials"]
        print(f"P2 {label}: {r['trials']} trials, {r['fit_s']:.1f}s in Tune, {r['compute_s']:.1f}s of epochs -> "
              f"{per:.2f}s overhead per trial (target <= {target:g}s; sweep wall incl. Ray start {r['wall_s']:.1f}s)")


if __name__ == "__main__":
    main()
