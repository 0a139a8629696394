"""MLflow tracking: the only module that imports mlflow.

One MLflow run per `candle-ray train`, and per sweep one parent run with one child run per trial:
flat params, per-epoch metrics (step = epoch), tags, artifacts. The default tracking URI is a SQLite
file in the working directory, so `mlflow ui` started there shows every run.

A tracking server that stops answering (restarted, overloaded) does not lose metrics: every client
call retries with backoff while the outage lasts up to CANDLE_RAY_MLFLOW_RETRY_S (default 300 s), and
a call that still fails raises `TrackingUnavailable`, naming what was not logged.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import threading
import time
from pathlib import Path

from candle_ray import __version__
from candle_ray.errors import CandleRayError, CheckpointError, UsageError

# Metrics that are bookkeeping, not measurements.
_NOT_METRICS = {"epoch", "replayed", "stop_reason", "best_epoch"}


def default_tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def check_uri(uri: str) -> str:
    if uri.startswith("file:") or (("://" not in uri) and not uri.startswith("databricks")):
        raise UsageError(f"tracking URI {uri!r} is MLflow's file store, which MLflow >= 3.13 refuses; "
                         f"use sqlite:///mlflow.db or http://host:port")
    return uri


def git_commit(path: Path) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def dataset_input(entry) -> dict:
    """A cache entry as an MLflow dataset: its digest is the entry's fingerprint, its source the files it was
    prepared from with their checksums, its profile the rows per split (plain data: it travels to Tune)."""
    manifest = entry.manifest
    files = {role: {k: v for k, v in src.items() if k in ("url", "sha256", "bytes")} if isinstance(src, dict) else src
             for role, src in (manifest.get("sources") or {}).items()}
    return {"name": entry.name, "digest": entry.fingerprint, "source_type": "candle-ray-cache",
            "source": json.dumps({"entry": str(entry.path), "files": files}, sort_keys=True, default=str),
            "profile": json.dumps({"rows": entry.rows, "num_features": entry.num_features, "task": manifest.get("task"),
                                   "synthetic": entry.synthetic}, sort_keys=True)}


def flatten_params(config: dict, prefix: str = "") -> dict[str, str]:
    """Flat string params: lists as CANDLE writes them ("128 20 1"), dicts as dotted keys."""
    flat = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten_params(value, f"{name}."))
        elif isinstance(value, (list, tuple)):
            flat[name] = " ".join(str(v) for v in value)
        else:
            flat[name] = str(value)
    return flat


RETRY_ENV = "CANDLE_RAY_MLFLOW_RETRY_S"
_log = logging.getLogger("candle_ray.tracking")
_outages: dict[str, float] = {}  # tracking URI -> when its calls started failing (monotonic)
_answered: set[str] = set()  # URIs that have answered in this process
_outage_lock = threading.Lock()
_calls = None  # the executor whose thread runs the main thread's MLflow calls: see _whole
_calls_lock = threading.Lock()
FIRST_CONTACT_S = 10.0  # a store never reached (a wrong --tracking-uri) fails after this, not the full budget


class TrackingUnavailable(CandleRayError):
    """The tracking store did not answer for the whole retry budget."""


def retry_budget_s() -> float:
    return float(os.environ.get(RETRY_ENV, "300"))


def _permanent(exc: Exception) -> bool:
    """A refusal that no retry changes: a 4xx answer (bad request, no such run...), not 408/429, or a local
    file to upload that is gone (retried, it held a Ctrl-C'd driver for the whole budget)."""
    from mlflow.exceptions import MlflowException

    if isinstance(exc, MlflowException):
        status = exc.get_http_status_code()
        return 400 <= status < 500 and status not in (408, 429)
    return isinstance(exc, (TypeError, ValueError, KeyError, FileNotFoundError))


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:200] if text else ''}"


