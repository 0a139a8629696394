"""The job a worker runs: one frozen record, made by `make_job` and changed only by `dataclasses.replace`.

The driver (`train` for `candle-ray train`, `sweep` for a search) makes it once; a sweep's trial
replaces `config` with the sampled one and `run_dir` with its folder; DDP peers and cv folds replace
`run_dir` and `cv`. The loop (candle_ray.loop) reads its fields.

`Workers` is the one worker-count type (N, or an elastic MIN-MAX): the CLI's `--workers` and
`--workers-per-trial`, the resource planner (candle_ray.runtime) and `cluster check` all take it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from candle_ray.errors import UsageError


@dataclass(frozen=True)
class Workers:
    """How many workers a job (`--workers`) or a trial (`--workers-per-trial`) runs on: N (min == max),
    or an elastic MIN-MAX that Ray Train grows and shrinks with the cluster
    (ScalingConfig(num_workers=(min, max))). MIN must fit for it to start."""

    min: int
    max: int

    def __post_init__(self):
        if type(self.min) is not int or type(self.max) is not int:  # bool is an int too
            raise UsageError(f"a worker count is a whole number N or a range MIN-MAX (1-4), "
                             f"not {self.min!r}-{self.max!r}")
        if self.min < 1:
            raise UsageError(f"{self.min} workers: need at least 1" if self.min == self.max
                             else f"{self.min}-{self.max}: the minimum must be at least 1 worker")
        if self.min > self.max:
            raise UsageError(f"{self.min}-{self.max}: the minimum ({self.min}) is larger than the maximum ({self.max})")

    @classmethod
    def parse(cls, value) -> Workers:
        """Workers from 4, "4", "1-4", (1, 4) or Workers; UsageError with a one-line reason otherwise."""
        if isinstance(value, cls):
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            return cls(value, value)
        if isinstance(value, (tuple, list)) and len(value) == 2:
            return cls(*value)
        text = str(value).strip()
        low, dash, high = text.partition("-")
        try:
            return cls(int(low), int(high) if dash else int(low))
        except ValueError:
            raise UsageError(f"{text!r} is neither a worker count (4) nor a range MIN-MAX (1-4)") from None

    @property
    def elastic(self) -> bool:
        return self.max > self.min

    def __str__(self) -> str:
        return f"{self.min}-{self.max}" if self.elastic else str(self.min)


@dataclass(frozen=True)
class Job:
    config: dict  # the experiment's CANDLE keywords (epochs, batch_size, learning_rate, optimizer, ...)
    model: str  # registry name
    task: str  # classification | regression | autoencoder | multitask
    model_shape: dict  # {"input_dim", "classes"} from the cache manifest (the loop widens it for UQ heads)
    entry: str  # absolute path of the prepared cache entry
    metric: str  # the objective (best checkpoint, early stopping)
    mode: str
    followed: tuple = ()  # a sweep's other objectives, which its searcher follows too
    run_dir: str = ""  # absolute; checkpoints go to run_dir/checkpoints
    data: dict | None = None  # features, scaler, classes: what prediction needs, kept in checkpoints
    precision: str = "auto"  # auto | fp32 | bf16 | fp16
    feed: str = "auto"  # auto | memory | stream
    threads: int = 0  # intra-op threads per worker (0: torch's default)
    use_gpu: bool = False
    fault: dict | None = None  # {"epoch", "rank", "marker"}: kill this worker once (fault-tolerance tests)
    cv: dict | None = None  # one fold's run: {"assignment": fold of each train+val row, "fold": k}
    all_rows: bool = False  # `train --all-rows`: train+val together, no validation, the newest epoch is the model
    # A sweep's trials
    work_dir: str = ""  # the sweep's folder: trials go to work_dir/trials/<id>
    workers: Workers = Workers(1, 1)  # DDP workers per trial; elastic: a Ray Train run of MIN-MAX workers
    cpus_per_worker: float = 1.0
    max_failures: int = 1  # an elastic trial's Ray Train restarts
    tune_checkpoint_s: float = 0.0  # least time between checkpoints handed to Tune
    hyperband_unit: int | None = None  # Hyperband's time unit in epochs
    cv_assignment: object = None  # `tune --cv`: the fold of each train+val row
    cv_folds: int | None = None  # `tune --cv K`: every trial trains K folds in lockstep
    ddp_timeout_s: float = 300.0  # a DDP peer that dies fails the others within this
    conditional: tuple = ()  # keys a sweep searches under a condition: None there keeps the default

    def __post_init__(self):
        # Scripts and tests write the fields as plain values: workers=2, or "1-4".
        object.__setattr__(self, "workers", Workers.parse(self.workers))

    @property
    def last_every_s(self) -> float:
        """Least time between the loop's `last` checkpoints (0: as ckpt_save_interval says): a Tune trial's
        restores read only what it handed Tune, so a `last` between hand-overs would never be read; an elastic
        trial's Ray Train workers, and a `train` run, resume from the folder's newest `last`."""
        return 0.0 if self.workers.elastic else float(self.tune_checkpoint_s)

    def described(self) -> dict:
        """The job as config.json records it (without the data description and fold arrays)."""
        return {k: v for k, v in asdict(self).items() if k not in ("data", "cv_assignment")}


def make_job(experiment, config: dict, entry, *, metric: str | None = None, mode: str | None = None, **settings) -> Job:
    """The job for `experiment` with `config` on the prepared cache `entry`; `settings` are Job fields."""
    from candle_ray.data.features import describe
    from candle_ray.experiment import model_shape

    return Job(config=config, model=experiment.model, task=entry.manifest["task"], model_shape=model_shape(entry),
               entry=str(entry.path), metric=metric or experiment.metric, mode=mode or experiment.mode,
               data=describe(entry), precision=config.get("precision", "auto"), **settings)


def as_job(job: Job | dict) -> Job:
    """A Job from a Job or from the plain dict of the same fields (scripts and tests write those)."""
    return job if isinstance(job, Job) else Job(**job)  # an unknown key is a TypeError there
