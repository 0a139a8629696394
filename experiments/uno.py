"""Uno: CANDLE's unified drug-response regressor, single drugs and drug pairs across studies (Pilot1).

Data: the Pilot1/combo files (responses of GDSC, CTRP and NCI-ALMANAC by default, landmark-gene
RNA-seq, dragon7 descriptors and PFP/ECFP fingerprints of the PubChem and NCI60 drug sets), read by
candle_ray.data.benchmarks.uno into joined tables: each cell and drug vector is stored once, drug1 and drug2 read
the same tables (the model shares their encoders). Options are CANDLE's uno_default_model.txt and
CombinedDataLoader defaults: growth / 100, dose = -log10(M), the drug response filter, std scaling of
descriptors and RNA-seq, unscaled fingerprints, RNA-seq source and response source one-hots, groups by
drug or drug pair split 80/20 with ShuffleSplit(seed 2018). RNA-seq is the lincs1000 file (CANDLE's
use_landmark_genes=True, as in the README runs). The AUC model (agg_dose="AUC", as uno_auc_model.txt
sets it) reads the aggregated-response file too, which only then is downloaded.
The model's input widths (cell/drug feature dims, response-source width, single, agg_dose) come from
the prepared data.
Training defaults: Adam 0.001 (CANDLE's learning_rate None), batch 32, 10 epochs, MSE, 3 x 1000
encoders and head, no dropout, glorot_normal; no ReduceLROnPlateau (CANDLE's reduce_lr=False; when
set it is x0.5, patience 5).
Search space: Supervisor cp1/data/uno_hpo.R (activation, dense, dense_feature_layers, dropout,
optimizer, residual; its epochs 10 and batch_size 6144 are constants and stay in defaults).
"""

from ray import tune

from candle_ray import Experiment, ReaderDataset, Smoke, Source
from candle_ray.data.benchmarks.uno import FILES, OPTIONS  # file names by source role; CANDLE's options

BASE = "https://ftp.mcs.anl.gov/pub/candle/public/benchmarks/Pilot1/combo"
LAYERS = [[1000] * n for n in (3, 4, 5, 6)] + [[2000] * n for n in (3, 4, 5, 6)]

experiment = Experiment(
    name="uno",
    description="Uno drug-response regressor: GDSC, CTRP, ALMANAC pairs; RNA-seq, descriptors, fingerprints",
    dataset=ReaderDataset(
        name="uno",
        reader="uno",
        sources={role: Source(f"{BASE}/{name}") for role, name in FILES.items()},
        # Every option at CANDLE's default: OPTIONS in candle_ray/data/benchmarks/uno.py lists them with
        # their values. To change one, write e.g. {**OPTIONS, "train_sources": ["GDSC"]}.
        options=OPTIONS,
        seed=2018,
    ),
    model="uno",
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
        "initialization": "glorot_normal",
        "timeout": 3600,
        "rng_seed": 2018,
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
        "activation": tune.choice(["relu", "sigmoid", "tanh"]),
        "dense": tune.choice(LAYERS),
        "dense_feature_layers": tune.choice(LAYERS),
        "dropout": tune.choice([0.0, 0.1, 0.15, 0.2, 0.25]),
        "optimizer": tune.choice(["adam", "rmsprop", "adagrad", "adadelta", "nadam", "adamax"]),
        "residual": tune.choice([False, True]),
    },
    metric="val_loss",
    mode="min",
    # Smoke: every file in its exact format, ~20 samples, 18 study drug ids, tables <= 48 wide.
    smoke=Smoke(rows=(800, 200), features=48,
                overrides={"epochs": 4, "dense": [64, 32], "dense_feature_layers": [32, 16], "batch_size": 32},
                fixed=("dense", "dense_feature_layers")),
)
