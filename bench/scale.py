"""Scale: sweeps of many one-epoch smoke trials, `candle-ray tune` beside a plain Ray Tune function trainable
that trains the same model on data of the same shape for one epoch, without MLflow, checkpoints or our
callbacks (same concurrency, actors reused as candle-ray reuses them, Tune's quiet settings). Both run in a
fresh driver process, one after the other.

Per size it prints: overhead per trial (time in Tune less the epochs' compute shared by the concurrent
trials, per trial) for both and their ratio; overhead per trial over the first and the last window of
1,000 trials (a tenth of the sweep below 10,000) and their ratio (flatness); the driver's memory growth
per 1,000 trials and its peak; storage per trial; the MLflow database; `candle-ray report` on the sweep.
Targets (issue 14): overhead <= 50 ms and <= 2x plain Tune's, last window <= 1.2x the first, driver
<= 50 KB per trial, report <= 15 s at 10,000 trials, storage <= K x one trial's checkpoints + 20 KB per trial.

    python bench/scale.py                      # 1,000 and 10,000 trials (about an hour and a half here)
    python bench/scale.py --trials 1000        # one size
"""

import argparse
import csv
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TINY = ROOT / "tests" / "support" / "tiny_nt3.py"
CONCURRENCY = 2


def _env(workdir: Path) -> dict:
    env = {**os.environ, "CANDLE_RAY_CACHE": str(workdir / "cache"), "MLFLOW_TRACKING_URI": f"sqlite:///{workdir / 'mlflow.db'}",
           "RAY_AUTH_MODE": "disabled", "RAY_TMPDIR": tempfile.mkdtemp(prefix="crs-", dir="/tmp"),
           "RAY_USAGE_STATS_ENABLED": "0", "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1", "RAY_AIR_NEW_OUTPUT": "0"}
    env.pop("RAY_ADDRESS", None)
    return env


