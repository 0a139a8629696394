"""P1: candle-ray's worker loop vs a plain PyTorch loop on the same model, data and threads (target >= 0.95).
Also: the data feed's share of an epoch (target <= 5 %).

Both loops train the NT3 architecture (narrowed) on the same synthetic NT3-format data from the cache,
with the same batch size, optimizer and thread count. They run interleaved, several rounds, and the
medians of the steady-state epochs are compared (this machine is shared and noisy).
"""

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from candle_ray import models
from candle_ray.data.cache import Cache, open_split
from candle_ray.data.feed import BatchFeed
from candle_ray.data.synthetic import synthesize
from candle_ray.experiment import load_experiment
from candle_ray.loop import World, make_optimizer, train_epochs

ROOT = Path(__file__).resolve().parents[1]
CONFIG = {"conv": [32, 20, 1, 32, 10, 1], "pool": [1, 10], "dense": [200, 20], "dropout": 0.1, "activation": "relu",
          "batch_size": 20, "learning_rate": 0.001, "optimizer": "sgd", "momentum": 0.0, "rng_seed": 1,
          "timeout": -1, "epochs": 4}


def plain_loop(x, y, shape, threads, epochs):
    """The reference: what a researcher would write by hand, tensors in memory."""
    torch.set_num_threads(threads)
    torch.manual_seed(1)
    model = models.build("nt3", {**CONFIG, **shape})
    opt = make_optimizer("sgd", model.parameters(), 0.001)
    loss_fn = torch.nn.CrossEntropyLoss()
    xt, yt = torch.from_numpy(x.copy()), torch.from_numpy(y.copy())
    rates = []
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(yt), generator=torch.Generator().manual_seed(epoch))
        t0 = time.perf_counter()
        for i in range(0, len(perm), CONFIG["batch_size"]):
            idx = perm[i:i + CONFIG["batch_size"]]
            out = model(xt[idx])
            loss = loss_fn(out, yt[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        rates.append(len(yt) / (time.perf_counter() - t0))
    return rates[1:]


def worker_loop(entry, shape, threads, epochs, run_dir):
    job = {"config": {**CONFIG, "epochs": epochs}, "model": "nt3", "task": "classification", "model_shape": shape,
           "entry": str(entry.path), "run_dir": str(run_dir), "metric": "val_loss", "mode": "min",
           "threads": threads, "precision": "fp32", "feed": "memory"}
    return [m["samples_per_s"] for m in train_epochs(job, World())][1:]


def feed_share(entry, threads, epoch_seconds):
    torch.set_num_threads(threads)
    x, y = open_split(entry.path, "train")
    feed = BatchFeed(x, y, CONFIG["batch_size"], shuffle=True, seed=1)
    t0 = time.perf_counter()
    for _ in feed.epoch(1):
        pass
    return (time.perf_counter() - t0) / epoch_seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=640)
    parser.add_argument("--features", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        nt3 = load_experiment(ROOT / "experiments" / "nt3.py")
        ds = synthesize(nt3.dataset, tmp / "files", rows=(args.rows, 64), features=args.features, seed=1)
        entry = Cache(tmp / "cache").prepare(ds, log=lambda *_: None)
        x, y = open_split(entry.path, "train")
        shape = {"input_dim": entry.num_features, "classes": entry.num_classes}
        plain, loop = [], []
        for r in range(args.rounds):
            plain += plain_loop(x, y, shape, args.threads, 4)
            loop += worker_loop(entry, shape, args.threads, 4, tmp / f"run{r}")
        print("plain", [round(v) for v in plain], "loop", [round(v) for v in loop])
        p, w = statistics.median(plain), statistics.median(loop)
        share = feed_share(entry, args.threads, len(y) / w)
    print(f"P1 loop throughput: plain PyTorch {p:,.0f} samples/s, candle-ray worker loop {w:,.0f} samples/s, "
          f"ratio {w / p:.3f} (target >= 0.95)  [{args.rows} rows x {args.features} features, "
          f"{args.threads} threads, {args.rounds} rounds]")
    print(f"P3b data feed share of an epoch: {100 * share:.2f} % (target <= 5 %)")


if __name__ == "__main__":
    main()
