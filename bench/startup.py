"""Start-up: `candle-ray train experiments/nt3.py --smoke` with one worker, as a user runs it.

First the time from the command's start to its first epoch (targets: <= 3 s when it finds a running
cluster, <= 8 s when it starts its own), each the median of three runs with the cache prepared:
cold (the command starts Ray), then on a running local head (`ray start --head`, as the README keeps one
for interactive work, reached through RAY_ADDRESS). Then the same cold run forced through Ray Train's
TorchTrainer, and the two DDP paths with 2 workers (`--workers 2`): rank 0 as a Ray task with a peer
actor (candle_ray.ddp, what `train` and `tune --workers-per-trial` use) against Ray Train (what elastic
runs use), side by side.
"""

import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, fields
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
FIRST_EPOCH = re.compile(r"^epoch\s+1/\d+ .* ([\d.]+)s$")


@dataclass
class Run:
    wall: float  # process start to exit
    first_epoch: float  # process start to the first epoch's start (its line's arrival less its epoch time)
    compute: float  # the epochs' own time, as the command reports it


def run_once(tmp: Path, *extra: str, address: str | None = None) -> Run:
    env = {**os.environ, "CANDLE_RAY_CACHE": str(tmp / "cache"), "CANDLE_RAY_OUTPUT": str(tmp / "runs"),
           "MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlflow.db'}", "RAY_AUTH_MODE": "disabled",
           "RAY_TMPDIR": str(tmp / "ray")}
    env.pop("RAY_ADDRESS", None)
    if address:
        env["RAY_ADDRESS"] = address
    t0 = time.perf_counter()
    proc = subprocess.Popen([str(BIN / "candle-ray"), "train", str(ROOT / "experiments" / "nt3.py"), "--smoke",
                             *extra], env=env, cwd=tmp, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines, first_epoch = [], None
    for line in proc.stdout:
        lines.append(line)
        m = FIRST_EPOCH.match(line.strip())
        if m and first_epoch is None:
            first_epoch = time.perf_counter() - t0 - float(m.group(1))
    wall = time.perf_counter() - t0
    out = "".join(lines)
    if proc.wait() != 0 or first_epoch is None:
        raise SystemExit(out)
    return Run(wall, first_epoch, float(re.search(r"compute ([\d.]+)s\)", out).group(1)))


def median_of(runs: list[Run]) -> Run:
    return Run(*(statistics.median(getattr(r, f.name) for r in runs) for f in fields(Run)))


def running_head(tmp: Path):
    """A local head started as the README says (`ray start --head --block`, no dashboard), and its address."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    head = subprocess.Popen([str(BIN / "ray"), "start", "--head", "--block", f"--port={port}", "--num-cpus=2",
                             "--include-dashboard=false", f"--temp-dir={tmp / 'head'}"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            time.sleep(2)  # the GCS answers before the raylet has registered
            return head, f"127.0.0.1:{port}"
        except OSError:
            time.sleep(0.5)
    head.kill()
    raise SystemExit("the local Ray head did not start within 60 s")


def start_up_figures(tmp: Path) -> tuple[Run, Run]:
    cold = median_of([run_once(tmp) for _ in range(3)])
    head, address = running_head(tmp)
    try:
        running = median_of([run_once(tmp, address=address) for _ in range(3)])
    finally:
        head.terminate()  # `ray start --block` stops its node's processes on SIGTERM
        head.wait(timeout=60)
    return cold, running


def main():
    with tempfile.TemporaryDirectory(prefix="crb-", dir="/tmp") as tmp:
        tmp = Path(tmp)
        run_once(tmp)  # the first run prepares the cache
        cold, running = start_up_figures(tmp)
        forced = run_once(tmp, "--launcher", "ray-train")
        peers, ray_train = (run_once(tmp, "--workers", "2", "--cpus-per-worker", "1", *launcher)
                            for launcher in ((), ("--launcher", "ray-train")))
    for what, run, target in (("on a running cluster", running, 3.0), ("cold (starts Ray)", cold, 8.0)):
        verdict = "met" if run.first_epoch <= target else f"NOT met by {run.first_epoch - target:.1f}s"
        print(f"start-up {what}: command start to first epoch {run.first_epoch:.1f}s (target <= {target:g}s: "
              f"{verdict}); wall {run.wall:.1f}s for {run.compute:.2f}s of compute")
    print(f"start-up: running cluster vs cold to first epoch {running.first_epoch / cold.first_epoch:.2f}x")
    print(f"start-up: the cold run through Ray Train's TorchTrainer: wall {forced.wall:.1f}s, to first epoch "
          f"{forced.first_epoch:.1f}s; the one-worker fast path saves {forced.wall - cold.wall:.1f}s "
          f"({forced.wall / cold.wall:.1f}x)")
    print(f"DDP, 2 workers: task + peer actor wall {peers.wall:.1f}s (to first epoch {peers.first_epoch:.1f}s, compute "
          f"{peers.compute:.2f}s); Ray Train wall {ray_train.wall:.1f}s (to first epoch {ray_train.first_epoch:.1f}s, "
          f"compute {ray_train.compute:.2f}s); peers save {ray_train.wall - peers.wall:.1f}s "
          f"({ray_train.wall / peers.wall:.1f}x)")


if __name__ == "__main__":
    main()
