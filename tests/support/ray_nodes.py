"""Several real raylets on this machine (ray.cluster_utils.Cluster): the test session's one Ray cluster
is a head and a worker node (tests/conftest.py), so multi-node, elastic and fault tests share it. A test
that removes or adds nodes gets them put back (`restore_workers`) before the next test runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

NODE_DEFAULTS = {"object_store_memory": 300 * 1024 * 1024, "min_worker_port": 0, "max_worker_port": 0}


def start_cluster(head_cpus: float, *worker_cpus: float):
    """A head node with `head_cpus` CPUs (and a dashboard: Train V2 polls the State API, and without one
    logs a warning every 2 s) and one worker node per entry of `worker_cpus`; not connected."""
    from ray.cluster_utils import Cluster

    from tests.conftest import free_port

    head = {**NODE_DEFAULTS, "num_cpus": head_cpus, "include_dashboard": True, "dashboard_host": "127.0.0.1",
            "dashboard_port": free_port(),
            # A killed raylet is declared dead after 5 missed 1 s health checks (Ray's default: 5 x 3 s),
            # so node-loss tests wait seconds, not half a minute, for Ray to notice.
            "_system_config": {"health_check_period_ms": 1000, "health_check_failure_threshold": 5}}
    cluster = Cluster(initialize_head=True, head_node_args=head)
    for cpus in worker_cpus:
        cluster.add_node(num_cpus=cpus, **NODE_DEFAULTS)
    cluster.wait_for_nodes()
    return cluster


def add_worker(cluster, cpus: float):
    node = cluster.add_node(num_cpus=cpus, **NODE_DEFAULTS)
    cluster.wait_for_nodes()
    return node


def remove_workers(cluster) -> None:
    for node in list(cluster.worker_nodes):
        cluster.remove_node(node)
    cluster.wait_for_nodes()


def restore_workers(cluster, count: int = 1, cpus: float = 1) -> None:
    """Back to `count` worker nodes of `cpus` CPUs, whatever a test removed or added."""
    while len(cluster.worker_nodes) > count:
        cluster.remove_node(next(iter(cluster.worker_nodes)))
    while len(cluster.worker_nodes) < count:
        cluster.add_node(num_cpus=cpus, **NODE_DEFAULTS)
    cluster.wait_for_nodes()


def candle_ray(*args, cwd: Path, **popen) -> subprocess.Popen:
    """`candle-ray ARGS` as its own process (its own Ray driver), output captured."""
    exe = str(Path(sys.executable).parent / "candle-ray")
    return subprocess.Popen([exe, *map(str, args)], cwd=cwd, env={**os.environ, **popen.pop("env", {})},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True, **popen)


def finish(proc: subprocess.Popen, timeout: float) -> str:
    """Wait for `proc` (killing its process group past `timeout`); its output."""
    try:
        out = proc.communicate(timeout=timeout)[0]
    except subprocess.TimeoutExpired:
        stacks = _stacks(proc.pid)
        os.killpg(proc.pid, 9)
        out = proc.communicate(timeout=30)[0]
        raise AssertionError(f"candle-ray did not finish in {timeout:.0f}s:\n{out.decode()[-4000:]}\n"
                             f"its threads when it was killed:\n{stacks}")
    return out.decode()


def _stacks(pid: int) -> str:
    """Every thread's stack of a hung process (py-spy, installed with Ray), to show where it waits."""
    spy = Path(sys.executable).parent / "py-spy"
    try:
        dump = subprocess.run([str(spy), "dump", "--pid", str(pid)], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"(no stack dump: {exc})"
    return (dump.stdout + dump.stderr)[-8000:]


def wait_for(predicate, timeout: float, what: str, every: float = 0.5, proc: subprocess.Popen | None = None):
    """Poll `predicate()` until it returns something truthy; fail with `what` past `timeout`, or as soon as
    `proc` (the run being watched) has ended without it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"candle-ray ended (exit {proc.returncode}) before {what}")
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def training_log_rows(path: Path) -> list[dict]:
    import csv

    if not path.exists():
        return []
    with open(path) as f:
        return list(csv.DictReader(f))


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())
