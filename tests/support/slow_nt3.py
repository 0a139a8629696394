"""NT3 with epochs of about a second on one CPU (tiny_nt3's space), for fault and elastic tests that act
while a run trains: 1,200 synthetic rows, batch 4."""

import importlib.util
from dataclasses import replace
from pathlib import Path

from candle_ray import Smoke

_spec = importlib.util.spec_from_file_location("tiny_nt3", Path(__file__).resolve().parent / "tiny_nt3.py")
_tiny = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_tiny)

experiment = replace(
    _tiny.experiment,
    name="slow_nt3",
    smoke=Smoke(rows=(1200, 64), features=1000,
                overrides={"epochs": 20, "batch_size": 4, "conv": [16, 20, 1, 16, 10, 1], "dense": [32, 8]}),
)
