"""Combo: CANDLE's drug-pair growth regressor on NCI-ALMANAC (Pilot1).

Data: ComboDrugGrowth_Nov2017.csv, the NCI60 cell-name map, landmark-gene RNA-seq (CANDLE's
use_landmark_genes=True) and the ALMANAC dragon7 descriptors, read by candle_ray.data.benchmarks.combo into joined
tables (drug1 and drug2 read one descriptor table; the model shares their encoder). Options are
CANDLE's combo_default_model.txt: VALID rows, growth averaged per concentration pair then the minimum
per (cell, drug1, drug2), / 100; std scaling with mean imputation; rows shuffled (seed 2017) and the
last 20 % validation (cv_partition "overlapping"; "disjoint" holds out drugs, "disjoint_cells" cells).
The model's input widths come from the prepared data.
Training defaults: Adam 0.001 (CANDLE's learning_rate None), batch 32, 10 epochs, MSE, 3 x 1000
encoders and head, no dropout, Keras default init; no ReduceLROnPlateau (CANDLE's reduce_lr=False).
Search space: CANDLE's combo_param_set.R (batch size, dense, dense_feature_layers, residual,
activation, optimizer, learning rate, reduce_lr, warmup_lr); its epochs range (100-200) is left to --set.
"""

from ray import tune

from candle_ray import Experiment, ReaderDataset, Smoke, Source
from candle_ray.data.benchmarks.combo import FILES, OPTIONS  # file names by source role; CANDLE's options

BASE = "https://ftp.mcs.anl.gov/pub/candle/public/benchmarks/Pilot1/combo"
LAYERS = [[1000] * n for n in range(1, 6)]

experiment = Experiment(
    name="combo",
    description="Combo NCI-ALMANAC drug-pair growth regressor, cell expression + 2 x dragon7 descriptors",
    dataset=ReaderDataset(
        name="combo",
        reader="combo",
        sources={role: Source(f"{BASE}/{name}") for role, name in FILES.items()},
        # Every option at CANDLE's default: OPTIONS in candle_ray/data/benchmarks/combo.py lists them with
        # their values. To change one, write e.g. {**OPTIONS, "cv_partition": "disjoint"}.
        options=OPTIONS,
        seed=2017,
    ),
    model="combo",
    defaults={
        "epochs": 10,
        "batch_size": 32,
        "learning_rate": 0.001,
        "optimizer": "adam",
        "momentum": 0.0,
        "loss": "mse",
        "dropout": 0.0,
        "activation": "relu",
        "dense": [1000, 1000, 1000],
        "dense_feature_layers": [1000, 1000, 1000],
        "residual": False,
        "timeout": 3600,
        "rng_seed": 2017,
        "reduce_lr": False,
        "reduce_lr_factor": 0.5,
        "reduce_lr_patience": 5,
        "reduce_lr_min_lr": 1e-5,
        "early_stop": False,
        "early_stop_patience": 10,
        "ckpt_save_interval": 1,
        "ckpt_save_best": True,
        "precision": "auto",
    },
    search_space={
        "batch_size": tune.choice([32, 64, 128, 256, 512, 1024]),
        "dense": tune.choice(LAYERS),
        "dense_feature_layers": tune.choice(LAYERS),
        "residual": tune.choice([False, True]),
        "activation": tune.choice(["relu", "sigmoid", "tanh"]),
        "optimizer": tune.choice(["adam", "sgd", "rmsprop"]),
        "learning_rate": tune.loguniform(1e-5, 0.1),
        "reduce_lr": tune.choice([False, True]),
        "warmup_lr": tune.choice([False, True]),  # "large batch_size only makes sense when warmup_lr is on"
    },
    metric="val_loss",
    mode="min",
    # Smoke: the four files in their exact formats, 10 cell lines, ~10 drugs, tables <= 48 wide.
    smoke=Smoke(rows=(800, 200), features=48,
                overrides={"epochs": 4, "dense": [64, 32], "dense_feature_layers": [32, 16], "batch_size": 32},
                fixed=("dense", "dense_feature_layers")),
)
