"""A sweep from start to end: settings, data, MLflow parent run, Tune, the count line and results.

`sweep.json` in the sweep folder records what `--resume` needs: the experiment file, the settings,
the fixed overrides and the MLflow parent run, so a resumed sweep continues the same runs.
"""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

from candle_ray.errors import UsageError

SWEEP_FILE = "sweep.json"


def known_metrics(task: str) -> tuple[str, ...]:
    extra = {"classification": ("accuracy", "val_accuracy"), "autoencoder": ("val_corr",),
             "regression": ("val_corr", "val_r2", "val_mae")}[task]
    return ("loss", "val_loss", *extra)


def _write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True, default=str))
    os.replace(tmp, path)


def read_record(store, name: str, experiment_path: Path) -> dict:
    path = store.path(name, SWEEP_FILE)
    if not store.exists(path):
        existing = [d for d in store.subdirs(store.root) if store.exists(store.path(d, SWEEP_FILE))]
        listing = f"sweeps in {store.uri}: {', '.join(existing)}" if existing else f"there are no sweeps in {store.uri}"
        raise UsageError(f"no sweep named {name!r} to resume; {listing}")
    record = json.loads(store.read_text(path))
    if Path(record["experiment_file"]) != experiment_path:
        raise UsageError(f"sweep {name!r} was started with {record['experiment_file']}, not {experiment_path}; "
                         f"resume it with the same experiment file or start a new sweep")
    return record


