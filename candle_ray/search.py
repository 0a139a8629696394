"""A search's configuration on the driver: the sweep's settings (`Sweep`), its searcher and scheduler, the
space checks, how many trials fit at once, and the Tuner (new or restored). The trials themselves run
candle_ray.trial on the workers; candle_ray.callbacks follows them."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, replace

from candle_ray import runtime

runtime.set_env_defaults()  # before ray.tune reads its switches

import ray  # noqa: E402
import ray.tune  # noqa: E402
import ray.tune.schedulers  # noqa: E402
import ray.tune.search  # noqa: E402

from candle_ray import budget, conditional, samplers  # noqa: E402
from candle_ray.callbacks import DriverCallbacks, ForgetEndedTrialStatistics  # noqa: E402
from candle_ray.errors import UsageError  # noqa: E402
from candle_ray.job import Workers  # noqa: E402
from candle_ray.trial import HYPERBAND_TIME, run_trial  # noqa: E402

# What PBT may change in a running trial: hyperparameters that do not change the model's shape.
PBT_MUTABLE = ("learning_rate", "dropout", "momentum", "weight_decay", "batch_size")


@dataclass(frozen=True)
class Sweep:
    """A sweep's settings: what `--resume` must find unchanged."""

    name: str
    searcher: str
    scheduler: str
    num_samples: int
    workers: Workers  # per trial; sweep.json records it as workers_per_trial + max_workers_per_trial
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
    grace_period: int = 0  # epochs before a scheduler may stop a trial; 0 = grace_period_rule(max_epochs)
    searcher_options: dict = field(default_factory=dict)  # a GA's population and probabilities (samplers.GASettings)
    # Objectives beyond `metric`, [[metric, mode], ...]: the searcher optimises them all, the sweep reports their
    # Pareto front; `metric` alone picks each trial's best epoch and drives the schedulers.
    also: list = field(default_factory=list)
    keep_checkpoints: int = 0  # finished trials whose weights are kept, the best (candle_ray.retention); 0: all
    warm_up: bool = False  # a trial's learning rate may warm up (warmup_lr on or searched): see grace_period_rule

    @classmethod
    def from_record(cls, record: dict) -> Sweep:
        """The settings that `record` (sweep.json's "sweep") holds; sweeps started before elastic trials
        have no max_workers_per_trial."""
        fields = dict(record)
        low, high = int(fields.pop("workers_per_trial")), int(fields.pop("max_workers_per_trial", 0) or 0)
        return cls(workers=Workers(low, max(low, high)), **fields)

    def record(self) -> dict:
        """The settings as sweep.json keeps them, so that older sweeps still resume: the worker count is
        workers_per_trial (the minimum) and max_workers_per_trial (the maximum, 0 when fixed)."""
        fields = {k: v for k, v in asdict(self).items() if k != "workers"}
        return {**fields, "workers_per_trial": self.workers.min,
                "max_workers_per_trial": self.workers.max if self.workers.elastic else 0}

    @property
    def trial_plan(self) -> runtime.Plan:
        """One trial's resources: its workers, each with the sweep's CPUs and GPUs per worker."""
        return runtime.Plan.sized(self.workers, self.cpus_per_worker, self.gpus_per_worker)

    @property
    def objectives(self) -> tuple[tuple[str, str], ...]:
        return ((self.metric, self.mode), *(tuple(pair) for pair in self.also))

    @property
    def grace(self) -> int:
        return self.grace_period or grace_period_rule(self.max_epochs, self.warm_up)


def grace_period_rule(max_epochs: int, warm_up: bool = False) -> int:
    """Epochs every trial runs before ASHA, Hyperband or the median rule may stop it: an eighth of the
    epoch budget, at least 1 (60 epochs -> 8, 20 -> 3, 8 or fewer -> 1). Early epochs on a small
    validation split say little about where a trial ends, and the first rung decides the most trials
    (`--grace-period` overrides it). Where a trial may warm its learning rate up, at least the first epoch
    at its full rate (CANDLE's warm-up takes 5): a trial still warming up is not compared with one that is not."""
    from candle_ray.lr_schedule import WARMUP_EPOCHS

    rule = max(1, math.ceil(max_epochs / 8)) if max_epochs > 8 else 1
    return min(max_epochs, max(rule, WARMUP_EPOCHS + 1)) if warm_up else rule


