"""The Slurm and PBS batch scripts, run without a scheduler: the scheduler's variables describe a
2-node allocation on this machine, LAUNCHER=local starts each node as its own `ray start --block`
(own temp dir and ports, 127.0.0.1), a tiny sweep runs through it, and every Ray process stops.

Run under the shared lock: flock /tmp/candle-ray-ray.lock .venv/bin/pytest -x -q tests/integration/test_batch_scripts.py
"""

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, mlflow_store

pytestmark = pytest.mark.integration

SBATCH = ROOT / "cluster" / "slurm" / "candle-ray.sbatch"
PBS = ROOT / "cluster" / "pbs" / "candle-ray.pbs"
LIB = ROOT / "cluster" / "start-ray-cluster.sh"
TINY = ROOT / "tests" / "support" / "tiny_nt3.py"
SCHEDULER_VARS = ("SLURM_", "PBS_", "NCPUS", "NGPUS", "GPUS_PER_NODE", "CPUS_PER_NODE", "CUDA_VISIBLE_DEVICES",
                  "LAUNCHER", "RAY_ADDRESS", "RAY_PORT", "RAY_HEAD_IP", "CANDLE_RAY_HOSTFILE", "EXPERIMENT",
                  "CANDLE_RAY_ARGS", "VIRTUAL_ENV")


def _processes_under(root: str) -> list[int]:
    """Pids of processes whose command line names our private temp root (only ours do)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if root.encode() in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


@pytest.fixture
def batch(tmp_path, mlflow_schema):
    """A clean environment for the scripts, and a guaranteed stop of every process they started."""
    root = tempfile.mkdtemp(prefix="crb-", dir="/tmp")  # short: Unix socket paths are limited
    env = {k: v for k, v in os.environ.items() if not k.startswith(SCHEDULER_VARS)}
    env.update(PATH=f"{Path(sys.executable).parent}:{env['PATH']}", RAY_TMPDIR=root, RAY_AUTH_MODE="disabled",
               CANDLE_RAY_HOME=str(ROOT), CR_LOG_DIR=str(tmp_path / "logs"), LAUNCHER="local",
               CANDLE_RAY_CACHE=str(tmp_path / "cache"), CANDLE_RAY_STORAGE=str(tmp_path / "sweeps"),
               CANDLE_RAY_OUTPUT=str(tmp_path / "runs"), MLFLOW_TRACKING_URI=mlflow_store(mlflow_schema, tmp_path),
               RAY_JOIN_TIMEOUT="120")

    def run(script: Path, *args: str, limit: int = 420, **extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(["timeout", "-k", "20", str(limit), "bash", str(script), *args], cwd=tmp_path,
                              env={**env, **extra}, capture_output=True, text=True)

    run.root, run.env = root, env
    yield run
    leftovers = _processes_under(root)
    for pid in leftovers:  # only after a failure: the scripts stop their nodes themselves
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    subprocess.run(["rm", "-rf", root])


def _sweep_ran(result, tmp_path, nodes: int = 2):
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-4000:]
    assert f"all {nodes} node(s) joined" in out
    assert "up to 2 at once" in out  # 2 nodes x 1 CPU: both raylets carry trials
    assert "2 trials:" in out and "0 failed" in out
    assert "Ray stopped" in out
    logs = sorted((tmp_path / "logs").glob("node-*.log"))
    assert [p.name.split("-")[1] for p in logs] == ["0", "1"]
    assert all("Ray runtime started" in p.read_text() for p in logs)


def _failing_once(tmp_path: Path) -> dict:
    """An activated venv (PATH, VIRTUAL_ENV) whose `ray` fails the first worker node's start as Ray's start-up
    timeout does, once; every other call is Ray's own."""
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "ray").write_text(f"""#!/bin/bash
if [[ "$1" == start && " $* " != *" --head "* && ! -e {shim}/failed ]]; then
  touch {shim}/failed
  echo "Exception: The current node timed out during startup. (the test's shim)" >&2
  exit 1
fi
exec {Path(sys.executable).parent / "ray"} "$@"
""")
    (shim / "ray").chmod(0o755)
    venv = Path(sys.executable).parent
    return {"PATH": f"{shim}:{venv}:{os.environ['PATH']}", "VIRTUAL_ENV": str(venv.parent)}


def _no_ray_left(env_root: str):
    deadline = time.monotonic() + 30  # a bounded wait for exiting processes, not a timing check
    while _processes_under(env_root) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _processes_under(env_root) == []


