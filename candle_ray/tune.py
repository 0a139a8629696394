"""`candle-ray tune`: Ray Tune searches whose trials run candle-ray's training loop.

A one-worker trial *is* the worker: the loop runs inside Tune's function trainable (actors reused
between trials), so a trial costs what its epochs cost. A multi-worker trial is rank 0 itself, with
peer actors in its placement group (no Ray Train start-up). An elastic trial (`--workers-per-trial
MIN-MAX`) drives a Ray Train V2 TorchTrainer with ScalingConfig(num_workers=(MIN, MAX)) from inside
the trial: it pays Train's start-up (~15-25 s per trial, and again per resize) for growing and
shrinking with the cluster; its trial actor takes no CPU.
Per epoch a trial reports its metrics and, with a Tune checkpoint, its candle-ray checkpoint files, so
schedulers can stop it, PBT can clone its weights into another trial, and a resumed sweep continues it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

from candle_ray import runtime

runtime.set_env_defaults()  # before ray.tune reads its switches

import ray  # noqa: E402
import ray.tune  # noqa: E402
import ray.tune.search  # noqa: E402
from ray.tune import Callback  # noqa: E402

from candle_ray import checkpoint  # noqa: E402
from candle_ray.errors import TrainingError, UsageError  # noqa: E402
from candle_ray.summary import PREFIX, best_metrics, best_of, trial_value  # noqa: E402

# What PBT may change in a running trial: hyperparameters that do not change the model's shape.
PBT_MUTABLE = ("learning_rate", "dropout", "momentum", "weight_decay", "batch_size")


class WorkerRange(int):
    """An elastic worker count: its int value is the minimum (what must fit for a trial to start); it
    prints as MIN-MAX."""

    def __new__(cls, low: int, high: int):
        obj = super().__new__(cls, low)
        obj.high = int(high)
        return obj

    def __reduce__(self):
        return WorkerRange, (int(self), self.high)

    def __str__(self) -> str:
        return f"{int(self)}-{self.high}"

    __repr__ = __str__

    def __format__(self, spec: str) -> str:
        return format(str(self), spec)


def worker_bounds(workers) -> tuple[int, int]:
    """(min, max) of N, (MIN, MAX) or a WorkerRange."""
    if isinstance(workers, WorkerRange):
        return int(workers), workers.high
    if isinstance(workers, (tuple, list)):
        return int(workers[0]), int(workers[1])
    return int(workers), int(workers)


@dataclass(frozen=True)
class Sweep:
    """A sweep's settings: what `--resume` must find unchanged."""

    name: str
    searcher: str
    scheduler: str
    num_samples: int
    workers_per_trial: int  # elastic: a WorkerRange (recorded as its minimum + max_workers_per_trial)
    cpus_per_worker: float
    gpus_per_worker: int
    max_concurrent: int
    seed: int
    metric: str
    mode: str
    max_failures: int
    max_epochs: int
    # Seconds between the checkpoints a trial hands to Tune (0 = every epoch; PBT always every epoch).
    checkpoint_every_s: float = 30.0
    max_workers_per_trial: int = 0  # > workers_per_trial: elastic trials
    grace_period: int = 0  # epochs before a scheduler may stop a trial; 0 = grace_period_rule(max_epochs)

    def __post_init__(self):
        low, high = worker_bounds(self.workers_per_trial)
        high = max(high, int(self.max_workers_per_trial or 0))
        if low < 1 or high < low:
            raise UsageError(f"--workers-per-trial {low}-{high}: need 1 <= MIN <= MAX")
        object.__setattr__(self, "workers_per_trial", WorkerRange(low, high) if high > low else low)
        object.__setattr__(self, "max_workers_per_trial", high if high > low else 0)

    @property
    def elastic(self) -> bool:
        return self.max_workers_per_trial > int(self.workers_per_trial)

    @property
    def grace(self) -> int:
        return self.grace_period or grace_period_rule(self.max_epochs)


def grace_period_rule(max_epochs: int) -> int:
    """Epochs every trial runs before ASHA, Hyperband or the median rule may stop it: an eighth of the
    epoch budget, at least 1 (60 epochs -> 8, 20 -> 3, 8 or fewer -> 1). Early epochs on a small
    validation split say little about where a trial ends, and the first rung decides the most trials
    (`--grace-period` overrides it)."""
    return max(1, math.ceil(max_epochs / 8)) if max_epochs > 8 else 1


