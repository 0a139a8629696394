"""Elastic Ray Train runs (`--workers MIN-MAX` -> ScalingConfig(num_workers=(MIN, MAX))) on real raylets:
a run that starts with one worker grows when a node joins and goes on with fewer when it leaves."""

import os
import signal
import statistics
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.support.ray_nodes import add_worker, candle_ray, finish, remove_workers, training_log_rows, wait_for

pytestmark = pytest.mark.integration

SLOW = ROOT / "tests" / "support" / "slow_nt3.py"
RESIZE_S = "1"  # how often an elastic run looks for more room (Ray's default: 60 s)


@pytest.fixture
def head_only(two_nodes):
    remove_workers(two_nodes)  # one 1-CPU node: one 1-CPU worker fits, a second needs a node more
    return two_nodes


def _epochs_seen(log, seen: dict) -> list[dict]:
    rows = training_log_rows(log)
    for row in rows:
        seen.setdefault(int(row["epoch"]), time.monotonic())
    return rows


def _run(uri: str, run_name: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    return client.search_runs([e.experiment_id for e in client.search_experiments()],
                              f"tags.mlflow.runName = '{run_name}'")[0]


def logged_times(uri: str, run_name: str) -> dict[int, float]:
    """Epoch -> when the driver logged it (MLflow's timestamps, seconds since the epoch)."""
    from mlflow.tracking import MlflowClient

    history = MlflowClient(uri).get_metric_history(_run(uri, run_name).info.run_id, "val_loss")
    return {m.step: m.timestamp / 1000 for m in history}


def recovery(times: dict[int, float], event: float) -> dict:
    """Around an event (a wall-clock time): the last epoch logged before it, how long the next one took
    beyond a usual epoch (time lost), and how much of the interrupted epoch had run (work re-run)."""
    steps = sorted(times)
    last = max(e for e in steps if times[e] <= event)
    before = [e for e in steps if e <= last][-4:]  # the usual pace just before the event
    usual = statistics.median(times[b] - times[a] for a, b in zip(before, before[1:]))
    return {"last_epoch": last, "usual_s": usual, "next_after_s": times[last + 1] - event,
            "lost_s": times[last + 1] - times[last] - usual, "rerun_s": event - times[last]}


def reservable_cpus() -> tuple[float, float]:
    """(CPUs Ray's AutoscalingCoordinator reserves at once to a new request for all of them, the cluster's
    CPUs): less while an earlier elastic run's request still holds some (candle_ray.launch._release_reservation).
    The coordinator's name and methods are Ray 2.60 internals, as in launch.py."""
    import ray

    coordinator = ray.get_actor("AutoscalingCoordinator", namespace="AutoscalingCoordinator")
    total = ray.cluster_resources()["CPU"]
    probe = "candle-ray-test-probe"
    ray.get(coordinator.request_resources.remote(probe, [{"CPU": 1}] * int(total), expire_after_s=30))
    try:
        reserved = ray.get(coordinator.get_reserved_resources.remote(probe, recompute=True))
    finally:
        ray.get(coordinator.cancel_request.remote(probe))
    return sum(node.get("CPU", 0) for node in reserved.values()), total


def test_train_grows_when_a_node_joins_and_shrinks_when_it_leaves(head_only, workdir):
    env = {"CANDLE_RAY_ELASTIC_RESIZE_S": RESIZE_S}
    # Stopped by Ctrl-C once it has trained after the node left (an epoch or time budget would have to outlast
    # both changes on the slowest machine, and trained on idle for a minute here); an elastic run that ends on
    # its own is test_elastic_trials_run_on_ray_train's.
    proc = candle_ray("train", SLOW, "--smoke", "--workers", "1-2", "--cpus-per-worker", 1, "--max-failures", 3,
                      "--set", "epochs=100000", "--run-name", "el", "--address", head_only.address, cwd=workdir,
                      env=env)
    log = workdir / "runs" / "slow_nt3" / "el" / "training.log"
    seen: dict[int, float] = {}
    try:
        rows = wait_for(lambda: len(_epochs_seen(log, seen)) >= 2 and training_log_rows(log), 150,
                        "2 epochs on one worker", proc=proc)
        assert {r["workers"] for r in rows} == {"1"}
        t_add = time.time()
        node = add_worker(head_only, 1)
        grown = wait_for(lambda: [r for r in _epochs_seen(log, seen) if r["workers"] == "2"], 120, "a 2-worker epoch",
                         proc=proc)
        first_grown = int(grown[0]["epoch"])
        wait_for(lambda: len([r for r in _epochs_seen(log, seen) if r["workers"] == "2"]) >= 2, 60, "2 epochs on 2 workers",
                 proc=proc)
        _epochs_seen(log, seen)
        t_remove, t_remove_wall = time.monotonic(), time.time()
        head_only.remove_node(node, allow_graceful=False)
        # An epoch on 1 worker: the 2-worker epoch in flight at the kill may still land after it (seen once in a local suite run)
        wait_for(lambda: [r for r in _epochs_seen(log, seen) if seen[int(r["epoch"])] > t_remove and r["workers"] == "1"],
                 150, "a 1-worker epoch after the node left", proc=proc)
        proc.send_signal(signal.SIGINT)
    finally:
        out = finish(proc, 120)
    print(out[-2500:])
    assert proc.returncode == 1 and "Aborted!" in out, out[-4000:]  # Ctrl-C, after every epoch before it was logged
    rows = _epochs_seen(log, seen)
    epochs = [int(r["epoch"]) for r in rows]
    assert epochs == list(range(1, len(epochs) + 1))  # every epoch exactly once, through two restarts
    # 1 worker, then 2 after the node joined, then 1 again after it left: the run went on with fewer
    # (0 marks an epoch replayed from a checkpoint: an earlier group trained it).
    sizes = [r["workers"] for r in rows if r["workers"] != "0"]
    phases = [size for i, size in enumerate(sizes) if i == 0 or size != sizes[i - 1]]
    assert phases == ["1", "2", "1"], sizes

    reserved, total = reservable_cpus()
    assert reserved == total, f"a Ctrl-C'd elastic run still holds {total - reserved:g} of {total:g} CPUs reserved"
    Path(os.environ.get("CANDLE_RAY_TEST_OUTPUT", workdir / "output.txt")).write_text(out)
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    assert _run(uri, "el").info.status == "KILLED"
    times = logged_times(uri, "el")
    grow = recovery(times, times[first_grown] - 1e-3)
    loss = recovery(times, t_remove_wall)
    print(f"\nELASTIC usual epoch {grow['usual_s']:.2f}s | node joined -> first 2-worker epoch (epoch {first_grown}) "
          f"after {times[first_grown] - t_add:.1f}s; the resize restart cost {grow['lost_s']:.1f}s, no epoch re-run | "
          f"node removed -> next epoch after {loss['next_after_s']:.1f}s; time lost {loss['lost_s']:.1f}s, "
          f"{loss['rerun_s']:.1f}s of epoch {loss['last_epoch'] + 1} re-run (resumed from epoch {loss['last_epoch']})")


def test_elastic_trials_run_on_ray_train(two_nodes, workdir):
    """`tune --workers-per-trial 1-2`: the trial is a Ray Train run; with the second node both workers fit
    (each such trial pays Train's start-up: ~25 s here)."""
    from mlflow.tracking import MlflowClient

    proc = candle_ray("tune", ROOT / "tests" / "support" / "tiny_nt3.py", "--smoke", "--workers-per-trial", "1-2",
                      "--cpus-per-worker", 1, "--num-samples", 1, "--scheduler", "fifo", "--set", "epochs=3",
                      "--name", "elastic", "--address", two_nodes.address, cwd=workdir,
                      env={"CANDLE_RAY_ELASTIC_RESIZE_S": RESIZE_S})
    out = finish(proc, 400)
    print(out[-2500:])
    assert proc.returncode == 0, out[-4000:]
    assert "1 trial: 1 completed" in out and "1-2 x 1 CPU worker(s) per trial" in out
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("tiny_nt3").experiment_id])
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(children) == 1 and children[0].info.status == "FINISHED"
    for child in children:
        assert sorted(m.step for m in client.get_metric_history(child.info.run_id, "val_loss")) == [1, 2, 3]
        assert {m.value for m in client.get_metric_history(child.info.run_id, "workers")} - {0.0} <= {1.0, 2.0}
    for trial in (workdir / "candle-ray-sweeps" / "elastic" / "trials").iterdir():
        assert (trial / "checkpoints" / "last.json").exists()
