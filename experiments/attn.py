"""ATTN: CANDLE's attention-MLP classifier of drug response (AUC binarised) on Top-21 cancer types (Pilot1).

Data: top_21_1fold_001.h5 (a pandas HDFStore exported by Uno, ~4 GB), read by candle_ray.data.benchmarks.attn into
joined tables: the RNA-seq (942) and drug-descriptor (5,270) rows repeat per cell line and per drug, so
they are stored once and batches gather them by index (6,212 inputs, RNA-seq first as CANDLE). The
file's fixed partitions are the splits (271,915 train / 33,989 val / 33,989 test rows, 3.61 % positive);
no scaling (CANDLE applies none: the export is pre-processed).
Training defaults: attn_default_model.txt: SGD lr 1e-5 momentum 0.9, batch 32, 1 epoch, categorical
cross-entropy with sklearn-"balanced" class weights, dropout 0.2, Dense 1000 / 1000 x 1000 attention /
500-250-125-60-30; ReduceLROnPlateau on the validation AUC (x0.2, patience 40, cooldown 3, min_lr 1e-9,
min_delta 1e-4) and early stopping on it (patience 200): CANDLE's val_tf_auc is val_auroc here.
Search space: Supervisor's attn_nightly.R (epochs I[2,5], dropout and learning_rate N, i.e. uniform).
"""

from ray import tune

from candle_ray import Experiment, ReaderDataset, Smoke, Source

BASE = "https://ftp.mcs.anl.gov/pub/candle/public/benchmarks/Pilot1/uno"

experiment = Experiment(
    name="attn",
    description="ATTN drug-response classifier (AUC binarised), 942 RNA-seq + 5,270 descriptors, 340k rows",
    dataset=ReaderDataset(
        name="attn",
        reader="attn",
        sources={"h5": Source(f"{BASE}/top_21_1fold_001.h5")},
        options={"chunk_rows": 2048},
        seed=2017,
    ),
    model="attn",
    defaults={
        "epochs": 1,
        "batch_size": 32,
        "learning_rate": 1e-5,
        "optimizer": "sgd",
        "momentum": 0.9,
        "loss": "categorical_crossentropy",
        "class_weight": "balanced",
        "dropout": 0.2,
        "activation": "relu",
        "dense": [1000, 1000, 1000, 500, 250, 125, 60, 30],
        "timeout": 3600,
        "rng_seed": 2017,
        "reduce_lr": True,
        "reduce_lr_metric": "val_auroc",
        "reduce_lr_factor": 0.2,
        "reduce_lr_patience": 40,
        "reduce_lr_cooldown": 3,
        "reduce_lr_min_lr": 1e-9,
        "reduce_lr_min_delta": 1e-4,
        "early_stop": True,
        "early_stop_patience": 200,
        "ckpt_save_interval": 1,
        "ckpt_save_best": True,
        "precision": "auto",
    },
    search_space={
        "epochs": tune.randint(2, 6),
        "dropout": tune.uniform(0.0, 0.9),
        # Supervisor's attn_nightly.R draws it uniformly over these bounds: 9 draws in 10 above 0.01.
        "learning_rate": tune.loguniform(1e-5, 0.1),
    },
    metric="val_auroc",
    mode="max",
    # Smoke: the HDF5 in its exact layout, ~1,500 rows (47 cell lines x 32 drugs, ~4 % positive),
    # 30 genes + 60 descriptors; a narrow attention net and a learning rate that learns in a few epochs.
    smoke=Smoke(rows=(1200, 300), features=60,
                overrides={"epochs": 4, "dense": [64, 32, 32, 16], "learning_rate": 0.01, "batch_size": 32}),
)