# What schedulers and searchers follow. The searcher learns each trial's worth, its best epoch
# (candle_ray.summary); ASHA, Hyperband and the median rule compare trials by their best epoch so far,
# so one noisy epoch does not stop a trial; PBT compares the weights trials have now.
def followed_metric(metric: str, scheduler: str | None = None) -> str:
    from candle_ray.summary import PREFIX

    return metric if scheduler == "pbt" else PREFIX + metric


# Hyperband has no grace period of its own: its smallest bracket decides after max_t / eta^s epochs.
# Counting its time in units of the grace period makes that smallest step one grace period.
HYPERBAND_TIME = "hyperband_t"


# ---------------------------------------------------------------- spaces, searchers, schedulers


def grid_space(space: dict) -> dict:
    """Grid search over every categorical key; a continuous key cannot be gridded."""
    from ray.tune.search.sample import Categorical, Domain

    grid = {}
    for key, value in space.items():
        if isinstance(value, Categorical):
            grid[key] = ray.tune.grid_search(list(value.categories))
        elif isinstance(value, dict) and "grid_search" in value:
            grid[key] = value
        elif isinstance(value, Domain):
            raise UsageError(f"grid search needs discrete values, but {key!r} is continuous ({type(value).__name__}); "
                             f"use --search random or optuna, or give {key} a tune.choice([...])")
        else:
            grid[key] = value
    return grid


def members_space(members: list[dict]) -> dict:
    """A Tune space holding every member's values (the members themselves go in as points to evaluate)."""
    keys = sorted({k for m in members for k in m})
    space = {}
    for key in keys:
        values = []
        for m in members:
            if key in m and m[key] not in values:
                values.append(m[key])
        space[key] = ray.tune.choice(values)
    missing = [i for i, m in enumerate(members) if set(m) != set(keys)]
    if missing:
        raise UsageError(f"ensemble members {missing[:3]} do not set every key of {keys}; members must differ in the same keys")
    return space


class MembersSearcher(ray.tune.search.Searcher):
    """Exactly the given configurations, in order: an ensemble's members, a cv's folds.

    Tune's points_to_evaluate cannot carry list values (`dense: [512, 128]`): its variant generator walks
    into lists as nested keys and fails. A searcher's suggestions replace the space's values whole.
    """

    def __init__(self, members: list[dict], metric: str, mode: str, max_concurrent: int):
        super().__init__(metric=metric, mode=mode)
        self.members, self.next, self.live, self.max_concurrent = [dict(m) for m in members], 0, set(), max_concurrent

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True  # the space only lists the members' values; the members themselves are the search

    def suggest(self, trial_id: str):
        if self.next >= len(self.members):
            return ray.tune.search.Searcher.FINISHED
        if len(self.live) >= self.max_concurrent:
            return None
        self.live.add(trial_id)
        self.next += 1
        return dict(self.members[self.next - 1])

    def on_trial_complete(self, trial_id: str, result=None, error: bool = False) -> None:
        self.live.discard(trial_id)

    def get_state(self) -> dict:
        return {"members": self.members, "next": self.next}

    def set_state(self, state: dict) -> None:
        self.members, self.next, self.live = state["members"], state["next"], set()

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "w") as f:
            json.dump(self.get_state(), f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path) as f:
            self.set_state(json.load(f))


def make_searcher(name: str, metric: str, mode: str, seed: int, max_concurrent: int, points: list[dict] | None = None):
    """random and grid: Tune's variant generator (seeded; grid spaces expand to every combination);
    optuna: TPE, seeded, limited to the trials that run at once so it learns from finished ones;
    members: exactly the given configurations (an ensemble's members, a cv's folds)."""
    if name == "members":
        return MembersSearcher(points or [], followed_metric(metric), mode, max_concurrent)
    if name == "optuna":
        from ray.tune.search import ConcurrencyLimiter
        from ray.tune.search.optuna import OptunaSearch

        return ConcurrencyLimiter(OptunaSearch(metric=followed_metric(metric), mode=mode, seed=seed),
                                  max_concurrent=max_concurrent)
    from ray.tune.search import BasicVariantGenerator

    return BasicVariantGenerator(random_state=seed, max_concurrent=max_concurrent)


def pbt_mutations(space: dict) -> dict:
    mutations = {k: v for k, v in space.items() if k in PBT_MUTABLE}
    if not mutations:
        raise UsageError(f"PBT needs at least one of {', '.join(PBT_MUTABLE)} in the search space to perturb; "
                         f"the space has {', '.join(space)}")
    return mutations


def validate(searcher: str, scheduler: str, space: dict) -> None:
    """Refuse, before anything starts, a space that the searcher or scheduler cannot use."""
    if searcher == "grid":
        grid_space(space)
    if scheduler == "pbt":
        pbt_mutations(space)


