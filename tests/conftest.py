"""Test environment: quiet Ray settings set before anything starts Ray; shared fixtures.

One Ray cluster per test session (integration tests only), never one per test or module: starting
one costs ~10 s here and a 2-worker trial ~3.5 GiB. Under `make test` (pytest -n 2) the integration tests all
run in one worker process and the unit tests in the other (`pytest_xdist_make_scheduler` below). MLflow
always gets an explicit URI so nothing lands in the CWD.
"""

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

_RAY_TMP = tempfile.mkdtemp(prefix="cr-", dir="/tmp")  # short: Unix socket paths are limited
for key, value in {
    "RAY_AUTH_MODE": "disabled",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_DATA_DISABLE_PROGRESS_BARS": "1",
    "RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS": "0",
    "RAY_DATA_EXECUTION_NO_PROGRESS_TIMEOUT_S": "120",
    "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0",
    "RAY_TMPDIR": _RAY_TMP,
    "MLFLOW_TRACKING_URI": f"sqlite:///{_RAY_TMP}/default-mlflow.db",
    # Fake credentials for the local S3 server (moto) that the storage tests start; Ray's workers
    # inherit them. No metadata-service lookups: there is no cloud here.
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}.items():
    os.environ[key] = value
os.environ.pop("RAY_ADDRESS", None)

ROOT = Path(__file__).resolve().parents[1]


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """`make test` runs two pytest-xdist workers: one takes every integration test, in file order, so that
    they share its one Ray cluster and never run beside each other; the other takes the unit tests, which
    start no Ray, at the same time (and the first helps with them once its integration tests are done).
    (xdist's own `--dist loadgroup` reads groups off node ids, which pytest 9.2 no longer lets it rename.)"""
    from xdist.scheduler import LoadScopeScheduling

    class IntegrationInOneWorker(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return "integration" if nodeid.startswith("tests/integration/") else super()._split_scope(nodeid)

    return IntegrationInOneWorker(config, log)


def pytest_runtest_setup(item):
    """Unit tests that run beside the integration tests (pytest -n 2) use one torch thread: two would
    spin against the Ray processes on this machine's two cores."""
    if os.environ.get("PYTEST_XDIST_WORKER") and item.nodeid.startswith("tests/unit/"):
        import torch

        torch.set_num_threads(1)


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_RAY_TMP, ignore_errors=True)


@pytest.fixture(scope="session")
def ray_session():
    """The test session's one Ray cluster: two real raylets on this machine (a head and a worker node, 1 CPU
    each, the 2 CPUs this machine has), with this process's driver connected. Single-node tests see a
    2-CPU cluster; multi-node, elastic and fault tests use its nodes instead of starting their own."""
    import ray

    from candle_ray import runtime
    from tests.support.ray_nodes import start_cluster

    cluster = start_cluster(1, 1)
    runtime.connect(cluster.address)
    yield cluster
    ray.shutdown()
    cluster.shutdown()


@pytest.fixture(scope="session")
def ray_cluster(ray_session):
    """The session cluster's resources, for tests that run on it without caring about its nodes."""
    import ray

    return ray.cluster_resources()


@pytest.fixture
def two_nodes(ray_session):
    """The session cluster's head and worker node; whatever nodes the test removes or adds are put back."""
    from tests.support.ray_nodes import restore_workers

    yield ray_session
    restore_workers(ray_session)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_answering(url: str, proc, log: Path, what: str, timeout_s: float) -> None:
    """Poll `url` until it answers 200; a process that exits or a timeout raises with the log's tail."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"{what} did not start: {log.read_text()[-2000:]}")
        time.sleep(0.5)


@pytest.fixture(scope="session")
def mlflow_schema(tmp_path_factory) -> Path:
    """An empty SQLite MLflow store with MLflow's schema in place. A store's first use runs MLflow's database
    migrations (3-5 s here); a test copies this file instead (milliseconds) and gets the same empty store.
    Creating a store from nothing stays covered: `make demo` and test_tracking's concurrent runs do it."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    path = tmp_path_factory.mktemp("mlflow-schema") / "mlflow.db"
    # The Default experiment it creates points into the schema's own folder, never the working directory.
    SqlAlchemyStore(f"sqlite:///{path}", str(path.parent / "artifacts")).engine.dispose()
    return path


def mlflow_store(schema: Path, folder: Path) -> str:
    """A fresh SQLite MLflow store `folder/mlflow.db` copied from the migrated empty one; its tracking URI."""
    shutil.copyfile(schema, folder / "mlflow.db")
    return f"sqlite:///{folder / 'mlflow.db'}"


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory, mlflow_schema):
    """A real `mlflow server` subprocess on a free loopback port (SQLite backend, proxied artifacts)."""
    root = tmp_path_factory.mktemp("mlflow-server")
    mlflow_store(mlflow_schema, root)
    port = free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    env.pop("MLFLOW_TRACKING_URI", None)
    log = open(root / "server.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{root}/mlflow.db",
         "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root)
    url = f"http://127.0.0.1:{port}"
    wait_until_answering(f"{url}/health", proc, root / "server.log", "mlflow server", timeout_s=90)
    yield url
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


@pytest.fixture
def workdir(tmp_path, monkeypatch, mlflow_schema):
    """A scratch directory with its own cache, runs folder and SQLite MLflow store."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CANDLE_RAY_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CANDLE_RAY_OUTPUT", str(tmp_path / "runs"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_store(mlflow_schema, tmp_path))
    return tmp_path
