"""The sweep driver's Tune callbacks: one MLflow child run per trial, and the live progress lines."""

from __future__ import annotations

import logging
import re
import tempfile
import time
from pathlib import Path

from ray.tune import Callback

from candle_ray import budget, checkpoint
from candle_ray.summary import PREFIX, best_metrics, counted, finite, ranked_trials, trial_value, unpacked
from candle_ray.trial import HYPERBAND_TIME


def _ended(trial, max_epochs: int) -> str:
    """How a trial that ended without error ended: all its epochs, or stopped before (scheduler,
    early stopping, timeout)."""
    epochs = int(trial.config.get("epochs", max_epochs))
    return "completed" if (trial.last_result or {}).get("epoch", 0) >= epochs else "stopped early"


def trial_status(trial, max_epochs: int) -> str:
    if trial.status == "ERROR":
        return "failed"
    if trial.status == "TERMINATED":
        return _ended(trial, max_epochs)
    return {"RUNNING": "running", "PENDING": "pending", "PAUSED": "paused"}.get(trial.status, trial.status.lower())


# A line that names its exception: "ValueError: ...", "ray.exceptions.ActorDiedError: ...".
_TYPED = re.compile(r"^[\w.]*(Error|Exception|Exit|Interrupt)\b")


def _error_line(trial) -> str:
    """The last line of the trial's newest error: its exception type and message. Tune writes a lost actor's
    error as its message alone ("The actor died because its node has died..."), so the type comes from the
    pickled exception Tune keeps beside it."""
    try:
        text = Path(trial.error_file).read_text() if trial.error_file else ""
    except OSError:
        text = ""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    last = lines[-1] if lines else "trial failed"
    if lines and not _TYPED.match(last) and (name := _error_type(trial)):
        last = f"{name}: {last}"
    return last[:5000]


def _error_type(trial) -> str | None:
    """The class name of the trial's newest error from Tune's pickle of it (Tune's own file, which Tune loads
    too; cloudpickle writes what plain pickle reads), or None."""
    import pickle

    path = getattr(trial, "pickled_error_file", None)
    try:
        with open(path, "rb") as f:
            return type(pickle.load(f)).__name__
    except Exception:  # no pickle, or one this process cannot load: the message alone then
        return None


# This driver process's callbacks, by sweep name (see DriverCallbacks).
_LIVE: dict[str, list] = {}


class DriverCallbacks(Callback):
    """The one callback Tune holds: a sweep's name, forwarding each event to the callbacks this driver
    process registered under it. Tune pickles its callbacks into the sweep's state, and a restored
    Tuner brings those back (its public API takes no new ones); what comes back is this stand-in, so
    a resumed sweep's events reach the resumed driver's own MLflow client and live output."""

    def __init__(self, name: str, callbacks: list):
        self.name = name
        _LIVE[name] = list(callbacks)

    def __getstate__(self):
        return {"name": self.name}

    @staticmethod
    def release(name: str) -> None:
        _LIVE.pop(name, None)


def _forward(hook: str):
    def forward(self, *args, **kwargs):
        for callback in _LIVE.get(self.name, ()):
            getattr(callback, hook)(*args, **kwargs)

    forward.__name__ = hook
    return forward


for _hook in ("setup", "on_step_begin", "on_step_end", "on_trial_start", "on_trial_restore", "on_trial_save",
              "on_trial_result", "on_trial_complete", "on_trial_recover", "on_trial_error", "on_checkpoint",
              "on_experiment_end"):
    setattr(DriverCallbacks, _hook, _forward(_hook))


class ForgetEndedTrialStatistics(Callback):
    """Drops Tune's running statistics of a trial that has ended (its `metric_analysis`: max, min, mean
    and last-5/last-10 means of every number it reported, with two deques per number). Nothing in a
    sweep reads them once the trial is over: the best trial is candle_ray.summary's, from `last_result`,
    which stays. They were the largest share of the driver's memory per trial (measured with
    tracemalloc over trials 100-400 of a smoke sweep: 25.7 KB of 54.4 KB), and Tune re-encodes them
    into every experiment-state snapshot."""

    @staticmethod
    def _forget(trial) -> None:
        trial.run_metadata.metric_analysis = {}  # attribute assignment also drops Tune's cached JSON
        trial.run_metadata.metric_n_steps = {}

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._forget(trial)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._forget(trial)


