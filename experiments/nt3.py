"""NT3: normal vs tumour classification of RNA-seq profiles (CANDLE Pilot1 benchmark 4).

Defaults are CANDLE's nt3_default_model.txt; the search space is Supervisor's NT3 space
(mlrMBO nt3_hps_exp_01.R: batch size, optimizer, dropout, learning rate, conv layout).
"""

from ray import tune

from candle_ray import Dataset, Experiment, Smoke, Source

BASE = "https://ftp.mcs.anl.gov/pub/candle/public/benchmarks/Pilot1/normal-tumor"

experiment = Experiment(
    name="nt3",
    description="NT3 normal/tumour classifier, 60,483 RNA-seq features, 1,120 train / 280 test",
    dataset=Dataset(
        name="nt3",
        train=Source(f"{BASE}/nt_train2.csv"),
        val=Source(f"{BASE}/nt_test2.csv"),  # CANDLE validates on the test file
        format="candle_noheader",
        classes=2,
        scaling="maxabs",
        scaling_fit="train+val",  # CANDLE fits MaxAbsScaler on train + test concatenated
    ),
    model="nt3",
    defaults={
        "epochs": 400,
        "batch_size": 20,
        "learning_rate": 0.001,
        "optimizer": "sgd",
        "momentum": 0.0,
        "dropout": 0.1,
        "activation": "relu",
        "conv": [128, 20, 1, 128, 10, 1],
        "pool": [1, 10],
        "dense": [200, 20],
        "timeout": 3600,
        "rng_seed": 7102,
        "reduce_lr": True,
        "reduce_lr_factor": 0.1,
        "reduce_lr_patience": 10,
        "early_stop": False,
        "early_stop_patience": 10,
        "ckpt_save_interval": 1,
        "ckpt_save_best": True,
        "precision": "auto",
    },
    search_space={
        "batch_size": tune.choice([16, 32, 64, 128, 256, 512]),
        "optimizer": tune.choice(["adam", "sgd", "rmsprop", "adagrad", "adadelta"]),
        "dropout": tune.uniform(0.0, 0.9),
        "learning_rate": tune.loguniform(1e-5, 0.1),
        "conv": tune.choice([[50, 50, 50, 50, 50, 1], [25, 25, 25, 25, 25, 1], [64, 32, 16, 32, 64, 1],
                             [100, 100, 100, 100, 100, 1], [32, 20, 16, 32, 10, 1]]),
    },
    metric="val_loss",
    mode="min",
    # Smoke: synthetic data in the exact NT3 file format, 1,000 features, and a small conv stack. A smoke
    # search leaves out the full-size conv layouts and batch sizes (512 on 192 rows is one step an epoch).
    smoke=Smoke(rows=(192, 48), features=1000,
                overrides={"epochs": 3, "conv": [16, 20, 1, 16, 10, 1], "dense": [32, 8], "learning_rate": 0.01},
                fixed=("conv", "batch_size"),
                # conv [100, 100, 100, 100, 100, 1] (stride 100, then kernel 100 and pool 10) needs 10,900
                # features: 109 after the first layer, 10 after the second, 1 after its pooling.
                full_space_features=11_000),
)
