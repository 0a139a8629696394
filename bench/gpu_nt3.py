"""NT3 at full size (60,483 features) on one NVIDIA GPU: seconds per epoch through candle-ray's loop.

CANDLE reports 11 s/epoch on a V100 at batch 5 (nt3_perf_bench_model.txt: 1,120 training rows);
the target for one H200 is at least ten times faster (<= 1.1 s/epoch). Data: synthetic, in the exact
NT3 format and size. Runs fp32 (TF32) and mixed precision side by side. Needs only torch, numpy and
pyarrow (no Ray, no MLflow), so it runs on a GPU machine's own Python.
"""

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from candle_ray.data.cache import Cache
from candle_ray.data.spec import Dataset, Source
from candle_ray.data.synthetic import synthesize
from candle_ray.loop import World, train_epochs

# experiments/nt3.py's dataset and defaults, without the experiment file (which imports Ray Tune).
NT3_DATA = Dataset(name="nt3", train=Source("nt_train2.csv"), val=Source("nt_test2.csv"), format="candle_noheader",
                   classes=2, scaling="maxabs", scaling_fit="train+val")
NT3_DEFAULTS = {"learning_rate": 0.001, "optimizer": "sgd", "momentum": 0.0, "dropout": 0.1, "activation": "relu",
                "conv": [128, 20, 1, 128, 10, 1], "pool": [1, 10], "dense": [200, 20], "rng_seed": 7102,
                "reduce_lr": True, "reduce_lr_factor": 0.1, "reduce_lr_patience": 10}


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, nargs="+", default=[5, 20])
    parser.add_argument("--precision", nargs="+", default=["bf16", "fp32"])
    parser.add_argument("--features", type=int, default=60483)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device: this benchmark needs an NVIDIA GPU")
    print(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA {torch.version.cuda}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        ds = synthesize(NT3_DATA, tmp / "files", rows=(1120, 280), features=args.features, seed=0)
        entry = Cache(tmp / "cache").prepare(ds, log=lambda *_: None)
        print(f"data: 1120 train / 280 val x {entry.num_features} features, prepared in {time.perf_counter() - t0:.1f}s")
        for batch in args.batch_size:
            for precision in args.precision:
                config = {**NT3_DEFAULTS, "epochs": args.epochs, "batch_size": batch, "timeout": -1,
                          "ckpt_save_interval": 0, "ckpt_save_best": False}
                job = {"config": config, "model": "nt3", "task": "classification",
                       "model_shape": {"input_dim": entry.num_features, "classes": 2}, "entry": str(entry.path),
                       "run_dir": str(tmp / f"run-{batch}-{precision}"), "metric": "val_loss", "mode": "min",
                       "threads": 4, "precision": precision, "feed": "memory"}
                torch.cuda.synchronize()
                epochs = list(train_epochs(job, World(device=torch.device("cuda", 0))))
                times = [m["epoch_time_s"] for m in epochs]
                steady = statistics.median(times[1:]) if len(times) > 1 else times[0]
                print(f"NT3 full size, batch {batch:>3}, {precision}: {steady:.2f} s/epoch (steady; all {['%.2f' % t for t in times]}), "
                      f"{1120 / steady:,.0f} samples/s, V100 reference 11 s/epoch at batch 5 -> {11 / steady:.1f}x; "
                      f"final val_acc {epochs[-1]['val_accuracy']:.3f}, peak GPU memory "
                      f"{torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
                torch.cuda.reset_peak_memory_stats()


if __name__ == "__main__":
    main()
