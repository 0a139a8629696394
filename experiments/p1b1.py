"""P1B1: an autoencoder of RNA-seq expression profiles (CANDLE Pilot1).

Defaults are CANDLE's p1b1_default_model.txt: `model` ae (or vae; or cvae, conditioned on the one-hot
cancer type that the training loop appends to the input), Dense 2000-600 to a latent of 2 and back,
sigmoid output on min-max scaled inputs, MSE, Adam at Keras' default 0.001, batch 100, 100 epochs;
validation = 10 % of the training rows. Reported metric: val_corr (Pearson's r between inputs and
reconstructions, CANDLE's `corr`). The space is Supervisor's p1b1_nightly.R (its model, landmark-gene and
2-3 epoch constants aside).
"""

from ray import tune

from candle_ray import Dataset, Experiment, Smoke, Source

BASE = "https://ftp.mcs.anl.gov/pub/candle/public/benchmarks/P1B1"

experiment = Experiment(
    name="p1b1",
    description="P1B1 autoencoder, 60,483 log(1+FPKM-UQ) features, 3,000 train rows",
    dataset=Dataset(name="p1b1", train=Source(f"{BASE}/P1B1.dev.train.csv"), format="table", label="cancer_type",
                    drop=("case_id",), task="autoencoder", scaling="minmax", scaling_fit="train+val",
                    val_fraction=0.1, seed=2017),
    model="p1b1",
    defaults={"model": "ae", "epochs": 100, "batch_size": 100, "learning_rate": 0.001, "optimizer": "adam",
              "momentum": 0.0, "dropout": 0.0, "activation": "relu", "dense": [2000, 600], "latent_dim": 2,
              "residual": False, "batch_normalization": False, "timeout": 3600, "rng_seed": 2017,
              "reduce_lr": False, "early_stop": False, "precision": "auto"},
    search_space={
        "latent_dim": tune.choice([2, 4, 8, 16, 32, 64, 128, 256, 512]),
        "activation": tune.choice(["relu", "sigmoid", "tanh"]),
        "optimizer": tune.choice(["adam", "sgd"]),
        "learning_rate": tune.loguniform(1e-5, 0.1),
        "dropout": tune.uniform(0.0, 0.9),
        "residual": tune.choice([True, False]),
        "reduce_lr": tune.choice([True, False]),
        "warmup_lr": tune.choice([True, False]),
    },
    metric="val_loss",
    mode="min",
    smoke=Smoke(rows=(180, 20), features=400, overrides={"epochs": 3, "dense": [64, 16]}),
)
