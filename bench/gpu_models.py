"""TC1 and Uno at full width on one NVIDIA GPU: samples per second for one epoch.

TC1 runs through candle-ray's training loop on synthetic data in TC1's exact format and size (4,320
train / 1,080 val rows x 60,483 features, 36 output units). Uno is the model at its reference input
(15,580 features: 2 doses, 942 landmark genes, 2 x (5,270 descriptors + 2,048 fingerprints); 21,275,001
parameters) trained on random rows for one epoch's worth of steps: the feed gathers its joined rows
on the GPU, so the model's step time is the throughput. CANDLE reports 311 ms per batch-32 step on
2018 hardware and 2,330 s/epoch at batch 512 for 20.2M rows. Needs only torch, numpy and pyarrow.
"""

import argparse
import tempfile
import time
from pathlib import Path

import torch

from candle_ray import models
from candle_ray.data.cache import Cache
from candle_ray.data.spec import Dataset, Source
from candle_ray.data.synthetic import synthesize
from candle_ray.loop import World, make_optimizer, train_epochs

TC1_DATA = Dataset(name="tc1", train=Source("type_18_300_train.csv"), val=Source("type_18_300_test.csv"),
                   format="candle_noheader", classes=36, scaling="maxabs", scaling_fit="train+val")
TC1_DEFAULTS = {"learning_rate": 0.01, "optimizer": "sgd", "momentum": 0.0, "dropout": 0.1, "activation": "relu",
                "conv": [128, 20, 1, 128, 10, 1], "pool": [1, 10], "dense": [200, 20], "rng_seed": 7102,
                "reduce_lr": False}


def tc1(batch: int, precision: str, tmp: Path) -> None:
    ds = synthesize(TC1_DATA, tmp / "files", rows=(4320, 1080), features=60483, seed=0)
    entry = Cache(tmp / "cache").prepare(ds, log=lambda *_: None)
    config = {**TC1_DEFAULTS, "epochs": 2, "batch_size": batch, "timeout": -1, "ckpt_save_interval": 0,
              "ckpt_save_best": False}
    job = {"config": config, "model": "tc1", "task": "classification", "feed": "memory", "threads": 4,
           "model_shape": {"input_dim": entry.num_features, "classes": 36}, "entry": str(entry.path),
           "run_dir": str(tmp / f"tc1-{batch}-{precision}"), "metric": "val_loss", "mode": "min", "precision": precision}
    epochs = list(train_epochs(job, World(device=torch.device("cuda", 0))))
    last = epochs[-1]
    print(f"TC1 full width, batch {batch}, {precision}: {last['epoch_time_s']:.2f} s/epoch (4,320 rows + validation), "
          f"{last['samples_per_s']:,.0f} training samples/s")


def uno(batch: int, precision: str, steps: int = 300) -> None:
    device = torch.device("cuda", 0)
    model = models.build("uno", {}).to(device)
    optimizer = make_optimizer("adam", model.parameters(), 0.001)
    x = torch.randn(batch * 8, 15580, device=device)
    y = torch.randn(batch * 8, device=device)
    dtype = {"bf16": torch.bfloat16, "fp32": None}[precision]
    for step in range(steps + 20):  # 20 warm-up steps
        if step == 20:
            torch.cuda.synchronize()
            t0 = time.perf_counter()
        rows = torch.randint(0, len(x), (batch,), device=device)
        with torch.autocast("cuda", dtype=dtype, enabled=dtype is not None):
            loss = torch.nn.functional.mse_loss(model(x[rows]).squeeze(1).float(), y[rows])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    torch.cuda.synchronize()
    per_step = (time.perf_counter() - t0) / steps
    print(f"Uno full width (15,580 inputs, 21.3M parameters), batch {batch}, {precision}: {per_step * 1000:.2f} ms/step, "
          f"{batch / per_step:,.0f} samples/s; an epoch of CANDLE's 20.2M rows would take "
          f"{20_158_325 / (batch / per_step):,.0f} s (CANDLE: 2,330 s at batch 512)")


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--precision", nargs="+", default=["bf16", "fp32"])
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device: this benchmark needs an NVIDIA GPU")
    torch.backends.cuda.matmul.allow_tf32 = True
    print(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        for precision in args.precision:
            tc1(20, precision, Path(tmp))
            for batch in (32, 512):
                uno(batch, precision)


if __name__ == "__main__":
    main()
