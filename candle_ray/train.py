"""`candle-ray train` as a library call: `run_train` opens the MLflow run, plans the workers, launches the
job (candle_ray.launch) and follows its epochs; the CLI only parses and echoes. The driver-side twin of
the sweep driver (candle_ray.sweep)."""

from __future__ import annotations

import csv
import json
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from candle_ray.errors import CandleRayError, TrainingError
from candle_ray.job import Workers

_BOOKKEEPING = ("epoch", "epoch_time_s", "samples_per_s", "best_epoch", "replayed")


@dataclass(frozen=True)
class TrainOptions:
    """How and where one training run goes (the CLI's options, defaults as documented there)."""
    tracking_uri: str
    address: str | None = None
    workers: Workers = Workers(1, 1)
    force_cpu: bool = False
    cpus_per_worker: float | None = None
    max_failures: int = 1
    feed: str = "auto"
    output_dir: str = "candle-ray-runs"
    run_name: str | None = None
    launcher: str = "auto"
    inject_fault: int | None = None  # tests: kill rank 0 once at this epoch
    all_rows: bool = False  # train+val together for exactly `epochs` epochs, no validation (the final model)
    register: str | None = None  # Model Registry name for the run's model (alias best)


@dataclass(frozen=True)
class TrainResult:
    run_id: str
    run_dir: Path
    best: dict  # the best epoch's metrics
    startup_s: float
    compute_s: float
    model_uri: str | None = None  # models:/NAME@best where registered


class Progress:
    """Per-epoch handler in the driver: one terminal line, one MLflow log_batch, one CSV row."""

    def __init__(self, csv_path: Path, opened_run: Future, epochs: int, t_start: float, echo):
        self.csv_path, self.opened_run, self.epochs, self.t_start, self.echo = csv_path, opened_run, epochs, t_start, echo
        self.history: dict[int, dict] = {}
        self.startup_s = self.compute_s = 0.0
        self.stop_reason: str | None = None

    def __call__(self, metrics: dict) -> None:
        epoch = int(metrics["epoch"])
        if epoch in self.history:  # a resumed worker replays epochs this driver already has
            return
        if not self.history:
            self.startup_s = time.monotonic() - self.t_start - metrics["epoch_time_s"]
        self.history[epoch] = metrics
        self.compute_s += metrics["epoch_time_s"]
        # Every metric the objective reports (AUROC, per-task accuracy, UQ heads...), bookkeeping aside.
        fields = [k for k, v in metrics.items() if k not in _BOOKKEEPING and isinstance(v, (int, float))
                  and not isinstance(v, bool) and not k.startswith("system/")]  # system/: MLflow's tab only
        text = "  ".join(f"{k} {metrics[k]:.4g}" for k in fields)
        note = " (replayed from checkpoint)" if metrics.get("replayed") else ""
        self.echo(f"epoch {epoch:>4}/{self.epochs}  {text}  {metrics['epoch_time_s']:.2f}s{note}")
        if "stop_reason" in metrics:
            self.stop_reason = metrics["stop_reason"]
            self.echo(f"stopped: {metrics['stop_reason']}")
        self._write_row(["epoch", *fields, "epoch_time_s"], metrics)
        self.opened_run.result().log_epoch(metrics)  # the first epoch may wait here for the run to open

    def _write_row(self, columns: list[str], metrics: dict) -> None:
        new = not self.csv_path.exists()
        with open(self.csv_path, "a", newline="") as f:
            writer = csv.writer(f)
            if new:
                writer.writerow(columns)
            writer.writerow([metrics.get(c, "") for c in columns])

    def best(self, metric: str, mode: str) -> dict:
        from candle_ray.summary import best_of, tie_value

        found = best_of([m for _, m in sorted(self.history.items()) if metric in m], lambda m: m[metric], mode,
                        lambda m: tie_value(m, metric))
        if found is None:
            raise CandleRayError(f"training reported no {metric!r}; check the experiment's metric")
        return found


def finish_run(tracker, run_dir: Path, status: str, warn=print, register: str | None = None) -> str | None:
    """Artifacts (the best checkpoint, as the MLflow model of a finished run, registered under `register`;
    per-epoch log, resolved config), then end the MLflow run once; the model's URI, or None."""
    from candle_ray import checkpoint, tracking

    uri = None
    try:
        ckpt_dir = run_dir / "checkpoints"
        if checkpoint.pointer(ckpt_dir, "best"):
            uri = tracking.log_weights(tracker, {"": ckpt_dir}, status == "FINISHED", warn=warn, register=register)
        for name in ("training.log", "config.json"):
            if (run_dir / name).exists():
                tracker.log_artifact(run_dir / name)
    finally:
        tracker.finish(status)
    return uri


def _open_run(experiment, config: dict, entry, options: TrainOptions, run_name: str, run_dir: Path, smoke: bool,
              mlflow_thread: ThreadPoolExecutor):
    """Start Ray here and the MLflow run in `mlflow_thread`; return the cluster's resources and the run's
    future. Nothing waits for the run: MLflow's import and store set-up (~3 s) overlap ray.init, the
    workers' start and the first epoch, which waits only to be logged. ray.init stays in the main thread,
    where it installs its signal handlers."""
    from candle_ray import runtime, tracking

    def start_run():
        tracker = tracking.RunTracker(options.tracking_uri, experiment.name)
        tracker.start(run_name, {**config, "model_name": experiment.model, "dataset": entry.name, "smoke": smoke}, {
            "candle_ray.experiment_file": experiment.path,
            "mlflow.source.name": experiment.path,
            "mlflow.source.git.commit": tracking.git_commit(experiment.path.parent),
            "candle_ray.dataset": entry.name,
            "candle_ray.dataset_fingerprint": entry.fingerprint,
            "candle_ray.synthetic_data": str(entry.synthetic).lower(),
            "candle_ray.run_dir": run_dir,
        })
        tracker.log_dataset(tracking.dataset_input(entry))
        return tracker

    runtime.probe(options.address)  # an unreachable --address fails here, before an MLflow run is opened
    opened = mlflow_thread.submit(start_run)
    try:
        ray_train = options.workers.elastic or options.launcher == "ray-train"
        return runtime.connect(options.address, ray_train=ray_train), opened
    except BaseException:
        if opened.exception() is None:
            opened.result().finish("FAILED")
        raise


