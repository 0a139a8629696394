"""Tracking calls survive a store that stops answering for a while, refuse to retry what cannot succeed,
and, past the budget, say what was not logged (tests/integration/test_faults.py restarts a real server)."""

import signal
import threading
import time

import pytest
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST

from candle_ray import tracking
from tests.conftest import mlflow_store


class Flaky:
    """Fails like an unreachable server (MLflow's connection error) `failures` times, then answers."""

    def __init__(self, failures: int, exc=None):
        self.failures, self.calls, self.exc = failures, 0, exc

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.calls <= self.failures:
            raise self.exc or MlflowException("API request to http://127.0.0.1:1/api failed with exception "
                                              "HTTPConnectionPool: Max retries exceeded (Connection refused)")
        return ("ok", args, kwargs)


def test_transient_failures_are_retried(monkeypatch):
    monkeypatch.setenv(tracking.RETRY_ENV, "30")
    fn = Flaky(2)
    assert tracking.call_with_retry("http://store-a", fn, 1, key="v") == ("ok", (1,), {"key": "v"})
    assert fn.calls == 3
    assert "http://store-a" not in tracking._outages  # the outage is over


def test_a_refusal_is_not_retried(monkeypatch):
    monkeypatch.setenv(tracking.RETRY_ENV, "30")
    fn = Flaky(5, MlflowException("no such run", error_code=RESOURCE_DOES_NOT_EXIST))
    with pytest.raises(MlflowException, match="no such run"):
        tracking.call_with_retry("http://store-b", fn)
    assert fn.calls == 1


def test_a_file_to_upload_that_is_gone_is_not_retried(monkeypatch):
    monkeypatch.setenv(tracking.RETRY_ENV, "30")
    fn = Flaky(5, FileNotFoundError(2, "No such file or directory", "checkpoints/epoch-0007.pt"))
    with pytest.raises(FileNotFoundError):
        tracking.call_with_retry("http://store-f", fn)
    assert fn.calls == 1


def test_past_the_budget_it_says_what_was_lost(monkeypatch):
    monkeypatch.setenv(tracking.RETRY_ENV, "1")
    assert tracking.call_with_retry("http://store-c", Flaky(0))[0] == "ok"  # it answered once
    fn = Flaky(1000)
    with pytest.raises(tracking.TrackingUnavailable, match="epoch 3's metrics of run abc could not be logged"):
        tracking.call_with_retry("http://store-c", fn, what="epoch 3's metrics of run abc")
    calls = fn.calls
    assert calls >= 2
    # The outage is shared: the next call to the same store tries once, then fails at once.
    with pytest.raises(tracking.TrackingUnavailable):
        tracking.call_with_retry("http://store-c", fn, what="epoch 4's metrics")
    assert fn.calls == calls + 1
    assert tracking.call_with_retry("http://store-c", Flaky(0))[0] == "ok"  # it answers again: reset
    assert "http://store-c" not in tracking._outages


def test_sqlite_client_retries_through_the_proxy(tmp_path, monkeypatch, mlflow_schema):
    monkeypatch.setenv(tracking.RETRY_ENV, "30")
    run = tracking.RunTracker(mlflow_store(mlflow_schema, tmp_path), "exp")
    run.start("r", {"a": 1}, {})
    run.log_epoch({"epoch": 1, "loss": 0.5, "replayed": False})
    assert run.logged_steps("loss") == {1}
    assert isinstance(run.client, tracking._RetryingClient)
    run.finish()


def test_ctrl_c_stops_the_wait_not_the_call(tmp_path, monkeypatch, mlflow_schema):
    """A Ctrl-C while the main thread logs an epoch: the batch is still written whole, and the run then ends
    KILLED. Cut inside SQLAlchemy, a write kept the SQLite store locked and the run's end hung."""
    run = tracking.RunTracker(mlflow_store(mlflow_schema, tmp_path), "exp")
    run.start("r", {}, {})
    real = run.client._client.log_batch

    def ctrl_c_during_the_write(*args, **kwargs):
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
        time.sleep(0.3)  # where the interrupt would have landed, had this run in the main thread
        return real(*args, **kwargs)

    monkeypatch.setattr(run.client._client, "log_batch", ctrl_c_during_the_write)
    with pytest.raises(KeyboardInterrupt):
        run.log_epoch({"epoch": 1, "loss": 0.5})
    run.finish("KILLED")
    assert run.logged_steps("loss") == {1}
    assert run.client.get_run(run.run_id).info.status == "KILLED"


def test_a_lost_answer_does_not_make_a_second_child(tmp_path, monkeypatch, mlflow_schema):
    """The store created the child but its answer was lost (fault injected into a real SQLite-backed client):
    the retry finds that run instead of creating another."""
    monkeypatch.setenv(tracking.RETRY_ENV, "30")
    parent = tracking.RunTracker(mlflow_store(mlflow_schema, tmp_path), "exp")
    parent.start("sweep", {}, {})
    sweep = tracking.SweepTracker(parent)
    child = tracking.RunTracker(parent.uri, "exp")
    real, lost = child.client._client.create_run, []

    def create_then_lose_the_answer(*args, **kwargs):
        run = real(*args, **kwargs)
        if not lost:
            lost.append(run.info.run_id)
            raise MlflowException("API request failed with exception ReadTimeout")
        return run

    monkeypatch.setattr(child.client._client, "create_run", create_then_lose_the_answer)
    tags = {"mlflow.parentRunId": parent.run_id, sweep.TRIAL_TAG: "t1"}
    find = lambda: [r.info.run_id for r in parent.client.search_runs(  # noqa: E731
        [parent.experiment_id()], f"tags.`{sweep.TRIAL_TAG}` = 't1'")]
    child.start("t1", {"lr": 0.1}, tags, existing=find)
    assert child.run_id == lost[0] and sweep.count_children() == 1


def test_a_store_never_reached_fails_fast(monkeypatch):
    monkeypatch.setenv(tracking.RETRY_ENV, "600")
    monkeypatch.setattr(tracking, "FIRST_CONTACT_S", 1.0)
    fn = Flaky(1000)
    with pytest.raises(tracking.TrackingUnavailable, match="did not answer for 1s"):
        tracking.call_with_retry("http://never-reached", fn, what="run 'x'")