def newest_best(folders: list[Path | None]) -> Path | None:
    """Of checkpoint folders holding the same trial's best checkpoint (Tune's copy, the trial's own), the
    one whose best is from the latest epoch: a best only ever moves forward in a trial."""
    found = []
    for folder in folders:
        best = checkpoint.pointer(folder, "best") if folder is not None and folder.is_dir() else None
        if best and (folder / best["file"]).exists():
            found.append((best["epoch"], folder))
    return max(found, key=lambda pair: pair[0])[1] if found else None


class MLflowSweepCallback(Callback):
    """One MLflow child run per trial under the sweep's parent: params, per-epoch metrics (step = epoch),
    the best checkpoint, and FINISHED / FAILED (with the error) / KILLED at the end.

    MLflow calls run in order on one background thread: Tune's event loop, which every trial's
    results pass through, never waits for the tracking store. While the store does not answer (a
    restarted server), the calls queue up here and each is retried (tracking.call_with_retry, bounded
    by CANDLE_RAY_MLFLOW_RETRY_S per outage); what still fails is listed by `close()`, never dropped
    silently. `close()` drains the queue.
    """

    def __init__(self, sweep_tracker, fixed_params: dict, max_epochs: int, trial_tags: dict, work_dir: Path,
                 dataset: dict | None = None, model_per_trial: bool = False, retention=None, drop_files=None,
                 drop_tune_copies=None, slim_files=None, tidy_at_end: bool = False):
        self.sweep, self.fixed, self.max_epochs, self.trial_tags = sweep_tracker, fixed_params, max_epochs, trial_tags
        self.work_dir, self.dataset = work_dir, dataset  # the MLflow dataset every trial trains on
        self.model_per_trial = model_per_trial  # a finished trial's weights as its MLflow model, not plain files
        # --keep-checkpoints: which finished trials keep their weights (candle_ray.retention), and how the
        # files of one that does not are deleted; only the worker thread touches either.
        self.retention, self.drop_files, self._seeded = retention, drop_files, retention is None
        self.drop_tune_copies = drop_tune_copies  # a finished trial's Tune checkpoints, once its best is logged
        self.slim_files = slim_files  # its own folders' optimizer state and newer epochs, before its best is logged
        # PBT: a running trial may clone any trial's newest Tune checkpoint, so the two above wait for the end
        self.tidy_at_end = tidy_at_end
        self.model_notes: list[str] = []  # why a trial's model was not logged
        self.logged: dict[str, set[int]] = {}  # only the worker thread touches it
        self.failure: str | None = None
        self.unlogged: list[str] = []  # what could not be logged, in order
        self._queue = self._thread = None

    def __getstate__(self):
        return {**self.__dict__, "logged": {}, "unlogged": [], "model_notes": [], "_queue": None, "_thread": None}

    def _submit(self, what: str, fn, *args) -> None:
        if self._thread is None:
            import queue
            import threading

            self._queue = queue.Queue()
            self._thread = threading.Thread(target=self._work, name="candle-ray-mlflow", daemon=True)
            self._thread.start()
        self._queue.put((what, fn, args))

    def _work(self) -> None:
        while (item := self._queue.get()) is not None:
            what, fn, args = item
            try:
                fn(*args)
            except Exception as exc:  # tracking trouble must not stop the search; reported by close()
                self.failure = self.failure or f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                self.unlogged.append(what)

    def close(self) -> str | None:
        """Wait for every queued MLflow call; return None, or the first failure and what was not logged."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None
        if not self.failure:
            return None
        shown = ", ".join(self.unlogged[:20]) + (f" and {len(self.unlogged) - 20} more" if len(self.unlogged) > 20 else "")
        return f"{self.failure}; not logged: {shown}"

    def _trial_dir(self, trial_id: str) -> Path:
        return Path(self.work_dir) / "trials" / trial_id

    def _child(self, trial_id: str, config: dict):
        child = self.sweep.child(trial_id, trial_id, {**self.fixed, **config},
                                 {**self.trial_tags, "candle_ray.run_dir": self._trial_dir(trial_id)})
        if trial_id not in self.logged:  # a resumed sweep: the epochs this child already has
            self.logged[trial_id] = child.logged_steps("val_loss") if child.reopened else set()
            if self.dataset and not child.reopened:
                child.log_dataset(self.dataset)
        return child

    def _log(self, trial_id: str, config: dict, result: dict) -> None:
        child, epoch = self._child(trial_id, config), int(result.get("epoch", 0))
        if epoch and epoch not in self.logged[trial_id]:
            # The epoch's own metrics; the best-epoch copies every result carries are logged once, at the end.
            child.log_epoch({k: v for k, v in unpacked(result).items() if not k.startswith(PREFIX) and k != HYPERBAND_TIME})
            self.logged[trial_id].add(epoch)

    def _end(self, trial_id: str, config: dict, status: str, tags: dict, tune_checkpoint, last: dict) -> None:
        child = self._child(trial_id, config)
        drops = self.retention.finished(trial_id, last, status == "FAILED") if self.retention else []
        best = best_metrics(last)
        if trial_id in drops:  # it can never be picked: its weights are not worth a copy in MLflow
            tags = {**tags, **self._dropped_tag()}
        else:
            if status == "FINISHED" and self.slim_files and not self.tidy_at_end:  # first: logging then reads less
                self.slim_files(trial_id)
            self._log_best(child, trial_id, status, tune_checkpoint)
        if best and last.get("best_epoch"):  # the trial's worth: its best epoch (candle_ray.summary)
            child.log_epoch({"epoch": last["best_epoch"], **{PREFIX + k: v for k, v in best.items()}},
                            tags={**tags, "candle_ray.best_epoch": last["best_epoch"]})
        else:
            child.set_tags(tags)
        child.finish(status)
        self._drop(drops, logged_now=trial_id)
        if status == "FINISHED" and trial_id not in drops and self.drop_tune_copies and not self.tidy_at_end:
            # its best is in MLflow now
            self.drop_tune_copies(trial_id)

    def _log_best(self, child, trial_id: str, status: str, tune_checkpoint) -> None:
        """The trial's best checkpoint (one per fold with `tune --cv`) in its run: a finished trial's as its
        MLflow model (a cv trial's pools its folds), stored once (tracking.log_weights)."""
        from candle_ray import tracking

        with tempfile.TemporaryDirectory(prefix="candle-ray-best-") as tmp:
            # The trial's last Tune checkpoint is in the sweep's storage (a shared folder or a bucket), so
            # it is there wherever the trial ran; the trial's own folder, when this driver can see it, may
            # hold a newer best (trials hand Tune a checkpoint only every --checkpoint-every seconds).
            handed = Path(tune_checkpoint.to_directory(tmp)) if tune_checkpoint is not None else None
            own = self._trial_dir(trial_id)
            folds = sorted({p.name for root in (handed, own) if root is not None and root.is_dir()
                            for p in root.iterdir() if p.is_dir() and p.name.startswith("fold-")})
            found = {fold: newest_best([(handed / fold) if handed else None, own / fold / "checkpoints"])
                     for fold in folds or [""]}
            found = {fold: folder for fold, folder in found.items() if folder is not None}
            if found:
                tracking.log_weights(child, found, self.model_per_trial and status == "FINISHED",
                                     warn=self.model_notes.append)

    # ------------------------------------------------------------------ --keep-checkpoints

    def _dropped_tag(self) -> dict:
        from candle_ray.retention import WEIGHTS_TAG

        return {WEIGHTS_TAG: f"dropped: not among the sweep's {self.retention.keep} best (--keep-checkpoints)"}

    def _drop(self, trial_ids: list[str], logged_now: str | None = None) -> None:
        """Delete the weights of trials that can no longer be picked: their files, their MLflow copies."""
        from candle_ray import tracking

        for trial_id in trial_ids:
            self.drop_files(trial_id)
            if trial_id == logged_now:
                continue  # never uploaded; already tagged
            run_id = self.sweep.child_run_id(trial_id)
            if run_id:
                run = self.sweep.children.get(trial_id) or tracking.RunTracker(self.sweep.parent.uri, "", run_id)
                run.delete_artifacts(tracking.CHECKPOINTS, tracking.MODEL_ARTIFACT)  # whichever log_weights wrote
                run.set_tags(self._dropped_tag())

    def _seed(self, finished: list[tuple]) -> None:
        """A resumed sweep: the trials that finished before it, as retention saw them (dropped ones stay so)."""
        from candle_ray.retention import WEIGHTS_TAG

        self._seeded = True
        # a fresh sweep's first trial to end has nothing before it: no query
        gone = self.sweep.tagged_children(WEIGHTS_TAG, "dropped") if finished else set()
        self.retention.dropped |= gone
        for trial_id, last, failed in finished:
            if trial_id not in gone:
                self._drop(self.retention.finished(trial_id, last, failed))
            self.retention.seen.add(trial_id)

    def _at_end(self, finished: list[tuple]) -> None:
        if not self._seeded:
            self._seed(finished)
        self._drop(self.retention.at_end())

    def _finished_before(self, trials, this=None) -> list[tuple]:
        return [(t.trial_id, dict(t.last_result or {}), t.status == "ERROR") for t in trials
                if t.status in ("TERMINATED", "ERROR") and t is not this]

    def _seed_once(self, trials, trial) -> None:
        if not self._seeded:  # the first trial to end in this driver: what ended before it counts too
            self._submit("trials finished before a resume", self._seed, self._finished_before(trials, trial))
            self._seeded = True

    def end_retention(self, trials) -> None:
        """After the sweep: drop what no longer has a chance (a PBT sweep's donors, trials a resume found);
        a PBT sweep whose every trial ended (nothing can clone a checkpoint now, and no resume restores one)
        slims its finished trials' folders and deletes their Tune copies, as other sweeps do trial by trial:
        12 epochs of 4 GDSC trials with --cv 3 left 650 MB of Tune copies."""
        if self.retention is not None:
            self._submit("dropping weights outside the best", self._at_end, self._finished_before(trials))
        if self.tidy_at_end and trials and all(t.status in ("TERMINATED", "ERROR") for t in trials):
            self._submit("tidying the finished trials' checkpoints", self._tidy,
                         [t.trial_id for t in trials if t.status == "TERMINATED"])

    def _tidy(self, trial_ids: list[str]) -> None:
        dropped = self.retention.dropped if self.retention is not None else set()
        for trial_id in trial_ids:
            if trial_id not in dropped:
                self.slim_files(trial_id)
                self.drop_tune_copies(trial_id)

    def on_trial_start(self, iteration, trials, trial, **info):
        self._submit(f"trial {trial.trial_id}'s run", self._child, trial.trial_id, dict(trial.config))

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self._submit(f"trial {trial.trial_id} epoch {result.get('epoch')}", self._log, trial.trial_id,
                     dict(trial.config), dict(result))

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._seed_once(trials, trial)
        self._submit(f"trial {trial.trial_id}'s end", self._end, trial.trial_id, dict(trial.config), "FINISHED",
                     {"candle_ray.trial_status": _ended(trial, self.max_epochs)}, trial.checkpoint,
                     dict(trial.last_result or {}))

    def on_trial_error(self, iteration, trials, trial, **info):
        self._seed_once(trials, trial)
        self._submit(f"trial {trial.trial_id}'s end", self._end, trial.trial_id, dict(trial.config), "FAILED",
                     {"candle_ray.trial_status": "failed", "candle_ray.error": _error_line(trial)}, trial.checkpoint,
                     dict(trial.last_result or {}))


def _short(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return " ".join(map(str, value)) or "[]"  # e.g. dense=[]: no hidden layer, a linear model
    return str(value)


class _LostWorkerTraceback(logging.Filter):
    """Drops Tune's traceback of a trial whose process or node was lost (a RayActorError: the worker died,
    not the trial's code; 20 lines per loss on a batch allocation); the live view says it in one line
    instead (on_trial_recover, on_trial_error). A trial whose own code raised keeps Tune's traceback: that
    is where its bug shows."""

    def filter(self, record: logging.LogRecord) -> bool:
        from ray.exceptions import RayActorError

        lost = record.exc_info and isinstance(record.exc_info[1], RayActorError)
        return not (lost and record.getMessage().startswith("Trial task failed"))


def _quiet_lost_workers() -> None:
    tune_log = logging.getLogger("ray.tune.execution.tune_controller")
    if not any(isinstance(f, _LostWorkerTraceback) for f in tune_log.filters):
        tune_log.addFilter(_LostWorkerTraceback())


class ProgressCallback(Callback):
    """The live view: a status line with counts and the best result so far, and a line per finished trial.
    A cv's folds or an ensemble's members (`noun`: "fold", "member") are not rivals: their line gives the
    spread of their values so far instead of a best one, as the end of the run and its report do."""

    def __init__(self, metric: str, mode: str, max_epochs: int, echo, every_s: float = 10.0, noun: str | None = None,
                 sweep: str | None = None):
        self.metric, self.mode, self.max_epochs, self.echo, self.every_s = metric, mode, max_epochs, echo, every_s
        self.noun, self.sweep = noun, sweep  # the sweep's name: its --time-budget (candle_ray.budget)
        self.t0 = time.monotonic()
        self.last_line = 0.0
        self.trials = None  # Tune's trials as last seen: the sweep's summary reads them
        self.epoch_seconds: dict[tuple[str, int], float] = {}  # (trial, epoch) -> seconds: the sweep's compute
        _quiet_lost_workers()

    def __getstate__(self):
        return {**self.__dict__, "echo": print, "trials": None, "epoch_seconds": {}}

    def best(self, trials):
        """(value, trial) of the best trial so far by its best epoch (candle_ray.summary), or None."""
        pick = next(iter(ranked_trials([t for t in trials if t.status != "ERROR"], self.metric, self.mode)), None)
        return None if pick is None else (trial_value(pick.last_result, self.metric), pick)

    def table(self, trials) -> str:
        counts: dict[str, int] = {}
        for t in trials:
            s = trial_status(t, self.max_epochs)
            counts[s] = counts.get(s, 0) + 1
        order = ("running", "pending", "completed", "stopped early", "failed", "paused")
        parts = [f"{name} {counts.get(name, 0)}" for name in order if counts.get(name) or name in order[:5]]
        left = budget.left(self.sweep)
        return (f"[{time.monotonic() - self.t0:7.1f}s] {' | '.join(parts)} | {self._best_text(trials)}"
                + (f" | {left}" if left else ""))

    def _best_text(self, trials) -> str:
        if self.noun:
            values = [v for t in trials if t.status != "ERROR" and finite(v := trial_value(t.last_result, self.metric))]
            return (f"{self.metric} of the {self.noun}s {min(values):.4g} to {max(values):.4g}" if values
                    else f"{self.metric} of the {self.noun}s -")
        best = self.best(trials)
        return f"best {self.metric} {best[0]:.4g} ({best[1].trial_id}, epoch {best[1].last_result.get('best_epoch')})" \
            if best else f"best {self.metric} -"

    def running_rows(self, trials, limit: int = 8) -> list[str]:
        """One line per running trial: its epoch, its latest metric and its configuration."""
        running = [t for t in trials if t.status == "RUNNING"]
        rows = []
        for t in running[:limit]:
            last = t.last_result or {}
            config = "  ".join(f"{k}={_short(v)}" for k, v in t.config.items())
            rows.append(f"    {t.trial_id}  epoch {last.get('epoch', 0):>3}/{t.config.get('epochs', self.max_epochs)}  "
                        f"{self.scored(last)}  {config}" if isinstance(last.get(self.metric), float) else
                        f"    {t.trial_id}  starting  {config}")
        if len(running) > limit:
            rows.append(f"    ... and {len(running) - limit} more running")
        return rows

    def on_step_end(self, iteration, trials, **info):
        self.trials = trials
        if time.monotonic() - self.last_line >= self.every_s:
            self.last_line = time.monotonic()
            self.echo("\n".join([self.table(trials), *self.running_rows(trials)]))

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.epoch_seconds[(trial.trial_id, int(result.get("epoch", 0)))] = float(unpacked(result).get("epoch_time_s", 0.0))

    def scored(self, last: dict) -> str:
        """A trial's latest metric and its best epoch so far (the trial's worth), with R² for regressors."""
        last = unpacked(last)
        value, best = last.get(self.metric), trial_value(last, self.metric)
        text = f"{self.metric} {_short(value)}" if isinstance(value, float) else f"{self.metric} -"
        if isinstance(best, float):
            text += f" (best {best:.4g} at epoch {last.get('best_epoch', last.get('epoch', 0))})"
        r2 = last.get(PREFIX + "val_r2", last.get("val_r2")) if self.metric != "val_r2" else None
        return text + (f", val_r2 {r2:.3g}" if isinstance(r2, float) else "")

    def _row(self, trial, what: str):
        last = trial.last_result or {}
        config = "  ".join(f"{k}={_short(v)}" for k, v in trial.config.items())
        self.echo(f"  trial {trial.trial_id} {what} after {counted(last.get('epoch', 0), 'epoch')}: "
                  f"{self.scored(last)}  {config}")

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._row(trial, _ended(trial, self.max_epochs))

    def on_trial_recover(self, iteration, trials, trial, **info):
        epochs = counted((trial.last_result or {}).get("epoch", 0), "epoch")
        self.echo(f"  trial {trial.trial_id} failed after {epochs} "
                  f"({_error_line(trial)[:200]}); retrying from its last checkpoint "
                  f"(failure {trial.num_failures} of {trial.max_failures} allowed by --max-failures)")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._row(trial, f"failed ({_error_line(trial)[:200]})")

    def on_experiment_end(self, trials, **info):
        self.trials = trials
        self.echo(self.table(trials))
