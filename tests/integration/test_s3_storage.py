"""A sweep whose storage AND data cache are an S3 bucket, on a real S3-compatible server (moto's server
mode) started here: the cache entry, Tune's state and checkpoints, sweep.json, results and report go to
the bucket; resume and report read them back."""

import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from click.testing import CliRunner

from candle_ray.cli import main
from tests.conftest import ROOT, free_port

pytestmark = pytest.mark.integration

TINY = ROOT / "tests" / "support" / "tiny_nt3.py"


@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory):
    port = free_port()
    log = open(tmp_path_factory.mktemp("moto") / "moto.log", "w")
    proc = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log, stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(endpoint, timeout=1)
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("moto server did not start")
            time.sleep(0.3)
    import boto3

    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="sweeps")
    yield endpoint
    proc.terminate()
    proc.wait(timeout=20)
    log.close()


def keys(endpoint, prefix):
    import boto3

    pages = boto3.client("s3", endpoint_url=endpoint).get_paginator("list_objects_v2").paginate(Bucket="sweeps", Prefix=prefix)
    return {obj["Key"] for page in pages for obj in page.get("Contents", [])}


def s3_text(endpoint: str, key: str) -> str:
    import boto3

    return boto3.client("s3", endpoint_url=endpoint).get_object(Bucket="sweeps", Key=key)["Body"].read().decode()


def tune(*args):
    return CliRunner().invoke(main, ["tune", *map(str, args)], catch_exceptions=False)


def test_sweep_on_s3(ray_cluster, workdir, s3_endpoint, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    monkeypatch.setenv("CANDLE_RAY_CACHE", "s3://sweeps/data")  # the data cache in the same bucket
    monkeypatch.setenv("CANDLE_RAY_NODE_CACHE", str(workdir / "node"))  # this node's staging and copies
    storage = "s3://sweeps/team"
    r = tune(TINY, "--smoke", "--num-samples", 3, "--scheduler", "fifo", "--set", "epochs=3", "--storage", storage,
             "--name", "s3sweep")
    assert r.exit_code == 0, r.output
    found = keys(s3_endpoint, "team/s3sweep/")
    for name in ("sweep.json", "results.csv", "best_config.json", "tuner.pkl", "report/learning_curves.png",
                 "report/report.html"):
        assert f"team/s3sweep/{name}" in found, sorted(found)[:40]
    # Every trial handed Tune a checkpoint in the bucket: Tune's record names it (inside the pickled blobs of its
    # experiment state). Once the trial's best was in MLflow, that copy went (retention.drop_tune_copies).
    states = [k for k in found if k.rsplit("/", 1)[1].startswith("experiment_state-")]
    state = "".join(s3_text(s3_endpoint, k) for k in states).replace('\\"', '"')
    blobs = b"".join(bytes.fromhex(h) for h in re.findall(r'"value": "([0-9a-f]+)"', state))
    assert len(set(re.findall(rb"s3sweep/([^/]+)/checkpoint_\d{6}", blobs))) == 3
    assert not [k for k in found if "/checkpoint_" in k]
    assert not (workdir / "candle-ray-sweeps").exists()  # nothing written to the local default
    entries = {k.split("/")[2] for k in keys(s3_endpoint, "data/datasets/")}
    assert len(entries) == 1 and entries.pop().startswith("nt3-smoke-")  # the cache entry, with its manifest
    assert {k.rsplit("/", 1)[1] for k in keys(s3_endpoint, "data/datasets/")} == {
        "manifest.json", "train.arrow", "val.arrow", "scaler.json"}
    assert not (workdir / "cache").exists()  # no local cache root either
    # The trials trained on this node's verified copy of the entry.
    assert len(list((workdir / "node" / "s3-mirror" / "sweeps" / "data" / "datasets").glob("nt3-smoke-*@*/manifest.json"))) == 1

    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("tiny_nt3").experiment_id])
    children = [run for run in runs if "mlflow.parentRunId" in run.data.tags]
    assert len(children) == 3
    for child in children:  # the best checkpoint came back from the bucket into MLflow, as the trial's model
        members = {a.path for a in client.list_artifacts(child.info.run_id, "model/artifacts/member-0")}
        assert "model/artifacts/member-0/best.json" in members, members

    # A finished sweep resumes from the bucket without rerunning anything.
    again = tune(TINY, "--resume", "--name", "s3sweep", "--storage", storage)
    assert again.exit_code == 0, again.output
    assert "3 trials: 3 completed" in again.output
    assert len([r for r in client.search_runs([children[0].info.experiment_id]) if "mlflow.parentRunId" in r.data.tags]) == 3

    report = CliRunner().invoke(main, ["report", "s3sweep", "--storage", storage])
    assert report.exit_code == 0, report.output
    listed = CliRunner().invoke(main, ["sweeps", "--storage", storage])  # the folder's bytes: the bucket's objects
    assert listed.exit_code == 0 and listed.output.splitlines()[1].split()[:2] == ["s3sweep", "sweep"], listed.output
    assert "3/3" in listed.output and "finished" in listed.output and float(listed.output.split()[-1]) > 0

    missing = tune(TINY, "--resume", "--name", "nope", "--storage", storage)
    assert missing.exit_code == 2 and "no sweep named 'nope'" in missing.output and "s3sweep" in missing.output
