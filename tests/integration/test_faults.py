"""Failures on real raylets (the session's two 1-CPU nodes on this machine), each bounded in time, each measured:
a DDP worker killed with SIGKILL mid-epoch, the sweep driver killed and resumed, and a node removed while
the MLflow server restarts, mid-sweep. Time lost and epochs re-run are printed ("FAULT ...")."""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import ROOT, free_port, mlflow_store
from tests.integration.test_elastic import recovery
from tests.integration.test_tune import rest
from tests.support.ray_nodes import candle_ray, finish, read_json, training_log_rows, wait_for

pytestmark = pytest.mark.integration

SLOW = ROOT / "tests" / "support" / "slow_nt3.py"


def _children(uri: str, experiment: str = "slow_nt3"):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], "tags.mlflow.parentRunId != ''") if exp else []
    return client, runs


def _steps(client, run, metric: str = "val_loss") -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run.info.run_id, metric))


def _one_child_per_trial(uri: str, trials: int, epochs: int):
    """Exactly one FINISHED child run per trial, none RUNNING, each with every epoch exactly once."""
    client, children = _children(uri)
    assert len(children) == trials, [c.data.tags.get("candle_ray.trial_id") for c in children]
    assert len({c.data.tags["candle_ray.trial_id"] for c in children}) == trials
    for child in children:
        assert child.info.status == "FINISHED", child.info
        assert _steps(client, child) == list(range(1, epochs + 1)), child.data.tags["candle_ray.trial_id"]
    return client, children


def test_worker_killed_mid_epoch_resumes_from_checkpoint(two_nodes, workdir, mlflow_server):
    """`train --workers 2` across both nodes, logging to a real MLflow server; rank 0 (the rank that writes
    checkpoints) gets SIGKILL in the middle of an epoch. The run is read back through the server's REST API."""
    proc = candle_ray("train", SLOW, "--smoke", "--workers", 2, "--cpus-per-worker", 1, "--max-failures", 1,
                      "--set", "epochs=6", "--run-name", "worker-kill", "--tracking-uri", mlflow_server,
                      "--address", two_nodes.address, cwd=workdir)
    run_dir = workdir / "runs" / "slow_nt3" / "worker-kill"
    try:
        wait_for(lambda: len(training_log_rows(run_dir / "training.log")) >= 3, 180, "3 epochs")
        victim = read_json(run_dir / "ranks" / "rank-0.json")
        time.sleep(0.2)  # into the next epoch
        t_kill = time.time()
        os.kill(victim["pid"], signal.SIGKILL)
        ckpt_at_kill = read_json(run_dir / "checkpoints" / "last.json")["epoch"]
    finally:
        out = finish(proc, 300)
    assert proc.returncode == 0, out[-4000:]
    assert [int(r["epoch"]) for r in training_log_rows(run_dir / "training.log")] == list(range(1, 7))
    assert read_json(run_dir / "ranks" / "rank-0.json")["pid"] != victim["pid"]  # a new worker took rank 0
    run = rest(mlflow_server, "runs/search", {"experiment_ids": [rest(mlflow_server, "experiments/get-by-name?experiment_name=slow_nt3")["experiment"]["experiment_id"]],
                                               "filter": "tags.mlflow.runName = 'worker-kill'"})["runs"]
    assert len(run) == 1 and run[0]["info"]["status"] == "FINISHED"
    run_id = run[0]["info"]["run_id"]
    assert {p["key"]: p["value"] for p in run[0]["data"]["params"]}["workers"] == "2"
    history = rest(mlflow_server, f"metrics/get-history?run_id={run_id}&metric_key=val_loss")["metrics"]
    assert sorted(m["step"] for m in history) == list(range(1, 7))  # every epoch exactly once despite the restart
    files = {f["path"] for f in rest(mlflow_server, f"artifacts/list?run_id={run_id}")["files"]}
    assert {"training.log", "config.json", "model"} <= files
    r = recovery({m["step"]: int(m["timestamp"]) / 1000 for m in history}, t_kill)
    assert r["last_epoch"] <= ckpt_at_kill  # it resumed from the last checkpoint, not from scratch
    print(f"\nFAULT worker SIGKILL: usual epoch {r['usual_s']:.2f}s; next new epoch {r['next_after_s']:.1f}s after the "
          f"kill; time lost {r['lost_s']:.1f}s; epochs re-run: at most 1, the partial epoch {ckpt_at_kill + 1} "
          f"(resumed from the epoch-{ckpt_at_kill} checkpoint)")


def test_driver_killed_then_resumed(two_nodes, workdir):
    """kill -9 of the sweep driver while trials run on both nodes, then `--resume`: exactly one child run per
    trial, none RUNNING. (tests/integration/test_tune.py covers the single-node kill -9 and Ctrl-C cases.)"""
    args = ["tune", SLOW, "--smoke", "--num-samples", 2, "--max-concurrent", 2, "--scheduler", "fifo",
            "--set", "epochs=8", "--checkpoint-every", 2, "--name", "killed", "--address", two_nodes.address]
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    proc = candle_ray(*args, cwd=workdir)

    def progressed():
        if not (workdir / "candle-ray-sweeps" / "killed" / "sweep.json").exists():
            return None
        try:
            client, runs = _children(uri)
            return [r for r in runs if len(_steps(client, r)) >= 4]
        except Exception:
            return None

    try:
        wait_for(progressed, 240, "a trial with 4 epochs")
        client, runs = _children(uri)
        before = {r.data.tags["candle_ray.trial_id"]: len(_steps(client, r)) for r in runs}
        t_kill = time.time()
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        finish(proc, 60)
    t_resume = time.time()
    again = candle_ray(*args, "--resume", cwd=workdir)
    out = finish(again, 400)
    assert again.returncode == 0, out[-4000:]
    assert "2 trials: 2 completed" in out
    client, children = _one_child_per_trial(uri, 2, 8)
    trials = workdir / "candle-ray-sweeps" / "killed" / "trials"
    for child in children:
        trial = child.data.tags["candle_ray.trial_id"]
        if before.get(trial, 0) in (0, 8):
            continue
        # No restore record: Tune's last experiment snapshot (written every ~10 s) named no checkpoint of this
        # trial yet, so it started over (its epochs are still logged once: the MLflow child skips known steps).
        log = trials / trial / "restores.jsonl"
        restores = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
        restored = (restores[-1]["epoch"] if restores else 0) or 0
        times = {m.step: m.timestamp / 1000 for m in client.get_metric_history(child.info.run_id, "val_loss")}
        print(f"\nFAULT driver kill -9 + resume, trial {trial}: {before[trial]} epochs logged at the kill, resumed from "
              f"the epoch-{restored} checkpoint: {before[trial] - restored} epoch(s) re-run; kill -> resumed driver "
              f"{t_resume - t_kill:.1f}s (test-driven); resumed driver start -> its first new epoch "
              f"{times[before[trial] + 1] - t_resume:.1f}s")
        assert restored <= before[trial]


