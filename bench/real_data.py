"""Does candle-ray find models that beat a tuned linear baseline on real cancer data?

A new user's path through README "Your own matrix", automated as subprocesses of the CLI:

  1. write train.csv / val.csv / test.csv (a seeded 60/20/20 split, stratified for classifiers) and an
     experiment file: TableDataset("train.csv", label=..., drop=("sample",), val="val.csv", task=...),
     model "mlp", the generic defaults and search space of SETTINGS below;
  2. candle-ray tune EXP --num-samples 16 --search optuna --scheduler asha
  3. candle-ray ensemble EXP --from-sweep NAME --top 1 --members 5   (seed replicas of the best config)
  4. candle-ray predict <ensemble parent run id> --data test.csv --out pred.tsv --conformal val.csv --alpha 0.1
     (and the same with the sweep's best trial's checkpoint folder)

and compares the held-out (test.csv) scores with a scikit-learn linear baseline trained on train.csv only:
standardised features + LogisticRegressionCV (stratified CV on the train rows) or RidgeCV. The ensemble pools
its own linear baseline (README "The linear baseline joins the ensemble"); the "nets/base" column scores its
networks alone (`predict --no-baseline`), what the ensemble would be without it.

Datasets (installed at run time from PyPI with --no-deps, read from the package files, never copied into
the repo; see bench/_real_datasets.py): NCI-60 tissue of origin, Khan SRBCT, GSE1992 ER status
(classification) and GDSC LN_IC50 of the two most-tested drugs (regression). A dataset under 200 rows
runs over several seeded splits (at least 5, and enough for 150 test rows in all: NCI-60 13, Khan 9,
GSE1992 6), reported as mean ± sd.

    .venv/bin/python bench/real_data.py --datasets khan,gdsc --quick      # end-to-end check, ~minutes
    .venv/bin/python bench/real_data.py                                   # everything, full settings

Data and run folders go under --data-dir (default ~/.cache/candle-ray-bench/real); the results table is
printed and written as JSON to --out (default <data dir>/real_data_results.json).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _real_datasets  # noqa: E402

REPO = Path(__file__).resolve().parent.parent

# --------------------------------------------------------------------------------------------------------
# Every setting of the benchmark, in one place. Generic defaults for any matrix, never per dataset.
SETTINGS = {
    # The sweep's objective: candle-ray's default (the experiment's metric), minimised.
    "metric": "val_loss",
    "mode": "min",
    "defaults": {"epochs": 60, "batch_size": 32, "learning_rate": 1e-3, "optimizer": "adam", "dense": [256, 64],
                 "dropout": 0.2, "activation": "relu", "rng_seed": 1},
    # Search space, as the Python source written into the experiment file.
    "search_space": {
        "learning_rate": "tune.loguniform(3e-5, 1e-2)",
        "dropout": "tune.uniform(0.0, 0.6)",
        "dense": "tune.choice([[], [64], [256], [256, 64], [512, 128]])",
        "batch_size": "tune.choice([16, 32, 64])",
    },
    # Added to defaults and space only when candle-ray accepts the key. With adam, candle-ray's weight decay
    # is decoupled (AdamW: multiplied by the learning rate), and README "Your own matrix" gives 1e-4..1e-1 as
    # the useful range with 0.01 in its example: those values, not the 1e-6..1e-2 of an L2 penalty.
    "weight_decay_default": 0.1,
    "weight_decay_space": "tune.loguniform(1e-3, 3.0)",
    "search": "optuna",
    "scheduler": "asha",
    "num_samples": 16,
    "members": 5,  # seed replicas of the sweep's best configuration (--top 1)
    "top": 1,
    "alpha": 0.1,  # conformal miscoverage: sets / intervals aim at 90 %
    "fractions": (0.6, 0.2, 0.2),  # train / val / test
    "small_n": 200,  # datasets with fewer rows get repeated splits
    "splits_small": 5,  # at least, and more where the test rows are few:
    # enough splits for this many test rows in all. A 12-row test split's coverage has a standard deviation
    # of 0.13-0.15 over splits (NCI-60, 15 splits, measured), so 5 splits put the mean's at ~0.06, wider
    # than the 0.85-0.95 band it is judged by; 150 rows bring it to ~0.035.
    "min_test_rows": 150,
    "splits_large": 1,
    "ray_cpus": 2,  # the local Ray head's CPUs (trials at once: 1 CPU each)
    "command_timeout_s": 4 * 3600,
    # --quick: a fast end-to-end check of the whole path.
    "quick": {"splits": 2, "num_samples": 4, "epochs": 15, "members": 2},
    # The linear baseline (scikit-learn, on train.csv only).
    "baseline_Cs": list(np.logspace(-4, 3, 8)),
    "baseline_alphas": list(np.logspace(-3, 5, 17)),
    "baseline_max_folds": 5,
}
TARGET_RATIO = 1.00
TARGET_COVERAGE = (0.85, 0.95)
TAIL_LINES = 30
# --------------------------------------------------------------------------------------------------------


def log(msg: str = "") -> None:
    print(msg, flush=True)


def venv_bin() -> Path:
    own = REPO / ".venv" / "bin"
    return own if (own / "candle-ray").exists() else Path(sys.executable).parent


# ------------------------------------------------------------------------------------------------ splits
def default_splits(n: int) -> int:
    """Repeated splits for a small dataset: at least splits_small, and enough for min_test_rows test rows."""
    if n >= SETTINGS["small_n"]:
        return SETTINGS["splits_large"]
    test_rows = max(1, math.ceil(n * SETTINGS["fractions"][2]))  # as train_test_split rounds a fraction
    return max(SETTINGS["splits_small"], math.ceil(SETTINGS["min_test_rows"] / test_rows))


def split_rows(ds, seed: int) -> dict[str, np.ndarray]:
    """Seeded 60/20/20 row indices, stratified by class for classifiers."""
    from sklearn.model_selection import train_test_split

    _, f_val, f_test = SETTINGS["fractions"]
    idx = np.arange(ds.n)
    strat = ds.y.to_numpy() if ds.task == "classification" else None
    rest, test = train_test_split(idx, test_size=f_test, stratify=strat, random_state=seed, shuffle=True)
    train, val = train_test_split(rest, test_size=f_val / (1 - f_test),
                                  stratify=strat[rest] if strat is not None else None, random_state=seed + 1,
                                  shuffle=True)
    return {"train": np.sort(train), "val": np.sort(val), "test": np.sort(test)}


def write_split(ds, rows: dict, folder: Path) -> dict[str, Path]:
    paths = {}
    for split, index in rows.items():
        frame = pd.concat([pd.DataFrame({"sample": [ds.ids[i] for i in index],
                                         ds.label: ds.y.iloc[index].to_numpy()}),
                           ds.X.iloc[index].reset_index(drop=True)], axis=1)
        paths[split] = folder / f"{split}.csv"
        frame.to_csv(paths[split], index=False, float_format="%.6g")
    return paths


# ------------------------------------------------------------------------------------ experiment file
def weight_decay_accepted(folder: Path) -> bool:
    """Whether candle-ray takes `weight_decay`: load an Experiment with it and see that candle-ray knows the key."""
    folder.mkdir(parents=True, exist_ok=True)
    probe = folder / "probe_experiment.py"
    probe.write_text(experiment_source("probe", "y", "classification", {**SETTINGS["defaults"], "weight_decay": 1e-2},
                                       {"weight_decay": SETTINGS["weight_decay_space"]}))
    code = ("import sys\nfrom candle_ray import experiment as e\ne.load_experiment(sys.argv[1])\n"
            "known = set(getattr(e, 'KEY_RULES', {})) | set(getattr(e, 'COMMON_DEFAULTS', {}))\n"
            "print('accepted' if 'weight_decay' in known else 'unknown')\n")
    out = subprocess.run([str(venv_bin() / "python"), "-c", code, str(probe)], capture_output=True, text=True)
    probe.unlink(missing_ok=True)
    return out.returncode == 0 and out.stdout.strip().endswith("accepted")


def experiment_source(name: str, label: str, task: str, defaults: dict, space: dict) -> str:
    space_src = ",\n        ".join(f"{json.dumps(k)}: {v}" for k, v in space.items())
    return f'''"""Generated by bench/real_data.py: README "Your own matrix" on a real dataset."""
from ray import tune

from candle_ray import Experiment, TableDataset

experiment = Experiment(
    name={name!r},
    dataset=TableDataset("train.csv", label={label!r}, drop=("sample",), val="val.csv", task={task!r}),
    model="mlp",
    defaults={json.dumps(defaults)},
    search_space={{
        {space_src},
    }},
    metric={SETTINGS["metric"]!r},
    mode={SETTINGS["mode"]!r},
)
'''


# ------------------------------------------------------------------------------------------ baseline
def linear_baseline(ds, paths: dict, seed: int) -> dict:
    """Standardised features + LogisticRegressionCV / RidgeCV fitted on train.csv, scored on test.csv."""
    import inspect

    from sklearn.linear_model import LogisticRegressionCV, RidgeCV
    from sklearn.metrics import accuracy_score, r2_score
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    train, test = pd.read_csv(paths["train"]), pd.read_csv(paths["test"])
    features = [c for c in train.columns if c not in ("sample", ds.label)]
    x_tr, x_te = train[features].to_numpy(float), test[features].to_numpy(float)
    t0 = time.monotonic()
    from threadpoolctl import threadpool_limits

    # One BLAS thread: these small solves run several times faster than with two on a 2-core machine.
    with warnings.catch_warnings(), threadpool_limits(limits=1):
        warnings.simplefilter("ignore")
        if ds.task == "classification":
            y_tr, y_te = train[ds.label].astype(str).to_numpy(), test[ds.label].astype(str).to_numpy()
            k = max(2, min(SETTINGS["baseline_max_folds"], int(pd.Series(y_tr).value_counts().min())))
            extra = {}
            params = inspect.signature(LogisticRegressionCV).parameters
            if "l1_ratios" in params and "penalty" in params and params["penalty"].default == "deprecated":
                extra["l1_ratios"] = (0.0,)
            if "use_legacy_attributes" in params:
                extra["use_legacy_attributes"] = False
            head = LogisticRegressionCV(Cs=SETTINGS["baseline_Cs"], cv=StratifiedKFold(k, shuffle=True, random_state=seed),
                                        scoring="neg_log_loss", max_iter=2000, tol=1e-5, **extra)
            model = make_pipeline(StandardScaler(), RowSpan(), head).fit(x_tr, y_tr)
            score = float(accuracy_score(y_te, model.predict(x_te)))
            chosen = f"C {float(np.ravel(model[-1].C_)[0]):.3g}, {k}-fold CV"
        else:
            y_tr, y_te = train[ds.label].to_numpy(float), test[ds.label].to_numpy(float)
            model = make_pipeline(StandardScaler(), RidgeCV(alphas=SETTINGS["baseline_alphas"])).fit(x_tr, y_tr)
            score = float(r2_score(y_te, model.predict(x_te)))
            chosen = f"alpha {float(model[-1].alpha_):.3g}"
    return {"score": score, "chosen": chosen, "seconds": time.monotonic() - t0}


class RowSpan:
    """Standardised rows in an orthonormal basis of the training rows' span, when features outnumber rows.

    An L2-penalised linear model's weights lie in that span, so the fit (and every CV fold's, whose rows
    span a subspace) is the same, only faster: 33 x 6,830 becomes 33 x 33.
    """

    def fit(self, x, y=None):
        self.basis = None
        if x.shape[1] > x.shape[0]:
            _, s, vt = np.linalg.svd(x, full_matrices=False)
            self.basis = vt[s > s[0] * 1e-10].T
        return self

    def transform(self, x):
        return x if self.basis is None else x @ self.basis

    def fit_transform(self, x, y=None):
        return self.fit(x, y).transform(x)

    def get_params(self, deep=True):
        return {}

    def set_params(self, **params):
        return self


# ---------------------------------------------------------------------------------------- subprocesses
class CommandFailed(Exception):
    pass


def run_command(cmd: list[str], *, env: dict, cwd: Path, log_path: Path, what: str) -> str:
    """Run one CLI command (output to log_path); its output, or CommandFailed after printing the tail."""
    t0 = time.monotonic()
    shown = " ".join(cmd)
    with open(log_path, "w") as out:
        out.write(f"$ {shown}\n")
        out.flush()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True)
        try:
            rc = proc.wait(timeout=SETTINGS["command_timeout_s"])
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            rc = "timeout"
    text = log_path.read_text(errors="replace")
    log(f"    {what}: rc {rc}, {time.monotonic() - t0:.0f}s  ({log_path.name})")
    if rc != 0:
        tail = "\n".join(text.rstrip().splitlines()[-TAIL_LINES:])
        log(f"    FAILED: {shown}\n    --- last {TAIL_LINES} lines of its output ---\n{tail}\n    ---")
        raise CommandFailed(f"{what} exited with {rc}: {last_error(text)}")
    return text


def last_error(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    for line in reversed(lines):
        if line.startswith(("error:", "Error", "Traceback")) or "Error:" in line:
            return line[:300]
    return lines[-1][:300] if lines else "(no output)"


class RayHead:
    """One local Ray head for all commands (`ray start --head --block` in its own process group): saves
    Ray's start-up per command. Stopped by signalling that process and its group only, never `ray stop`
    (which would end every Ray on the machine, other people's too)."""

    def __init__(self, folder: Path, env: dict):
        self.folder, self.env, self.proc, self.address = folder, env, None, None

    def start(self) -> str | None:
        self.folder.mkdir(parents=True, exist_ok=True)
        # Ports of its own (GCS, dashboard agent, client server): another Ray on this machine keeps Ray's defaults.
        port, dashboard, client = free_ports(3)
        self.temp = Path(f"/tmp/crb-ray-{os.getpid()}")  # short: Ray's socket paths have a length limit
        cmd = [str(venv_bin() / "ray"), "start", "--head", "--block", "--port", str(port),
               "--dashboard-port", str(dashboard), "--ray-client-server-port", str(client),
               "--num-cpus", str(SETTINGS["ray_cpus"]), "--num-gpus", "0",
               "--include-dashboard=false", "--disable-usage-stats", "--temp-dir", str(self.temp)]
        self.log_path = self.folder / "ray-head.log"
        self.proc = subprocess.Popen(cmd, stdout=open(self.log_path, "w"), stderr=subprocess.STDOUT,
                                     env=self.env, cwd=self.folder, start_new_session=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            text = self.log_path.read_text(errors="replace")
            if "Ray runtime started" in text:
                found = re.search(r"ray start --address='([^']+)'", text)
                self.address = found.group(1) if found else f"127.0.0.1:{port}"
                log(f"Ray head at {self.address} ({SETTINGS['ray_cpus']} CPUs, log {self.log_path})")
                return self.address
            time.sleep(1)
        tail = "\n".join(self.log_path.read_text(errors="replace").splitlines()[-TAIL_LINES:])
        log(f"warning: the local Ray head did not start; each command starts its own Ray.\n{tail}")
        self.stop()
        return None

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # `ray start --block` shuts its processes down on SIGTERM
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # whatever of its group is left
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.wait()
        self.proc = None
        shutil.rmtree(self.temp, ignore_errors=True)


def free_ports(count: int) -> list[int]:
    socks = [socket.socket() for _ in range(count)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


# --------------------------------------------------------------------------------------------- scoring
def score_predictions(ds, pred_path: Path, test_path: Path) -> dict:
    """The held-out score (and coverage) of a predict table."""
    pred = pd.read_csv(pred_path, sep="\t", keep_default_na=False)
    test = pd.read_csv(test_path)
    if "id" in pred.columns and list(pred["id"].astype(str)) != list(test["sample"].astype(str)):
        raise CommandFailed(f"{pred_path.name}: prediction rows are not in test.csv's order")
    if ds.task == "classification":
        truth = test[ds.label].astype(str).to_numpy()
        out = {"score": float(np.mean(pred["prediction"].astype(str).to_numpy() == truth))}
        if "prediction_set" in pred.columns:
            sets = [set(s.split("|")) if s else set() for s in pred["prediction_set"].astype(str)]
            out["coverage"] = float(np.mean([t in s for t, s in zip(truth, sets)]))
            out["set_size"] = float(np.mean([len(s) for s in sets]))
    else:
        from sklearn.metrics import r2_score

        truth = test[ds.label].to_numpy(float)
        mean = pred["prediction"].to_numpy(float)
        out = {"score": float(r2_score(truth, mean))}
        if {"lower", "upper"} <= set(pred.columns):
            lo, hi = pred["lower"].to_numpy(float), pred["upper"].to_numpy(float)
            out["coverage"] = float(np.mean((lo <= truth) & (truth <= hi)))
            out["width"] = float(np.mean(hi - lo))
    return out


# ----------------------------------------------------------------------------------------- one run
def run_one(ds, split: int, seed: int, cfg: dict, data_dir: Path, address: str | None, wd: bool, keep: bool) -> dict:
    run_dir = data_dir / "runs" / f"{ds.name}-split{split}-seed{seed}"
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    logs = data_dir / "logs" / run_dir.name
    if logs.exists():
        shutil.rmtree(logs)
    logs.mkdir(parents=True)
    rows = split_rows(ds, seed)
    paths = write_split(ds, rows, run_dir)
    result = {"dataset": ds.name, "split": split, "seed": seed, "n": {k: int(len(v)) for k, v in rows.items()},
              "run_dir": str(run_dir), "logs": str(logs), "status": "ok"}
    t0 = time.monotonic()
    log(f"  split {split} (seed {seed}): {len(rows['train'])} train / {len(rows['val'])} val / {len(rows['test'])} test rows")

    defaults = {**SETTINGS["defaults"], "epochs": cfg["epochs"], "rng_seed": SETTINGS["defaults"]["rng_seed"] + seed}
    space = dict(SETTINGS["search_space"])
    if wd:
        defaults["weight_decay"] = SETTINGS["weight_decay_default"]
        space["weight_decay"] = SETTINGS["weight_decay_space"]
    exp = run_dir / "experiment.py"
    exp.write_text(experiment_source(f"real_{ds.name}", ds.label, ds.task, defaults, space))

    base = linear_baseline(ds, paths, seed)
    result["baseline"] = base
    log(f"    linear baseline: {base['score']:.4f} on test ({base['chosen']}; {base['seconds']:.1f}s)")

    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(MLFLOW_TRACKING_URI=f"sqlite:///{run_dir / 'mlflow.db'}", CANDLE_RAY_CACHE=str(run_dir / "cache"),
               CANDLE_RAY_OUTPUT=str(run_dir / "runs"), RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0",
               PYTHONUNBUFFERED="1")
    cli = str(venv_bin() / "candle-ray")
    storage = run_dir / "sweeps"
    common = ["--storage", str(storage), *(["--address", address] if address else [])]
    go = dict(env=env, cwd=run_dir)
    try:
        text = run_command([cli, "tune", str(exp), "--num-samples", str(cfg["num_samples"]), "--search",
                            SETTINGS["search"], "--scheduler", SETTINGS["scheduler"], "--seed", str(seed),
                            "--name", "sweep", *(["--cv", str(cfg["cv"])] if cfg["cv"] else []), *common],
                           log_path=logs / "tune.log", what="tune", **go)
        result["tune"] = parse_sweep(text)
        best = json.loads((storage / "sweep" / "best_config.json").read_text())
        result["best_trial"] = {"trial_id": best["trial_id"], "best_epoch": best.get("epoch"),
                                "epochs_run": best.get("epochs_run"), "val": best.get("metrics"),
                                "config": best.get("config")}
        log(f"    best trial {best['trial_id']}: {SETTINGS['metric']} {best['value']:.4g} at epoch {best.get('epoch')} "
            f"of {best.get('epochs_run')}; {json.dumps(best.get('config'))}")
        ckpt = storage / "sweep" / "trials" / best["trial_id"] / "checkpoints"
        ckpt = ckpt if ckpt.exists() else ckpt.parent
        conformal = ["--conformal", str(paths["val"]), "--alpha", str(SETTINGS["alpha"])]
        try:
            run_command([cli, "predict", str(ckpt), "--data", str(paths["test"]), "--out", str(run_dir / "pred_best.tsv"),
                         *conformal], log_path=logs / "predict_best.log", what="predict (best trial)", **go)
            result["best_trial"].update(score_predictions(ds, run_dir / "pred_best.tsv", paths["test"]))
        except CommandFailed as exc:
            result["best_trial"]["error"] = str(exc)
        text = run_command([cli, "ensemble", str(exp), "--from-sweep", "sweep", "--top", str(cfg["top"]),
                            "--members", str(cfg["members"]), "--name", "ensemble", *common],
                           log_path=logs / "ensemble.log", what="ensemble", **go)
        result["ensemble_run"] = parse_sweep(text)
        parent = result["ensemble_run"].get("parent_run_id")
        if not parent:
            raise CommandFailed("the ensemble's output names no 'MLflow parent run <id>'")
        run_command([cli, "predict", parent, "--data", str(paths["test"]), "--out", str(run_dir / "pred_ensemble.tsv"),
                     *conformal], log_path=logs / "predict_ensemble.log", what="predict (ensemble)", **go)
        result["ensemble"] = score_predictions(ds, run_dir / "pred_ensemble.tsv", paths["test"])
        run_command([cli, "predict", parent, "--no-baseline", "--data", str(paths["test"]),
                     "--out", str(run_dir / "pred_networks.tsv")], log_path=logs / "predict_networks.log",
                    what="predict (the ensemble's networks)", **go)
        result["networks"] = score_predictions(ds, run_dir / "pred_networks.tsv", paths["test"])
    except CommandFailed as exc:
        result["status"] = f"failed: {exc}"
    except Exception as exc:  # the script's own trouble: record it, go on with the next run
        result["status"] = f"failed: {type(exc).__name__}: {exc}"
        log(f"    {result['status']}")
    result["wall_s"] = time.monotonic() - t0
    ens, best = result.get("ensemble", {}), result.get("best_trial", {})
    if "score" in ens:
        result["ratio"] = ens["score"] / base["score"] if base["score"] > 0 else math.nan
        nets = result.get("networks", {}).get("score", math.nan)
        result["networks_ratio"] = nets / base["score"] if base["score"] > 0 else math.nan
    log(f"    => baseline {base['score']:.4f}, best trial {fmt(best.get('score'))}, ensemble {fmt(ens.get('score'))}, "
        f"coverage {fmt(ens.get('coverage'))} (mean {'set size' if ds.task == 'classification' else 'width'} "
        f"{fmt(ens.get('set_size', ens.get('width')), 2)}), ratio {fmt(result.get('ratio'))} "
        f"(its networks alone: {fmt(result.get('networks_ratio'))}); {result['wall_s']:.0f}s "
        f"[{result['status']}]")
    (logs / "result.json").write_text(json.dumps(result, indent=1, default=str))
    if not keep:
        shutil.rmtree(run_dir, ignore_errors=True)
        result["run_dir"] = None
    return result


def parse_sweep(text: str) -> dict:
    """What a tune / ensemble run printed: its MLflow parent run, candle-ray's own baseline, counts."""
    out = {}
    if m := re.search(r"MLflow parent run ([0-9a-f]{32})", text):
        out["parent_run_id"] = m.group(1)
    if m := re.search(r"^linear baseline \(([^)]*)\): (.*)$", text, re.M):
        out["candle_ray_baseline"] = m.group(2).strip()
    if m := re.search(r"^(\d+) (?:trial|member|fold|run)s?: (.*)$", text, re.M):
        out["counts"] = m.group(0).strip()
    if m := re.search(r"^ensemble of .*$", text, re.M):
        out["ensemble_val"] = m.group(0).strip()
    out["warnings"] = sorted({ln.strip() for ln in text.splitlines() if ln.strip().lower().startswith("warning")})[:10]
    return out


# --------------------------------------------------------------------------------------------- report
def fmt(value, digits: int = 3) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def mean_sd(values) -> tuple[float | None, float | None]:
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def pm(values) -> str:
    m, s = mean_sd(values)
    return "-" if m is None else (f"{m:.3f} ± {s:.3f}" if len(values) > 1 else f"{m:.3f}")


def summarize(ds, results: list[dict]) -> dict:
    ok = [r for r in results if r["status"] == "ok"]
    get = lambda rs, *keys: [_dig(r, keys) for r in rs]  # noqa: E731
    row = {"dataset": ds.name, "task": ds.task, "samples": ds.n, "features": int(ds.X.shape[1]),
           "classes": int(ds.y.nunique()) if ds.task == "classification" else None,
           "n": results[0]["n"] if results else None, "splits": len(results), "failed": len(results) - len(ok),
           "metric": "accuracy" if ds.task == "classification" else "R2"}
    for key, keys in (("baseline", ("baseline", "score")), ("best_trial", ("best_trial", "score")),
                      ("ensemble", ("ensemble", "score")), ("ratio", ("ratio",)),
                      ("networks_ratio", ("networks_ratio",)),
                      ("coverage", ("ensemble", "coverage")), ("best_trial_coverage", ("best_trial", "coverage")),
                      ("set_size", ("ensemble", "set_size")), ("width", ("ensemble", "width")),
                      ("wall_s", ("wall_s",))):
        values = get(results if key in ("baseline", "wall_s") else ok, *keys)
        m, s = mean_sd(values)
        row[key] = {"mean": m, "sd": s, "values": values}
    ratio, cov = row["ratio"]["mean"], row["coverage"]["mean"]
    row["meets_ratio"] = ratio is not None and ratio >= TARGET_RATIO
    row["meets_coverage"] = cov is not None and TARGET_COVERAGE[0] <= cov <= TARGET_COVERAGE[1]
    return row


def _dig(result: dict, keys):
    for key in keys:
        if not isinstance(result, dict) or key not in result:
            return None
        result = result[key]
    return result


def print_table(rows: list[dict]) -> None:
    header = ["dataset", "n tr/va/te", "feat", "cls", "metric", "baseline", "best trial", "ensemble", "ens/base",
              "nets/base", "coverage@0.9", "set/width", "wall/split s", "ok"]
    lines = []
    for r in rows:
        n = r["n"] or {}
        lines.append([r["dataset"], f"{n.get('train', '-')}/{n.get('val', '-')}/{n.get('test', '-')}", str(r["features"]),
                      str(r["classes"] or "-"), r["metric"], pm(r["baseline"]["values"]), pm(r["best_trial"]["values"]),
                      pm(r["ensemble"]["values"]), pm(r["ratio"]["values"]),
                      pm(r["networks_ratio"]["values"]), pm(r["coverage"]["values"]),
                      pm(r["set_size" if r["metric"] == "accuracy" else "width"]["values"]),
                      f"{r['wall_s']['mean']:.0f}" if r["wall_s"]["mean"] is not None else "-",
                      f"{r['splits'] - r['failed']}/{r['splits']}"])
    widths = [max(len(str(x)) for x in col) for col in zip(header, *lines)]
    log("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    for line in lines:
        log("  ".join(x.ljust(w) for x, w in zip(line, widths)))
    log()
    log(f"targets: ratio >= {TARGET_RATIO:.2f} on every dataset, coverage {TARGET_COVERAGE[0]:.2f}-{TARGET_COVERAGE[1]:.2f}")
    for r in rows:
        verdict = "MEETS" if r["meets_ratio"] and r["meets_coverage"] else "misses"
        log(f"  {r['dataset']:<16} {verdict}: ratio {fmt(r['ratio']['mean'])} "
            f"({'ok' if r['meets_ratio'] else 'below'}), coverage {fmt(r['coverage']['mean'])} "
            f"({'ok' if r['meets_coverage'] else 'outside'})" + (f"; {r['failed']} failed run(s)" if r["failed"] else ""))


# ------------------------------------------------------------------------------------------------ main
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", default="nci60,khan,gse1992,gdsc", help="comma-separated subset of %(default)s")
    p.add_argument("--splits", type=int, default=None,
                   help=f"splits per dataset [default under {SETTINGS['small_n']} rows: {SETTINGS['splits_small']}, or "
                        f"enough for {SETTINGS['min_test_rows']} test rows in all; else {SETTINGS['splits_large']}]")
    p.add_argument("--epochs", type=int, default=None, help=f"[default {SETTINGS['defaults']['epochs']}]")
    p.add_argument("--num-samples", type=int, default=None, help=f"trials per sweep [default {SETTINGS['num_samples']}]")
    p.add_argument("--members", type=int, default=None, help=f"ensemble members [default {SETTINGS['members']}]")
    p.add_argument("--top", type=int, default=None,
                   help=f"the ensemble takes the sweep's TOP best configurations, --members seeds each [default {SETTINGS['top']}]")
    p.add_argument("--cv", type=int, default=0, metavar="K",
                   help="select the sweep's trials by K-fold cross-validation on the train+val rows (tune --cv K) "
                        "[default: off, the val split]")
    p.add_argument("--quick", action="store_true", help=f"fast end-to-end check: {SETTINGS['quick']} "
                                                        f"(explicit flags win)")
    p.add_argument("--seed", type=int, default=0, help="every seed derives from it [default 0]")
    p.add_argument("--data-dir", default="~/.cache/candle-ray-bench/real")
    p.add_argument("--out", default=None, help="results JSON [default <data dir>/real_data_results.json]")
    p.add_argument("--keep", action="store_true", help="keep the run folders (data, sweeps, MLflow, predictions)")
    p.add_argument("--no-ray-head", action="store_true", help="let each command start its own Ray")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    quick = SETTINGS["quick"] if args.quick else {}
    cfg = {"epochs": args.epochs or quick.get("epochs") or SETTINGS["defaults"]["epochs"],
           "num_samples": args.num_samples or quick.get("num_samples") or SETTINGS["num_samples"],
           "members": args.members or quick.get("members") or SETTINGS["members"], "top": args.top or SETTINGS["top"],
           "splits": args.splits or quick.get("splits"), "cv": args.cv}
    keys = [k.strip() for k in args.datasets.split(",") if k.strip()]
    unknown = [k for k in keys if k not in _real_datasets.LOADERS]
    if unknown:
        sys.exit(f"unknown dataset(s) {unknown}; choose from {', '.join(_real_datasets.LOADERS)}")
    data_dir = Path(args.data_dir).expanduser().resolve()
    if REPO in data_dir.parents or data_dir == REPO:
        sys.exit(f"--data-dir {data_dir} is inside the repository; the datasets must stay outside it")
    data_dir.mkdir(parents=True, exist_ok=True)
    out_path = Path(args.out).expanduser() if args.out else data_dir / "real_data_results.json"
    t_all = time.monotonic()

    _real_datasets.ensure_packages(keys, str(venv_bin() / "python"), log=log)
    datasets = []
    for key in keys:
        log(f"reading {key}")
        datasets += _real_datasets.LOADERS[key](log=log)
    log()
    for ds in datasets:
        log(ds.summary())
    wd = weight_decay_accepted(data_dir)
    log(f"\nweight_decay: {'accepted by candle-ray: searched' if wd else 'not accepted by candle-ray: left out'}")
    log(f"settings: {cfg['num_samples']} x {SETTINGS['search']} / {SETTINGS['scheduler']}, {cfg['epochs']} epochs, "
        f"ensemble of {cfg['members']}, metric {SETTINGS['metric']} ({SETTINGS['mode']}), seed {args.seed}\n")

    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    head = None if args.no_ray_head else RayHead(data_dir / "ray-head", env)
    rows, everything = [], []
    try:
        address = head.start() if head else None
        for d_i, ds in enumerate(datasets):
            splits = cfg["splits"] or default_splits(ds.n)
            log(f"\n== {ds.name}: {splits} split(s)")
            results = []
            for k in range(splits):
                seed = args.seed * 1000 + k
                results.append(run_one(ds, k, seed, cfg, data_dir, address, wd, args.keep))
            everything += results
            rows.append(summarize(ds, results))
            out_path.write_text(json.dumps(_report(args, cfg, wd, datasets, rows, everything, t_all), indent=1, default=str))
    finally:
        if head:
            head.stop()
    log("\n" + "=" * 100)
    print_table(rows)
    log(f"\nresults: {out_path}  (total {time.monotonic() - t_all:.0f}s)")
    out_path.write_text(json.dumps(_report(args, cfg, wd, datasets, rows, everything, t_all), indent=1, default=str))
    return 0 if all(r["failed"] == 0 for r in rows) else 1


def _report(args, cfg, wd, datasets, rows, runs, t_all) -> dict:
    return {"settings": {**SETTINGS, **cfg, "weight_decay_searched": wd, "seed": args.seed},
            "datasets": {ds.name: ds.summary() for ds in datasets}, "rows": rows, "runs": runs,
            "targets": {"ratio": TARGET_RATIO, "coverage": TARGET_COVERAGE},
            "total_s": time.monotonic() - t_all}


if __name__ == "__main__":
    sys.exit(main())