# What schedulers and searchers follow. The searcher learns each trial's worth, its best epoch
# (candle_ray.summary); ASHA, Hyperband and the median rule compare trials by their best epoch so far,
# so one noisy epoch does not stop a trial; PBT compares the weights trials have now.
def followed_metric(metric: str, scheduler: str | None = None) -> str:
    from candle_ray.summary import PREFIX

    return metric if scheduler == "pbt" else PREFIX + metric


# Hyperband has no grace period of its own: its smallest bracket decides after max_t / eta^s epochs.
# Counting its time in units of the grace period (the trial reports it) makes that smallest step one grace period.


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


def make_searcher(name: str, metric: str, mode: str, seed: int, max_concurrent: int, points: list[dict] | None = None,
                  options: dict | None = None, warm=None, also=(), sweep: str | None = None):
    """random and grid: Tune's variant generator (seeded; grid spaces expand to every combination);
    optuna, gp, cmaes, ga, bohb: an Optuna sampler (candle_ray.samplers), seeded, limited to the trials that
    run at once so it learns from finished ones, its study holding `warm`'s points (a WarmStart) as
    trials already evaluated, and optimising `also`'s objectives ([(metric, mode), ...]) too; members: exactly
    the given configurations (an ensemble's members, a cv's folds). The first two propose nothing once
    `sweep`'s --time-budget has run out (candle_ray.budget)."""
    if name == "members":
        return MembersSearcher(points or [], followed_metric(metric), mode, max_concurrent)
    if name in samplers.MODEL_BASED:
        from candle_ray.optuna_search import LabelledChoices

        objectives = [(metric, mode), *also]
        chooser = LabelledChoices(metric=[followed_metric(m) for m, _ in objectives] if also else followed_metric(metric),
                                  mode=[d for _, d in objectives] if also else mode,
                                  sampler=samplers.sampler(name, seed, options),
                                  points_to_evaluate=warm.points if warm else None,
                                  evaluated_rewards=warm.values if warm else None)
        return budget.LimiterUntilDeadline(chooser, max_concurrent, sweep)
    return budget.VariantsUntilDeadline(sweep, random_state=seed, max_concurrent=max_concurrent)


def pbt_mutations(space: dict) -> dict:
    """The keys PBT perturbs. A choice among values is handed over as their list: PBT then moves a clone to a
    neighbouring value, where a Tune choice domain is multiplied by 0.8 or 1.2 as if continuous (Khan:
    batch_size 64 of [16, 32, 64] became 77)."""
    from ray.tune.search.sample import Categorical

    mutations = {k: list(v.categories) if isinstance(v, Categorical) else v for k, v in space.items()
                 if k in PBT_MUTABLE}
    if not mutations:
        raise UsageError(f"PBT needs at least one of {', '.join(PBT_MUTABLE)} in the search space to perturb; "
                         f"the space has {', '.join(space)}")
    return mutations


class WithinSpace:
    """PBT's explore step multiplies a continuous value by 0.8 or 1.2 without looking at its range: a dropout
    of 0.9 becomes 1.08 (torch refuses it), a learning rate walks out of the searched range. This puts each
    perturbed value back inside its key's range (a class, not a closure: Tune pickles the scheduler)."""

    def __init__(self, space: dict):
        from ray.tune.search.sample import Float, Integer

        self.bounds = {k: (d.lower, d.upper) for k, d in space.items() if isinstance(d, Float)}
        self.bounds |= {k: (d.lower, d.upper - 1) for k, d in space.items() if isinstance(d, Integer)}  # exclusive

    def __call__(self, config: dict) -> dict:
        for key, (low, high) in self.bounds.items():
            if key in config:
                config[key] = type(config[key])(min(max(config[key], low), high))
        return config


