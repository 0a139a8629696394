"""Several real raylets on this machine (ray.cluster_utils.Cluster), for multi-node, elastic and fault tests.

The session-wide `ray_cluster` fixture (tests/conftest.py) may already be connected in this process:
it is shut down first and started again afterwards, as the tests that follow expect.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

NODE_DEFAULTS = {"object_store_memory": 300 * 1024 * 1024, "min_worker_port": 0, "max_worker_port": 0}


@contextmanager
def local_nodes(head_cpus: float, *worker_cpus: float, dashboard: bool = True):
    """A head node with `head_cpus` CPUs and one worker node per entry of `worker_cpus`; yields the Cluster."""
    import ray
    from ray.cluster_utils import Cluster

    from tests.conftest import free_port

    was_connected = ray.is_initialized()
    ray.shutdown()
    head = {**NODE_DEFAULTS, "num_cpus": head_cpus}
    if dashboard:  # Train V2 polls the State API; without a dashboard it logs a warning every 2 s
        head.update(include_dashboard=True, dashboard_host="127.0.0.1", dashboard_port=free_port())
    cluster = Cluster(initialize_head=True, head_node_args=head)
    try:
        for cpus in worker_cpus:
            cluster.add_node(num_cpus=cpus, **NODE_DEFAULTS)
        cluster.wait_for_nodes()
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()
        if was_connected:
            from candle_ray import runtime

            runtime.connect(num_cpus=2)


def add_worker(cluster, cpus: float):
    node = cluster.add_node(num_cpus=cpus, **NODE_DEFAULTS)
    cluster.wait_for_nodes()
    return node


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
        os.killpg(proc.pid, 9)
        out = proc.communicate(timeout=30)[0]
        raise AssertionError(f"candle-ray did not finish in {timeout:.0f}s:\n{out.decode()[-4000:]}")
    return out.decode()


def wait_for(predicate, timeout: float, what: str, every: float = 0.5):
    """Poll `predicate()` until it returns something truthy; fail with `what` past `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
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
