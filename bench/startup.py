"""Start-up: `candle-ray train experiments/nt3.py --smoke` with one worker, as a user runs it.

Reports the wall time, the compute (sum of epoch times) and the overhead over compute, for a fresh
process (Ray started by the command) with the cache already prepared (the second of two runs), and
the same run forced through Ray Train's TorchTrainer, side by side. Then the two DDP paths with
2 workers (`--workers 2`): rank 0 as a Ray task with a peer actor (candle_ray.ddp, what `train` and
`tune --workers-per-trial` use) against Ray Train (what elastic runs use), side by side.
"""

import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLI = [str(Path(sys.executable).parent / "candle-ray")]


def run_once(tmp: Path, *extra: str):
    env = {**os.environ, "CANDLE_RAY_CACHE": str(tmp / "cache"), "CANDLE_RAY_OUTPUT": str(tmp / "runs"),
           "MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlflow.db'}", "RAY_AUTH_MODE": "disabled",
           "RAY_TMPDIR": str(tmp / "ray")}
    t0 = time.perf_counter()
    out = subprocess.run([*CLI, "train", str(ROOT / "experiments" / "nt3.py"), "--smoke", *extra], env=env, cwd=tmp,
                         capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if out.returncode != 0:
        raise SystemExit(out.stdout + out.stderr)
    m = re.search(r"done in ([\d.]+)s \(start-up ([\d.]+)s, compute ([\d.]+)s\)", out.stdout)
    return wall, float(m.group(1)), float(m.group(2)), float(m.group(3))


def main():
    with tempfile.TemporaryDirectory(prefix="crb-", dir="/tmp") as tmp:
        tmp = Path(tmp)
        run_once(tmp)  # first run prepares the cache
        wall, inside, startup, compute = run_once(tmp)
        t_wall, _, t_startup, t_compute = run_once(tmp, "--launcher", "ray-train")
        ddp = [run_once(tmp, "--workers", "2", "--cpus-per-worker", "1", *launcher)
               for launcher in ((), ("--launcher", "ray-train"))]
    print(f"start-up: `candle-ray train experiments/nt3.py --smoke` (1 worker) wall {wall:.1f}s, "
          f"in-command {inside:.1f}s, to first epoch {startup:.1f}s, compute {compute:.2f}s, "
          f"overhead over compute {wall - compute:.1f}s")
    print(f"start-up: the same through Ray Train's TorchTrainer: wall {t_wall:.1f}s, to first epoch "
          f"{t_startup:.1f}s; the one-worker fast path saves {t_wall - wall:.1f}s ({t_wall / wall:.1f}x)")
    (p_wall, _, p_startup, p_compute), (r_wall, _, r_startup, r_compute) = ddp
    print(f"DDP, 2 workers: task + peer actor wall {p_wall:.1f}s (to first epoch {p_startup:.1f}s, compute "
          f"{p_compute:.2f}s); Ray Train wall {r_wall:.1f}s (to first epoch {r_startup:.1f}s, compute {r_compute:.2f}s); "
          f"peers save {r_wall - p_wall:.1f}s ({r_wall / p_wall:.1f}x)")


if __name__ == "__main__":
    main()
