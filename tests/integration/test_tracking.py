"""The MLflow SQLite store under concurrent first use: several candle-ray processes started at once
in a fresh directory must not race through the store's schema migrations."""

import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration

SCRIPT = """
import sys
from candle_ray.tracking import RunTracker
tracker = RunTracker(sys.argv[1], "concurrent")
tracker.start(sys.argv[2], {"a": 1}, {})
tracker.finish()
"""


def test_three_processes_create_one_store(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    procs = [subprocess.Popen([sys.executable, "-c", SCRIPT, uri, f"run{i}"], stderr=subprocess.PIPE, text=True)
             for i in range(3)]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert all(p.returncode == 0 for p in procs), errors
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("concurrent").experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["run0", "run1", "run2"]
