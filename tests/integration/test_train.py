"""End to end on a real local Ray cluster: `candle-ray train` through the CLI, data served by a local
HTTP server in the exact NT3 format, runs read back from MLflow (SQLite and a real `mlflow server`)."""

import hashlib
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from candle_ray.cli import main
from candle_ray.data.sources import local_path
from candle_ray.data.synthetic import synthesize
from candle_ray.experiment import load_experiment
from tests.conftest import ROOT
from tests.support.http_server import serve_directory

pytestmark = pytest.mark.integration

SMALL = ["--set", "conv=4 20 1 4 10 1", "--set", "dense=16 8", "--set", "batch_size=16"]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def served_nt3(tmp_path_factory):
    """Synthetic NT3-format CSVs behind a real HTTP server, and an experiment file that downloads them
    with sha256 checksums (the same download path as the real CANDLE data)."""
    root = tmp_path_factory.mktemp("served")
    nt3 = load_experiment(ROOT / "experiments" / "nt3.py")
    local = synthesize(nt3.dataset, root / "files", rows=(96, 32), features=300, seed=3)
    train, val = local_path(local.train.url), local_path(local.val.url)
    assert train.parent == val.parent
    with serve_directory(train.parent) as base:
        exp = root / "nt3_http.py"
        exp.write_text(textwrap.dedent(f"""
            import importlib.util
            from dataclasses import replace
            from candle_ray import Source
            spec = importlib.util.spec_from_file_location("nt3_base", {str(ROOT / 'experiments' / 'nt3.py')!r})
            base = importlib.util.module_from_spec(spec); spec.loader.exec_module(base)
            experiment = base.experiment
            experiment.name = "nt3_http"
            experiment.dataset = replace(experiment.dataset, name="nt3_http",
                train=Source("{base}/{train.name}", sha256="{_sha256(train)}"),
                val=Source("{base}/{val.name}", sha256="{_sha256(val)}"))
        """))
        yield exp


def _train(args):
    result = CliRunner().invoke(main, ["train", *map(str, args)], catch_exceptions=False)
    return result


def _runs(uri):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exps = client.search_experiments()
    return client, [r for e in exps for r in client.search_runs([e.experiment_id])]


def test_one_worker_downloads_trains_and_logs(ray_cluster, workdir, served_nt3):
    r = _train([served_nt3, "--set", "epochs=3", *SMALL])
    assert r.exit_code == 0, r.output
    assert "epoch    3/3" in r.output and "MLflow run" in r.output
    client, runs = _runs(f"sqlite:///{workdir / 'mlflow.db'}")
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.params["epochs"] == "3" and run.data.params["conv"] == "4 20 1 4 10 1"
    assert run.data.tags["candle_ray.dataset"] == "nt3_http"
    assert len(run.data.tags["candle_ray.dataset_fingerprint"]) == 16
    history = client.get_metric_history(run.info.run_id, "val_loss")
    assert [m.step for m in history] == [1, 2, 3]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"training.log", "config.json", "model"} <= artifacts and "checkpoints" not in artifacts  # stored once
    run_dir = Path(run.data.tags["candle_ray.run_dir"])
    assert (run_dir / "checkpoints" / "best.json").exists() and (run_dir / "checkpoints" / "last.json").exists()
    log = (run_dir / "training.log").read_text().splitlines()
    assert log[0].startswith("epoch,loss,accuracy,val_loss") and len(log) == 4
    # The download happened once and is reused: a second run does no fetching.
    r2 = _train([served_nt3, "--set", "epochs=1", *SMALL])
    assert r2.exit_code == 0 and "downloading" not in r2.output.lower()


def test_one_worker_task_equals_ray_train(ray_cluster, workdir, served_nt3):
    """The fast path (a Ray task) and Ray Train with one worker give the same numbers under one seed."""
    outputs = []
    for launcher in ("task", "ray-train"):
        r = _train([served_nt3, "--set", "epochs=2", *SMALL, "--launcher", launcher, "--run-name", launcher])
        assert r.exit_code == 0, r.output
        outputs.append([row.split(",")[:5] for row in
                        (workdir / "runs" / "nt3_http" / launcher / "training.log").read_text().splitlines()])
    assert outputs[0] == outputs[1]


def test_one_worker_fault_resumes(ray_cluster, workdir, served_nt3):
    r = _train([served_nt3, "--set", "epochs=3", *SMALL, "--inject-fault", "2", "--run-name", "task-fault"])
    assert r.exit_code == 0, r.output
    assert "resuming from its last checkpoint" in r.output
    client, runs = _runs(f"sqlite:///{workdir / 'mlflow.db'}")
    history = client.get_metric_history(runs[0].info.run_id, "loss")
    assert [m.step for m in history] == [1, 2, 3]


@pytest.mark.parametrize("experiment", sorted(p.name for p in (ROOT / "experiments").glob("*.py")))
def test_every_experiment_trains_in_smoke_mode(workdir, experiment):
    """Every shipped experiment: synthetic data in its real file format, prepared into the cache and trained
    for one epoch by the worker loop, here in the test's process (the other tests take it through Ray)."""
    import math

    from candle_ray.cli import _prepare
    from candle_ray.data.cache import Cache
    from candle_ray.job import make_job
    from candle_ray.loop import World, train_epochs

    exp = load_experiment(ROOT / "experiments" / experiment)
    config = exp.resolve_config(smoke=True, sets=["epochs=1"])
    said = []
    entry = _prepare(exp, smoke=True, cache=Cache(workdir / "cache"), log=said.append)
    assert entry.synthetic and any("SYNTHETIC" in line for line in said)
    metrics = list(train_epochs(make_job(exp, config, entry, run_dir=str(workdir / "run")), World()))
    assert [m["epoch"] for m in metrics] == [1]
    assert math.isfinite(metrics[0]["loss"]) and math.isfinite(metrics[0][exp.metric])
    assert (workdir / "run" / "checkpoints" / "last.json").exists()
    # --all-rows: its train and val rows pooled, no validation; a held-out test split still scored
    [final] = train_epochs(make_job(exp, config, entry, run_dir=str(workdir / "all"), all_rows=True), World())
    assert math.isfinite(final["loss"]) and not [k for k in final if k.startswith("val_")], final
    assert ("test_loss" in final) == ("test" in entry.manifest["splits"]), final


def test_a_config_the_data_cannot_take_exits_2_in_one_line(ray_cluster, workdir):
    """A UsageError raised in the worker (a conv kernel longer than the smoke data's 1,000 features) is not
    retried, and the CLI says it in one line: Ray's wrapper of it once printed "error: ray::_rank0() (pid=...)"."""
    r = CliRunner().invoke(main, ["train", str(ROOT / "experiments" / "nt3.py"), "--smoke", "--set", "conv=4 2000 1"])
    assert r.exit_code == 2, r.output
    errors = [line for line in r.output.splitlines() if line.startswith("error:")]
    assert errors == [errors[0]] and errors[0].startswith("error: model nt3 cannot be built for nt3-smoke (1000 "
                                                           "features): conv layer 1 (kernel 2000) is longer"), r.output
    assert "retry" not in r.output


def test_diverging_run_fails_with_exit_1(ray_cluster, workdir):
    r = CliRunner().invoke(main, ["train", str(ROOT / "experiments" / "nt3.py"), "--smoke", "--set", "learning_rate=1e12"])
    assert r.exit_code == 1, r.output
    assert "training diverged" in r.output and "lower learning_rate" in r.output
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("nt3").experiment_id])
    assert [run.info.status for run in runs] == ["FAILED"]