def validate(searcher: str, scheduler: str, space: dict, objectives: int = 1) -> None:
    """Refuse, before anything starts, a space, scheduler or number of objectives the searcher cannot use."""
    conditional.check(space, searcher, scheduler)
    if searcher == "grid":
        grid_space(space)
    if scheduler == "pbt":
        if objectives > 1:
            raise UsageError("PBT clones the weights of the trials best on one metric; with several --metric use "
                             "--scheduler asha, median or fifo")
        pbt_mutations(space)
    if objectives > 1 and searcher == "cmaes":
        raise UsageError("--search cmaes optimises one metric; with several --metric use --search optuna, gp, ga, "
                         "bohb or random")
    samplers.check(searcher, scheduler, space)


# Keys whose value changes what val_loss measures (a Gaussian NLL, a pinball loss, an abstention loss are not
# squared errors or cross-entropies): trials that differ in them cannot be ranked by it. Each maps to what it
# is where it is not set (a conditional key a trial did not search, a key the config leaves out).
LOSS_KEYS = {"loss": "default", "abstention": "False"}


def _values(domain, default) -> set | None:
    """The values a space entry can take (`default` where a conditional key is not searched), or None when
    they cannot be listed."""
    from ray.tune.search.sample import Categorical, Domain

    if isinstance(domain, conditional.Conditional):
        inner = _values(domain.then, default)
        return None if inner is None else {default, *inner}
    if isinstance(domain, Categorical):
        return {str(v) for v in domain.categories}
    return None if isinstance(domain, Domain) else {str(domain)}


def check_ranked_losses(space: dict, config: dict, metrics) -> None:
    """Refuse a search that ranks trials by val_loss while it varies what val_loss is."""
    from candle_ray.objectives import LOSS_ALIASES

    ranked = [m for m in metrics if m in ("val_loss", "loss")]
    for key in (k for k in LOSS_KEYS if k in space and ranked):
        values = _values(space[key], str(config.get(key, LOSS_KEYS[key])))
        if key == "loss" and values is not None:
            values = {LOSS_ALIASES.get(v, v) for v in values}
        if values is None or len(values) > 1:
            shown = ", ".join(sorted(values)) if values else "a range"
            raise UsageError(f"the search varies {key} ({shown}), so the trials' {ranked[0]} values are different "
                             f"losses and cannot be ranked; rank by another metric (e.g. --metric val_r2 --mode max "
                             f"or --metric val_accuracy --mode max) or fix it with --set {key}=VALUE")


class SkipEndedTrials:
    """Mixin for Tune's FIFO, ASHA and median schedulers: the same choice of the next trial (the first PENDING
    one, else the first PAUSED one, in Tune's order) without walking every ended trial at each of Tune's steps.
    Tune's walk made the driver's bookkeeping grow with the sweep (6,000 trials: its share of the driver's
    CPU 3.5 % early, 13.1 % late). Ended trials never run again within a Tune run, so the ones at the head
    of Tune's list (it only appends, and moves a retried trial to the end) are skipped once."""

    _ENDED = ("TERMINATED", "ERROR")

    def choose_trial_to_run(self, tune_controller):
        trials = tune_controller.get_trials()
        # The position belongs to this list: another controller's (a restored sweep's) starts at its head.
        owner, start = getattr(self, "_ended_head", (None, 0))
        start = start if owner == id(trials) and start <= len(trials) else 0
        while start < len(trials) and trials[start].status in self._ENDED:
            start += 1
        self._ended_head = (id(trials), start)
        for wanted in ("PENDING", "PAUSED"):
            for i in range(start, len(trials)):
                if trials[i].status == wanted:
                    return trials[i]
        return None

    # Pickled with the Tuner (--resume): the position belongs to this process's list. (ASHA's own save() copies
    # __dict__ as it is, but Tune 2.60 never calls it; the list's id above guards that case too.)
    def __getstate__(self):
        state = dict(self.__dict__)
        state.pop("_ended_head", None)
        return state


