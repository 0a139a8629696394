"""P3: loading NT3-format data from the Arrow cache vs pandas.read_csv of the same CSV (target >= 50x).

Writes synthetic data in the exact NT3 file format at full width (60,483 features) by default,
prepares the cache entry, then times, side by side, pandas.read_csv of the CSV and open_split of the
entry (memory-mapped Arrow; the rows are touched so the comparison includes reading the values).
"""

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from candle_ray.data.cache import Cache, open_split
from candle_ray.data.synthetic import synthesize
from candle_ray.experiment import load_experiment

ROOT = Path(__file__).resolve().parents[1]


def timed(fn, repeat):
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1120)
    parser.add_argument("--features", type=int, default=60483)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        tmp = Path(tmp)
        nt3 = load_experiment(ROOT / "experiments" / "nt3.py")
        t0 = time.perf_counter()
        ds = synthesize(nt3.dataset, tmp / "files", rows=(args.rows, 16), features=args.features, seed=2)
        entry = Cache(tmp / "cache").prepare(ds, log=lambda *_: None)
        prep = time.perf_counter() - t0
        csv_path = Path(ds.train.url[len("file://"):])

        def load_pandas():
            df = pd.read_csv(csv_path, header=None)
            return df.iloc[:, 1:].to_numpy(np.float32), df.iloc[:, 0].to_numpy()

        def load_cache():
            x, y = open_split(entry.path, "train")
            return float(x.sum(dtype=np.float64)) + float(y.sum())  # touch every value

        t_pandas = timed(load_pandas, args.repeat)
        t_cache = timed(load_cache, args.repeat)
        t_open = timed(lambda: open_split(entry.path, "train"), args.repeat)
    print(f"P3 data load: pandas.read_csv {t_pandas:.3f}s, cache open+read all values {t_cache:.4f}s "
          f"(open only {t_open * 1000:.2f} ms): {t_pandas / t_cache:,.0f}x faster (target >= 50x) "
          f"[{args.rows} x {args.features}; generate+prepare {prep:.1f}s]")


if __name__ == "__main__":
    main()
