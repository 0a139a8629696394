"""P3B1: CANDLE's multi-task classifier of pathology reports (Pilot3 benchmark 1): primary site (13
classes), tumour laterality (2) and histological grade (4) from 400 features per report.

Data: P3B1_data.tar.gz, read by candle_ray.data.benchmarks.p3b1 (members checked, never unpacked to disk): fold 0
(CANDLE's n_fold=1) of the per-task CSVs; train = the three tasks' train files (3,900 / 600 / 1,200
rows), validation = their test files (99 / 86 / 68), as CANDLE validates on them. Each row has one
label column per task, -1 for the other tasks; classes per task = max(train label) + 1. No scaling.
Training defaults: p3b1_default_model.txt as in the reference: SGD 0.01, batch 10, 10 epochs,
categorical cross-entropy per task head, ReLU, no dropout, shared Dense 1200-2400-3600 x 7-2400 and per
task Dense 2400-2400-1200-1200; no ReduceLROnPlateau or early stopping (CANDLE's P3B1 has neither).
CANDLE fits the task models one after another each epoch; the multi-task loop here trains the three
heads on mixed batches with the loss masked per task (see candle_ray.objectives.MultiTaskCrossEntropy).
Search space: Supervisor's p3b1_param.R (batch_size I[16,32], epochs I[5,50], dropout N[0,0.9]).
"""

from ray import tune

from candle_ray import Experiment, ReaderDataset, Smoke, Source

BASE = "https://ftp.mcs.anl.gov/pub/candle/public/benchmarks/P3B1"

experiment = Experiment(
    name="p3b1",
    description="P3B1 multi-task pathology-report classifier: site (13), laterality (2), grade (4) from 400 features",
    dataset=ReaderDataset(
        name="p3b1",
        reader="p3b1",
        sources={"archive": Source(f"{BASE}/P3B1_data.tar.gz")},
        options={"fold": 0},
        seed=2017,
    ),
    model="p3b1",
    defaults={
        "epochs": 10,
        "batch_size": 10,
        "learning_rate": 0.01,
        "optimizer": "sgd",
        "momentum": 0.0,
        "loss": "categorical_crossentropy",
        "dropout": 0.0,
        "activation": "relu",
        "shared_nnet_spec": [1200, 2400, 3600, 3600, 3600, 3600, 3600, 3600, 3600, 2400],
        "ind_nnet_spec": [2400, 2400, 1200, 1200],
        "timeout": 1800,
        "rng_seed": 2017,
        "reduce_lr": False,
        "early_stop": False,
        "ckpt_save_interval": 1,
        "ckpt_save_best": True,
        "precision": "auto",
    },
    search_space={
        "batch_size": tune.randint(16, 33),
        "epochs": tune.randint(5, 51),
        "dropout": tune.uniform(0.0, 0.9),
    },
    metric="val_loss",
    mode="min",
    # Smoke: the archive in its exact layout, ~600 training rows split over the tasks as the real fold 0,
    # 64 features; a narrow trunk and towers.
    smoke=Smoke(rows=(500, 100), features=64,
                overrides={"epochs": 4, "shared_nnet_spec": [64, 64], "ind_nnet_spec": [32], "batch_size": 16,
                           "learning_rate": 0.05, "momentum": 0.9},
                fixed=("epochs",)),
)