def run(*, experiment, prepare, echo, storage: str, name: str | None, resume: bool, searcher: str, scheduler: str,
        num_samples: int, workers_per_trial: int, cpus_per_worker: float, max_concurrent: int | None, seed: int,
        metric: str | None, mode: str | None, max_failures: int, sets: list[str], config_file, smoke: bool,
        space: dict | None, address: str | None, tracking_uri: str, force_cpu: bool,
        checkpoint_every_s: float = 30.0) -> int:
    """Run (or resume) a sweep; returns the exit code: 0 when it finished with at least one good trial.

    `prepare(smoke)` readies the cache entry (a resumed sweep uses the smoke setting it started with).
    """
    from candle_ray.storage import Storage

    t0 = time.monotonic()
    store = Storage.parse(storage)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    if resume:
        record = read_record(store, name, experiment.path)
        # A resumed sweep keeps what it started with: overrides, smoke data and its MLflow store.
        sets, config_file, smoke = record["sets"], record["config_file"], record["smoke"]
        tracking_uri = record["tracking_uri"]
        echo(f"resuming sweep {name} ({record['sweep']['searcher']} / {record['sweep']['scheduler']}, "
             f"{record['sweep']['num_samples']} samples)")
    name = name or f"{experiment.name}-{stamp}"
    config = experiment.resolve_config(config_file=config_file, sets=sets, smoke=smoke, warn=echo)
    if resume:  # Tune restores the sweep's own space; only its keys are needed here
        space = dict.fromkeys(record["space_keys"])
    else:
        space = dict(space if space is not None else experiment.search_space)
        if smoke:  # some keys only make sense at full size (e.g. NT3's conv layouts)
            space = {k: v for k, v in space.items() if k not in experiment.smoke.fixed}
        check_space(space, config, sets, experiment.name)
        from candle_ray import tune

        tune.validate(searcher, scheduler, space)
    metric, mode = metric or experiment.metric, mode or experiment.mode
    entry = prepare(smoke)
    if metric not in known_metrics(entry.manifest["task"]):
        raise UsageError(f"metric {metric!r} is not reported by training; use one of "
                         f"{', '.join(known_metrics(entry.manifest['task']))}")

    from candle_ray import runtime, tracking, tune
    from candle_ray.experiment import model_shape

    cluster = runtime.connect(address)
    use_gpu = bool(cluster.get("GPU")) and not force_cpu
    if resume:
        sweep = tune.Sweep(**record["sweep"])
    else:
        if store.exists(store.path(name, SWEEP_FILE)):
            raise UsageError(f"a sweep named {name!r} already exists in {store.uri}; resume it with --resume {name} "
                             f"or pick another --name")
        concurrent = tune.concurrency(cluster, workers_per_trial, cpus_per_worker, int(use_gpu), max_concurrent)
        sweep = tune.Sweep(name=name, searcher=searcher, scheduler=scheduler, num_samples=num_samples,
                           workers_per_trial=workers_per_trial, cpus_per_worker=cpus_per_worker,
                           gpus_per_worker=int(use_gpu), max_concurrent=concurrent, seed=seed, metric=metric,
                           mode=mode, max_failures=max_failures,
                           max_epochs=tune.max_epochs(space, int(config["epochs"])),
                           checkpoint_every_s=0.0 if scheduler == "pbt" else checkpoint_every_s)
    work_dir = store.work_dir(sweep.name)  # trials' folders, results and report, before any upload
    work_dir.mkdir(parents=True, exist_ok=True)

    parent = tracking.RunTracker(tracking_uri, experiment.name, record["parent_run_id"] if resume else None)
    tags = {"candle_ray.experiment_file": experiment.path, "mlflow.source.name": experiment.path,
            "mlflow.source.git.commit": tracking.git_commit(experiment.path.parent),
            "candle_ray.dataset": entry.name, "candle_ray.dataset_fingerprint": entry.fingerprint,
            "candle_ray.synthetic_data": str(entry.synthetic).lower(), "candle_ray.sweep_dir": store.display(sweep.name)}
    if resume:
        parent.reopen()
    else:
        parent.start(sweep.name, {**{f"sweep.{k}": v for k, v in asdict(sweep).items()}, **config,
                                  "model_name": experiment.model, "dataset": entry.name},
                     {**tags, "candle_ray.sweep": sweep.name})
        store.write_text(store.path(sweep.name, SWEEP_FILE), json.dumps({
            "experiment_file": str(experiment.path), "parent_run_id": parent.run_id, "tracking_uri": tracking_uri,
            "sweep": asdict(sweep), "space_keys": list(space), "sets": list(sets),
            "config_file": str(config_file) if config_file else None,
            "smoke": smoke, "created": stamp}, indent=1, sort_keys=True))

    base_job = {
        "config": config, "model": experiment.model, "task": entry.manifest["task"],
        "model_shape": model_shape(entry),
        "entry": str(entry.path), "work_dir": str(work_dir), "metric": sweep.metric, "mode": sweep.mode,
        "precision": config.get("precision", "auto"), "feed": "auto", "workers": sweep.workers_per_trial,
        "cpus_per_worker": sweep.cpus_per_worker, "use_gpu": bool(sweep.gpus_per_worker),
        "threads": max(1, int(sweep.cpus_per_worker)), "tune_checkpoint_s": sweep.checkpoint_every_s,
    }
    sweep_tracker = tracking.SweepTracker(parent)
    progress = tune.ProgressCallback(sweep.metric, sweep.mode, sweep.max_epochs, echo)
    mlflow_callback = tune.MLflowSweepCallback(sweep_tracker, {**config, "model_name": experiment.model}, sweep.max_epochs,
                                               {**tags, "candle_ray.sweep": sweep.name}, work_dir)
    callbacks = [mlflow_callback, progress]
    device = f"{sweep.workers_per_trial} GPU worker(s)" if sweep.gpus_per_worker else \
        f"{sweep.workers_per_trial} x {sweep.cpus_per_worker:g} CPU worker(s)"
    echo(f"sweep {sweep.name}: {sweep.num_samples} x {sweep.searcher} / {sweep.scheduler} over "
         f"{', '.join(space)}; {device} per trial, up to {sweep.max_concurrent} at once; "
         f"MLflow parent run {parent.run_id}")
    status = "FAILED"
    try:
        tuner = tune.build_tuner(sweep=sweep, space=space, base_job=base_job, store=store,
                                 callbacks=callbacks, resume=resume)
        t_fit = time.monotonic()
        with _interrupt_watch() as tune_was_interrupted:
            tuner.fit()
            interrupted = tune_was_interrupted()
        fit_s = time.monotonic() - t_fit
        failure = mlflow_callback.close()
        if failure:
            echo(f"warning: MLflow logging of some trials failed ({failure}); the sweep's results are in "
                 f"{store.display(sweep.name)}")
        summary = summarize(sweep, progress, interrupted)
        _write_results(work_dir, store, summary, parent, sweep)
        try:
            files = make_report(parent, work_dir, store, sweep.name, sweep.metric, sweep.mode, list(space))
            echo(f"report: {files[-1]}")
        except Exception as exc:  # pictures are a bonus: never fail a finished search over them
            echo(f"warning: the sweep report could not be drawn ({type(exc).__name__}: {exc})")
        status = "KILLED" if summary["interrupted"] else ("FINISHED" if summary["succeeded"] else "FAILED")
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        mlflow_callback.close()
        if status != "FINISHED":
            for child in sweep_tracker.stale_children():
                child.finish("KILLED")
        parent.finish(status)
    wall = time.monotonic() - t0
    counts = summary["counts"]
    echo(f"{summary['total']} trials: {counts.get('completed', 0)} completed, {counts.get('failed', 0)} failed, "
         f"{counts.get('stopped early', 0)} stopped early"
         + (f", {summary['unfinished']} unfinished" if summary["unfinished"] else "")
         + f"; {wall:.1f}s wall ({fit_s:.1f}s in Tune), {summary['compute_s']:.1f}s of epochs")
    if summary["best"]:
        best = summary["best"]
        echo(f"best {sweep.metric} {best['value']:.4g} (trial {best['trial_id']}, epoch {best['epoch']}): "
             f"{json.dumps(best['config'], default=str)}")
    if summary["interrupted"]:
        echo(f"interrupted: continue with candle-ray tune {experiment.path} --resume --name {sweep.name}"
             + (f" --storage {store.uri}" if store.uri != str(Path("candle-ray-sweeps").resolve()) else ""))
        return 1
    return 0 if summary["succeeded"] else 1