# Named at module level: Tune pickles the scheduler with the sweep's Tuner, for --resume.
class FIFOScheduler(SkipEndedTrials, ray.tune.schedulers.FIFOScheduler):
    pass


class ASHAScheduler(SkipEndedTrials, ray.tune.schedulers.ASHAScheduler):
    pass


class MedianStoppingRule(SkipEndedTrials, ray.tune.schedulers.MedianStoppingRule):
    pass


def make_scheduler(name: str, metric: str, mode: str, *, max_epochs: int, space: dict, seed: int, grace: int = 1,
                   brackets: int = 1):
    schedulers = ray.tune.schedulers
    common = {"metric": followed_metric(metric, name), "mode": mode, "time_attr": "epoch"}
    if name == "fifo":
        return FIFOScheduler()
    if name == "asha":
        return ASHAScheduler(max_t=max_epochs, grace_period=min(grace, max_epochs), reduction_factor=3,
                             brackets=brackets, **common)
    if name == "hyperband":
        # stop_last_trials=False: a trial of the last round trains on to its own last epoch instead of being
        # paused there for its bracket, which Ray 2.60 never stopped when the bracket's last trial ended on its
        # own (on_trial_remove skips a finished bracket's clean-up): the sweep then waited forever.
        return schedulers.HyperBandScheduler(**{**common, "time_attr": HYPERBAND_TIME}, stop_last_trials=False,
                                             max_t=max(1, math.ceil(max_epochs / grace)), reduction_factor=3)
    if name == "median":
        return MedianStoppingRule(grace_period=grace, min_samples_required=3, **common)
    mutations = pbt_mutations(space)
    interval = max(1, max_epochs // 4)
    import random

    random.seed(seed)  # PBT's explore draws from the random module
    return schedulers.PopulationBasedTraining(perturbation_interval=interval, hyperparam_mutations=mutations,
                                              quantile_fraction=0.25, resample_probability=0.25,
                                              custom_explore_fn=WithinSpace(mutations), **common)


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
    if isinstance(domain, (int, float)) and not isinstance(domain, bool):  # a constant (a GA file's "constant")
        return int(domain)
    return default


# ---------------------------------------------------------------------------------- the tuner


def trial_name(trial) -> str:
    """A trial's name and folder: its id. A module function, which Tune pickles by name into every trial's
    saved state; a lambda is pickled by value, 1.2 KB per trial and use (2.4 KB of each trial's state)."""
    return trial.trial_id


def build_tuner(*, sweep: Sweep, space: dict, base_job, store, callbacks: list, resume: bool,
                points: list[dict] | None = None, warm=None):
    """A new Tuner (its searcher warm-started with `warm`, a WarmStart), or the sweep's own Tuner restored
    from its experiment state, with as many trials as the sweep now asks for (`tune --resume --num-samples`)."""
    # One bundle per worker: bundle 0 is the trial actor itself (rank 0), the others host its peers.
    # An elastic trial's actor only drives Ray Train, whose workers have their own placement group.
    trial = sweep.trial_plan
    resources = ray.tune.PlacementGroupFactory([{"CPU": 0, "memory": 1}] if trial.elastic else
                                               [trial.bundle] * trial.workers.min)
    base_job = replace(base_job, max_failures=sweep.max_failures,  # its workers: sweep._trial_job
                       hyperband_unit=sweep.grace if sweep.scheduler == "hyperband" else None)
    trainable = ray.tune.with_resources(ray.tune.with_parameters(run_trial, base_job=base_job), resources)
    # With a filesystem object Tune wants paths without the s3:// prefix; the object (endpoint
    # included) is pickled to every trial.
    filesystem = store.fs if store.remote else None
    # Registers this driver's callbacks under the name, with one that frees each ended trial's Tune statistics.
    callbacks = [DriverCallbacks(sweep.name, [*callbacks, ForgetEndedTrialStatistics()])]
    if resume:
        if sweep.searcher in samplers.MODEL_BASED:  # restored from the sweep's state: sampler() is not called
            samplers.quiet_replayed_steps()
        _repair_checkpoint_references(store, sweep.name)
        raise_trial_budget(store, sweep.name, sweep.num_samples)
        tuner = ray.tune.Tuner.restore(store.path(sweep.name) if store.remote else store.display(sweep.name),
                                       trainable=trainable, resume_unfinished=True, resume_errored=False,
                                       restart_errored=False, storage_filesystem=filesystem)
        return tuner  # with the DriverCallbacks pickled at the start, which forward to this driver's
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
                                     points, sweep.searcher_options, warm, sweep.also, sweep.name),
            scheduler=make_scheduler(sweep.scheduler, sweep.metric, sweep.mode, max_epochs=sweep.max_epochs,
                                     space=space, seed=sweep.seed, grace=sweep.grace,
                                     brackets=samplers.BOHB_BRACKETS if sweep.searcher == "bohb" else 1),
            # An elastic trial's Train run dies with its actor: a stopped trial must not live on in a reused one.
            reuse_actors=not sweep.workers.elastic,
            trial_name_creator=trial_name,
            trial_dirname_creator=trial_name,
        ),
        run_config=ray.tune.RunConfig(
            name=sweep.name,
            storage_path=store.root if store.remote else store.uri,
            storage_filesystem=filesystem,
            verbose=0,
            callbacks=callbacks,
            stop=budget.TrialStopper(sweep.name),  # --time-budget
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


def raise_trial_budget(store, name: str, num_samples: int) -> int:
    """Grow a sweep to `num_samples` trials: Tune keeps its trial budget in the searcher's saved state (newest
    file by name, as Tune reads it), which a restored Tuner takes over; raised there, the restored searcher
    (its history included) goes on proposing. Returns the trials added (0 when the budget already holds)."""
    import pyarrow.fs as pafs
    import ray.cloudpickle as cloudpickle

    found = [i.path for i in store.fs.get_file_info(pafs.FileSelector(store.path(name), allow_not_found=True))
             if i.base_name.startswith(("search_gen_state-", "basic-variant-state-"))]
    if not found:
        return 0  # no snapshot yet: the restored Tuner starts from its own (first) budget
    path = max(found, key=lambda p: p.rsplit("/", 1)[-1])
    with store.fs.open_input_stream(path) as f:
        state = cloudpickle.loads(f.readall())
    finished = state.get("finished", state.get("_finished"))
    added = _raise_budget(state, num_samples)
    if added or finished != state.get("finished", state.get("_finished")):
        temporary = f"{path}.tmp-grow"
        with store.fs.open_output_stream(temporary) as f:
            f.write(cloudpickle.dumps(state))
        store.fs.move(temporary, path)
    return added


def _raise_budget(state: dict, num_samples: int) -> int:
    """A searcher's saved state with a budget of `num_samples`: a SearchGenerator counts trials; the variant
    generator (random, grid) counts samples of its spec (whole grids with grid search) in its iterators."""
    if "total_samples" in state:
        added = max(0, num_samples - state["total_samples"])
        state["total_samples"] += added
        # Finished with trials left: the sweep ran out of its --time-budget; its remaining trials come now.
        state["finished"] = state["finished"] and state["counter"] >= state["total_samples"]
        return added
    iterators = state["_iterators"]
    samples = sum(it.num_samples for it in iterators)
    extra = max(0, num_samples - samples)
    per_sample = state["_total_samples"] // max(1, samples)  # 1, or a grid's combinations
    if extra:
        iterators[-1].num_samples += extra
        iterators[-1].num_samples_left += extra
        state["_total_samples"] += extra * per_sample
    state["_finished"] = state["_finished"] and not any(it.num_samples_left for it in iterators)
    return extra * per_sample
