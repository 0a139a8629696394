"""P1B2: cancer type from somatic SNP profiles, 10 classes (CANDLE Pilot1).

Defaults are CANDLE's p1b2_default_model.txt: RMSprop 0.001, batch 60, Dense 1024-512-256 with sigmoid
activations and a sigmoid output under categorical cross-entropy, L2 1e-5 on kernels and activities,
min-max scaling, validation = 10 % of the shuffled training rows (seed 2017). CANDLE fits the scaler
on train + test; P1B2.test.csv is not read yet, so it is fit on the training file's rows.
Supervisor ships no P1B2 space: the search below covers the usual optimiser keys.
"""

from ray import tune

from candle_ray import Dataset, Experiment, Smoke, Source

BASE = "https://ftp.mcs.anl.gov/pub/candle/public/benchmarks/P1B2"

experiment = Experiment(
    name="p1b2",
    description="P1B2 10-class cancer type from 28,204 SNP features, 3,000 train rows",
    dataset=Dataset(name="p1b2", train=Source(f"{BASE}/P1B2.train.csv"), format="table", label="cancer_type",
                    drop=("case_id",), classes=10, scaling="minmax", scaling_fit="train+val", val_fraction=0.1,
                    seed=2017),
    model="p1b2",
    defaults={"epochs": 1, "batch_size": 60, "learning_rate": 0.001, "optimizer": "rmsprop", "momentum": 0.0,
              "dropout": 0.0, "activation": "sigmoid", "dense": [1024, 512, 256], "reg_l2": 1e-5,
              "timeout": -1, "rng_seed": 2017, "reduce_lr": False, "early_stop": False, "precision": "auto"},
    search_space={
        "learning_rate": tune.loguniform(1e-4, 1e-2),
        "batch_size": tune.choice([32, 60, 128]),
        "dropout": tune.uniform(0.0, 0.5),
        "optimizer": tune.choice(["rmsprop", "adam", "sgd"]),
    },
    metric="val_loss",
    mode="min",
    smoke=Smoke(rows=(200, 40), features=500, overrides={"epochs": 3, "dense": [64, 32, 16]}),
)