def make_scheduler(name: str, metric: str, mode: str, *, max_epochs: int, space: dict, seed: int, grace: int = 1):
    from ray.tune import schedulers

    common = {"metric": followed_metric(metric, name), "mode": mode, "time_attr": "epoch"}
    if name == "fifo":
        return schedulers.FIFOScheduler()
    if name == "asha":
        return schedulers.ASHAScheduler(max_t=max_epochs, grace_period=min(grace, max_epochs), reduction_factor=3,
                                        **common)
    if name == "hyperband":
        return schedulers.HyperBandScheduler(**{**common, "time_attr": HYPERBAND_TIME},
                                             max_t=max(1, math.ceil(max_epochs / grace)), reduction_factor=3)
    if name == "median":
        return schedulers.MedianStoppingRule(grace_period=grace, min_samples_required=3, **common)
    mutations = pbt_mutations(space)
    interval = max(1, max_epochs // 4)
    import random

    random.seed(seed)  # PBT's explore draws from the random module
    return schedulers.PopulationBasedTraining(perturbation_interval=interval, hyperparam_mutations=mutations,
                                              quantile_fraction=0.25, resample_probability=0.25, **common)


def max_epochs(space: dict, default: int) -> int:
    """The most epochs a trial can run: the schedulers' time horizon (epochs may be searched too)."""
    from ray.tune.search.sample import Categorical, Float, Integer

    domain = space.get("epochs")
    if isinstance(domain, Categorical):
        return int(max(domain.categories))
    if isinstance(domain, Integer):
        return int(domain.upper) - 1  # randint's upper bound is exclusive
    if isinstance(domain, Float):
        return int(domain.upper)
    if isinstance(domain, dict) and "grid_search" in domain:
        return int(max(domain["grid_search"]))
    return default


def concurrency(cluster: dict, workers: int, cpus_per_worker: float, gpus_per_worker: int, requested: int | None,
                *, autoscale: bool = False) -> int:
    """How many trials fit at once; more would only queue drivers that wait for workers. Elastic trials
    count at their minimum size. On an autoscaling cluster (`autoscale`) the nodes up now say nothing:
    `requested` trials run at once, and their waiting placement groups make the autoscaler add nodes."""
    if autoscale:
        if not requested:
            raise UsageError("--autoscale needs --max-concurrent N: how many trials run at once once the cluster "
                             "has grown (the nodes up now do not tell)")
        return requested
    workers = worker_bounds(workers)[0]
    fits = math.floor(float(cluster.get("CPU", 0)) / (workers * cpus_per_worker) + 1e-9)
    if gpus_per_worker:
        fits = min(fits, int(cluster.get("GPU", 0)) // (workers * gpus_per_worker))
    if fits < 1:
        raise UsageError(f"one trial needs {workers} x {cpus_per_worker:g} CPU{' + 1 GPU' if gpus_per_worker else ''} "
                         f"but the cluster has {cluster.get('CPU', 0):g} CPU / {cluster.get('GPU', 0):g} GPU; "
                         f"lower --workers-per-trial or --cpus-per-worker")
    return min(fits, requested) if requested else fits


# ---------------------------------------------------------------------------- the trial


def _checkpoint_dirs(job) -> dict[str, Path]:
    """Where the trial's loops write checkpoints, by their folder in a Tune checkpoint: the run's own
    ("" = the checkpoint's root), or one per fold for `tune --cv` ("fold-k")."""
    run_dir = Path(job.run_dir)
    if job.cv_folds:
        return {f"fold-{k}": run_dir / f"fold-{k}" / "checkpoints" for k in range(int(job.cv_folds))}
    return {"": run_dir / "checkpoints"}


def _tune_checkpoint(ckpt_dirs: dict[str, Path]):
    """The loops' current last/best checkpoints as one Tune checkpoint (hard links: no copy here)."""
    staging = Path(tempfile.mkdtemp(prefix="candle-ray-ckpt-"))
    for folder, ckpt_dir in ckpt_dirs.items():
        target = staging / folder
        target.mkdir(parents=True, exist_ok=True)
        for kind in checkpoint.KINDS:
            pointer = ckpt_dir / f"{kind}.json"
            if pointer.exists():
                shutil.copy2(pointer, target / pointer.name)
                name = checkpoint.pointer(ckpt_dir, kind)["file"]
                if not (target / name).exists():
                    try:
                        os.link(ckpt_dir / name, target / name)
                    except OSError:  # another filesystem
                        shutil.copy2(ckpt_dir / name, target / name)
    return staging, ray.tune.Checkpoint.from_directory(str(staging))


def _report_epochs(job, epochs) -> None:
    """Report each new epoch to Tune, with the checkpoint files when the loop wrote `last` and the
    previous hand-over is `tune_checkpoint_s` old (and always at the trial's final epoch).

    Each checkpoint Tune receives is copied into the sweep storage and makes the driver snapshot the
    experiment state; on short epochs doing that every epoch costs the driver a core that concurrent
    trials need. A kill then re-runs at most `tune_checkpoint_s` of a trial.
    """
    from candle_ray.summary import BestEpoch

    ckpt_dirs = _checkpoint_dirs(job)
    every_s, handed_at = float(job.tune_checkpoint_s), None
    final_epoch = int(job.config["epochs"])
    hyperband_unit = job.hyperband_unit
    for metrics in BestEpoch(job.metric, job.mode)(epochs):
        if metrics.get("replayed"):  # restored trials: Tune already holds these epochs
            continue
        result = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if hyperband_unit:
            result[HYPERBAND_TIME] = metrics["epoch"] / hyperband_unit
        written = all((checkpoint.pointer(d, "last") or {}).get("epoch") == metrics["epoch"] for d in ckpt_dirs.values())
        due = (handed_at is None or time.monotonic() - handed_at >= every_s
               or metrics["epoch"] >= final_epoch or "stop_reason" in metrics)
        if due and written:
            handed_at = time.monotonic()
            staging, ckpt = _tune_checkpoint(ckpt_dirs)
            try:
                ray.tune.report(result, checkpoint=ckpt)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        else:
            ray.tune.report(result)
        if metrics.get("stop_reason") == "non-finite loss":
            raise TrainingError(f"trial hit a non-finite loss at epoch {metrics['epoch']} "
                                f"(loss {metrics['loss']}, val_loss {metrics['val_loss']}); lower the learning rate")


def _mean_over_folds(job, device):
    """`tune --cv K`: K fold models trained in lockstep; each epoch reports every metric's mean over the
    folds (what the scheduler and searcher see) and each fold's own `fold<k>_<metric>`.

    The folds share the process, so their random streams interleave: a trial is reproducible, but a
    fold's numbers differ from the same fold trained alone. The trial ends when any fold stops (early
    stop, timeout): the mean needs every fold at every epoch.
    """
    from candle_ray.loop import World, train_epochs

    folds = int(job.cv_folds)
    runs = [train_epochs(replace(job, run_dir=str(Path(job.run_dir) / f"fold-{k}"),
                                 cv={"assignment": job.cv_assignment, "fold": k}), World(device=device))
            for k in range(folds)]
    for per_fold in zip(*runs):
        merged = {"epoch": per_fold[0]["epoch"], "replayed": all(m.get("replayed") for m in per_fold)}
        for key, value in per_fold[0].items():
            if key not in merged and isinstance(value, (int, float)) and not isinstance(value, bool):
                values = [m[key] for m in per_fold if key in m]
                merged[key] = sum(values) / len(values)
                if key.startswith("val_") or key == "loss":
                    merged.update({f"fold{k}_{key}": m[key] for k, m in enumerate(per_fold) if key in m})
        reasons = [f"fold {k}: {m['stop_reason']}" for k, m in enumerate(per_fold) if "stop_reason" in m]
        if reasons:
            merged["stop_reason"] = "; ".join(reasons)
        yield merged


def run_trial(config: dict, base_job) -> None:
    """One trial. Tune's checkpoint is the truth: a restored or PBT-cloned trial continues from it
    (with this trial's hyperparameters), a fresh trial starts from scratch."""
    # Ray logs every persisted checkpoint at INFO: one line per trial epoch is noise in a sweep.
    logging.getLogger("ray.train._internal.storage").setLevel(logging.WARNING)
    trial_id = ray.tune.get_context().get_trial_id()
    run_dir = Path(base_job.work_dir) / "trials" / trial_id
    job = replace(base_job, config={**base_job.config, **config}, run_dir=str(run_dir))
    if "cv_fold" in config:  # `candle-ray cv`: this trial is one fold of the driver's fold assignment
        job = replace(job, cv={"assignment": base_job.cv_assignment, "fold": int(config["cv_fold"])})
    ckpt_dirs = _checkpoint_dirs(job)
    for ckpt_dir in ckpt_dirs.values():
        shutil.rmtree(ckpt_dir, ignore_errors=True)
    restored = ray.tune.get_checkpoint()
    if restored is not None:
        with restored.as_directory() as src:
            for folder, ckpt_dir in ckpt_dirs.items():
                shutil.copytree(Path(src) / folder, ckpt_dir)
        last = checkpoint.pointer(next(iter(ckpt_dirs.values())), "last") or {}
        origin = Path(last.get("origin") or run_dir)
        origin = (origin.parent if job.cv_folds else origin).name  # .../trials/<id>[/fold-k]
        # A record of where this trial's weights came from: itself (a resume) or another trial (PBT).
        with open(run_dir / "restores.jsonl", "a") as f:
            f.write(json.dumps({"time": time.time(), "from_trial": origin, "epoch": last.get("epoch"),
                                "sha256": last.get("sha256"), "config": config}, default=str) + "\n")
    if base_job.max_workers > int(base_job.workers):
        _run_elastic_trial(job, trial_id)
    elif base_job.workers == 1:
        from candle_ray.loop import World, train_epochs
        from candle_ray.train import device_for

        _record_rank(run_dir, 0)
        device = device_for(job.use_gpu)
        _report_epochs(job, _mean_over_folds(job, device) if job.cv_folds else
                       train_epochs(job, World(device=device)))
    else:
        _run_ddp_trial(job)


def _record_rank(trial_dir: Path, rank: int) -> None:
    from candle_ray.train import record_rank

    record_rank(trial_dir, rank)


def _run_elastic_trial(job, trial_id: str) -> None:
    """An elastic trial: a Ray Train run (ScalingConfig(num_workers=(MIN, MAX))) driven from this trial,
    named after the trial (a retried trial finds its Train state again). Its workers resume from the
    trial's checkpoint folder, which they must see: one machine or a shared --storage."""
    from candle_ray import train as trainer

    plan = trainer.Plan(int(job.workers), float(job.cpus_per_worker), int(bool(job.use_gpu)),
                        int(job.threads), max_workers=int(job.max_workers))
    _report_epochs(job, trainer.ddp_epochs(job, plan, max_failures=int(job.max_failures),
                                           storage_path=str(Path(job.run_dir) / "ray-train"),
                                           run_name=f"train-{trial_id}"))


@ray.remote
class _Peer:
    """Rank 1..N-1 of a DDP trial: runs the same loop, takes part in the all-reduces, reports nothing."""

    def run(self, job, rank: int, world_size: int, master: str, checkpoint_files: dict) -> None:
        from candle_ray.loop import World, train_epochs
        from candle_ray.train import device_for

        _record_rank(Path(job.run_dir), rank)
        # Rank 0's restored checkpoint, in a folder of this rank's own (it may be on another node).
        job = replace(job, run_dir=str(Path(job.run_dir) / f"rank-{rank}"))
        ckpt_dir = Path(job.run_dir) / "checkpoints"
        shutil.rmtree(ckpt_dir, ignore_errors=True)
        if checkpoint_files:
            ckpt_dir.mkdir(parents=True)
            for name, data in checkpoint_files.items():
                (ckpt_dir / name).write_bytes(data)
        _join_process_group(job, rank, world_size, master)
        try:
            for _ in train_epochs(job, World(rank=rank, world_size=world_size, device=device_for(job.use_gpu))):
                pass
        finally:
            import torch.distributed as dist

            dist.destroy_process_group()


def _join_process_group(job, rank: int, world_size: int, master: str) -> None:
    from datetime import timedelta

    import torch.distributed as dist

    # A peer that dies makes the others fail within this timeout instead of hanging the trial.
    dist.init_process_group("nccl" if job.use_gpu else "gloo", init_method=f"tcp://{master}", rank=rank,
                            world_size=world_size, timeout=timedelta(seconds=job.ddp_timeout_s))


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


def _run_ddp_trial(job) -> None:
    """A DDP trial without Ray Train's ~15 s of per-fit start-up: this trial actor is rank 0 (it
    reports to Tune) and N-1 peer actors, placed in the trial's own placement group, join it over
    torch.distributed (gloo on CPUs, NCCL on GPUs)."""
    import torch.distributed as dist

    from candle_ray.loop import World, train_epochs
    from candle_ray.train import device_for

    world_size = job.workers
    _record_rank(Path(job.run_dir), 0)
    master = f"{ray.util.get_node_ip_address()}:{_free_port()}"
    peers = [_Peer.options(num_cpus=job.cpus_per_worker, num_gpus=int(job.use_gpu)).remote()
             for _ in range(world_size - 1)]
    ckpt_dir = Path(job.run_dir) / "checkpoints"
    files = ray.put({p.name: p.read_bytes() for p in ckpt_dir.iterdir()} if ckpt_dir.exists() else {})
    runs = [peer.run.remote(job, rank, world_size, master, files) for rank, peer in enumerate(peers, start=1)]
    try:
        _join_process_group(job, 0, world_size, master)
        try:
            _report_epochs(job, train_epochs(job, World(rank=0, world_size=world_size,
                                                        device=device_for(job.use_gpu))))
        finally:
            dist.destroy_process_group()
        ray.get(runs)
    finally:
        for peer in peers:
            ray.kill(peer)


# ------------------------------------------------------------------------- callbacks (driver)


def _ended(trial, max_epochs: int) -> str:
    """How a trial that ended without error ended: all its epochs, or stopped before (scheduler,
    early stopping, timeout)."""
    epochs = int(trial.config.get("epochs", max_epochs))
    return "completed" if (trial.last_result or {}).get("epoch", 0) >= epochs else "stopped early"


def _status(trial, max_epochs: int) -> str:
    if trial.status == "ERROR":
        return "failed"
    if trial.status == "TERMINATED":
        return _ended(trial, max_epochs)
    return {"RUNNING": "running", "PENDING": "pending", "PAUSED": "paused"}.get(trial.status, trial.status.lower())


def _error_line(trial) -> str:
    """The last line of the trial's error (its exception type and message)."""
    try:
        text = Path(trial.error_file).read_text() if trial.error_file else ""
    except OSError:
        text = ""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return (lines[-1] if lines else "trial failed")[:5000]


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

    def __init__(self, sweep_tracker, fixed_params: dict, max_epochs: int, trial_tags: dict, work_dir: Path):
        self.sweep, self.fixed, self.max_epochs, self.trial_tags = sweep_tracker, fixed_params, max_epochs, trial_tags
        self.work_dir = work_dir
        self.logged: dict[str, set[int]] = {}  # only the worker thread touches it
        self.failure: str | None = None
        self.unlogged: list[str] = []  # what could not be logged, in order
        self._queue = self._thread = None

    def __getstate__(self):
        return {**self.__dict__, "logged": {}, "unlogged": [], "_queue": None, "_thread": None}

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
        return child

    def _log(self, trial_id: str, config: dict, result: dict) -> None:
        child, epoch = self._child(trial_id, config), int(result.get("epoch", 0))
        if epoch and epoch not in self.logged[trial_id]:
            # The epoch's own metrics; the best-epoch copies every result carries are logged once, at the end.
            child.log_epoch({k: v for k, v in result.items() if not k.startswith(PREFIX) and k != HYPERBAND_TIME})
            self.logged[trial_id].add(epoch)

    def _end(self, trial_id: str, config: dict, status: str, tags: dict, tune_checkpoint, last: dict) -> None:
        child = self._child(trial_id, config)
        best = best_metrics(last)
        if best and last.get("best_epoch"):  # the trial's worth: its best epoch (candle_ray.summary)
            child.log_epoch({"epoch": last["best_epoch"], **{PREFIX + k: v for k, v in best.items()}})
            tags = {**tags, "candle_ray.best_epoch": last["best_epoch"]}
        with tempfile.TemporaryDirectory(prefix="candle-ray-best-") as tmp:
            # The trial's last Tune checkpoint is in the sweep's storage (a shared folder or a bucket), so
            # it is there wherever the trial ran; the trial's own folder, when this driver can see it, may
            # hold a newer best (trials hand Tune a checkpoint only every --checkpoint-every seconds).
            handed = Path(tune_checkpoint.to_directory(tmp)) if tune_checkpoint is not None else None
            own = self._trial_dir(trial_id)
            folds = sorted({p.name for root in (handed, own) if root is not None and root.is_dir()
                            for p in root.iterdir() if p.is_dir() and p.name.startswith("fold-")})
            for fold in folds or [""]:  # `tune --cv`: each fold's best under checkpoints/fold-k
                ckpt_dir = newest_best([(handed / fold) if handed else None, own / fold / "checkpoints"])
                if ckpt_dir is not None:
                    into = f"checkpoints/{fold}" if fold else "checkpoints"
                    child.log_artifact(ckpt_dir / checkpoint.pointer(ckpt_dir, "best")["file"], into)
                    child.log_artifact(ckpt_dir / "best.json", into)
        child.set_tags(tags)
        child.finish(status)

    def on_trial_start(self, iteration, trials, trial, **info):
        self._submit(f"trial {trial.trial_id}'s run", self._child, trial.trial_id, dict(trial.config))

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self._submit(f"trial {trial.trial_id} epoch {result.get('epoch')}", self._log, trial.trial_id,
                     dict(trial.config), dict(result))

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._submit(f"trial {trial.trial_id}'s end", self._end, trial.trial_id, dict(trial.config), "FINISHED",
                     {"candle_ray.trial_status": _ended(trial, self.max_epochs)}, trial.checkpoint,
                     dict(trial.last_result or {}))

    def on_trial_error(self, iteration, trials, trial, **info):
        self._submit(f"trial {trial.trial_id}'s end", self._end, trial.trial_id, dict(trial.config), "FAILED",
                     {"candle_ray.trial_status": "failed", "candle_ray.error": _error_line(trial)}, trial.checkpoint,
                     dict(trial.last_result or {}))


def _short(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return " ".join(map(str, value))
    return str(value)


class ProgressCallback(Callback):
    """The live view: a status line with counts and the best result so far, and a line per finished trial."""

    def __init__(self, metric: str, mode: str, max_epochs: int, echo, every_s: float = 10.0):
        self.metric, self.mode, self.max_epochs, self.echo, self.every_s = metric, mode, max_epochs, echo, every_s
        self.t0 = time.monotonic()
        self.last_line = 0.0
        self.trials = None  # Tune's trials as last seen: the sweep's summary reads them
        self.epoch_seconds: dict[tuple[str, int], float] = {}  # (trial, epoch) -> seconds: the sweep's compute

    def __getstate__(self):
        return {**self.__dict__, "echo": print, "trials": None, "epoch_seconds": {}}

    def best(self, trials):
        """(value, trial) of the best trial so far by its best epoch (candle_ray.summary), or None."""
        pick = best_of([t for t in trials if t.status != "ERROR"], lambda t: trial_value(t.last_result, self.metric),
                       self.mode)
        return None if pick is None else (trial_value(pick.last_result, self.metric), pick)

    def table(self, trials) -> str:
        counts: dict[str, int] = {}
        for t in trials:
            s = _status(t, self.max_epochs)
            counts[s] = counts.get(s, 0) + 1
        order = ("running", "pending", "completed", "stopped early", "failed", "paused")
        parts = [f"{name} {counts.get(name, 0)}" for name in order if counts.get(name) or name in order[:5]]
        best = self.best(trials)
        best_text = f"best {self.metric} {best[0]:.4g} ({best[1].trial_id}, epoch {best[1].last_result.get('best_epoch')})" \
            if best else f"best {self.metric} -"
        return f"[{time.monotonic() - self.t0:7.1f}s] {' | '.join(parts)} | {best_text}"

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
        self.epoch_seconds[(trial.trial_id, int(result.get("epoch", 0)))] = float(result.get("epoch_time_s", 0.0))

    def scored(self, last: dict) -> str:
        """A trial's latest metric and its best epoch so far (the trial's worth), with R² for regressors."""
        value, best = last.get(self.metric), trial_value(last, self.metric)
        text = f"{self.metric} {_short(value)}" if isinstance(value, float) else f"{self.metric} -"
        if isinstance(best, float):
            text += f" (best {best:.4g} at epoch {last.get('best_epoch', last.get('epoch', 0))})"
        r2 = last.get(PREFIX + "val_r2", last.get("val_r2")) if self.metric != "val_r2" else None
        return text + (f", val_r2 {r2:.3g}" if isinstance(r2, float) else "")

    def _row(self, trial, what: str):
        last = trial.last_result or {}
        config = "  ".join(f"{k}={_short(v)}" for k, v in trial.config.items())
        epochs = last.get("epoch", 0)
        self.echo(f"  trial {trial.trial_id} {what} after {epochs} epoch{'' if epochs == 1 else 's'}: "
                  f"{self.scored(last)}  {config}")

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._row(trial, _ended(trial, self.max_epochs))

    def on_trial_error(self, iteration, trials, trial, **info):
        self._row(trial, "failed")

    def on_experiment_end(self, trials, **info):
        self.trials = trials
        self.echo(self.table(trials))


# ---------------------------------------------------------------------------------- the sweep


def build_tuner(*, sweep: Sweep, space: dict, base_job, store, callbacks: list, resume: bool,
                points: list[dict] | None = None):
    """A new Tuner, or the sweep's own Tuner restored from its experiment state."""
    # One bundle per worker: bundle 0 is the trial actor itself (rank 0), the others host its peers.
    # An elastic trial's actor only drives Ray Train, whose workers have their own placement group.
    bundle = {"CPU": sweep.cpus_per_worker, **({"GPU": sweep.gpus_per_worker} if sweep.gpus_per_worker else {})}
    resources = ray.tune.PlacementGroupFactory([{"CPU": 0, "memory": 1}] if sweep.elastic else
                                               [bundle] * int(sweep.workers_per_trial))
    base_job = replace(base_job, workers=int(sweep.workers_per_trial), max_workers=sweep.max_workers_per_trial,
                       max_failures=sweep.max_failures,
                       hyperband_unit=sweep.grace if sweep.scheduler == "hyperband" else None)
    trainable = ray.tune.with_resources(ray.tune.with_parameters(run_trial, base_job=base_job), resources)
    # With a filesystem object Tune wants paths without the s3:// prefix; the object (endpoint
    # included) is pickled to every trial.
    filesystem = store.fs if store.remote else None
    if resume:
        _repair_checkpoint_references(store, sweep.name)
        tuner = ray.tune.Tuner.restore(store.path(sweep.name) if store.remote else store.display(sweep.name),
                                       trainable=trainable, resume_unfinished=True, resume_errored=False,
                                       restart_errored=False, storage_filesystem=filesystem)
        # Restore brings back the callbacks pickled at the start; this driver's own (live output,
        # MLflow client) take their place. Ray 2.60 exposes the run config only on the internal tuner.
        tuner._local_tuner.get_run_config().callbacks = callbacks
        return tuner
    param_space = grid_space(space) if sweep.searcher == "grid" else dict(space)
    return ray.tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=ray.tune.TuneConfig(
            num_samples=sweep.num_samples,
            # Each search algorithm limits concurrency itself (Tune ignores max_concurrent_trials for them).
            # Hyperband's brackets fill only with trials that exist: limited to the trials running at once,
            # a bracket never fills, and every trial ran its whole budget. Its trials exist from the
            # start; the cluster's resources still bound how many run at once.
            search_alg=make_searcher(sweep.searcher, sweep.metric, sweep.mode, sweep.seed,
                                     sweep.num_samples if sweep.scheduler == "hyperband" else sweep.max_concurrent,
                                     points),
            scheduler=make_scheduler(sweep.scheduler, sweep.metric, sweep.mode, max_epochs=sweep.max_epochs,
                                     space=space, seed=sweep.seed, grace=sweep.grace),
            # An elastic trial's Train run dies with its actor: a stopped trial must not live on in a reused one.
            reuse_actors=sweep.scheduler != "pbt" and not sweep.elastic,
            trial_name_creator=lambda t: t.trial_id,
            trial_dirname_creator=lambda t: t.trial_id,
        ),
        run_config=ray.tune.RunConfig(
            name=sweep.name,
            storage_path=store.root if store.remote else store.uri,
            storage_filesystem=filesystem,
            verbose=0,
            callbacks=callbacks,
            failure_config=ray.tune.FailureConfig(max_failures=sweep.max_failures),
            # Two checkpoints per trial bound its files; PBT keeps them all (at most one per epoch),
            # since a donor that moves on must not delete the checkpoint a recipient is about to clone.
            checkpoint_config=ray.tune.CheckpointConfig(num_to_keep=None if sweep.scheduler == "pbt" else 2),
        ),
    )


def _repair_checkpoint_references(store, name: str) -> list[str]:
    """Checkpoint retention can delete a trial's checkpoint after the last experiment snapshot named it
    and before the next one (a driver killed in between). Tune would then refuse to restore that trial;
    instead, the trial's newest checkpoint takes the named place, and the trial resumes from there."""
    import re

    import pyarrow.fs as pafs

    sweep_path = store.path(name)
    states = [i.path for i in store.fs.get_file_info(pafs.FileSelector(sweep_path, allow_not_found=True))
              if i.base_name.startswith("experiment_state-") and i.base_name.endswith(".json")]
    repaired = []
    for state in states:
        for entry in json.loads(store.read_text(state)).get("trial_data", []):
            text = json.dumps(entry)
            trial = re.search(r'trial_id\W+([\w-]+)', text)
            if not trial or trial.group(1) not in store.subdirs(sweep_path):
                continue
            trial_path = store.path(name, trial.group(1))
            present = [d for d in store.subdirs(trial_path) if d.startswith("checkpoint_")]
            for missing in sorted(set(re.findall(r"checkpoint_\d{6}", text)) - set(present)):
                if present:
                    pafs.copy_files(f"{trial_path}/{present[-1]}", f"{trial_path}/{missing}",
                                    source_filesystem=store.fs, destination_filesystem=store.fs)
                    repaired.append(f"{trial_path}/{missing}")
    return repaired
