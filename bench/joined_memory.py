"""Joined data (P1B3, Uno, Combo): the joined feed's peak memory as the response rows grow with the
same feature tables (target: 10x the rows, < 2x the peak memory).

Prepares two joined cache entries through the real path (ReaderDataset -> Cache.prepare), with this
file as their reader: the same feature tables (cells x genes, drugs x descriptors, seeded) and N or
10 N response rows indexing them. Then iterates one shuffled epoch of the joined feed over each in a
fresh process and reads that process's peak resident memory. What grows with the rows is the
per-row index columns and the epoch's permutation (~24 bytes a row), not the features: a
materialised matrix would hold 4 x (1 + genes + descriptors) bytes a row.
"""

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OPTIONS = {"rows": 100_000, "cells": 60, "genes": 2000, "drugs": 20_000, "descriptors": 400}

ITERATE = """
import resource, sys
from candle_ray.data.feed import make_feed
def rss():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024
base = rss()
feed = make_feed(sys.argv[1], "train", 256, shuffle=True, seed=0)
seen = sum(len(yb) for _, yb in feed.epoch(1))
print(seen, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, base)
"""


def read(paths, options, seed):
    """This bench's reader: seeded feature tables that do not depend on the row count, random rows."""
    import numpy as np
    import pandas as pd

    from candle_ray.data.joined import FeatureTable, JoinedTables, Slot

    tables_rng, rows_rng = np.random.default_rng([seed, 0]), np.random.default_rng([seed, options["rows"]])
    tables = {
        "cell.expression": FeatureTable("cell.expression", [f"C{i}" for i in range(options["cells"])],
                                        tables_rng.standard_normal((options["cells"], options["genes"]), np.float32),
                                        [f"G{j}" for j in range(options["genes"])]),
        "drug.descriptors": FeatureTable("drug.descriptors", [str(i) for i in range(options["drugs"])],
                                         tables_rng.standard_normal((options["drugs"], options["descriptors"]), np.float32),
                                         [f"D{j}" for j in range(options["descriptors"])]),
    }
    n = options["rows"]
    frame = pd.DataFrame({"conc": rows_rng.uniform(-5, -4, n).astype(np.float32),
                          "cell": rows_rng.integers(0, options["cells"], n).astype(np.int32),
                          "drug": rows_rng.integers(0, options["drugs"], n).astype(np.int32),
                          "y": rows_rng.standard_normal(n).astype(np.float32)})
    n_val = n // 10
    slots = [Slot("conc", None, "conc"), Slot("cell.expression", "cell.expression", "cell"),
             Slot("drug.descriptors", "drug.descriptors", "drug")]
    return JoinedTables(tables=tables, slots=slots, splits={"train": frame.iloc[n_val:], "val": frame.iloc[:n_val]})


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=OPTIONS["rows"])
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))  # this file is then importable as the reader module bench.joined_memory
    from candle_ray.data.cache import Cache
    from candle_ray.data.spec import ReaderDataset

    results = {}
    with tempfile.TemporaryDirectory(prefix="joined-", dir="/tmp") as tmp:
        marker = Path(tmp) / "tables.txt"
        marker.write_text("joined memory bench\n")
        cache = Cache(Path(tmp) / "cache")
        for rows in (args.rows, 10 * args.rows):
            ds = ReaderDataset("joined_bench", reader="bench.joined_memory", sources={"marker": str(marker)},
                               options={**OPTIONS, "rows": rows}, seed=0)
            entry = cache.prepare(ds, log=lambda *_: None)
            out = subprocess.run([sys.executable, "-c", ITERATE, str(entry.path)], check=True, capture_output=True,
                                 text=True, cwd=ROOT).stdout.split()
            assert int(out[0]) == entry.rows["train"]
            results[rows] = (float(out[1]), float(out[1]) - float(out[2]))
    small, big = args.rows, 10 * args.rows
    tables = (OPTIONS["cells"] * OPTIONS["genes"] + OPTIONS["drugs"] * OPTIONS["descriptors"]) * 4 / 2**20
    width = 1 + OPTIONS["genes"] + OPTIONS["descriptors"]
    per_row = (results[big][1] - results[small][1]) * 2**20 / (0.9 * (big - small))
    print(f"joined feed peak memory ({tables:.0f} MiB of feature tables, {width:,} inputs a row): "
          f"{results[small][0]:.0f} MiB for {small:,} rows (feed +{results[small][1]:.0f} MiB), {results[big][0]:.0f} MiB "
          f"for {big:,} rows (feed +{results[big][1]:.0f} MiB): {results[big][0] / results[small][0]:.2f}x process, "
          f"{results[big][1] / results[small][1]:.2f}x feed, for 10x the rows (target < 2x); {per_row:.0f} B per extra "
          f"row vs {4 * width:,} B materialised")


if __name__ == "__main__":
    main()
