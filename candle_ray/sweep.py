"""A sweep from start to end: settings, data, MLflow parent run, Tune, the count line and results.

`sweep.json` in the sweep folder records what `--resume` needs: the experiment file, the settings,
the fixed overrides and the MLflow parent run, so a resumed sweep continues the same runs.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

from candle_ray.checkpoint import trial_folders
from candle_ray.errors import CandleRayError, UsageError
from candle_ray.job import Workers
from candle_ray.summary import best_lines, counted

BASELINE_DIR = "baseline"  # in an ensemble's folder: the linear baseline's checkpoint it pools


def known_metrics(config: dict, entry) -> tuple[str, ...]:
    """What training reports for this config and dataset (the objective decides: AUROC, per-task...)."""
    from candle_ray import objectives
    from candle_ray.experiment import model_shape

    return objectives.metric_names(config, entry.manifest["task"], model_shape(entry))


def _write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True, default=str))
    os.replace(tmp, path)


def read_record(store, name: str, experiment_path: Path) -> dict:
    record = store.read_sweep(name, f"no sweep named {name!r} to resume")
    if Path(record["experiment_file"]) != experiment_path:
        raise UsageError(f"sweep {name!r} was started with {record['experiment_file']}, not {experiment_path}; "
                         f"resume it with the same experiment file or start a new sweep")
    return record


@dataclass(frozen=True)
class SweepSettings:
    """Everything a sweep, an ensemble or a cv is asked to do (the CLI's options; `kind` says which).

    kind "ensemble": the trials are exactly `members` (config overrides), and their best checkpoints are
    pooled and evaluated at the end (`ensemble.evaluate`), on the parent run.
    kind "cv": the members are folds {"cv_fold": k}; `cv` (folds, stratify, group_by, seed) makes the
    fold assignment over the train+val rows, and the folds' mean and spread go on the parent run.
    kind "lc": the members are {"train_fraction": f, "rng_seed": s}, and their learning curve goes on the
    parent run (`_learning_curve`).
    """
    storage: str
    tracking_uri: str
    name: str | None = None
    resume: bool = False
    searcher: str = "random"
    scheduler: str = "asha"
    num_samples: int | None = 8  # with resume: None keeps the sweep's own; more grows it
    workers_per_trial: Workers = Workers(1, 1)
    cpus_per_worker: float = 1.0
    max_concurrent: int | None = None
    seed: int = 0
    metric: str | None = None
    mode: str | None = None
    max_failures: int = 0
    sets: tuple = ()
    config_file: str | None = None
    config_text: str | None = None  # the config file as the sweep read it first: a resume reads this, not the file
    smoke: bool = False
    space: dict | None = None
    address: str | None = None
    force_cpu: bool = False
    force_gpu: bool = False
    checkpoint_every_s: float = 30.0
    members: list | None = None
    kind: str = "sweep"
    cv: dict | None = None
    autoscale: bool = False
    baseline: bool = True
    baseline_share: float = 0.0  # an ensemble pools its linear baseline at this share of the output (0: not)
    baseline_share_fixed: bool = False  # the user chose it: pooled even where the networks clearly beat it
    grace_period: int = 0
    full_space: bool = False  # a smoke sweep searches Smoke.fixed keys too
    register: str | None = None  # Model Registry name for the best trial (sweep) or the members (ensemble)
    model_per_trial: bool = True  # a finished trial's weights are its child run's MLflow model (else plain files)
    searcher_options: dict | None = None  # a GA's population and probabilities (candle_ray.samplers.GASettings)
    keep_checkpoints: int = 0  # a sweep keeps the weights of its K best finished trials (candle_ray.retention)
    warm_start: tuple = ()  # earlier sweeps whose finished trials the searcher starts from (candle_ray.warm_start)
    also: tuple = ()  # more objectives, ((metric, mode), ...): a multi-objective search (search.Sweep.also)
    time_budget_s: float | None = None  # tune --time-budget: this command's wall clock (a resume brings its own)


@dataclass(frozen=True)
class _Resolved:
    """A sweep's settings after a resume has put back what it started with, and what they resolve to."""
    settings: SweepSettings
    record: dict | None  # sweep.json of a resumed sweep
    experiment: object  # with the data options its config file sets (Experiment.resolve)
    name: str
    stamp: str
    config: dict
    space: dict
    warm: object = None  # the searcher's evaluated points (candle_ray.warm_start.WarmStart)
    grown: bool = False  # a resumed sweep's trial budget was raised: its record is written again

    @property
    def conditional_keys(self) -> tuple:
        """Keys searched under a condition (candle_ray.conditional): a resumed sweep's record names them."""
        if self.record is not None:
            return tuple(self.record.get("conditional_keys", ()))
        if self.settings.members is not None:  # members of a conditional sweep: None where theirs searched none
            return tuple(k for k in self.space if any(m.get(k) is None for m in self.settings.members))
        from candle_ray.conditional import conditions

        return tuple(conditions(self.space))


def run(experiment, settings: SweepSettings, *, prepare, echo) -> int:
    """Run (or resume) a sweep; returns the exit code: 0 when it finished with at least one good trial.
    `prepare(experiment, smoke)` readies the cache entry (a resumed sweep uses the smoke setting it started with)."""
    from candle_ray.storage import Storage

    if settings.force_gpu and settings.force_cpu:
        raise UsageError("--gpu and --cpu contradict each other; pass one")
    t0 = time.monotonic()
    store = Storage.parse(settings.storage)
    resolved = _resolve(experiment, settings, store, echo)
    experiment = resolved.experiment
    if resolved.settings.full_space:  # the smoke data its full-size keys fit (Smoke.full_space_features)
        experiment = experiment.full_space_smoke()
    entry, cv_assignment = _check_data(experiment, resolved, prepare)
    if cv_assignment is not None and entry.manifest.get("group") and not resolved.settings.cv.get("group_by"):
        echo(f"folds keep each {entry.manifest['group']} whole (the dataset's group column)")
    sweep = _make_sweep(resolved, store)
    parent, tags = _open_parent(experiment, resolved, sweep, store, entry)
    deadline = t0 + settings.time_budget_s if settings.time_budget_s else None
    summary, fit_s, linear = _fit_and_finish(experiment, resolved, sweep, store, entry, cv_assignment, parent, tags,
                                             echo, deadline)
    return _echo_end(experiment, resolved.settings, sweep, store, entry, summary, linear,
                     wall=time.monotonic() - t0, fit_s=fit_s, echo=echo)


def _resolve(experiment, settings: SweepSettings, store, echo) -> _Resolved:
    """Phase 1, resolve or resume: the config and search space, with a resumed sweep's own settings."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    record = grown = None
    if settings.resume:
        record = read_record(store, settings.name, experiment.path)
        grown = _grown(record, settings, echo)
        record = grown or record
        # A resumed sweep keeps what it started with: overrides, smoke data and its MLflow store.
        _note_a_changed_config_file(record, echo)
        settings = replace(settings, sets=tuple(record["sets"]), config_file=record["config_file"],
                           config_text=record.get("config_text"),
                           smoke=record["smoke"], full_space=record.get("full_space", False),
                           kind=record.get("kind", "sweep"), cv=record.get("cv"),
                           baseline=record.get("baseline", True), baseline_share=record.get("baseline_share", 0.0),
                           baseline_share_fixed=record.get("baseline_share_fixed", False),
                           tracking_uri=record["tracking_uri"],
                           model_per_trial=record.get("model_per_trial", False), metric=record["sweep"]["metric"],
                           mode=record["sweep"]["mode"], also=tuple(map(tuple, record["sweep"].get("also", []))))
        echo(f"resuming sweep {settings.name} ({record['sweep']['searcher']} / {record['sweep']['scheduler']}, "
             f"{record['sweep']['num_samples']} samples)")
    name = settings.name or f"{experiment.name}-{stamp}"
    sets = list(settings.sets)
    if settings.config_file and settings.config_text is None:  # read once: a later edit of the file changes nothing
        from candle_ray.experiment import config_file_text

        settings = replace(settings, config_text=config_file_text(settings.config_file))
    experiment, config = experiment.resolve(config_file=settings.config_file, sets=sets, smoke=settings.smoke,
                                            warn=echo, config_text=settings.config_text)
    if record is not None:  # Tune restores the sweep's own space; only its keys are needed here
        space = dict.fromkeys(record["space_keys"])
    elif settings.members is not None:
        from candle_ray import search

        space = search.members_space(settings.members)
        settings = replace(settings, searcher="members", scheduler="fifo", num_samples=len(settings.members))
        check_space(space, {**config, "cv_fold": None} if settings.kind == "cv" else config, sets, experiment.name)
    else:
        space = dict(settings.space if settings.space is not None else experiment.search_space)
        if settings.smoke and not settings.full_space:  # some keys only make sense at full size (NT3's conv)
            from candle_ray.conditional import without_orphans

            space = without_orphans({k: v for k, v in space.items() if k not in experiment.smoke.fixed})
        check_space(space, config, sets, experiment.name)
        from candle_ray import search

        search.validate(settings.searcher, settings.scheduler, space, 1 + len(settings.also))
        ranked_by = [settings.metric or experiment.metric, *(m for m, _ in settings.also)]
        search.check_ranked_losses(space, config, ranked_by)
        if settings.also and settings.scheduler in ("asha", "hyperband", "median"):
            echo(f"note: {settings.scheduler} stops trials on {settings.metric or experiment.metric} alone, the "
                 f"first --metric; the searcher and the Pareto front use every --metric")
        from candle_ray.samplers import note
        from candle_ray.space import wide_uniform_note

        for said in (note(settings.searcher, space, settings.num_samples, settings.searcher_options),
                     wide_uniform_note(space)):
            if said:
                echo(said)
    settings = replace(settings, metric=settings.metric or experiment.metric, mode=settings.mode or default_mode(
        settings.metric, experiment), also=tuple((m, mode or default_mode(m, experiment)) for m, mode in settings.also))
    if record is None:
        for metric, mode in ((settings.metric, settings.mode), *settings.also):
            check_mode(metric, mode)
    warm = None
    if settings.warm_start:
        from candle_ray import warm_start

        if settings.also:
            raise UsageError("--warm-start gives the searcher one value per earlier trial; a search over several "
                             "--metric cannot take them: drop --warm-start or keep one --metric")
        warm_start.check_searcher(settings.searcher, settings.resume)
        warm = warm_start.load(store, list(settings.warm_start), experiment.path, space, settings.metric,
                               settings.mode, settings.smoke, echo)
        echo(warm.line(settings.searcher))
    return _Resolved(settings, record, experiment, name, stamp, config, space, warm, grown is not None)


def _note_a_changed_config_file(record: dict, echo) -> None:
    """A resumed sweep keeps the config file's values it started with; say so when the file has changed since."""
    path, text = record.get("config_file"), record.get("config_text")
    if path and text is not None and Path(path).is_file() and Path(path).read_text() != text:
        echo(f"note: {path} has changed since sweep {record['sweep']['name']} started; it keeps the values it "
             f"started with (sweep.json)")


def default_mode(metric: str | None, experiment) -> str:
    """The mode of a --metric given without --mode: the experiment's for its own metric, else the metric's
    natural direction. The experiment's mode for any metric had `--metric val_accuracy` on an experiment
    ranked by val_loss minimise accuracy (NCI-60: "best" val_accuracy 0.15 of 0.46 to 0.77)."""
    from candle_ray.summary import direction

    return experiment.mode if metric in (None, experiment.metric) else direction(metric)


def check_mode(metric: str, mode: str) -> None:
    """Refuse a --mode that ranks a loss upwards or an accuracy downwards."""
    from candle_ray.summary import natural_mode

    if (natural := natural_mode(metric)) not in (None, mode):
        raise UsageError(f"--mode {mode} would rank {metric} the wrong way and call the worst trial the best; "
                         f"{metric} improves {'down' if natural == 'min' else 'up'}wards: pass --mode {natural} "
                         f"or leave --mode out")


def _grown(record: dict, settings: SweepSettings, echo) -> dict | None:
    """A resumed sweep's record with its trial budget raised to `--num-samples`, when that asks for more."""
    had, wanted = record["sweep"]["num_samples"], settings.num_samples
    if wanted is None or wanted == had or settings.kind != "sweep":
        return None
    if wanted < had:
        raise UsageError(f"sweep {settings.name} has a budget of {had} trials and a sweep cannot shrink; "
                         f"resume it without --num-samples, or with more than {had} to add trials")
    echo(f"growing sweep {settings.name} from {had} to {wanted} trials")
    return {**record, "sweep": {**record["sweep"], "num_samples": wanted}}


def _check_data(experiment, resolved: _Resolved, prepare):
    """The cache entry, the cv fold assignment and the metric, checked before Ray starts."""
    s = resolved.settings
    entry = prepare(experiment, s.smoke)
    check_same_data(resolved.record, entry, resolved.name)
    if s.kind == "ensemble":
        from candle_ray.ensemble import check_poolable

        check_poolable(entry)
    if s.cv and s.kind == "sweep" and s.workers_per_trial.max > 1:
        raise UsageError(f"--cv trains the folds inside each trial, one worker each; drop --workers-per-trial "
                         f"{s.workers_per_trial} (or cross-validate one configuration with `candle-ray cv`)")
    cv_assignment = fold_assignment(entry, s.cv) if s.cv else None  # a bad --group-by fails fast
    reported = known_metrics(resolved.config, entry)
    if s.metric not in reported:
        raise UsageError(f"metric {s.metric!r} is not reported by training; use one of {', '.join(reported)}")
    from candle_ray.summary import PER_TRIAL

    for metric, _ in s.also:  # another objective may be what a trial costs, not only how well it fits
        if metric not in (*reported, *PER_TRIAL):
            raise UsageError(f"--metric {metric!r} is not reported by training; use one of "
                             f"{', '.join((*reported, *PER_TRIAL))}")
    return entry, cv_assignment


def check_same_data(record: dict | None, entry, name: str) -> None:
    """Refuse to resume a sweep on other data than it started on: its files changed, or how candle-ray prepares
    them (a classifier's hold-out became stratified), and the new trials would be ranked against old ones
    measured on other rows. Records from before the fingerprint was kept are not checked."""
    started = (record or {}).get("dataset_fingerprint")
    if started and started != entry.fingerprint:
        raise UsageError(f"sweep {name!r} started on dataset {entry.name} {started}, and the experiment now prepares "
                         f"{entry.fingerprint} (its files or their preparation changed); its trials would be compared "
                         f"on different rows: start a new sweep (another --name)")


def _make_sweep(resolved: _Resolved, store):
    """Start or join Ray and size the sweep to the cluster (a resumed sweep keeps its own)."""
    from candle_ray import runtime, search

    s, name = resolved.settings, resolved.name
    if resolved.record is None and store.has_sweep(name):  # before Ray starts
        raise UsageError(f"a sweep named {name!r} already exists in {store.uri}; resume it with --name {name} "
                         f"--resume, or pick another --name")
    cluster = runtime.connect(s.address, ray_train=s.workers_per_trial.elastic)
    if resolved.record is not None:
        return search.Sweep.from_record(resolved.record["sweep"])
    use_gpu = (s.force_gpu or bool(cluster.get("GPU"))) and not s.force_cpu
    trial = runtime.Plan.sized(s.workers_per_trial, s.cpus_per_worker, int(use_gpu))
    concurrent = runtime.trials_at_once(cluster, trial, s.max_concurrent, autoscale=s.autoscale,
                                        nodes=None if s.autoscale else runtime.node_resources())
    return search.Sweep(name=name, searcher=s.searcher, scheduler=s.scheduler, num_samples=s.num_samples,
                      searcher_options=dict(s.searcher_options or {}),
                      workers=trial.workers, cpus_per_worker=trial.cpus_per_worker,
                      gpus_per_worker=trial.gpus_per_worker, max_concurrent=concurrent, seed=s.seed, metric=s.metric,
                      also=[list(pair) for pair in s.also],
                      keep_checkpoints=0 if s.kind != "sweep" else s.keep_checkpoints,  # ensemble, cv: pool all
                      mode=s.mode, max_failures=s.max_failures,
                      max_epochs=search.max_epochs(resolved.space, int(resolved.config["epochs"])),
                      grace_period=s.grace_period,
                      warm_up="warmup_lr" in resolved.space or bool(resolved.config.get("warmup_lr")),
                      # PBT clones and Hyperband pauses trials: both continue from the newest epoch.
                      checkpoint_every_s=0.0 if s.scheduler in ("pbt", "hyperband") else s.checkpoint_every_s)


def _open_parent(experiment, resolved: _Resolved, sweep, store, entry):
    """Phase 2: the MLflow parent run (reopened on resume) and, for a new sweep, its record sweep.json."""
    from candle_ray import tracking

    s = resolved.settings
    parent = tracking.RunTracker(s.tracking_uri, experiment.name, resolved.record["parent_run_id"] if s.resume else None)
    tags = {"candle_ray.experiment_file": experiment.path, "mlflow.source.name": experiment.path,
            "mlflow.source.git.commit": tracking.git_commit(experiment.path.parent),
            "candle_ray.dataset": entry.name, "candle_ray.dataset_fingerprint": entry.fingerprint,
            "candle_ray.synthetic_data": str(entry.synthetic).lower(), "candle_ray.sweep_dir": store.display(sweep.name),
            "candle_ray.kind": s.kind, "candle_ray.sweep": sweep.name}
    if s.resume:
        parent.reopen()
        if resolved.grown:  # the record holds the new budget before Tune's state does (search.raise_trial_budget)
            store.write_sweep(sweep.name, resolved.record)
            parent.set_tags({"candle_ray.num_samples": sweep.num_samples})
        return parent, tags
    # MLflow shows the worker count as the CLI spells it (1-4); sweep.json keeps the record's ints.
    shown = {**sweep.record(), "workers_per_trial": str(sweep.workers)}
    parent.start(sweep.name, {**{f"sweep.{k}": v for k, v in shown.items()}, **resolved.config,
                              "model_name": experiment.model, "dataset": entry.name}, tags)
    parent.log_dataset(tracking.dataset_input(entry))
    if resolved.warm:
        parent.set_tags({"candle_ray.warm_start": f"{','.join(resolved.warm.sweeps)} ({len(resolved.warm.points)} trials)"})
    store.write_sweep(sweep.name, {
        "experiment_file": str(experiment.path), "parent_run_id": parent.run_id, "tracking_uri": s.tracking_uri,
        "sweep": sweep.record(), "space_keys": list(resolved.space), "sets": list(s.sets),
        "config_file": str(s.config_file) if s.config_file else None, "config_text": s.config_text,
        "smoke": s.smoke, "full_space": s.full_space, "created": resolved.stamp, "kind": s.kind, "cv": s.cv,
        "dataset_fingerprint": entry.fingerprint,
        "baseline": s.baseline, "baseline_share": s.baseline_share, "baseline_share_fixed": s.baseline_share_fixed,
        "log_keys": log_scaled_keys(resolved.space), "model_per_trial": s.model_per_trial,
        "conditional_keys": list(resolved.conditional_keys),
        "warm_start": {"sweeps": list(resolved.warm.sweeps), "points": len(resolved.warm.points)}
        if resolved.warm else None})
    return parent, tags


def _trial_job(experiment, resolved: _Resolved, sweep, entry, work_dir: Path, cv_assignment):
    """What every trial starts from (the trial replaces the config with its sample and adds its folder)."""
    from candle_ray.job import make_job

    cv = resolved.settings.cv
    return make_job(experiment, resolved.config, entry, metric=sweep.metric, mode=sweep.mode, work_dir=str(work_dir),
                    workers=sweep.workers, cpus_per_worker=sweep.cpus_per_worker,
                    use_gpu=bool(sweep.gpus_per_worker), threads=sweep.trial_plan.threads,
                    tune_checkpoint_s=sweep.checkpoint_every_s, cv_assignment=cv_assignment,
                    conditional=resolved.conditional_keys, followed=tuple(m for m, _ in sweep.also),
                    cv_folds=int(cv["folds"]) if cv and resolved.settings.kind != "cv" else None)


def _fit_and_finish(experiment, resolved: _Resolved, sweep, store, entry, cv_assignment, parent, tags, echo,
                    deadline: float | None = None):
    """Phases 3-5: the baseline, Tune's fit (ended at `deadline`, a time.monotonic(), where given), the
    summary and report, then the ensemble or cv finisher; the parent run ends with the sweep's status
    whatever happens."""
    from candle_ray import budget, callbacks, search, tracking

    s, space = resolved.settings, resolved.space
    work_dir = store.work_dir(sweep.name)  # trials' folders, results and report, before any upload
    work_dir.mkdir(parents=True, exist_ok=True)
    sweep_tracker = tracking.SweepTracker(parent)
    from candle_ray.report import MEMBERS

    progress = callbacks.ProgressCallback(sweep.metric, sweep.mode, sweep.max_epochs, echo, noun=MEMBERS.get(s.kind),
                                          sweep=sweep.name)
    mlflow_callback = callbacks.MLflowSweepCallback(sweep_tracker, {**resolved.config, "model_name": experiment.model},
                                               sweep.max_epochs, tags, work_dir, tracking.dataset_input(entry),
                                               model_per_trial=resolved.settings.model_per_trial,
                                               **_retention(sweep, store, work_dir))
    device = f"{sweep.workers} GPU worker(s)" if sweep.gpus_per_worker else \
        f"{sweep.workers} x {sweep.cpus_per_worker:g} CPU worker(s)"
    grace = f"; no trial stopped before epoch {sweep.grace}" if sweep.scheduler in ("asha", "hyperband", "median") else ""
    echo(f"sweep {sweep.name}: {sweep.num_samples} x {sweep.searcher} / {sweep.scheduler} over "
         f"{', '.join(space)}; {device} per trial, up to {sweep.max_concurrent} at once{grace}; "
         f"MLflow parent run {parent.run_id}")
    status = "FAILED"
    try:
        pooled = work_dir / BASELINE_DIR if s.kind == "ensemble" and s.baseline_share > 0 else None
        linear = fit_baseline(entry, cv_assignment, int(s.cv["folds"]) if s.cv else None, echo,
                              parent if not s.resume else None, pooled, s.baseline_share,
                              trials_config=resolved.config, searched=space) if s.baseline else {}
        tuner = search.build_tuner(sweep=sweep, space=space, base_job=_trial_job(experiment, resolved, sweep, entry,
                                                                                work_dir, cv_assignment),
                                 store=store, callbacks=[mlflow_callback, progress], resume=s.resume, points=s.members,
                                 warm=resolved.warm)
        t_fit = time.monotonic()
        budget.start(sweep.name, deadline)
        with _interrupt_watch() as tune_was_interrupted:
            tuner.fit()
            interrupted = tune_was_interrupted()
        fit_s = time.monotonic() - t_fit
        out_of_time = budget.end(sweep.name)
        mlflow_callback.end_retention(progress.trials or [])
        _say_what_logging_left(mlflow_callback, sweep, store, echo)
        summary = _summarise(resolved, sweep, store, work_dir, progress, parent, sweep_tracker.run_ids(), interrupted,
                             echo)
        summary["out_of_time"] = out_of_time
        if s.time_budget_s:  # beside the trial counts: why fewer trials ran than the sweep asked for
            reached = "reached" if out_of_time else "not reached"
            parent.set_tags({"candle_ray.time_budget": f"{budget.text(s.time_budget_s)}, {reached}"})
        if summary["best"]:  # where its model is, for `candle-ray predict`
            trial = summary["best"]["trial_id"]
            summary["best"].update(run_id=sweep_tracker.child_run_id(trial),
                                   checkpoints=work_dir / "trials" / trial / "checkpoints")
        _finish_kind(experiment, s, sweep, store, entry, work_dir, parent, progress.trials or [],
                     sweep_tracker.child_run_id, summary, linear, echo)
        status = "KILLED" if summary["interrupted"] else ("FINISHED" if summary["succeeded"] else "FAILED")
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        callbacks.DriverCallbacks.release(sweep.name)
        budget.end(sweep.name)
        mlflow_callback.close()
        if status != "FINISHED":
            for child in sweep_tracker.stale_children():
                child.finish("KILLED")
        parent.finish(status)
    return summary, fit_s, linear


def _finish_kind(experiment, s: SweepSettings, sweep, store, entry, work_dir: Path, parent, trials, run_of,
                 summary: dict, linear: dict, echo) -> None:
    """Phase 5, by kind: an ensemble's pooled evaluation, a sweep's or ensemble's MLflow model, a cv's fold
    aggregate, a learning curve's curve. `run_of`: a trial's MLflow run id."""
    if s.kind == "ensemble" and summary["succeeded"]:
        _record_outcome(store, sweep.name, _evaluate_ensemble(parent, entry, work_dir, store, sweep.name, echo,
                                                              linear, s.baseline_share_fixed))
    best = summary["best"]
    if best and not summary["interrupted"] and (s.kind == "ensemble" or (s.kind == "sweep" and best.get("run_id"))):
        _log_model(s, parent, best, echo)
    if s.kind == "cv" and summary["succeeded"]:
        final = f"candle-ray train {experiment.path} --from-sweep {sweep.name}{_storage_option(store)} --all-rows"
        _record_outcome(store, sweep.name, _aggregate_folds(parent, trials, sweep.metric, sweep.mode,
                                                            entry.manifest["task"], echo, linear, run_of, final))
    if s.kind == "lc" and summary["succeeded"]:
        _learning_curve(parent, trials, sweep, entry, work_dir, store, echo, linear, run_of)


def _say_what_logging_left(mlflow_callback, sweep, store, echo) -> None:
    """Once the trials' MLflow calls are drained: whose weights --keep-checkpoints dropped, the trials no
    MLflow model was made for, and what could not be logged at all."""
    failure = mlflow_callback.close()
    if mlflow_callback.retention and mlflow_callback.retention.dropped:
        echo(f"weights kept for the {sweep.keep_checkpoints} best trials and the running ones; "
             f"{len(mlflow_callback.retention.dropped)} others' dropped (--keep-checkpoints)")
    if mlflow_callback.model_notes:  # e.g. a store that refused the models
        more = len(mlflow_callback.model_notes) - 1
        echo(mlflow_callback.model_notes[0] + (f" (and {more} more trials)" if more else ""))
    if failure:
        echo(f"warning: MLflow logging of some trials failed ({failure}); the sweep's results are in "
             f"{store.display(sweep.name)}")


def _retention(sweep, store, work_dir: Path) -> dict:
    """What the MLflow callback needs to delete weights: a finished trial's own folders' optimizer state
    (before its best is logged, which then reads less) and the copies it handed Tune (after), and
    (--keep-checkpoints) every file of the trials that cannot be picked."""
    from functools import partial

    from candle_ray.retention import Retention, drop_files, drop_tune_copies, slim_files

    pbt = sweep.scheduler == "pbt"  # clones a donor's newest Tune checkpoint at any time, finished or not
    needs = {"drop_tune_copies": partial(drop_tune_copies, store, sweep.name), "slim_files": partial(slim_files, work_dir),
             "tidy_at_end": pbt}
    if not sweep.keep_checkpoints:
        return needs
    # A PBT sweep drops weights only once it is over.
    return {**needs, "retention": Retention(sweep.keep_checkpoints, sweep.objectives, defer=pbt),
            "drop_files": partial(drop_files, store, sweep.name, work_dir)}


def _log_model(s: SweepSettings, parent, best: dict, echo) -> str | None:
    """The MLflow model of a sweep's best trial (on its child run) or of an ensemble's finished members (on
    the parent run), registered under --register. A sweep's trials hold their weights as their models (unless
    --no-model-per-trial): the best one's is registered as it is, not logged again; where it has none, the
    sweep's note said why, and only --register tries again (and fails in one line)."""
    from candle_ray import tracking

    uri = None
    if s.kind == "sweep" and s.model_per_trial:
        uri = tracking.logged_model(tracking.RunTracker(s.tracking_uri, parent.experiment_name, best["run_id"]),
                                    s.register)
        if uri is None and not s.register:
            return None
    uri = uri or _new_model(s, parent, best, echo)
    if uri:
        echo(f"MLflow model: {uri}" + ("" if s.register else " (register it with --register NAME)"))
    return uri


def _new_model(s: SweepSettings, parent, best: dict, echo) -> str | None:
    """Log the model of `_log_model` from the checkpoints (this node's, or the runs' artifacts)."""
    import tempfile

    from candle_ray import tracking

    with tempfile.TemporaryDirectory(prefix="candle-ray-model-") as scratch:
        try:
            if s.kind == "sweep":
                run = tracking.RunTracker(s.tracking_uri, parent.experiment_name, best["run_id"])
                folders = trial_folders(Path(best["checkpoints"]).parent) or \
                    tracking.run_checkpoints(s.tracking_uri, best["run_id"], Path(scratch))  # it ran on another node
            else:
                run, folders = parent, tracking.run_checkpoints(s.tracking_uri, parent.run_id, Path(scratch))
        except CandleRayError as exc:
            if s.register:
                raise
            echo(f"note: no MLflow model logged ({exc})")
            return None
        uri = tracking.log_model_or_warn(run, folders, s.register, warn=echo)
    if uri and s.kind == "sweep":  # the model holds the trial's weights now: one copy (tracking.log_weights)
        run.delete_artifacts(tracking.CHECKPOINTS)
    return uri


def _summarise(resolved: _Resolved, sweep, store, work_dir: Path, progress, parent, run_ids: dict, interrupted: bool,
               echo) -> dict:
    """Phase 4: the ranking (results.csv, best_config.json, the parent's best_* metrics) and the report."""
    summary = summarize(sweep, progress, interrupted, run_ids)
    _write_results(work_dir, store, summary, parent, sweep)
    log_keys = resolved.record.get("log_keys", ()) if resolved.record else log_scaled_keys(resolved.space)
    try:
        files = make_report(parent, work_dir, store, sweep.name, sweep.metric, sweep.mode, list(resolved.space), log_keys,
                            sweep.also, resolved.settings.kind)
        echo(f"report: {files[-1]}")
    except Exception as exc:  # pictures are a bonus: never fail a finished search over them
        echo(f"warning: the sweep report could not be drawn ({type(exc).__name__}: {exc})")
    return summary


def _echo_end(experiment, s: SweepSettings, sweep, store, entry, summary: dict, linear: dict, *, wall: float,
              fit_s: float, echo) -> int:
    """The count line, the best trial beside the baseline, and the exit code."""
    from candle_ray.report import MEMBERS

    counts, noun = summary["counts"], MEMBERS.get(s.kind, "trial")  # an ensemble's members, a cv's folds
    echo(f"{counted(summary['total'], noun)}: {counts.get('completed', 0)} completed, "
         f"{counts.get('failed', 0)} failed, "
         f"{counts.get('stopped early', 0)} stopped early"
         + (f", {summary['unfinished']} unfinished" if summary["unfinished"] else "")
         + f"; {wall:.1f}s wall ({fit_s:.1f}s in Tune), {summary['compute_s']:.1f}s of epochs")
    storage = _storage_option(store)
    if summary["front"]:
        for line in front_lines(summary["front"], sweep.objectives, sweep.name, summary["total"],
                                experiment.path, storage):
            echo(line)
    # A cv has no best trial: its folds score one configuration on different rows, and their mean is its
    # result; a learning curve's result is its curve. An ensemble's result is its pooled members; each of them
    # met the baseline above, its best member does not.
    if summary["best"] and s.kind not in ("cv", "lc"):
        hint = (f"; or `candle-ray ensemble {experiment.path} --from-sweep {sweep.name}{storage}`, which pools the "
                f"networks with the baseline") if s.kind == "sweep" else ""
        for line in best_lines(summary["best"], sweep.metric, sweep.mode, linear if s.kind == "sweep" else {},
                               entry.manifest["task"], hint, noun):
            echo(line)
    if summary["best"] and summary["best"].get("run_id") and s.kind == "sweep":
        best = summary["best"]
        echo(f"best trial's MLflow run {best['run_id']}, checkpoints {_checkpoints_of(best)}; predict with: "
             f"candle-ray predict {sweep.name} --data ROWS.csv --out predictions.tsv{storage}"
             + (" (--top K pools its K best trials)" if summary["total"] > 1 else ""))
        from candle_ray.data.joined_input import rows_hint

        if rows_line := rows_hint(entry):
            echo(rows_line)
    if summary.get("out_of_time"):
        from candle_ray import budget

        left = sweep.num_samples - summary["total"]
        echo(f"time budget {budget.text(s.time_budget_s)} reached: {summary['total']} of {sweep.num_samples} trials "
             f"started, the running ones stopped there (each worth its best epoch so far)"
             + (f"; candle-ray tune {experiment.path} --resume --name {sweep.name}{storage} runs the other {left}"
                if left > 0 else ""))
    if summary["interrupted"]:
        echo(f"interrupted: continue with candle-ray tune {experiment.path} --resume --name {sweep.name}{storage}")
        return 1
    return 0 if summary["succeeded"] else 1


def _storage_option(store) -> str:
    """` --storage URI` for the commands a sweep's end names, where the sweep is not under the default folder."""
    return "" if store.uri == str(Path("candle-ray-sweeps").resolve()) else f" --storage {store.uri}"


def front_lines(front: list[dict], objectives, name: str, total: int, experiment_path="EXPERIMENT", storage: str = "",
                shown: int = 20) -> list[str]:
    """The Pareto front at the end of a multi-objective sweep, numbered as --pick takes it; `storage`: the
    sweep's --storage option where it is not the default folder."""
    lines = [f"Pareto front over {', '.join(f'{m} ({d})' for m, d in objectives)}: {len(front)} of {total} trials, "
             f"best first by {objectives[0][0]}:"]
    for place, row in enumerate(front[:shown], 1):
        values = ", ".join(f"{m} {row[m]:.4g}" for m, _ in objectives)
        lines.append(f"  {place}. trial {row['trial_id']}: {values}" + (" (knee)" if row["knee"] else ""))
    if len(front) > shown:
        lines.append(f"  ... and {len(front) - shown} more (the pareto column of results.csv)")
    lines.append(f"pick one with --pick N or --pick knee: candle-ray predict {name} --pick knee{storage} ..., "
                 f"candle-ray ensemble {experiment_path} --from-sweep {name} --pick knee{storage}")
    return lines


def fit_baseline(entry, cv_assignment, folds: int | None, echo, parent=None, pooled: Path | None = None,
                 share: float = 0.0, trials_config: dict | None = None, searched=()) -> dict:
    """The linear baseline (logistic / ridge, candle_ray.baseline) on the trials' split (their folds
    with --cv), before the first trial; its metrics go on the parent run as baseline_<metric>, val_loss only
    where the trials' loss (from their base config and the keys their search varies) is the baseline's.
    With `pooled` (an ensemble's), its checkpoint is written there, to be pooled at `share`. A baseline that
    cannot be fitted never stops the sweep."""
    t0 = time.monotonic()
    try:
        from candle_ray import baseline

        fitted = baseline.fit(entry, cv_assignment=cv_assignment, folds=folds)
    except Exception as exc:  # a bonus: the sweep goes on without it
        echo(f"warning: no linear baseline ({type(exc).__name__}: {exc})")
        return {}
    if fitted is None:
        echo(f"linear baseline: none ({baseline.why_not(entry)})")
        return {}
    metrics = dict(fitted.metrics)
    if not baseline.shares_val_loss(trials_config or {}, entry.manifest["task"], searched):
        metrics.pop("val_loss", None)
    shown = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items())
    echo(f"linear baseline ({fitted.model}; {time.monotonic() - t0:.1f}s): {shown}"
         + ("" if "val_loss" in metrics else
            " (no val_loss: the trials' loss is not its cross-entropy or squared error)")
         + (f"; {fitted.note}" if fitted.note else ""))
    if pooled is not None and fitted.linear is not None:
        from candle_ray import checkpoint

        checkpoint.save(pooled, baseline.checkpoint_state(fitted, entry, share), kinds=("best",))
    if parent is not None:
        parent.log_epoch({"epoch": 0, **{f"baseline_{k}": v for k, v in metrics.items()}})
        parent.set_tags({"candle_ray.baseline": fitted.model + (f"; {fitted.note}" if fitted.note else "")})
    return metrics