class RssWatch(threading.Thread):
    """The driver's resident memory every 0.5 s, as (time.time(), bytes)."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.samples = pid, []

    def run(self):
        status = Path(f"/proc/{self.pid}/status")
        while True:
            try:
                kb = int(re.search(r"VmRSS:\s+(\d+)", status.read_text()).group(1))
            except (OSError, AttributeError):
                return
            self.samples.append((time.time(), kb * 1024))
            time.sleep(0.5)

    def at(self, when: float) -> int:
        before = [rss for t, rss in self.samples if t <= when]
        return before[-1] if before else self.samples[0][1]


ENDED = re.compile(r"^\s+trial (\S+) (?:completed|stopped early|failed)")


def _run_driver(cmd: list[str], workdir: Path) -> tuple[str, RssWatch, dict[str, float]]:
    """Run a driver; its output, its memory, and when each trial's end line reached us (trial id -> time.time())."""
    proc = subprocess.Popen(cmd, cwd=workdir, env=_env(workdir), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    watch = RssWatch(proc.pid)
    watch.start()
    lines, ended = [], {}
    for line in proc.stdout:
        lines.append(line)
        if m := ENDED.match(line):
            ended[m.group(1)] = time.time()
    out = "".join(lines)
    if proc.wait() != 0:
        raise SystemExit(f"{cmd[:3]} failed ({proc.returncode}):\n{out[-4000:]}")
    return out, watch, ended


def _du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


def candle_ray(workdir: Path, trials: int, tune_args: list[str]) -> dict:
    name = f"scale-{trials}"
    out, watch, ended = _run_driver([str(BIN / "candle-ray"), "tune", str(TINY), "--smoke", "--num-samples", str(trials),
                              "--scheduler", "fifo", "--search", "random", "--max-concurrent", str(CONCURRENCY),
                              "--set", "epochs=1", "--name", name, "--no-baseline", *tune_args], workdir)
    m = re.search(r"(\d+) trials?: .*; ([\d.]+)s wall \(([\d.]+)s in Tune\), ([\d.]+)s of epochs", out)
    with open(workdir / "candle-ray-sweeps" / name / "results.csv") as f:
        epoch_s = {row["trial_id"]: float(row["epoch_time_s"] or 0) for row in csv.DictReader(f)}
    children = _mlflow_children(workdir / "mlflow.db", name)
    t0 = time.perf_counter()
    subprocess.run([str(BIN / "candle-ray"), "report", name], cwd=workdir, env=_env(workdir), check=True,
                   capture_output=True)
    report_s = time.perf_counter() - t0
    sweep_dir = workdir / "candle-ray-sweeps" / name
    state = max(sweep_dir.rglob("experiment_state*.json"), key=lambda p: p.stat().st_mtime, default=None)
    return {"trials": int(m.group(1)), "fit_s": float(m.group(3)), "compute_s": float(m.group(4)), "children": children,
            "ended": sorted((t, epoch_s[trial]) for trial, t in ended.items()),
            "rss": watch, "storage": _du(sweep_dir), "mlflow_db": (workdir / "mlflow.db").stat().st_size,
            "mlflow_artifacts": _du(workdir / "mlartifacts") + _du(workdir / "mlruns"), "report_s": report_s,
            "state_file": state.stat().st_size if state else 0}


def _mlflow_children(db: Path, sweep: str) -> int:
    """How many MLflow child runs the sweep has (one per trial, none lost)."""
    import sqlite3

    with sqlite3.connect(db) as con:
        parent = con.execute("select run_uuid from tags where key = 'candle_ray.sweep' and value = ? and run_uuid not in "
                             "(select run_uuid from tags where key = 'mlflow.parentRunId')", (sweep,)).fetchone()[0]
        return con.execute("select count(*) from tags where key = 'mlflow.parentRunId' and value = ?", (parent,)).fetchone()[0]


def plain(workdir: Path, trials: int) -> dict:
    _, watch, _ = _run_driver([sys.executable, __file__, "--plain-child", str(trials), "--out",
                                 str(workdir / "plain.json")], workdir)
    result = json.loads((workdir / "plain.json").read_text())
    return {**result, "rss": watch, "storage": _du(workdir / "plain-tune")}


def plain_child(trials: int, out: Path) -> None:
    """The baseline sweep, in this (driver) process: Tune, a function trainable, one epoch, nothing else."""
    import ray
    from ray import tune

    def trainable(config):
        import torch

        from candle_ray import models

        torch.manual_seed(0)
        x, y = torch.randn(96, 300), torch.randint(0, 2, (96,))
        vx, vy = torch.randn(32, 300), torch.randint(0, 2, (32,))
        model = models.build("nt3", {"input_dim": 300, "classes": 2, "conv": [4, 20, 1, 4, 10, 1], "dense": [16, 8],
                                     "dropout": config["dropout"]})
        opt = torch.optim.SGD(model.parameters(), lr=config["learning_rate"])
        t_epoch = time.perf_counter()
        model.train()
        for i in range(0, len(x), 16):
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x[i:i + 16]), y[i:i + 16])
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            val_loss = torch.nn.functional.cross_entropy(model(vx), vy).item()
        tune.report({"val_loss": val_loss, "epoch_time_s": time.perf_counter() - t_epoch})

    class Ended(tune.Callback):  # when the driver saw each trial end, as candle-ray's end lines show it
        def __init__(self):
            self.at = []

        def on_trial_complete(self, iteration, trials, trial, **info):
            self.at.append((time.time(), trial.last_result.get("epoch_time_s", 0.0)))

    ended = Ended()

    ray.init(num_cpus=CONCURRENCY, include_dashboard=False, logging_level="WARNING")
    tuner = tune.Tuner(
        tune.with_resources(trainable, {"cpu": 1}),
        param_space={"learning_rate": tune.loguniform(1e-3, 1e-1), "dropout": tune.uniform(0.0, 0.5)},
        tune_config=tune.TuneConfig(num_samples=trials, max_concurrent_trials=CONCURRENCY, reuse_actors=True,
                                    metric="val_loss", mode="min"),
        run_config=tune.RunConfig(storage_path=str(out.parent / "plain-tune"), name="plain", verbose=0,
                                  callbacks=[ended]))
    t0 = time.perf_counter()
    grid = tuner.fit()
    fit_s = time.perf_counter() - t0
    rows = [r.metrics for r in grid if r.metrics]
    out.write_text(json.dumps({"trials": len(rows), "fit_s": fit_s, "compute_s": sum(m["epoch_time_s"] for m in rows),
                               "ended": sorted(ended.at)}))
    ray.shutdown()


