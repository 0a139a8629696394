"""NT3 cut down for sweep tests: the real NT3 experiment with a two-key space and a tiny smoke size."""

import importlib.util
from dataclasses import replace
from pathlib import Path

from ray import tune

from candle_ray import Smoke

_spec = importlib.util.spec_from_file_location("nt3", Path(__file__).resolve().parents[2] / "experiments" / "nt3.py")
_nt3 = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_nt3)

experiment = replace(
    _nt3.experiment,
    name="tiny_nt3",
    search_space={"learning_rate": tune.loguniform(1e-3, 1e-1), "dropout": tune.uniform(0.0, 0.5)},
    smoke=Smoke(rows=(96, 32), features=300,
                overrides={"epochs": 4, "batch_size": 16, "conv": [4, 20, 1, 4, 10, 1], "dense": [16, 8]}),
)
