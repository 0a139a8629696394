"""Shared by the sweep benchmarks: run `candle-ray tune` in a fresh process and read what it did."""

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "support" / "tiny_nt3.py"
NT3 = ROOT / "experiments" / "nt3.py"
CLI = str(Path(sys.executable).parent / "candle-ray")


def run_sweep(workdir: Path, *args: str) -> dict:
    """Run one sweep; return its count-line numbers and every epoch MLflow recorded, in time order."""
    env = {**os.environ, "CANDLE_RAY_CACHE": str(workdir / "cache"), "MLFLOW_TRACKING_URI": f"sqlite:///{workdir / 'mlflow.db'}",
           "RAY_AUTH_MODE": "disabled", "RAY_TMPDIR": tempfile.mkdtemp(prefix="crb-", dir="/tmp")}
    out = subprocess.run([CLI, "tune", *args], cwd=workdir, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"sweep failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    m = re.search(r"(\d+) trials?: .*; ([\d.]+)s wall \(([\d.]+)s in Tune\), ([\d.]+)s of epochs", out.stdout)
    name = re.search(r"sweep (\S+):", out.stdout).group(1)
    return {"trials": int(m.group(1)), "wall_s": float(m.group(2)), "fit_s": float(m.group(3)),
            "compute_s": float(m.group(4)), "epochs": epochs_in_order(workdir / "mlflow.db", name), "stdout": out.stdout}


def epochs_in_order(db: Path, sweep: str) -> list[tuple[int, str, int, float]]:
    """(timestamp ms, trial id, epoch, val_loss) for every epoch of the sweep's child runs."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{db}")
    rows = []
    for exp in client.search_experiments():
        for run in client.search_runs([exp.experiment_id], f"tags.`candle_ray.sweep` = '{sweep}'", max_results=10000):
            trial = run.data.tags.get("candle_ray.trial_id")
            if trial:
                rows += [(m.timestamp, trial, m.step, m.value) for m in client.get_metric_history(run.info.run_id, "val_loss")]
    return sorted(rows)