def _logged(opened: Future, params: dict):
    """The opened run, once `params` are logged on it (in the MLflow thread, after the run's start)."""
    tracker = opened.result()
    tracker.log_params(params)
    return tracker


def _job(experiment, config: dict, entry, options: TrainOptions, run_dir: Path):
    from candle_ray.job import make_job

    fault = options.inject_fault
    return make_job(experiment, config, entry, run_dir=str(run_dir), feed=options.feed, workers=options.workers,
                    all_rows=options.all_rows,
                    fault={"epoch": fault, "rank": 0, "marker": str(run_dir / "fault-injected")} if fault else None)


def for_all_rows(config: dict, warn=print) -> dict:
    """The config of an `--all-rows` run: `epochs` epochs on train+val with no validation rows, so neither a
    learning rate that follows a validation plateau nor early stopping has anything to follow: both are off,
    and said so."""
    from candle_ray.summary import counted

    off = {key: False for key in ("reduce_lr", "early_stop") if config.get(key)}
    if off:
        warn(f"note: --all-rows trains all {counted(int(config['epochs']), 'epoch')} with no validation rows for "
             f"{' or '.join(off)} to follow: {', '.join(f'{k}=False' for k in off)}")
    return {**config, **off}


def _rows_line(entry, all_rows: bool) -> str:
    if all_rows:
        return f"all {entry.rows['train'] + entry.rows['val']} train+val rows (--all-rows: no validation)"
    return f"{entry.rows['train']} train / {entry.rows['val']} val rows"


def _importing_torch_after_the_first_epoch(on_epoch):
    """`on_epoch`, with torch imported in this process once the first epoch is in: the run's MLflow model is
    written here at the end, with torch (~3 s to import here), which later epochs now hide. Imported while
    the worker started, it delayed the first epoch (+0.6 s: both processes imported torch on 2 cores)."""
    def call(metrics: dict) -> None:
        on_epoch(metrics)
        import torch  # noqa: F401  (after the first epoch, a lookup)

    return call


def run_train(experiment, config: dict, entry, options: TrainOptions, *, smoke: bool = False, echo=print,
              warn=print, started: float | None = None) -> TrainResult:
    """Train `experiment` once with `config` on the prepared cache `entry`, logged to one MLflow run."""
    from candle_ray import runtime
    from candle_ray import launch

    started = time.monotonic() if started is None else started
    if options.all_rows:
        config = for_all_rows(config, warn)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    run_name = options.run_name or f"{experiment.name}-{stamp}-{uuid.uuid4().hex[:6]}"
    run_dir = (Path(options.output_dir) / experiment.name / run_name).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlflow") as mlflow_thread:
        cluster, started_run = _open_run(experiment, config, entry, options, run_name, run_dir, smoke, mlflow_thread)
        opened, status = started_run, "FAILED"
        try:
            plan = runtime.plan(cluster, options.workers, use_gpu=False if options.force_cpu else None,
                                cpus_per_worker=options.cpus_per_worker, nodes=runtime.node_resources())
            opened = mlflow_thread.submit(_logged, opened, {"workers": plan.describe(), "use_gpu": plan.use_gpu,
                                                            "cpus_per_worker": plan.cpus_per_worker,
                                                            **({"all_rows": True} if options.all_rows else {})})
            job = _job(experiment, config, entry, options, run_dir)
            (run_dir / "config.json").write_text(json.dumps(job.described(), indent=1, sort_keys=True))
            echo(f"training {experiment.name} ({experiment.model}) on {plan.describe()} {'GPU' if plan.use_gpu else 'CPU'} "
                 f"worker(s) x {plan.cpus_per_worker:g} CPU; {_rows_line(entry, options.all_rows)}, "
                 f"{entry.num_features} features")
            progress = Progress(run_dir / "training.log", opened, int(config["epochs"]), started, echo)
            launch.run(job, plan, on_epoch=_importing_torch_after_the_first_epoch(progress),
                       max_failures=options.max_failures, storage_path=str(run_dir / "ray"), run_name=run_name,
                       launcher=options.launcher, log=warn)
            if progress.stop_reason == "non-finite loss":
                raise TrainingError(f"training diverged (non-finite loss at epoch {max(progress.history)}); "
                                    f"lower learning_rate (now {config['learning_rate']}) or check the data")
            status = "FINISHED"
        except KeyboardInterrupt:
            status = "KILLED"
            raise
        finally:
            tracker = started_run.result()  # a run that never opened raises its own error: nothing to finish
            model_uri = finish_run(tracker, run_dir, status, warn, options.register)
    # --all-rows: the newest epoch is the model (there is no validation metric to pick another)
    best = progress.history[max(progress.history)] if options.all_rows else progress.best(experiment.metric,
                                                                                          experiment.mode)
    return TrainResult(tracker.run_id, run_dir, best, progress.startup_s, progress.compute_s,
                       model_uri if options.register else None)