def log_scaled_keys(space: dict) -> list[str]:
    """Search-space keys sampled on a log scale (the report draws their axes in log)."""
    from ray.tune.search.sample import Float, Integer, LogUniform

    from candle_ray.conditional import Conditional

    plain = {k: v.then if isinstance(v, Conditional) else v for k, v in space.items()}
    return [k for k, v in plain.items() if isinstance(v, (Float, Integer)) and isinstance(v.get_sampler(), LogUniform)]


def _checkpoints_of(best: dict) -> str:
    """Where the best trial's checkpoints are: its folder's, or its fold models' with `tune --cv`."""
    trial_dir = Path(best["checkpoints"]).parent
    folders = trial_folders(trial_dir)
    return str(best["checkpoints"]) if len(folders) < 2 else f"{trial_dir}/fold-*/checkpoints ({len(folders)} fold models)"


def fold_assignment(entry, cv: dict):
    """The fold of each train+val row (int8), the same on every resume: seeded, from the cached data."""
    from candle_ray.data import folds
    from candle_ray.data.spec import strata

    labels = folds.pooled_labels(entry)
    group_by = cv.get("group_by") or entry.manifest.get("group")  # a dataset's groups stay whole by default
    stratify = cv.get("stratify")
    if stratify is True and group_by:
        raise UsageError(f"dataset {entry.manifest['name']} keeps each {group_by} in one fold (its group column); "
                         f"--stratify would split them across folds: drop --stratify")
    by = strata(entry.manifest["task"], labels)
    if stratify == "auto":  # `tune --cv`, `cv` by default: classes (survival's events) keep their mix in every fold
        stratify = by is not None and not group_by
    return folds.assign(len(labels), int(cv["folds"]), seed=int(cv["seed"]),
                        labels=(labels if by is None else by) if stratify else None,
                        groups=folds.pooled_groups(entry, group_by) if group_by else None)


