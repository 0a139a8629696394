"""TC1: 18-type tumour classification of RNA-seq profiles (CANDLE Pilot1 benchmark 5).

Defaults are CANDLE's tc1_default_model.txt (SGD at Keras' implicit 0.01, 36 output units for 18
types, as CANDLE builds them); the space is Supervisor's GA tc1_param_space_ga.json (its debug
constants left out).
"""

from ray import tune

from candle_ray import Dataset, Experiment, Smoke, Source

BASE = "https://ftp.mcs.anl.gov/pub/candle/public/benchmarks/Pilot1/type-class"

experiment = Experiment(
    name="tc1",
    description="TC1 tumour type classifier, 60,483 RNA-seq features, 4,320 train / 1,080 test",
    dataset=Dataset(name="tc1", train=Source(f"{BASE}/type_18_300_train.csv"),
                    val=Source(f"{BASE}/type_18_300_test.csv"),  # CANDLE validates on the test file
                    format="candle_noheader", classes=36, scaling="maxabs", scaling_fit="train+val"),
    model="tc1",
    defaults={"epochs": 400, "batch_size": 20, "learning_rate": 0.01, "optimizer": "sgd", "momentum": 0.0,
              "dropout": 0.1, "activation": "relu", "conv": [128, 20, 1, 128, 10, 1], "pool": [1, 10],
              "dense": [200, 20], "timeout": -1, "rng_seed": 7102, "reduce_lr": True, "reduce_lr_factor": 0.1,
              "reduce_lr_patience": 10, "early_stop": False, "early_stop_patience": 10, "ckpt_save_interval": 1,
              "ckpt_save_best": True, "precision": "auto"},
    search_space={
        "activation": tune.choice(["softmax", "elu", "softplus", "softsign", "relu", "tanh", "sigmoid",
                                   "hard_sigmoid", "linear"]),
        "optimizer": tune.choice(["adam", "rmsprop"]),
        "dropout": tune.uniform(0.0, 0.9),
        "learning_rate": tune.loguniform(1e-4, 0.01),
        "batch_size": tune.choice([16, 32, 64, 128, 256]),
    },
    metric="val_loss",
    mode="min",
    smoke=Smoke(rows=(216, 72), features=1000,
                overrides={"epochs": 3, "conv": [16, 20, 1, 16, 10, 1], "dense": [32, 8]}),
)
