"""P5: trials per hour with 2 concurrent 1-CPU trials vs one at a time (target >= 1.8x).

The same sweep twice (same seed, so the same configurations), --max-concurrent 1 then 2, each trial
with one CPU and one thread: NT3 smoke data, a 64-filter conv stack, batch 20, 8 epochs, searching
learning rate and dropout (so every trial does the same work). Two rates are printed: over the whole
time in Tune, and in steady state (first to last epoch, leaving out the one-off start of the trial
actors, which a long sweep pays once).
"""

import json
import tempfile
from pathlib import Path

import sys

from _sweep import NT3, run_sweep

EXTRA = sys.argv[1:]  # more `candle-ray tune` options, to compare set-ups


def steady_rate(r) -> float:
    stamps = [ts for ts, *_ in r["epochs"]]
    epoch_s = r["compute_s"] / len(stamps)  # one epoch's time: the first report comes after it
    return r["trials"] / ((max(stamps) - min(stamps)) / 1000 + epoch_s) * 3600


def main():
    with tempfile.TemporaryDirectory(prefix="p5-", dir="/tmp") as tmp:
        space = Path(tmp) / "space.json"
        space.write_text(json.dumps([{"name": "learning_rate", "type": "float", "lower": 0.001, "upper": 0.02},
                                     {"name": "dropout", "type": "float", "lower": 0.0, "upper": 0.5}]))
        args = [str(NT3), "--smoke", "--space", str(space), "--scheduler", "fifo", "--num-samples", "20",
                "--set", "epochs=8", "--set", "conv=64 20 1 64 10 1", "--cpus-per-worker", "1", "--seed", "3", *EXTRA]
        serial = run_sweep(Path(tmp), *args, "--max-concurrent", "1", "--name", "serial")
        both = run_sweep(Path(tmp), *args, "--max-concurrent", "2", "--name", "both")
    rate = lambda r: r["trials"] / r["fit_s"] * 3600  # noqa: E731
    print(f"P5 concurrency, steady state: one at a time {steady_rate(serial):,.0f} trials/h, 2 concurrent "
          f"{steady_rate(both):,.0f} trials/h: {steady_rate(both) / steady_rate(serial):.2f}x (target >= 1.8x)")
    print(f"P5 concurrency, whole time in Tune: {serial['fit_s']:.1f}s vs {both['fit_s']:.1f}s: "
          f"{rate(both) / rate(serial):.2f}x (epochs: {serial['compute_s']:.1f}s one at a time, "
          f"{both['compute_s']:.1f}s concurrent: the 2 cores also run the driver and Ray)")


if __name__ == "__main__":
    main()