def _aggregate_folds(parent, trials, metric: str, mode: str, task: str, echo, linear: dict, run_of,
                     final: str = "") -> str | None:
    """Every metric's mean and standard deviation over the folds, on the parent run: at each fold's best epoch
    (`cv_mean_*`, `cv_std_*`: the fold models, their best checkpoints) and at the one epoch whose mean over
    the folds is best (`cv_epoch`, `cv_epoch_mean_*`, `cv_epoch_std_*`; summary.common_epoch), the estimate
    set against the linear baseline. `run_of`: a trial's MLflow run id, whose history holds its epochs;
    `final`: the command that trains the final model for that epoch. Returns the estimate as `candle-ray
    sweeps` lists it (`val_loss 1.775, ep 8`), None without one."""
    from candle_ray.summary import best_metrics, unpacked

    done = [t for t in trials if t.status == "TERMINATED" and t.last_result]
    finals = [{**unpacked(t.last_result), **best_metrics(t.last_result)} for t in done]
    keys = sorted({k for r in finals for k, v in r.items() if k.startswith(("val_", "loss", "accuracy"))
                   and isinstance(v, (int, float)) and not isinstance(v, bool)})
    summary = _spread("cv", finals, keys)
    epoch, histories = _common_epoch_of(parent, done, keys, metric, mode, run_of)
    if epoch is not None:
        at_epoch = [{k: h[k][epoch] for k in keys if epoch in h[k]} for h in histories]
        summary.update({"cv_epoch": float(epoch), "cv_epochs_run": float(min(max(h[metric]) for h in histories)),
                        **_spread("cv_epoch", at_epoch, keys)})
    parent.log_epoch({"epoch": 0, "cv_folds_finished": float(len(finals)), **summary})
    for line in _fold_lines(summary, len(finals), metric, mode, task, linear, final):
        echo(line)
    if f"cv_epoch_mean_{metric}" in summary:
        return f"{metric} {summary[f'cv_epoch_mean_{metric}']:.4g}, ep {int(summary['cv_epoch'])}"
    return f"{metric} {summary[f'cv_mean_{metric}']:.4g}" if f"cv_mean_{metric}" in summary else None


