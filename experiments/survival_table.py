"""Your own cohort's survival: a CSV/TSV/Parquet file with a follow-up time, an event column (1: the event was
seen then, 0: censored then) and feature columns; the model learns a risk score (candle_ray.cox)."""

from ray import tune
from candle_ray import Experiment, TableDataset

experiment = Experiment(
    name="survival_table",
    dataset=TableDataset("data/cohort.csv", label="months", event="dead", drop=("patient_id",), val_fraction=0.2),
    model="mlp",
    defaults={"epochs": 60, "batch_size": 32, "learning_rate": 0.001, "optimizer": "adam", "dense": [256, 64],
              "dropout": 0.2, "weight_decay": 0.1, "activation": "relu", "rng_seed": 1},
    search_space={"learning_rate": tune.loguniform(3e-5, 1e-2), "dropout": tune.uniform(0.0, 0.6),
                  "weight_decay": tune.loguniform(1e-3, 3.0), "batch_size": tune.choice([16, 32, 64]),
                  "dense": tune.choice([[], [64], [256], [256, 64], [512, 128]])},
)