def test_slurm_script_runs_a_sweep_on_two_nodes_and_stops_them(batch, tmp_path):
    """The worker node's first `ray start` fails during start-up (the shim): the script starts it once more,
    and the sweep runs on both nodes."""
    before = TINY.read_bytes()
    result = batch(SBATCH, str(TINY), "--smoke", "--num-samples", "2",
                   SLURM_JOB_ID="4242", SLURM_JOB_NODELIST="localhost,localhost", SLURM_NNODES="2",
                   SLURM_CPUS_ON_NODE="1", SLURM_SUBMIT_DIR=str(tmp_path), **_failing_once(tmp_path))
    _sweep_ran(result, tmp_path)
    assert "ray start on node 1 (localhost) exited during start-up (Exception: The current node timed out " \
           "during startup. (the test's shim)); starting it once more" in result.stderr
    assert (tmp_path / "logs" / "node-1-localhost.log.first-try").exists()
    assert "launcher local" in result.stderr and "1 CPU + 0 GPU each" in result.stderr
    assert TINY.read_bytes() == before  # the experiment file is used as it is
    _no_ray_left(batch.root)  # no process of these two nodes survives


@pytest.mark.parametrize("scheduler", ["slurm", "pbs"])
def test_too_few_nodes_for_a_trial_is_refused_before_ray_starts(batch, tmp_path, scheduler):
    if scheduler == "slurm":
        result = batch(SBATCH, str(TINY), "--smoke", "--workers-per-trial", "2", SLURM_JOB_ID="1",
                       SLURM_JOB_NODELIST="localhost", SLURM_NNODES="1", SLURM_CPUS_ON_NODE="1",
                       SLURM_SUBMIT_DIR=str(tmp_path), limit=60)
    else:
        (tmp_path / "nodefile").write_text("localhost\nlocalhost\n")
        result = batch(PBS, str(TINY), "--workers-per-trial=3", PBS_NODEFILE=str(tmp_path / "nodefile"),
                       NCPUS="2", PBS_JOBID="2.s", PBS_O_WORKDIR=str(tmp_path), limit=60)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: one trial needs")
    assert "allocation has 1 node(s)" in result.stderr
    assert not (tmp_path / "logs").exists()  # refused before any `ray start`