def _whole(fn, *args, **kwargs):
    """`fn(*args, **kwargs)`; called from the main thread, it runs on a helper thread, so that Ctrl-C (a
    KeyboardInterrupt, raised only in the main thread) stops the wait, never the call. Cut inside SQLAlchemy,
    a call left its SQLite connection holding the store's write lock, and every later call of the process
    (ending the run as KILLED) waited out "database is locked" until the process was killed."""
    global _calls
    if threading.current_thread() is not threading.main_thread():
        return fn(*args, **kwargs)
    with _calls_lock:
        if _calls is None:
            from concurrent.futures import ThreadPoolExecutor

            _calls = ThreadPoolExecutor(max_workers=1, thread_name_prefix="candle-ray-mlflow-call")
    return _calls.submit(fn, *args, **kwargs).result()


def _forget_the_call_thread() -> None:
    global _calls
    _calls = None


os.register_at_fork(after_in_child=_forget_the_call_thread)  # a forked child has the executor, not its thread


def call_with_retry(uri: str, fn, *args, what: str = "an MLflow call", **kwargs):
    """`fn(*args, **kwargs)`, retried with backoff (0.5 s doubling to 10 s) while `uri` is unreachable.

    The budget counts from the start of the outage, shared by every call to the same URI: once a call
    has waited it out, later calls try once until one succeeds. A store that has never answered in this
    process (a wrong URI) gets FIRST_CONTACT_S. Waiting is bounded; nothing is dropped silently: the
    final failure raises TrackingUnavailable naming `what`."""
    delay = 0.5
    while True:
        try:
            result = _whole(fn, *args, **kwargs)
        except Exception as exc:
            if _permanent(exc):
                raise
            now = time.monotonic()
            budget = retry_budget_s() if uri in _answered else min(retry_budget_s(), FIRST_CONTACT_S)
            with _outage_lock:
                since = _outages.setdefault(uri, now)
            if since == now:
                _log.warning("MLflow at %s is not answering (%s); retrying for up to %.0fs", uri, _first_line(exc), budget)
            if now - since >= budget:
                raise TrackingUnavailable(f"MLflow at {uri} did not answer for {now - since:.0f}s ({_first_line(exc)}); "
                                          f"{what} could not be logged (raise {RETRY_ENV} to wait longer)") from None
            time.sleep(min(delay, budget - (now - since)))
            delay = min(delay * 2, 10.0)
            continue
        _answered.add(uri)
        if uri in _outages:
            with _outage_lock:
                since = _outages.pop(uri, None)
            if since is not None:
                _log.warning("MLflow at %s answers again after %.1fs", uri, time.monotonic() - since)
        return result


