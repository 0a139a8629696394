"""tiny_nt3 with a conditional space: momentum is searched only in trials that use sgd."""

import importlib.util
from dataclasses import replace
from pathlib import Path

from ray import tune

from candle_ray import when

_spec = importlib.util.spec_from_file_location("tiny_nt3", Path(__file__).with_name("tiny_nt3.py"))
_tiny = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_tiny)

experiment = replace(
    _tiny.experiment,
    name="cond_nt3",
    search_space={"optimizer": tune.choice(["adam", "sgd"]),
                  "momentum": when(optimizer="sgd", then=tune.uniform(0.5, 0.99)),
                  "learning_rate": tune.loguniform(1e-3, 1e-1)},
)