def _shell(snippet: str, **env) -> str:
    """Run one of the library's functions in bash with these scheduler variables."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(SCHEDULER_VARS)}
    out = subprocess.run(["bash", "-c", f"source {LIB}; {snippet}"], env={**clean, **env},
                         capture_output=True, text=True, timeout=30)
    return (out.stdout + out.stderr).strip()


def test_gpus_per_node_come_from_the_scheduler():
    gpus = "cr_gpus_per_node"
    assert _shell(gpus, CR_SCHEDULER="slurm", SLURM_GPUS_ON_NODE="4") == "4"
    assert _shell(gpus, CR_SCHEDULER="slurm", SLURM_GPUS_PER_NODE="a100:8") == "8"
    assert _shell(gpus, CR_SCHEDULER="slurm", CUDA_VISIBLE_DEVICES="0,1,3") == "3"
    assert _shell(gpus, CR_SCHEDULER="slurm", CUDA_VISIBLE_DEVICES="") == "0"
    assert _shell(gpus, CR_SCHEDULER="slurm") == "0"
    assert _shell(gpus, CR_SCHEDULER="pbs", NGPUS="2") == "2"
    assert _shell(gpus, CR_SCHEDULER="pbs", GPUS_PER_NODE="6", NGPUS="2") == "6"


def test_allocation_rule_with_gpus():
    check = 'CR_NODES=(a b); cr_trial_size "$@"; cr_check_allocation && echo ok'
    assert _shell(f"set -- --workers-per-trial 8; CR_GPUS=4 CR_CPUS=64; {check}") == "ok"
    refused = _shell(f"set -- --workers-per-trial 9; CR_GPUS=4 CR_CPUS=64; {check}")
    assert refused.startswith("error: one trial needs 9 worker(s) = 3 node(s) at 4 GPU(s) per node")
    # --cpu: the GPUs do not count, the CPUs do
    assert _shell(f"set -- --cpu --workers-per-trial 9 --cpus-per-worker 16; CR_GPUS=4 CR_CPUS=64; {check}") \
        .startswith("error: one trial needs 9 worker(s) = 3 node(s) at 64 CPU(s)")


def test_a_node_that_used_up_its_restarts_stays_down_and_is_said_once(tmp_path):
    (tmp_path / "node-1-b.log").write_text("raylet [exit code=-9]\n")
    # node 0 (the head) runs as this shell; node 1's launcher is gone (no such pid)
    out = _shell(f"CR_NODES=(a b); CR_PIDS=($$ 999999999); CR_LOG_DIR={tmp_path}; cr_watch_nodes; cr_watch_nodes",
                 CR_NODE_RESTARTS="0")
    assert out == ("candle-ray batch: Ray on node 1 (b) stopped, with its restarts used up (CR_NODE_RESTARTS=0); it "
                   f"stays down and the sweep goes on with the other nodes; see {tmp_path}")


def test_node_lists(tmp_path):
    assert _shell('cr_discover_nodes; echo "${CR_NODES[*]}"', CR_SCHEDULER="slurm",
                  SLURM_JOB_NODELIST="n1,n2,n3", PATH="/usr/bin:/bin") == "n1 n2 n3"
    bracket = _shell("cr_discover_nodes", CR_SCHEDULER="slurm", SLURM_JOB_NODELIST="n[1-3]", PATH="/usr/bin:/bin")
    if "scontrol" not in bracket:  # no Slurm here: refused with the reason
        assert bracket == "error: cannot expand SLURM_JOB_NODELIST=n[1-3] without scontrol"
    (tmp_path / "hosts").write_text("b\nb\na\n\nb\n")
    assert _shell('cr_discover_nodes; echo "${CR_NODES[*]}"', CR_SCHEDULER="pbs",
                  PBS_NODEFILE=str(tmp_path / "hosts")) == "b a"
    assert _shell("cr_discover_nodes", CR_SCHEDULER="pbs").startswith("error: PBS_NODEFILE is not set")


def _kill_raylet(temp_root: Path) -> int:
    """SIGKILL the raylet of the node whose Ray temp dir is temp_root (as the OOM killer would); its pid."""
    for pid in _processes_under(str(temp_root) + "/"):
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        if argv[0].endswith(b"/raylet"):
            os.kill(pid, signal.SIGKILL)
            return pid
    raise AssertionError(f"no raylet under {temp_root}")


def _wait_for(condition, limit_s: float, proc) -> bool:
    deadline = time.monotonic() + limit_s  # a bounded wait, not a timing check
    while not condition() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)
    return bool(condition())


def test_a_lost_node_is_started_again_then_a_signal_to_the_pbs_job_stops_every_node(batch, tmp_path):
    """The second node's raylet dies mid-sweep (SIGKILL, as the OOM killer sends): the script starts that node
    again and the trial it held trains again there. Then qdel or the walltime (SIGTERM to the batch script, as
    Slurm's scancel sends) interrupts candle-ray as Ctrl-C would (Tune saves the sweep) and stops Ray on every
    node, the restarted one included. The job is the PBS script's, as `qsub -v EXPERIMENT=...,CANDLE_RAY_ARGS=...`
    runs it on a 2-node allocation whose node file lists each host once per CPU; the Slurm script's test runs its
    sweep to the end through the same library."""
    (tmp_path / "nodefile").write_text("localhost\nlocalhost\n127.0.0.1\n127.0.0.1\n")
    env = {**batch.env, "PBS_NODEFILE": str(tmp_path / "nodefile"), "PBS_JOBID": "77.pbs-server", "NCPUS": "1",
           "PBS_O_WORKDIR": str(tmp_path), "EXPERIMENT": str(TINY),
           "CANDLE_RAY_ARGS": "--smoke --num-samples 2 --scheduler fifo --name long --set epochs=100000"}
    out = tmp_path / "out.log"
    with open(out, "w") as log:
        proc = subprocess.Popen(["bash", str(PBS)], cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        # Both trials train once each has written where its rank runs (the live view says so only every 10 s).
        ranks = tmp_path / "sweeps" / "long" / "trials"
        assert _wait_for(lambda: len(list(ranks.glob("*/ranks/rank-0.json"))) == 2, 300, proc), out.read_text()[-3000:]
        started = {p: p.stat().st_mtime_ns for p in ranks.glob("*/ranks/rank-0.json")}
        _kill_raylet(Path(batch.root) / "crb-77" / "n1")
        # The trial that ran there fails, Tune retries it (--max-failures 1), and it can only run on that node.
        assert _wait_for(lambda: any(p.stat().st_mtime_ns > t for p, t in started.items()), 240, proc), \
            out.read_text()[-3000:]
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = out.read_text()
    assert rc == 143, text[-3000:]
    assert "2 node(s) (localhost 127.0.0.1)" in text and "all 2 node(s) joined" in text
    assert "Ray on node 1 (127.0.0.1) stopped (raylet [exit code=-9]); starting it again (1 of 3)" in text
    assert (tmp_path / "logs" / "node-1-127.0.0.1.log.stopped-1").exists()
    # The trial's lost worker: one line, not Tune's 20-line traceback of the lost actor
    assert "retrying from its last checkpoint (failure 1 of 1 allowed by --max-failures)" in text, text[-3000:]
    assert "Trial task failed" not in text
    assert "interrupting candle-ray" in text and "Ray stopped" in text
    assert (tmp_path / "sweeps" / "long" / "sweep.json").exists()  # the sweep's record, for --resume
    _no_ray_left(batch.root)