def _mlflow_server(root: Path, port: int) -> subprocess.Popen:
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{root}/mlflow.db",
         "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"],
        stdout=open(root / "server.log", "a"), stderr=subprocess.STDOUT, env=env, cwd=root, start_new_session=True)
    url = f"http://127.0.0.1:{port}"

    def healthy():
        if proc.poll() is not None:
            raise AssertionError(f"mlflow server exited: {(root / 'server.log').read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    wait_for(healthy, 90, "the mlflow server")
    return proc


def _stop(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def test_node_lost_and_mlflow_server_restarted_mid_sweep(two_nodes, workdir, tmp_path, mlflow_schema):
    """Two faults in one sweep (each test here pays a sweep's start-up): the worker node's raylet is killed
    while a trial runs there, and the MLflow server is stopped at once and restarted seconds later. Tune
    retries the lost trial on the head node from its last checkpoint (--max-failures) while the driver queues
    and retries its MLflow calls: every trial ends with one finished MLflow child holding every epoch's
    metrics, those logged during the outage too."""
    root = tmp_path / "mlflow-server"
    root.mkdir()
    mlflow_store(mlflow_schema, root)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = _mlflow_server(root, port)
    worker = next(n for n in two_nodes.worker_nodes)
    proc = candle_ray("tune", SLOW, "--smoke", "--num-samples", 2, "--max-concurrent", 2, "--scheduler", "fifo",
                      "--set", "epochs=8", "--checkpoint-every", 0, "--max-failures", 2, "--name", "lost-node",
                      "--tracking-uri", url, "--address", two_nodes.address, cwd=workdir)
    trials = workdir / "candle-ray-sweeps" / "lost-node" / "trials"

    def running_on_worker():
        for rank in trials.glob("*/ranks/rank-0.json") if trials.exists() else []:
            if read_json(rank)["node_id"] == worker.node_id:
                trial = rank.parent.parent.name
                for client, run in _children_safe(url):
                    if run.data.tags.get("candle_ray.trial_id") == trial and len(_steps(client, run)) >= 3:
                        return trial
        return None

    try:
        trial = wait_for(running_on_worker, 240, "a trial with 3 epochs on the worker node")
        t_kill = time.time()
        two_nodes.remove_node(worker, allow_graceful=False)
        t_stop = time.monotonic()
        _stop(server)
        time.sleep(4)  # the server is away for this long, plus its start-up
        server = _mlflow_server(root, port)
        outage = time.monotonic() - t_stop
        out = finish(proc, 400)
        assert proc.returncode == 0, out[-4000:]
        assert "2 trials: 2 completed, 0 failed" in out
        assert "not logged" not in out and "MLflow logging of some trials failed" not in out
        client, children = _one_child_per_trial(url, 2, 8)
        run = next(c for c in children if c.data.tags["candle_ray.trial_id"] == trial)
        times = {m.step: m.timestamp / 1000 for m in client.get_metric_history(run.info.run_id, "val_loss")}
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        _stop(server)
    noticed = [line.strip() for line in out.splitlines() if "MLflow at" in line]
    print(f"\nFAULT MLflow server down for {outage:.1f}s mid-sweep: 0 metrics lost (calls queued and retried); "
          f"the driver said: {noticed[:2]}")
    restore = [json.loads(line) for line in (trials / trial / "restores.jsonl").read_text().splitlines()][-1]
    restored = int(restore["epoch"] or 0)
    assert read_json(trials / trial / "ranks" / "rank-0.json")["node_id"] != worker.node_id  # retried elsewhere
    steps = sorted(times)
    usual = sorted(times[b] - times[a] for a, b in zip(steps, steps[1:]))[len(steps) // 2]
    reached = max([e for e in steps if times[e] <= t_kill], default=0)  # what the driver had logged at the kill
    first = min(e for e in steps if e > restored and times[e] > restore["time"])  # trained after the restart
    first_new = times[first] - t_kill
    print(f"\nFAULT node removed: trial {trial} had logged {reached} epochs; Tune restarted it on the head node "
          f"{restore['time'] - t_kill:.1f}s after the kill from its epoch-{restored} checkpoint (checkpoints every "
          f"epoch: at most the one partial epoch re-run); epoch {first} came {first_new:.1f}s after the kill: "
          f"time lost ~{first_new - usual:.1f}s (usual epoch {usual:.2f}s)")
    assert restored >= reached - 1


def _children_safe(uri):
    try:
        client, runs = _children(uri)
    except Exception:
        return []
    return [(client, r) for r in runs]
