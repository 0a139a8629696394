"""Your own matrix: a CSV/TSV/Parquet file with a header, a label column and feature columns."""

from ray import tune
from candle_ray import Experiment, TableDataset

experiment = Experiment(
    name="expression_table",
    dataset=TableDataset("data/expression.csv", label="cancer_type", drop=("sample_id",)),
    model="mlp",
    defaults={"epochs": 60, "batch_size": 32, "learning_rate": 0.001, "optimizer": "adam", "dense": [256, 64],
              "dropout": 0.2, "weight_decay": 0.1, "activation": "relu", "rng_seed": 1},
    search_space={"learning_rate": tune.loguniform(3e-5, 1e-2), "dropout": tune.uniform(0.0, 0.6),
                  "weight_decay": tune.loguniform(1e-3, 3.0), "batch_size": tune.choice([16, 32, 64]),
                  "dense": tune.choice([[], [64], [256], [256, 64], [512, 128]])},
)
