"""Data larger than memory: the streaming feed's peak memory as the rows grow (target: 10x the rows,
< 2x the peak memory).

Writes cache-format Arrow splits (x: fixed_size_list<float32>[d], y: int64) of N and 10 N rows, then
iterates one shuffled epoch of StreamFeed over each in a fresh process and reads that process's peak
resident memory. The in-memory BatchFeed over the same rows is shown for contrast: it grows with the
data, while the streaming feed holds one chunk at a time.
"""

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

WRITE = """
import sys, numpy as np, pyarrow as pa
path, rows, d = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
schema = pa.schema([("x", pa.list_(pa.float32(), d)), ("y", pa.int64())])
rng = np.random.default_rng(0)
with pa.OSFile(path, "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
    for start in range(0, rows, 10_000):
        n = min(10_000, rows - start)
        x = pa.FixedSizeListArray.from_arrays(pa.array(rng.random(n * d, dtype=np.float32)), d)
        writer.write_batch(pa.record_batch([x, pa.array(rng.integers(0, 2, n))], schema=schema))
"""

ITERATE = """
import resource, sys
from candle_ray.data.feed import BatchFeed, StreamFeed
import pyarrow as pa, numpy as np
path, mode = sys.argv[1], sys.argv[2]
if mode == "stream":
    feed = StreamFeed(path, 64, shuffle=True, seed=0)
else:
    table = pa.ipc.open_file(pa.memory_map(path)).read_all()
    x = np.concatenate([np.frombuffer(c.values.buffers()[1], dtype=np.float32, count=len(c) * c.type.list_size)
                        .reshape(len(c), -1) for c in table.column("x").chunks])
    feed = BatchFeed(x, table.column("y").to_numpy(), 64, shuffle=True, seed=0)
seen = sum(len(yb) for _, yb in feed.epoch(1))
print(seen, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--features", type=int, default=1000)
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory(prefix="stream-", dir="/tmp") as tmp:
        for rows in (args.rows, 10 * args.rows):
            path = Path(tmp) / f"train-{rows}.arrow"
            subprocess.run([sys.executable, "-c", WRITE, str(path), str(rows), str(args.features)], check=True)
            for mode in ("stream", "memory"):
                out = subprocess.run([sys.executable, "-c", ITERATE, str(path), mode], check=True,
                                     capture_output=True, text=True).stdout.split()
                assert int(out[0]) == rows
                results[(rows, mode)] = float(out[1])
            path.unlink()
    small, big = args.rows, 10 * args.rows
    size = lambda rows: rows * args.features * 4 / 2**20  # noqa: E731
    print(f"streaming feed peak memory: {results[(small, 'stream')]:.0f} MiB for {small:,} rows ({size(small):.0f} MiB "
          f"of data), {results[(big, 'stream')]:.0f} MiB for {big:,} rows ({size(big):.0f} MiB): "
          f"{results[(big, 'stream')] / results[(small, 'stream')]:.2f}x for 10x the rows (target < 2x)")
    print(f"in-memory feed, for contrast: {results[(small, 'memory')]:.0f} MiB -> {results[(big, 'memory')]:.0f} MiB "
          f"({results[(big, 'memory')] / results[(small, 'memory')]:.2f}x)")


if __name__ == "__main__":
    main()
