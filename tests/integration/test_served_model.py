"""From a sweep to a served model on real services: `tune --register` against a live `mlflow server`, the
registered version loaded with `mlflow.pyfunc`, predicted through `candle-ray predict models:/NAME@best`
and by sweep name, and served by a real `mlflow models serve --env-manager local` answering a POST."""

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from candle_ray.cli import main
from tests.conftest import ROOT, free_port, wait_until_answering

pytestmark = pytest.mark.integration

TINY = ROOT / "tests" / "support" / "tiny_nt3.py"


def cli(*args):
    return CliRunner().invoke(main, [*map(str, args)], catch_exceptions=False)


def serve(model_uri: str, tracking_uri: str, log: Path):
    """`mlflow models serve` on a free loopback port; (process, URL) once it answers /ping."""
    port = free_port()
    # As from an activated environment: the server's workers (uvicorn) are found on PATH.
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri,
           "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
    proc = subprocess.Popen([str(Path(sys.executable).parent / "mlflow"), "models", "serve", "-m", model_uri,
                             "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port), "-w", "1"],
                            stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    wait_until_answering(f"{url}/ping", proc, log, "mlflow models serve", timeout_s=120)
    return proc, url


def test_registered_best_trial_is_loaded_predicted_and_served(ray_cluster, workdir, mlflow_server, monkeypatch):
    import mlflow

    r = cli("tune", TINY, "--smoke", "--num-samples", 2, "--scheduler", "fifo", "--set", "epochs=2",
            "--name", "reg", "--tracking-uri", mlflow_server, "--register", "tiny-nt3")
    assert r.exit_code == 0, r.output
    assert "MLflow model: models:/tiny-nt3@best" in r.output

    data = next(p for p in sorted((workdir / "cache" / "synthetic").rglob("*.csv")) if "test" in p.name)
    rows = pd.read_csv(data, header=None).iloc[:, 1:]  # CANDLE's header-less layout: the label first
    rows.columns = [str(i) for i in range(rows.shape[1])]  # the signature's names for header-less features
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)  # for load_model's models:/ (restored after the test)
    model = mlflow.pyfunc.load_model("models:/tiny-nt3@best")
    local = model.predict(rows)

    by_name = workdir / "by-name.tsv"
    r = cli("predict", "reg", "--data", data, "--out", by_name)  # the sweep's best trial, as a checkpoint
    assert r.exit_code == 0, r.output
    expected = pd.read_csv(by_name, sep="\t")
    r = cli("predict", "models:/tiny-nt3@best", "--data", data, "--out", workdir / "registry.tsv",
            "--tracking-uri", mlflow_server)
    assert r.exit_code == 0, r.output
    pd.testing.assert_frame_equal(pd.read_csv(workdir / "registry.tsv", sep="\t"), expected)
    assert list(local.columns) == list(expected.columns)
    assert local["prediction"].astype(str).tolist() == expected["prediction"].astype(str).tolist()
    assert np.allclose(local["probability"], expected["probability"], atol=1e-6)

    proc, url = serve("models:/tiny-nt3@best", mlflow_server, workdir / "serve.log")
    try:
        body = json.dumps({"dataframe_split": rows.iloc[:5].to_dict(orient="split")}).encode()
        request = urllib.request.Request(f"{url}/invocations", data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as resp:
            served = pd.DataFrame(json.load(resp)["predictions"])
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert served["prediction"].astype(str).tolist() == expected["prediction"].astype(str).tolist()[:5]
    assert np.allclose(served["probability"], expected["probability"][:5], atol=1e-6)
