"""P1B3: growth of NCI60 cell lines under single drugs, regressed from drug concentration, cell
expression and drug descriptors (CANDLE Pilot1 benchmark 3).

Data: the nine P1B3 files, read by candle_ray.data.benchmarks.p1b3 into joined tables (the cell and drug
features are stored once; batches gather them by index). Dataset options are CANDLE's defaults
(p1b3_default_model.txt): concentrations -5 <= log10 M <= -4, naive_balancing, std scaling,
expression + descriptors (1 + 25,722 + 3,809 = 29,532 inputs), test = held-out drugs x 15 % of the
cell lines, val = the last 10 % of the shuffled train+val rows (seed 2017).
Training defaults: SGD 0.001, batch 100, 1 epoch, MSE, Dense 1000-500-100-50 with dropout 0.1,
N(0, 0.05) initialisation; no ReduceLROnPlateau (CANDLE's P1B3 has none).
Search space: Supervisor's p1b3_param_set.R (batch size, dense layout, activation, optimizer,
dropout, conv layout).
"""

from ray import tune

from candle_ray import Experiment, ReaderDataset, Smoke, Source
from candle_ray.data.benchmarks.p1b3 import FILES, OPTIONS  # file names by source role; CANDLE's options

BASE = "https://ftp.mcs.anl.gov/pub/candle/public/benchmarks/P1B3"

experiment = Experiment(
    name="p1b3",
    description="P1B3 NCI60 single-drug growth regression, 29,532 inputs, ~1M response rows",
    dataset=ReaderDataset(
        name="p1b3",
        reader="p1b3",
        sources={role: Source(f"{BASE}/{name}") for role, name in FILES.items()},
        # Every option at CANDLE's default: OPTIONS in candle_ray/data/benchmarks/p1b3.py lists them with
        # their values. To change one, write e.g. {**OPTIONS, "subsample": "none"}.
        options=OPTIONS,
        seed=2017,
    ),
    model="p1b3",
    defaults={
        "epochs": 1,
        "batch_size": 100,
        "learning_rate": 0.001,
        "optimizer": "sgd",
        "momentum": 0.0,
        "loss": "mse",
        "dropout": 0.1,
        "activation": "relu",
        "dense": [1000, 500, 100, 50],
        "conv": [0, 0, 0],
        "pool": 10,
        "batch_normalization": False,
        "initialization": "normal",
        "timeout": -1,
        "rng_seed": 2017,
        "reduce_lr": False,
        "early_stop": False,
        "early_stop_patience": 10,
        "ckpt_save_interval": 1,
        "ckpt_save_best": True,
        "precision": "auto",
    },
    search_space={
        "batch_size": tune.choice([32, 64, 128]),
        "dense": tune.choice([[500, 100, 50], [1000, 500, 100, 50], [2000, 1000, 500, 100, 50]]),
        "activation": tune.choice(["relu", "sigmoid", "tanh"]),
        "optimizer": tune.choice(["adam", "sgd", "rmsprop"]),
        "dropout": tune.uniform(0.0, 0.5),
        "conv": tune.choice([[0, 0, 0], [5, 5, 1], [10, 10, 1, 5, 5, 1]]),
    },
    metric="val_loss",
    mode="min",
    # Smoke: the nine files in their exact formats, 12 cell lines, ~16 drugs, tables <= 120 wide.
    smoke=Smoke(rows=(800, 200), features=120,
                overrides={"epochs": 4, "dense": [64, 32], "batch_size": 32, "learning_rate": 0.05,
                           "optimizer": "sgd", "momentum": 0.9},
                fixed=("conv",)),
)