def _record_outcome(store, name: str, outcome: str | None) -> None:
    """A cv's estimate or an ensemble's pooled score in its sweep.json, where `candle-ray sweeps` lists it (a
    sweep's best trial comes from its results.csv)."""
    if outcome:
        store.write_sweep(name, {**store.read_sweep(name, f"no sweep named {name!r}"), "outcome": outcome})


def _common_epoch_of(parent, trials, keys, metric: str, mode: str, run_of) -> tuple[int | None, list[dict]]:
    """(summary.common_epoch of these trials' runs, their per-epoch histories of `keys` from MLflow), or
    (None, []) where a trial has no MLflow run."""
    from candle_ray import tracking
    from candle_ray.summary import common_epoch

    runs = [run_of(t.trial_id) for t in trials]
    histories = tracking.epoch_histories(parent, runs, keys) if all(runs) else []
    return common_epoch(histories, metric, mode), histories


def _spread(prefix: str, rows: list[dict], keys) -> dict:
    """{prefix_mean_<key>, prefix_std_<key>} over the rows that hold each key."""
    import numpy as np

    out = {}
    for key in keys:
        values = np.array([r[key] for r in rows if key in r], dtype=float)
        if len(values):
            out[f"{prefix}_mean_{key}"] = float(values.mean())
            out[f"{prefix}_std_{key}"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    return out


def _fold_lines(summary: dict, folds: int, metric: str, mode: str, task: str, linear: dict, final: str = "") -> list[str]:
    """What the end of a cv says: the folds' models, the one-epoch estimate, and the latter against the baseline."""
    from candle_ray.summary import comparison

    if f"cv_mean_{metric}" not in summary:
        return []
    lines = [f"cross-validation over {folds} folds: {metric} {summary[f'cv_mean_{metric}']:.4g} "
             f"± {summary[f'cv_std_{metric}']:.2g} (mean ± sd) at each fold's best epoch, its model's "
             f"(chosen on the rows it is scored on: optimistic)"]
    prefix, label, epochs = "cv_mean_", "cross-validated model", None
    if f"cv_epoch_mean_{metric}" in summary:
        epoch = int(summary["cv_epoch"])
        lines.append(f"at one epoch for every fold, epoch {epoch} (the best of the folds' mean curve; train a final "
                     f"model that long): {metric} {summary[f'cv_epoch_mean_{metric}']:.4g} "
                     f"± {summary[f'cv_epoch_std_{metric}']:.2g}")
        prefix, label = "cv_epoch_mean_", f"cross-validated model at epoch {epoch}"
        epochs = (epoch, int(summary["cv_epochs_run"]))
    means = {k[len(prefix):]: v for k, v in summary.items() if k.startswith(prefix)}
    lines += comparison(label, means, metric, mode, linear, task, epochs=epochs)
    if epochs and final:
        lines.append(f"final model: {final} (all train+val rows, {counted(epochs[0], 'epoch')})")
    return lines


def _learning_curve(parent, trials, sweep, entry, work_dir: Path, store, echo, linear: dict, run_of) -> None:
    """The runs' metric at each size's one epoch (_at_common_epochs) against their training rows
    (candle_ray.learning_curve), beside the linear baseline's on the same rows: printed, on the parent run as
    `lc_<metric>` (`_sd`, `lc_baseline_<metric>`) with the training rows (a grouped dataset's groups: _curve_size)
    as the step, so MLflow draws the curve, and as a picture in the sweep folder and on the parent run."""
    from candle_ray import learning_curve
    from candle_ray.data import subsample
    from candle_ray.summary import best_metrics

    metric = sweep.metric
    best = {id(t): best_metrics(t.last_result) for t in trials if t.status == "TERMINATED" and t.last_result}
    done = [t for t in trials if metric in best.get(id(t), {})]
    value = {id(t): best[id(t)][metric] for t in done}
    value.update(_at_common_epochs(parent, done, metric, sweep.mode, run_of))
    size, unit = _curve_size(entry)
    curve = learning_curve.points([(subsample.fraction(t.config), value[id(t)]) for t in done], size)
    law = learning_curve.fit(curve)
    base, base_law = _linear_curve(entry, done, metric, linear, echo, size)
    for i, point in enumerate(curve):
        parent.log_epoch({"epoch": point.rows, f"lc_{metric}": point.mean, f"lc_{metric}_sd": point.sd,
                          **({f"lc_baseline_{metric}": base[i].mean} if base else {})})
    if law is not None:
        parent.log_epoch({"epoch": 0, "lc_exponent": law.b, "lc_asymptote": law.c})
    for line in learning_curve.lines(curve, law, metric, sweep.mode, base, base_law, unit):
        echo(line)
    (work_dir / "lc").mkdir(exist_ok=True)
    path = learning_curve.plot(curve, law, metric, work_dir / "lc" / "learning_curve.png", base, base_law, unit)
    parent.log_artifact(path, "lc")
    store.upload(path, store.path(sweep.name, "lc", path.name))


def _at_common_epochs(parent, done, metric: str, mode: str, run_of) -> dict:
    """Each run's `metric` at its size's one epoch (summary.common_epoch over the replicas of its train_fraction),
    as a cv scores its folds: each run's own best epoch is chosen on the very rows it is scored on, which
    flatters most the noisy curves of the smallest shares. {id(trial): value}; none where MLflow lacks a run."""
    from candle_ray.data import subsample

    out = {}
    for share in {subsample.fraction(t.config) for t in done}:
        replicas = [t for t in done if subsample.fraction(t.config) == share]
        epoch, histories = _common_epoch_of(parent, replicas, [metric], metric, mode, run_of)
        if epoch is not None:
            out.update({id(t): h[metric][epoch] for t, h in zip(replicas, histories)})
    return out


def _curve_size(entry) -> tuple[int, str]:
    """What a learning curve's sizes count, and how many the train split holds: the groups of a dataset with a
    group column (each run trains on a share of them, subsample.chosen), else the rows."""
    import numpy as np

    from candle_ray.data.folds import train_groups

    groups = train_groups(entry, None)
    if groups is None:
        return int(entry.rows["train"]), "rows"
    return len(np.unique(groups)), f"{entry.manifest['group']} groups"


def _linear_curve(entry, done, metric: str, linear: dict, echo, size: int):
    """The linear baseline's learning curve on the runs' own rows, and its law; (None, None) where the sweep
    has no baseline for `metric` (--no-baseline, a loss that is not the baseline's), or it fails."""
    from candle_ray import baseline, learning_curve
    from candle_ray.data import subsample

    if metric not in linear:
        return None, None
    try:
        fitted = baseline.fit_shares(entry, [(subsample.fraction(t.config), int(t.config.get("rng_seed", 0)))
                                             for t in done])
    except Exception as exc:  # a bonus, as the sweep's own baseline
        echo(f"warning: no linear baseline curve ({type(exc).__name__}: {exc})")
        return None, None
    curve = learning_curve.points([(share, metrics[metric]) for share, metrics in fitted], size)
    return curve, learning_curve.fit(curve)


def _evaluate_ensemble(parent, entry, work_dir: Path, store, name: str, echo, linear: dict,
                       keep_baseline: bool = False) -> str | None:
    """Pool the finished members' best checkpoints (from their MLflow runs, wherever they trained) and the
    linear baseline's (fit_baseline's, when it was written; left out where the networks clearly beat it and
    `keep_baseline` is off) on the validation split; metrics and plots go on the parent run and into the sweep
    folder, and a pooled baseline's checkpoint on the parent run, where `predict` and the ensemble's MLflow
    model find it. Returns its headline score as `candle-ray sweeps` lists it (`pooled val_r2 0.3386`)."""
    import tempfile

    from candle_ray import ensemble, tracking

    own = [work_dir / BASELINE_DIR] if (work_dir / BASELINE_DIR / "best.json").exists() else []
    with tempfile.TemporaryDirectory(prefix="candle-ray-members-") as scratch:
        folders = tracking.run_checkpoints(parent.uri, parent.run_id, Path(scratch), baseline=False)
        metrics, files = ensemble.evaluate(folders + own, entry, work_dir / "uq", keep_baseline=keep_baseline)
    share = metrics.pop("ensemble_baseline_share")
    if share:
        for path in sorted(own[0].iterdir()):
            parent.log_artifact(path, tracking.BASELINE)
    parent.log_epoch({"epoch": 0, **metrics})
    for path in files:
        parent.log_artifact(path, "uq")
        store.upload(path, store.path(name, "uq", path.name))
    echo(_ensemble_line(metrics, share, bool(own)))
    from candle_ray.summary import comparison, headline

    task, pooled = entry.manifest["task"], {k.replace("ensemble_", ""): v for k, v in metrics.items()
                                            if k.startswith("ensemble_")}
    if not headline(task):
        return None
    for line in comparison("ensemble", pooled, headline(task), "max", linear, task):
        echo(line)
    return f"pooled {headline(task)} {pooled[headline(task)]:.4g}" if headline(task) in pooled else None


def _ensemble_line(metrics: dict, share: float, fitted: bool) -> str:
    """`ensemble of 5 and the linear baseline (share 0.5) on 17 validation rows: accuracy ...; the 5 networks
    alone: accuracy ...`."""
    from candle_ray.ensemble import BASELINE_SHARE, BEATEN_T

    members, rows = int(metrics["ensemble_members"]), int(metrics["ensemble_val_rows"])
    t = metrics.get("ensemble_baseline_paired_t")
    pooled = {k.replace("ensemble_val_", ""): v for k, v in metrics.items()
              if k not in ("ensemble_members", "ensemble_val_rows", "ensemble_baseline_paired_t")
              and not k.startswith("members_")}
    line = (f"ensemble of {members}" + (f" and the linear baseline (share {share:g})" if share else "")
            + f" on {rows} validation rows: " + ", ".join(f"{k} {v:.4g}" for k, v in pooled.items()))
    alone = {k[len("members_val_"):]: v for k, v in metrics.items() if k.startswith("members_val_")}
    if alone and share:
        line += f"; the {members} networks alone: " + ", ".join(f"{k} {v:.4g}" for k, v in alone.items())
    elif alone:
        line += (f" (the linear baseline is left out of the pool: the networks beat it on these rows, paired t "
                 f"{t:.1f} >= {BEATEN_T:g}; --baseline-share {BASELINE_SHARE:g} pools it anyway)")
    elif fitted:
        line += " (the linear baseline is not pooled: its head is not the networks')"
    return line


def make_report(parent, work_dir: Path, store, name: str, metric: str, mode: str, space_keys: list[str],
                log_keys=(), also=(), kind: str = "sweep") -> list[Path]:
    """Draw the sweep's pictures from its MLflow runs (the linear baseline from the parent's
    baseline_* metrics), keep them with the sweep and on its parent run."""
    from candle_ray import report, tracking

    # the sweep's objectives, whatever they are
    metrics = tuple(dict.fromkeys((*tracking.REPORTED_METRICS, metric, *(m for m, _ in also))))
    baseline = {k[len("baseline_"):]: v for k, v in parent.metrics().items() if k.startswith("baseline_")}
    rows = store.read_results(name)
    # A finished sweep's results.csv lists every trial at its best epoch: one file instead of MLflow's search
    # (~2.4 s per 1,000 runs here); a running sweep (or one from before results.csv had run ids) asks MLflow.
    trials = _report_trials(rows) if rows and "run_id" in rows[0] else tracking.sweep_trials(parent)
    tracking.read_curves(parent, trials, metric, mode, metrics)
    files = report.write_report(trials, sweep=name, metric=metric, mode=mode,
                                space_keys=space_keys, out=work_dir / "report", log_keys=log_keys, baseline=baseline,
                                also=also, kind=kind)
    for path in files:
        parent.log_artifact(path, "report")
        store.upload(path, store.path(name, "report", path.name))
    return files


_NOT_BEST = {"trial_id", "run_id", "status", "epochs", "best_epoch", "pareto", "knee"}


def _report_trials(rows: list[dict]) -> list[dict]:
    """results.csv's rows as the report's trials (tracking.sweep_trials' shape)."""
    def number(text: str):
        try:
            return float(text)
        except ValueError:
            return None

    return [{"trial_id": row["trial_id"], "run_id": row["run_id"], "status": row["status"], "history": {},
             **({"front": row["pareto"] == "1", "knee": row["knee"] == "1"} if row.get("pareto") else {}),
             "params": {k[len("config."):]: v for k, v in row.items() if k.startswith("config.")},
             "best": {k: v for k, text in row.items() if k not in _NOT_BEST and not k.startswith(("config.", "last_"))
                      and (v := number(text)) is not None}}
            for row in sorted(rows, key=lambda row: row["trial_id"])]  # as tracking.sweep_trials: ties go to the first


def report_command(storage: str, name: str, echo) -> list[Path]:
    """`candle-ray report SWEEP`: redraw a sweep's pictures (for a finished or a running sweep)."""
    from candle_ray import tracking
    from candle_ray.storage import Storage

    store = Storage.parse(storage)
    record = store.read_sweep(name, f"no sweep named {name!r}", "pass --storage where it ran")
    parent = tracking.RunTracker(record["tracking_uri"], "", record["parent_run_id"])
    sweep = record["sweep"]
    work_dir = store.work_dir(name)
    files = make_report(parent, work_dir, store, name, sweep["metric"], sweep["mode"], record["space_keys"],
                        record.get("log_keys", ()), sweep.get("also", ()), record.get("kind", "sweep"))
    echo(f"report: {files[-1]} ({len(files) - 1} pictures), attached to MLflow run {parent.run_id}")
    return files


def check_space(space: dict, config: dict, sets, experiment_name: str) -> None:
    if not space:
        raise UsageError(f"experiment {experiment_name!r} has an empty search space; add search_space keys "
                         f"or pass --space FILE")
    from candle_ray.experiment import OPTIONAL_KEYS, check_space_rules, check_switched_keys
    from candle_ray.lr_schedule import check_searched_schedules

    known = {*config, *OPTIONAL_KEYS}  # the objective's and schedules' keys are known on every experiment, set or not
    unknown = sorted(set(space) - known)
    if unknown:
        raise UsageError(f"search-space keys {unknown} are not in the experiment's config; "
                         f"known keys: {', '.join(sorted(known))}")
    check_space_rules(space)
    check_switched_keys(space, config)
    check_searched_schedules(space, config)
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


def summarize(sweep, progress, interrupted: bool = False, run_ids: dict | None = None) -> dict:
    """Counts, the best trial and one row per trial (best first), from Tune's trials as the driver saw
    them. A trial is worth its best epoch (candle_ray.summary): its row holds that epoch's metrics."""
    from candle_ray.summary import best_metrics, ranked_trials, trial_value
    from candle_ray.callbacks import trial_status

    trials = progress.trials or []
    rows, counts = [], {}
    order = ranked_trials(trials, sweep.metric, sweep.mode)
    for trial in order + [t for t in trials if t not in order]:  # trials with no value last
        status = trial_status(trial, sweep.max_epochs)
        counts[status] = counts.get(status, 0) + 1
        last = trial.last_result or {}
        rows.append({"trial_id": trial.trial_id, "run_id": (run_ids or {}).get(trial.trial_id, ""),
                     "status": status, "epochs": last.get("epoch", 0),
                     "best_epoch": last.get("best_epoch"), **best_metrics(last),
                     sweep.metric: trial_value(last, sweep.metric), f"last_{sweep.metric}": last.get(sweep.metric),
                     **{f"config.{k}": v for k, v in trial.config.items()}})
    best = None
    pick = next((t for t in order if t.status != "ERROR"), None)  # the first of the ranking that did not fail
    if pick is not None:
        best = {"trial_id": pick.trial_id, "value": trial_value(pick.last_result, sweep.metric),
                "epoch": pick.last_result.get("best_epoch"), "epochs_run": pick.last_result.get("epoch"),
                "metrics": best_metrics(pick.last_result), "config": pick.config}
    unfinished = sum(counts.get(s, 0) for s in ("running", "pending", "paused"))
    succeeded = counts.get("completed", 0) + counts.get("stopped early", 0)
    return {"rows": rows, "counts": counts, "best": best, "total": len(trials), "unfinished": unfinished,
            "interrupted": interrupted or unfinished > 0, "succeeded": succeeded > 0,
            "compute_s": sum(progress.epoch_seconds.values()), "front": _mark_front(rows, sweep.objectives)}


def _mark_front(rows: list[dict], objectives) -> list[dict]:
    """With several objectives: the rows on the Pareto front (best first), each row marked `pareto` (on the
    front) and `knee` (the front's knee, candle_ray.summary.knee). One objective: no front."""
    from candle_ray.summary import knee, pareto_front

    if len(objectives) < 2:
        return []
    modes = tuple(mode for _, mode in objectives)
    values = lambda row: tuple(row.get(m) for m, _ in objectives) if row["status"] != "failed" else None  # noqa: E731
    front = pareto_front(rows, values, modes)
    chosen = front[knee([values(r) for r in front], modes)] if front else None
    on_front = {id(r) for r in front}
    for row in rows:
        row["pareto"], row["knee"] = int(id(row) in on_front), int(row is chosen)
    return front


def _write_results(work_dir: Path, store, summary: dict, parent, sweep) -> None:
    """results.csv and best_config.json with the sweep and on the parent run."""
    rows = summary["rows"]
    first = ["trial_id", "status", "epochs", "best_epoch", sweep.metric, f"last_{sweep.metric}", "run_id",
             *(["pareto", "knee"] if len(sweep.objectives) > 1 else [])]
    columns = first + sorted({k for row in rows for k in row} - set(first), key=lambda k: (k.startswith("config."), k))
    path = work_dir / "results.csv"
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    files = [path]
    if summary["best"]:
        best = summary["best"]
        _write_json_atomic(work_dir / "best_config.json", best)
        files.append(work_dir / "best_config.json")
        # The best trial at its best epoch: the model its checkpoint holds.
        parent.log_epoch({"epoch": 0, **{f"best_{k}": v for k, v in best["metrics"].items()},
                          f"best_{sweep.metric}": best["value"]})
        parent.set_tags({"candle_ray.best_trial": best["trial_id"], "candle_ray.best_epoch": best["epoch"]})
    if summary["front"]:
        parent.log_epoch({"epoch": 0, "pareto_front_size": float(len(summary["front"]))})
        parent.set_tags({"candle_ray.knee_trial": next(r["trial_id"] for r in summary["front"] if r["knee"])})
    for file in files:
        parent.log_artifact(file)
        store.upload(file, store.path(sweep.name, file.name))
    counts = summary["counts"]
    parent.set_tags({"candle_ray.trials_completed": counts.get("completed", 0),
                     "candle_ray.trials_failed": counts.get("failed", 0),
                     "candle_ray.trials_stopped_early": counts.get("stopped early", 0)})
