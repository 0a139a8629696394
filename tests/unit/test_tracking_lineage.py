"""Dataset lineage on MLflow runs: the cache entry's fingerprint as the dataset digest, its files and
checksums as the source; a real SQLite store, no Ray."""

import json

import numpy as np
import pandas as pd

from candle_ray import tracking
from candle_ray.data.cache import Cache
from candle_ray.data.spec import TableDataset
from tests.conftest import mlflow_store


def test_a_run_names_the_cache_entry_it_trained_on(tmp_path, mlflow_schema):
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(40, 3)), columns=["a", "b", "c"]).assign(y=rng.integers(0, 2, 40))
    frame.to_csv(tmp_path / "m.csv", index=False)
    entry = Cache(tmp_path / "cache").prepare(TableDataset(tmp_path / "m.csv", label="y"), log=lambda *_: None)
    dataset = tracking.dataset_input(entry)
    json.dumps(dataset)  # plain data: it travels inside the sweep's callbacks

    run = tracking.RunTracker(mlflow_store(mlflow_schema, tmp_path), "lineage")
    run.start("r", {"epochs": 1}, {})
    run.log_dataset(dataset)
    run.log_dataset(dataset)  # a resumed run logs it again: still one input
    inputs = run.client.get_run(run.run_id).inputs.dataset_inputs
    assert len(inputs) == 1
    logged = inputs[0].dataset
    assert (logged.name, logged.digest, logged.source_type) == (entry.name, entry.fingerprint, "candle-ray-cache")
    source = json.loads(logged.source)
    assert source["files"]["train"]["sha256"] == entry.manifest["sources"]["train"]["sha256"]
    assert json.loads(logged.profile)["rows"] == entry.rows
    assert {t.key: t.value for t in inputs[0].tags} == {"mlflow.data.context": "training"}