class _RetryingClient:
    """An MlflowClient whose every method goes through `call_with_retry`."""

    def __init__(self, client, uri: str):
        self._client, self._uri = client, uri

    def __getattr__(self, name):
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr

        def call(*args, **kwargs):
            return call_with_retry(self._uri, attr, *args, what=f"MLflow {name}", **kwargs)

        return call


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    # A new SQLite store announces its schema set-up at INFO: not news for the user.
    for name in ("mlflow.store.db.utils", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # MLflow's own HTTP retries (7, backoff 2 s: ~4 min per call) would hide an outage inside one call;
    # a few quick ones, then ours, which log, share one budget per server and say what was lost.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "60")
    if not uri.startswith("sqlite:///"):
        return _RetryingClient(MlflowClient(tracking_uri=uri), uri)
    # Two processes creating the same new SQLite store race through its schema migrations
    # ("table ... already exists"): the store is opened, and set up, under a file lock.
    import fcntl

    with open(uri[len("sqlite:///"):] + ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        client = MlflowClient(tracking_uri=uri)
        _whole(client.search_experiments, max_results=1)
    return _RetryingClient(client, uri)


def _unusable(uri: str, exc: Exception) -> CandleRayError:
    return CandleRayError(f"MLflow at {uri} is not usable ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0][:200] if str(exc) else ''}); check --tracking-uri")


def _run_tags(tags: dict) -> list:
    from mlflow.entities import RunTag

    return [RunTag(key, str(value)) for key, value in tags.items()]


class RunTracker:
    """One MLflow run: created (or reopened by id) and ended once. Pickles as (uri, experiment, run id),
    so Ray Tune can keep it in its experiment state and a resumed sweep finds the same run."""

    def __init__(self, tracking_uri: str, experiment_name: str, run_id: str | None = None, client=None,
                 experiment_id: str | None = None):
        self.uri = check_uri(tracking_uri)
        self.experiment_name = experiment_name
        self.run_id = run_id
        self.reopened = False  # set when a resumed sweep continues this run
        self._client = client  # another tracker's, for the same store; made on first use otherwise
        self._experiment_id = experiment_id  # else asked of MLflow once: a sweep asks it per child and per query

    @property
    def client(self):
        if self._client is None:
            self._client = _client(self.uri)
        return self._client

    def __getstate__(self):
        return {**self.__dict__, "_client": None}

    def experiment_id(self) -> str:
        if self._experiment_id is None:
            self._experiment_id = self._find_experiment_id()
        return self._experiment_id

    def _find_experiment_id(self) -> str:
        if self.run_id is not None:  # an existing run knows its experiment
            return self.client.get_run(self.run_id).info.experiment_id
        exp = self.client.get_experiment_by_name(self.experiment_name)
        if exp:
            return exp.experiment_id
        try:
            return self.client.create_experiment(self.experiment_name)
        except Exception:  # another process created it in between
            exp = self.client.get_experiment_by_name(self.experiment_name)
            if exp is None:
                raise
            return exp.experiment_id

    def start(self, run_name: str, params: dict, tags: dict, existing=None) -> str:
        """Create the run. `existing()` (run ids) makes a retried creation look first for the run that an
        attempt whose answer was lost may have created, instead of making a second one."""
        attempts = []

        def create() -> str:
            if attempts and existing is not None:
                found = existing()
                if found:
                    return found[0]
            attempts.append(1)
            return self.client._client.create_run(self.experiment_id(), run_name=run_name, tags={
                "candle_ray.version": __version__,
                **{k: str(v) for k, v in tags.items() if v is not None}}).info.run_id

        try:
            self.run_id = call_with_retry(self.uri, create, what=f"the creation of run {run_name!r}")
        except Exception as exc:
            raise _unusable(self.uri, exc) from None
        self._log_params(params, have={})  # a new run has none yet: no need to ask
        return self.run_id

    def reopen(self) -> None:
        """Mark a run of an interrupted sweep RUNNING again: it is being continued, not replaced."""
        try:
            self.client.update_run(self.run_id, status="RUNNING")
        except Exception as exc:
            raise _unusable(self.uri, exc) from None
        self.reopened = True

    def log_params(self, params: dict) -> None:
        """The params the run lacks (MLflow refuses to change a logged one)."""
        self._log_params(params, have=self.client.get_run(self.run_id).data.params if self.run_id else {})

    def _log_params(self, params: dict, have: dict) -> None:
        from mlflow.entities import Param

        items = [Param(k, v[:6000]) for k, v in flatten_params(params).items() if k not in have]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=items[i:i + 100])

    def log_epoch(self, metrics: dict, tags: dict | None = None) -> None:
        """One epoch's metrics (and `tags`, when given) in one batch; retried while the store is unreachable
        (the same points: a batch the server took before its answer was lost is not logged twice)."""
        from mlflow.entities import Metric

        now, step = int(time.time() * 1000), int(metrics["epoch"])
        items = [Metric(k, float(v), now, step) for k, v in metrics.items()
                 if k not in _NOT_METRICS and isinstance(v, (int, float)) and not isinstance(v, bool)]
        call_with_retry(self.uri, self.client._client.log_batch, self.run_id, metrics=items, tags=_run_tags(tags or {}),
                        what=f"epoch {step}'s metrics of run {self.run_id}")

    def log_dataset(self, dataset: dict, context: str = "training") -> None:
        """The run's input dataset (`dataset_input`): the Datasets column and lineage in MLflow's UI. MLflow
        keeps one input per dataset digest, so a resumed run logging it again adds nothing."""
        from mlflow.entities import Dataset, DatasetInput, InputTag

        self.client.log_inputs(self.run_id, [DatasetInput(Dataset(**dataset), [InputTag("mlflow.data.context", context)])])

    def metrics(self) -> dict[str, float]:
        """The run's latest value of each metric."""
        return dict(self.client.get_run(self.run_id).data.metrics)

    def logged_steps(self, metric: str) -> set[int]:
        return {m.step for m in self.client.get_metric_history(self.run_id, metric)}

    def set_tags(self, tags: dict) -> None:
        self.client.log_batch(self.run_id, tags=_run_tags(tags))  # one call, not one per tag

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def delete_artifacts(self, *paths: str) -> None:
        """Remove the run's artifacts under each of `paths`, where there are any, from its artifact store (a
        sweep dropping a trial's weights)."""
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        repository = get_artifact_repository(self.client.get_run(self.run_id).info.artifact_uri)
        for path in paths:
            call_with_retry(self.uri, repository.delete_artifacts, path, what=f"deleting {path}")

    def log_dict(self, data: dict, name: str) -> None:
        self.client.log_text(self.run_id, json.dumps(data, indent=1, sort_keys=True, default=str), name)

    def finish(self, status: str = "FINISHED") -> None:
        if self.run_id is not None:
            self.client.set_terminated(self.run_id, status)


class SweepTracker:
    """A sweep's parent run and one child run per trial. Children carry the trial id as a tag, so a
    resumed sweep reuses them: one parent, exactly one child per trial, no duplicate."""

    TRIAL_TAG = "candle_ray.trial_id"

    def __init__(self, parent: RunTracker):
        self.parent = parent
        self.children: dict[str, RunTracker] = {}
        self._earlier: dict[str, str] | None = None  # a resumed sweep's children from before it stopped

    def _earlier_runs(self) -> dict[str, str]:
        """The children earlier drivers of this sweep made, by trial id. A new sweep has none: asking MLflow
        per trial would cost a query that grows with the sweep (16 ms at 1,000 trials here); a resumed one
        lists its children once."""
        if not self.parent.reopened:
            return {}
        if self._earlier is None:
            p = self.parent
            runs = p.client.search_runs([p.experiment_id()], f"tags.mlflow.parentRunId = '{p.run_id}'",
                                        max_results=50000)
            self._earlier = {r.data.tags[self.TRIAL_TAG]: r.info.run_id for r in runs if self.TRIAL_TAG in r.data.tags}
        return self._earlier

    def run_ids(self) -> dict[str, str]:
        """Every trial's child run id: this driver's, and a resumed sweep's earlier ones."""
        return {**self._earlier_runs(), **{trial: child.run_id for trial, child in self.children.items()}}

    def child(self, trial_id: str, run_name: str, params: dict, tags: dict) -> RunTracker:
        if trial_id in self.children:
            return self.children[trial_id]
        p = self.parent
        earlier = self._earlier_runs().get(trial_id)
        # one client for the sweep: a new one costs a store check (~4 ms) per trial
        child = RunTracker(p.uri, p.experiment_name, earlier, client=p.client, experiment_id=p.experiment_id())
        if earlier:
            child.reopen()
        else:  # one child per trial, even when the server took a creation but its answer was lost
            child.start(run_name, params, {**tags, "mlflow.parentRunId": p.run_id, self.TRIAL_TAG: trial_id},
                        existing=lambda: self._found_runs(trial_id))
        self.children[trial_id] = child
        return child

    def child_run_id(self, trial_id: str) -> str | None:
        """The MLflow run of a trial: this driver's, or a resumed sweep's earlier one."""
        if trial_id in self.children:
            return self.children[trial_id].run_id
        return self._earlier_runs().get(trial_id)

    def _found_runs(self, trial_id: str) -> list[str]:
        """The child runs MLflow holds for this trial (one, or none yet)."""
        p = self.parent
        return [r.info.run_id for r in p.client.search_runs(
            [p.experiment_id()],
            filter_string=f"tags.mlflow.parentRunId = '{p.run_id}' and tags.`{self.TRIAL_TAG}` = '{trial_id}'")]

    def tagged_children(self, tag: str, value: str) -> set[str]:
        """The trial ids of the children whose `tag` starts with `value` (one query, whatever the sweep's size)."""
        p = self.parent
        runs = p.client.search_runs([p.experiment_id()], max_results=50000,
                                    filter_string=f"tags.mlflow.parentRunId = '{p.run_id}' and tags.`{tag}` LIKE '{value}%'")
        return {r.data.tags.get(self.TRIAL_TAG) for r in runs}

    def stale_children(self) -> list[RunTracker]:
        """Children still RUNNING (their trial was cut off by an interrupted driver)."""
        p = self.parent
        runs = p.client.search_runs([p.experiment_id()],
                                    filter_string=f"tags.mlflow.parentRunId = '{p.run_id}' and attributes.status = 'RUNNING'")
        return [RunTracker(p.uri, p.experiment_name, r.info.run_id) for r in runs]

    def count_children(self) -> int:
        p = self.parent
        return len(p.client.search_runs([p.experiment_id()], filter_string=f"tags.mlflow.parentRunId = '{p.run_id}'",
                                        max_results=50000))


REPORTED_METRICS = ("loss", "val_loss", "accuracy", "val_accuracy", "val_r2", "val_corr", "val_auroc", "val_aupr")
CURVES = 50  # trials whose learning curves a report draws (the best ones by their best epoch)


def sweep_trials(parent: RunTracker) -> list[dict]:
    """Every child run of a sweep as plain data (one query): trial id, run id, status, params, `best` (the best
    epoch's metrics, as the trial logged them at its end) and an empty `history` (see read_curves)."""
    from candle_ray.summary import PREFIX

    runs = parent.client.search_runs([parent.experiment_id()], f"tags.mlflow.parentRunId = '{parent.run_id}'",
                                     max_results=50000)
    return [{"trial_id": run.data.tags.get(SweepTracker.TRIAL_TAG, run.info.run_id), "run_id": run.info.run_id,
             "status": run.data.tags.get("candle_ray.trial_status", run.info.status.lower()),
             "params": dict(run.data.params), "history": {},
             "best": {k[len(PREFIX):]: v for k, v in run.data.metrics.items() if k.startswith(PREFIX)}}
            for run in sorted(runs, key=lambda run: run.data.tags.get(SweepTracker.TRIAL_TAG, run.info.run_id))]


def epoch_histories(parent: RunTracker, run_ids: list[str], keys) -> list[dict[str, dict[int, float]]]:
    """Each run's value of each of `keys` per epoch (MLflow's step), one query per run and key."""
    return [{key: {m.step: m.value for m in parent.client.get_metric_history(run_id, key)} for key in keys}
            for run_id in run_ids]


def read_curves(parent: RunTracker, trials: list[dict], metric: str, mode: str, metrics=REPORTED_METRICS,
                curves: int = CURVES) -> None:
    """Fill in the per-epoch `history` of `metrics` where a report draws it: `metric` for the `curves` best
    trials, every metric for the best finished one; and for trials without a logged best epoch (still
    running), whose `best` then comes from their history. One query per run and metric: a 10,000-trial
    report reads ~60 histories instead of 80,000."""
    from candle_ray.summary import best_epoch_of, best_of, ranked, tie_value

    client = parent.client

    def read(trial: dict, keys) -> None:
        for key in keys:
            if key not in trial["history"] and trial.get("run_id"):
                points = sorted((m.step, m.value) for m in client.get_metric_history(trial["run_id"], key))
                if points:
                    trial["history"][key] = points

    for trial in trials:
        if metric not in trial["best"] and trial["status"] != "failed":  # a failed trial logs its best if it had one
            read(trial, metrics)
            trial["best"] = best_epoch_of(trial["history"], metric, mode)
    tie = lambda t: tie_value(t["best"], metric)  # noqa: E731
    for trial in ranked(trials, lambda t: t["best"].get(metric), mode, tie)[:curves]:
        read(trial, (metric,))
    best = best_of([t for t in trials if t["status"] != "failed"], lambda t: t["best"].get(metric), mode, tie)
    if best is not None:
        read(best, metrics)


def cv_epoch(record: dict, cv: str) -> int:
    """A finished `candle-ray cv`'s one epoch for every fold (the best of its folds' mean curve), from its parent
    run (`record`: its sweep.json), where the cv's end logged it."""
    epoch = RunTracker(record["tracking_uri"], "", run_id=record["parent_run_id"]).metrics().get("cv_epoch")
    if epoch is None:
        raise UsageError(f"cv {cv!r} has no one-epoch estimate (cv_epoch) on its MLflow run "
                         f"{record['parent_run_id']}; let it finish (--resume), or pass --set epochs=N")
    return int(epoch)


def require_store(uri: str) -> None:
    """Reading from a SQLite store that does not exist would create an empty one (MLflow makes the file)."""
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        raise UsageError(f"no MLflow store at {uri[len('sqlite:///'):]}; pass --tracking-uri (or set "
                         f"MLFLOW_TRACKING_URI) to the store the run was logged to")


def run_checkpoints(uri: str, run_id: str, dest: Path, top: int | None = None, pick: str | None = None, *,
                    baseline: bool = True) -> list[Path]:
    """Local folders holding the best checkpoints `predict` pools for MLflow run `run_id`: a sweep's best
    trial (its `top` best with `top`, ranked as the sweep's results.csv; its Pareto front's member `pick`),
    every finished member of an ensemble (and the linear baseline it pools, unless not `baseline`) or fold
    of a cv, a learning curve's runs on its largest share of the rows, or the run itself; downloaded from the
    runs' artifacts."""
    from mlflow.exceptions import MlflowException

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one bar per member is noise
    require_store(uri)
    client = _client(uri)
    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise UsageError(f"no MLflow run {run_id!r} in {uri}; pass a checkpoint path, a sweep name or a run id from "
                         f"`mlflow ui` (and --tracking-uri where it was logged)") from None
    children = client.search_runs([run.info.experiment_id], f"tags.mlflow.parentRunId = '{run_id}'",
                                  max_results=50000)
    kind = run.data.tags.get("candle_ray.kind")
    choice = f"--top {top}" if top is not None else f"--pick {pick}" if pick else None
    if choice and not (kind == "sweep" and children):
        what = {"ensemble": "an ensemble", "cv": "a cv", "lc": "a learning curve"}.get(kind, "a single run")
        raise UsageError(f"{choice} picks among a sweep's trials, and MLflow run {run_id} is {what}: "
                         f"predict with all of it, without {choice.split()[0]}")
    runs = [c for c in children if c.info.status == "FINISHED"] if children else [run]
    if kind == "sweep" and children:
        runs = _best_trials(client, run, runs, top or 1, dest, pick)
    if kind == "lc":
        runs = _on_most_rows(runs)
    folders = []
    for source in runs:
        folders.extend(_run_weights(uri, client, source.info.run_id, dest / source.info.run_id))
    if folders and baseline and kind == "ensemble" and \
            any(a.path == f"{BASELINE}/best.json" for a in client.list_artifacts(run_id, BASELINE)):
        folders.append(Path(client.download_artifacts(run_id, BASELINE, str(dest / f"{run_id}-{BASELINE}"))))
    if not folders:
        raise UsageError(f"none of the {len(children)} child runs of MLflow run {run_id} holds a best checkpoint (no "
                         f"trial or member finished); run it again" if children else
                         f"MLflow run {run_id} holds no best checkpoint (it did not finish); train it again")
    return folders


def _run_weights(uri: str, client, run_id: str, dest: Path) -> list[Path]:
    """A run's best checkpoints as `log_weights` stored them: its model's members, or its `checkpoints/`."""
    if client.list_artifacts(run_id, MODEL_ARTIFACT):
        return model_checkpoints(uri, f"runs:/{run_id}/{MODEL_ARTIFACT}", dest)
    if not any(a.path.endswith("best.json") for a in client.list_artifacts(run_id, CHECKPOINTS)):
        return []
    return [Path(client.download_artifacts(run_id, CHECKPOINTS, str(dest)))]


def _best_trials(client, parent, finished: list, top: int, dest: Path, pick: str | None = None) -> list:
    """The child runs of a sweep's `top` best trials, best first, by the sweep's own ranking (results.csv), or
    of its Pareto front's member `pick`."""
    import csv

    from candle_ray.ensemble import top_rows
    from candle_ray.retention import WEIGHTS_TAG
    from candle_ray.summary import picked_row

    name = parent.data.tags.get("candle_ray.sweep", parent.info.run_id)
    if not any(a.path == "results.csv" for a in client.list_artifacts(parent.info.run_id)):
        raise UsageError(f"sweep {name} has no results.csv yet (MLflow run {parent.info.run_id}); let it finish "
                         f"(or resume it) first")
    with open(client.download_artifacts(parent.info.run_id, "results.csv", str(dest / "results"))) as f:
        rows = list(csv.DictReader(f))
    params = parent.data.params
    ranked = [picked_row(rows, pick, name)] if pick else top_rows(rows, params["sweep.metric"], params["sweep.mode"],
                                                                   top, name)
    by_trial = {run.data.tags.get(SweepTracker.TRIAL_TAG): run for run in finished}
    chosen = [by_trial[row["trial_id"]] for row in ranked if row["trial_id"] in by_trial]
    dropped = [run.data.tags[SweepTracker.TRIAL_TAG] for run in chosen
               if run.data.tags.get(WEIGHTS_TAG, "").startswith("dropped")]
    if dropped:
        kept = params.get("sweep.keep_checkpoints", "K")
        raise UsageError(f"sweep {name} kept the weights of its {kept} best trials (--keep-checkpoints), and trial "
                         f"{dropped[0]} is not among them; " + (f"use --top {kept} or fewer" if not pick else
                                                                  "pick another front member, or train it again"))
    return chosen


def _on_most_rows(runs: list) -> list:
    """A learning curve's runs that trained on its largest share of the rows, its replicas there: the models it
    predicts with (its smaller shares' runs are points of the curve, not models to use)."""
    shares = [float(r.data.params.get("train_fraction", 1.0)) for r in runs]
    return [r for r, share in zip(runs, shares) if share == max(shares, default=1.0)]


MODEL_ARTIFACT = "model"
CHECKPOINTS = "checkpoints"  # a run's best weights where it has no model (`log_weights`)
BASELINE = "baseline"  # an ensemble's parent run: the linear baseline's checkpoint, which it pools


def log_model(run: RunTracker, checkpoint_dirs: list[Path], register: str | None = None) -> str:
    """The checkpoints' best epochs as one MLflow pyfunc model (candle_ray.mlflow_model) in the run's
    `model` artifact; with `register`, a new version of that registered model, aliased `best`. Returns
    the model's URI."""
    import tempfile

    from candle_ray import mlflow_model

    with tempfile.TemporaryDirectory(prefix="candle-ray-model-") as tmp:
        folder = Path(tmp) / MODEL_ARTIFACT
        mlflow_model.save(folder, checkpoint_dirs)
        try:
            run.client.log_artifacts(run.run_id, str(folder), MODEL_ARTIFACT)
        except Exception:
            with contextlib.suppress(Exception):  # the upload's error is the one to report
                run.delete_artifacts(MODEL_ARTIFACT)  # half a model, which `_run_weights` would read first
            raise
    return _model_uri(run, register)


def _model_uri(run: RunTracker, register: str | None) -> str:
    """The URI of the run's model: registered as a new version of `register` (alias best), or its runs:/ URI."""
    return register_model(run, register) if register else f"runs:/{run.run_id}/{MODEL_ARTIFACT}"


def _not_registered(register: str, exc: Exception) -> CandleRayError:
    # asked for by name: a model that cannot be registered is the user's failure, not a note
    return CandleRayError(f"the model could not be registered as {register!r}: {_first_line(exc)}")


def log_weights(run: RunTracker, folders: dict[str, Path], as_model: bool, warn=print,
                register: str | None = None) -> str | None:
    """A finished run's best weights, stored once: as its MLflow model when `as_model` (the model holds the
    weights, so `predict RUN_ID` and `_run_weights` read them there), registered under `register`, else, or
    where no model can be made (an error with `register`), as `checkpoints/` artifacts. `folders`: checkpoint
    folders by fold name ("" for a run without folds; a `tune --cv` trial's folds, which its model pools).
    Returns the model's URI, or None."""
    if as_model and (uri := log_model_or_warn(run, list(folders.values()), register, warn=warn)):
        return uri
    for fold, folder in folders.items():
        into = f"{CHECKPOINTS}/{fold}" if fold else CHECKPOINTS
        best = _log_best_file(run, folder, into)
        run.log_dict(best, f"{into}/best.json")  # the pointer read, which names the file uploaded
    return None


def _log_best_file(run: RunTracker, folder: Path, into: str, tries: int = 5) -> dict:
    """Upload the epoch file that `folder`'s best pointer names, verified and without the optimizer's state
    (checkpoint.without_optimizer: Uno's full-size smoke checkpoints 617 -> 309 MB); return the pointer to the
    uploaded file. A run cut short (Ctrl-C) may still be training while its driver finishes: a newer best then
    replaces the pointer and deletes the file it named, so the pointer is read again."""
    import tempfile

    from candle_ray import checkpoint

    for attempt in range(tries):
        best = checkpoint.pointer(folder, "best")
        try:
            state = checkpoint.load(folder / best["file"])
        except CheckpointError:
            if attempt == tries - 1 or (folder / best["file"]).exists():  # not replaced: a real fault
                raise
            continue
        with tempfile.TemporaryDirectory(prefix="candle-ray-weights-") as scratch:
            run.log_artifact(checkpoint.save(scratch, checkpoint.without_optimizer(state), kinds=("best",)), into)
            return checkpoint.pointer(scratch, "best")


def log_model_or_warn(run: RunTracker, checkpoint_dirs: list[Path], register: str | None = None, warn=print) -> str | None:
    """`log_model`, or a warning naming why not: a model `predict` cannot serve (multi-task) or a store
    that refused it must not fail the run, whose weights stay as checkpoints."""
    try:
        return log_model(run, checkpoint_dirs, register)
    except Exception as exc:
        if register:
            raise _not_registered(register, exc) from None
        warn(f"note: no MLflow model logged on run {run.run_id} ({_first_line(exc)}); its checkpoints are logged")
        return None


def logged_model(run: RunTracker, register: str | None = None) -> str | None:
    """The MLflow model the run already holds (a trial's, from `log_weights`), registered under `register`;
    None when the run has none."""
    if not run.client.list_artifacts(run.run_id, MODEL_ARTIFACT):
        return None
    try:
        return _model_uri(run, register)
    except Exception as exc:
        raise _not_registered(register, exc) from None


def register_model(run: RunTracker, name: str) -> str:
    """Register the run's model as a new version of `name` and point the alias `best` at it."""
    from mlflow.exceptions import MlflowException

    client = run.client
    try:
        client.create_registered_model(name)
    except MlflowException as exc:
        if getattr(exc, "error_code", "") != "RESOURCE_ALREADY_EXISTS":
            raise
    source = f"{client.get_run(run.run_id).info.artifact_uri}/{MODEL_ARTIFACT}"
    version = client.create_model_version(name, source, run_id=run.run_id)
    client.set_registered_model_alias(name, "best", version.version)
    return f"models:/{name}@best"


def model_checkpoints(uri: str, model_uri: str, dest: Path) -> list[Path]:
    """The member checkpoint folders of an MLflow model (models:/NAME@ALIAS, models:/NAME/VERSION, runs:/...)."""
    import mlflow.artifacts
    from mlflow.exceptions import MlflowException

    from candle_ray.mlflow_model import MEMBER

    require_store(uri)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    try:  # models:/ resolves through the registry of the tracking URI; no process-wide URI is set
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=str(dest),
                                                         tracking_uri=uri, registry_uri=uri))
    except MlflowException as exc:
        raise UsageError(f"no MLflow model {model_uri!r} in {uri} ({_first_line(exc)}); pass a registered "
                         f"model as models:/NAME@best or a run's model as runs:/RUN_ID/model") from None
    members = sorted((local / "artifacts").glob(f"{MEMBER}*"), key=lambda p: int(p.name[len(MEMBER):]))
    if not members:
        raise UsageError(f"{model_uri} is not a candle-ray model (no {MEMBER}* artifacts); pass one that "
                         f"`tune --register` or `ensemble --register` logged")
    return members