def overhead(fit_s: float, compute_s: float, trials: int) -> float:
    """Seconds per trial that were not the trial's epochs (which CONCURRENCY trials share the time of)."""
    return (fit_s - compute_s / CONCURRENCY) / trials


def windows(ended: list[tuple[float, float]], width: int) -> tuple[float, float]:
    """Overhead per trial over the first and the last `width` trials to end, from when the driver saw them end
    ((time, epoch seconds), in time order): the start-up before the first end is in neither."""
    first = overhead(ended[width][0] - ended[0][0], sum(e for _, e in ended[1:width + 1]), width)
    last = overhead(ended[-1][0] - ended[-width - 1][0], sum(e for _, e in ended[-width:]), width)
    return first, last


def memory_per_trial(r: dict, width: int) -> float:
    """Driver RSS growth per trial between the end of the first window and the end of the sweep."""
    ends = [t for t, _ in r["ended"]]
    return (r["rss"].at(ends[-1]) - r["rss"].at(ends[width])) / max(1, len(ends) - width - 1)


def report_size(trials: int, ours: dict, base: dict) -> None:
    width = min(1000, max(1, trials // 10))
    mine, theirs = overhead(ours["fit_s"], ours["compute_s"], trials), overhead(base["fit_s"], base["compute_s"], trials)
    (f1, l1), (f2, l2) = windows(ours["ended"], width), windows(base["ended"], width)
    peak = max(rss for _, rss in ours["rss"].samples)
    print(f"scale {trials:,} trials (concurrency {CONCURRENCY}, 1 epoch each):")
    print(f"  overhead per trial: candle-ray {mine * 1e3:.0f} ms, plain Tune {theirs * 1e3:.0f} ms, ratio "
          f"{mine / theirs:.2f}x (targets <= 50 ms, <= 2x)")
    print(f"  flatness, first vs last {width:,} trials: candle-ray {f1 * 1e3:.0f} -> {l1 * 1e3:.0f} ms ({l1 / f1:.2f}x), "
          f"plain Tune {f2 * 1e3:.0f} -> {l2 * 1e3:.0f} ms ({l2 / f2:.2f}x) (target <= 1.2x)")
    print(f"  driver memory: candle-ray +{memory_per_trial(ours, width) * 1000 / 1e6:.1f} MB per 1,000 trials "
          f"(peak {peak / 1e6:.0f} MB), plain Tune +{memory_per_trial(base, width) * 1000 / 1e6:.1f} MB per 1,000 "
          f"(target <= 50 KB per trial = 50 MB per 1,000)")
    print(f"  storage per trial: candle-ray {ours['storage'] / trials / 1e3:.1f} KB (sweep folder {ours['storage'] / 1e6:.1f} MB, "
          f"Tune state file {ours['state_file'] / 1e6:.2f} MB), plain Tune {base['storage'] / trials / 1e3:.1f} KB; "
          f"MLflow database {ours['mlflow_db'] / 1e6:.1f} MB ({ours['mlflow_db'] / trials / 1e3:.1f} KB per trial), "
          f"artifacts {ours['mlflow_artifacts'] / 1e6:.1f} MB")
    print(f"  candle-ray report: {ours['report_s']:.1f}s (target <= 15 s at 10,000 trials); MLflow child runs "
          f"{ours['children']:,} of {trials:,}", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", default="1000,10000", help="comma-separated sweep sizes")
    parser.add_argument("--tune-args", default="", help="more `candle-ray tune` options, e.g. '--no-model-per-trial'")
    parser.add_argument("--plain-child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.plain_child:
        return plain_child(args.plain_child, args.out)
    for trials in (int(t) for t in args.trials.split(",")):
        with tempfile.TemporaryDirectory(prefix="scale-", dir=os.environ.get("SCALE_TMP", "/tmp")) as tmp:
            ours = candle_ray(Path(tmp), trials, shlex.split(args.tune_args))
            base = plain(Path(tmp), trials)
            report_size(trials, ours, base)


if __name__ == "__main__":
    main()