def make_report(parent, work_dir: Path, store, name: str, metric: str, mode: str, space_keys: list[str]) -> list[Path]:
    """Draw the sweep's pictures from its MLflow runs, keep them with the sweep and on its parent run."""
    from candle_ray import report, tracking

    files = report.write_report(tracking.sweep_trials(parent), sweep=name, metric=metric, mode=mode,
                                space_keys=space_keys, out=work_dir / "report")
    for path in files:
        parent.log_artifact(path, "report")
        store.upload(path, store.path(name, "report", path.name))
    return files


def report_command(storage: str, name: str, echo) -> list[Path]:
    """`candle-ray report SWEEP`: redraw a sweep's pictures (for a finished or a running sweep)."""
    from candle_ray import tracking
    from candle_ray.storage import Storage

    store = Storage.parse(storage)
    if not store.exists(store.path(name, SWEEP_FILE)):
        raise UsageError(f"no sweep named {name!r} in {store.uri}; pass --storage where it ran")
    record = json.loads(store.read_text(store.path(name, SWEEP_FILE)))
    parent = tracking.RunTracker(record["tracking_uri"], "", record["parent_run_id"])
    sweep = record["sweep"]
    work_dir = store.work_dir(name)
    files = make_report(parent, work_dir, store, name, sweep["metric"], sweep["mode"], record["space_keys"])
    echo(f"report: {files[-1]} ({len(files) - 1} pictures), attached to MLflow run {parent.run_id}")
    return files


def check_space(space: dict, config: dict, sets, experiment_name: str) -> None:
    if not space:
        raise UsageError(f"experiment {experiment_name!r} has an empty search space; add search_space keys "
                         f"or pass --space FILE")
    unknown = sorted(set(space) - set(config))
    if unknown:
        raise UsageError(f"search-space keys {unknown} are not in the experiment's config; "
                         f"known keys: {', '.join(sorted(config))}")
    for item in sets:  # a key both fixed by --set and searched would be silently overridden by the search
        if item.partition("=")[0] in space:
            raise UsageError(f"--set {item} fixes a key the search varies; drop it from --set or from the space")


@contextmanager
def _interrupt_watch():
    """Tells whether Ctrl-C stopped `tuner.fit()`: Tune catches the first SIGINT itself, ends the run
    gracefully (the stopped trial then looks merely "terminated") and puts back the handler it found."""
    if threading.current_thread() is not threading.main_thread() or os.environ.get("TUNE_DISABLE_SIGINT_HANDLER") == "1":
        yield lambda: False
        return
    before = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield lambda: signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, before)


def summarize(sweep, progress, interrupted: bool = False) -> dict:
    """Counts, the best trial and one row per trial, from Tune's trials as the driver saw them."""
    from candle_ray.tune import _status

    trials = progress.trials or []
    rows, counts = [], {}
    for trial in trials:
        status = _status(trial, sweep.max_epochs)
        counts[status] = counts.get(status, 0) + 1
        last = trial.last_result or {}
        rows.append({"trial_id": trial.trial_id, "status": status, "epochs": last.get("epoch", 0),
                     sweep.metric: last.get(sweep.metric), **{f"config.{k}": v for k, v in trial.config.items()}})
    best = None
    candidates = [t for t in trials if t.status != "ERROR" and t.last_result
                  and isinstance(t.last_result.get(sweep.metric), float) and math.isfinite(t.last_result[sweep.metric])]
    if candidates:
        pick = (min if sweep.mode == "min" else max)(candidates, key=lambda t: t.last_result[sweep.metric])
        best = {"trial_id": pick.trial_id, "value": pick.last_result[sweep.metric],
                "epoch": pick.last_result.get("epoch"), "config": pick.config}
    unfinished = sum(counts.get(s, 0) for s in ("running", "pending", "paused"))
    succeeded = counts.get("completed", 0) + counts.get("stopped early", 0)
    return {"rows": rows, "counts": counts, "best": best, "total": len(trials), "unfinished": unfinished,
            "interrupted": interrupted or unfinished > 0, "succeeded": succeeded > 0,
            "compute_s": sum(progress.epoch_seconds.values())}


def _write_results(work_dir: Path, store, summary: dict, parent, sweep) -> None:
    """results.csv and best_config.json with the sweep and on the parent run."""
    rows = summary["rows"]
    columns = sorted({k for row in rows for k in row}, key=lambda k: (k.startswith("config."), k))
    path = work_dir / "results.csv"
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    files = [path]
    if summary["best"]:
        _write_json_atomic(work_dir / "best_config.json", summary["best"])
        files.append(work_dir / "best_config.json")
        parent.log_epoch({"epoch": 0, f"best_{sweep.metric}": summary["best"]["value"]})
    for file in files:
        parent.log_artifact(file)
        store.upload(file, store.path(sweep.name, file.name))
    counts = summary["counts"]
    parent.set_tags({"candle_ray.trials_completed": counts.get("completed", 0),
                     "candle_ray.trials_failed": counts.get("failed", 0),
                     "candle_ray.trials_stopped_early": counts.get("stopped early", 0)})
