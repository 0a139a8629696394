"""The per-worker training loop: pure PyTorch, no Ray.

`train_epochs(job, world)` yields one metrics dict per epoch. Ray Train workers forward each to
`ray.train.report`; the one-worker fast path streams them from a Ray task. The loop is the same in
both, so one worker gives the same numbers either way under the same seed. With `selects_best=False`
(`tune --cv`'s folds) its caller picks the best epoch (the folds' mean) and early-stops on it: the loop
then writes no checkpoint itself, and the caller keeps the epochs it needs (`keep` in each result).

`job` is a candle_ray.job.Job (its fields say what each is) made by the driver: candle_ray.train for
`train`, candle_ray.sweep for a trial, which replaces the config with the sampled one and adds its folder.
"""

from __future__ import annotations

import math
import os
import random
import signal
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch import nn

from candle_ray import checkpoint, models, objectives
from candle_ray.data import folds, noise, remote_cache, subsample
from candle_ray.data.cache_format import read_manifest
from candle_ray.data.feed import make_feed, split_labels
from candle_ray.data.spec import strata
from candle_ray.errors import UsageError
from candle_ray.job import Job, as_job
from candle_ray.lr_schedule import RateSchedule, ReduceLROnPlateau
from candle_ray.summary import direction, improves, tie_value
from candle_ray.usage import EpochUsage


@dataclass
class World:
    """Where this worker sits: rank, world size and device (DDP when world_size > 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.world_size > 1:
            torch.distributed.all_reduce(tensor)
        return tensor

    def gather_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """Every rank's [n_rank, k] rows, rank after rank, on every rank (through all-reduces of zero-padded
        copies: sums are the one collective World needs elsewhere)."""
        if self.world_size == 1:
            return rows
        counts = torch.zeros(self.world_size, dtype=torch.int64, device=rows.device)
        counts[self.rank] = rows.shape[0]
        self.all_reduce_sum(counts)
        padded = torch.zeros(self.world_size, int(counts.max()), rows.shape[1], dtype=rows.dtype, device=rows.device)
        padded[self.rank, : rows.shape[0]] = rows
        self.all_reduce_sum(padded)
        return torch.cat([padded[r, : int(n)] for r, n in enumerate(counts.tolist())])

    def wrap(self, model: nn.Module) -> nn.Module:
        if self.world_size == 1:
            return model
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def make_optimizer(name: str, params, lr: float, momentum: float = 0.0, weight_decay: float = 0.0):
    """CANDLE's optimizer names with Keras' default hyperparameters (candle keras_default_config).

    `weight_decay` (CANDLE's L2 regularisation, for every model) applies to kernels only (parameters of
    two or more dimensions, as Keras' kernel_regularizer), never to biases or normalisation scales.
    adam and nadam decay the weights decoupled from the gradient (AdamW / NAdamW: w -= lr·wd·w each
    step), since an L2 term in Adam's gradient is divided by its running scale and barely regularises;
    sgd, rmsprop, adagrad, adadelta and adamax add wd·w to the gradient, the same as an L2 penalty of
    wd/2·||w||² in the loss. Typical values with adam: 0.1..3 for a few hundred rows (few steps, and the
    shrink per step is lr·wd), 1e-3..1e-1 for large data; 1e-5..1e-3 with the others.
    """
    optim = torch.optim
    params = list(params)
    groups = params
    if weight_decay:
        groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": float(weight_decay)},
                  {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    adam = optim.AdamW if weight_decay else optim.Adam
    makers = {
        "sgd": lambda: optim.SGD(groups, lr=lr, momentum=momentum),
        "adam": lambda: adam(groups, lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0),
        "rmsprop": lambda: optim.RMSprop(groups, lr=lr, alpha=0.9, eps=1e-8),
        "adagrad": lambda: optim.Adagrad(groups, lr=lr, initial_accumulator_value=0.1, eps=1e-8),
        "adadelta": lambda: optim.Adadelta(groups, lr=lr, rho=0.95, eps=1e-8),
        "adamax": lambda: optim.Adamax(groups, lr=lr, betas=(0.9, 0.999), eps=1e-8),
        "nadam": lambda: optim.NAdam(groups, lr=lr, betas=(0.9, 0.999), eps=1e-8,
                                     decoupled_weight_decay=bool(weight_decay)),
    }
    from candle_ray.eager import eager_optimizer

    return eager_optimizer(makers[name])


OPTIMIZER_KEYS = ("learning_rate", "momentum", "weight_decay")


def apply_optimizer_keys(optimizer, config: dict) -> None:
    """Make a restored optimizer use this config's learning rate, momentum and weight decay.

    `load_state_dict` brings back the saved hyperparameters with the moments; when PBT clones a donor's
    checkpoint into a trial whose keys it perturbed, the trial's own values must win, or a perturbed
    momentum or weight decay would silently be the donor's.
    """
    for group in optimizer.param_groups:
        group["lr"] = float(config["learning_rate"])
        if "momentum" in group:
            group["momentum"] = float(config.get("momentum", 0.0))
        if group.get("weight_decay"):  # the kernels' group; biases stay undecayed
            group["weight_decay"] = float(config.get("weight_decay", 0.0))


def autocast_dtype(precision: str, device: torch.device):
    if device.type != "cuda" or precision == "fp32":
        return None
    if precision == "fp16":
        return torch.float16
    if precision == "bf16" or torch.cuda.is_bf16_supported():  # auto: bf16 where the GPU has it
        return torch.bfloat16
    return torch.float16


def _maybe_inject_fault(job: Job, world: World, epoch: int) -> None:
    fault = job.fault
    if not fault or fault["epoch"] != epoch or fault.get("rank", 0) != world.rank:
        return
    marker = Path(fault["marker"])
    if marker.exists():
        return
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(f"killed rank {world.rank} at epoch {epoch}\n")
    os.kill(os.getpid(), signal.SIGKILL)  # a real worker death, not an exception


def _objective(model, out, target, objective, reconstruct: bool):
    """The training loss; a VAE adds its KL term as CANDLE does (mean KL / features)."""
    loss = objective.loss(out, target)
    kl = getattr(model, "kl", None) if reconstruct else None
    if kl is not None:
        loss = loss + kl.float().mean() / target.shape[1]
    return loss


def _conditioned(xb: torch.Tensor, yb: torch.Tensor, condition: int) -> torch.Tensor:
    """P1B1's cvae input: the features, then the one-hot class (the cancer type), as CANDLE's conditional VAE."""
    if not condition:
        return xb
    return torch.cat([xb, torch.nn.functional.one_hot(yb.long(), condition).to(xb.dtype)], 1)


def _evaluate(model, feed, world: World, objective, task: str, amp, condition: int = 0):
    """Validation over this rank's rows (`feed`: unshuffled, unpadded, every world_size-th row); the
    objective's sums (candle_ray.objectives: loss, accuracy, AUROC histograms, regression sums, ...)
    all-reduced, or an objective's per-row values from every rank (`gathers_rows`: survival)."""
    device = world.device
    totals = torch.zeros(objective.eval_width, dtype=torch.float64, device=device)
    rows = []
    model.eval()
    with torch.no_grad():
        for xb, yb in feed.epoch(0):
            xb = xb.to(device, non_blocking=True)
            target = xb if task == "autoencoder" else yb.to(device, non_blocking=True)
            with amp:
                out = model(_conditioned(xb, yb.to(device), condition))
            if objective.gathers_rows:
                rows.append(objective.eval_sums(out, target))
            else:
                totals += objective.eval_sums(out, target)
    if objective.gathers_rows:
        return world.gather_rows(torch.cat(rows) if rows else totals.reshape(0, objective.eval_width))
    world.all_reduce_sum(totals)
    return totals


def _monitored(config: dict, metric: str, mode: str, objective) -> tuple[str, str]:
    """The metric and mode ReduceLROnPlateau follows: `reduce_lr_metric` (CANDLE's monitor; default
    val_loss, as in most benchmarks; ATTN's is val_auroc), with the experiment's mode when it is the
    experiment's metric and the metric's natural direction otherwise. Both it and the experiment's
    metric must be ones the objective reports."""
    name = config.get("reduce_lr_metric") or "val_loss"
    reported = objective.metric_names()
    for key, value in (("reduce_lr_metric", name), ("metric", metric)):
        if value not in reported:
            raise UsageError(f"{key}={value!r} is not reported by training with this loss and dataset; "
                             f"use one of {', '.join(reported)}")
    return name, mode if name == metric else direction(name)


def _prepare_device(device) -> None:
    if device.type == "cuda":
        torch.cuda.set_device(device)
        # cuDNN picks the fastest convolution algorithms for NT3's fixed shapes; TF32 for fp32 matmuls.
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def _folds(job: Job) -> dict | None:
    """The rows a run trains on as a fold ({"assignment": fold of each train+val row, "fold": k}): a cv fold's,
    all of train+val for `--all-rows`, or None (the train split)."""
    return folds.every_row(job.entry) if job.all_rows else job.cv


def _make_feeds(job: Job, world: World, per_worker: int, seed: int, keep=None):
    """Train, validation (none with `--all-rows`) and (where the data hold one) test feeds for this worker's
    share of the rows; the training feed over the rows `keep` alone where train_fraction chose them."""
    entry, cv = job.entry, _folds(job)
    shard = {"rank": world.rank, "world_size": world.world_size}
    eval_batch = max(per_worker, 256)
    if cv:
        feed = folds.fold_feed(entry, cv, "train", per_worker, shuffle=True, seed=seed, **shard)
        val_feed = None if job.all_rows else folds.fold_feed(entry, cv, "val", eval_batch, shuffle=False, pad=False,
                                                             **shard)
    else:
        feed = make_feed(entry, "train", per_worker, shuffle=True, seed=seed,
                         mode=subsample.feed_mode(entry, keep, job.feed), **shard)
        # Validation: every world_size-th row of the val split, in order, each counted once (no padding).
        val_feed = make_feed(entry, "val", eval_batch, shuffle=False, mode="memory", pad=False, **shard)
    feed = subsample.keep_rows(feed, keep)
    noise.add_noise(feed, job.config, seed, job.task)  # CANDLE's noise studies: the training rows only
    # A held-out test split (P1B3's unseen drugs x cell lines, ATTN's test partition) is scored each epoch.
    test_feed = None
    if not job.cv and "test" in read_manifest(entry)["splits"]:
        test_feed = make_feed(entry, "test", eval_batch, shuffle=False, mode="memory", pad=False, **shard)
    if world.device.type == "cuda":
        # An NT3 split is ~270 MB: keep in-memory feeds (a joined feed: its feature tables and row columns) on
        # the GPU and skip a pageable host-to-device copy per step; joined batches are then gathered there.
        for placed in (feed, val_feed):
            free, _ = torch.cuda.mem_get_info(world.device)
            if hasattr(placed, "nbytes") and placed.nbytes < free / 4:
                placed.to(world.device)
    return feed, val_feed, test_feed


def _train_labels(job: Job, keep=None):
    """The labels of the rows the run trains on (class weights and a regressor's target scaler fit them)."""
    cv = _folds(job)
    labels = folds.fold_labels(job.entry, cv, "train") if cv else split_labels(job.entry, "train")
    return labels if keep is None else labels[keep]


def _kept_rows(job: Job, seed: int):
    """The training rows a train_fraction below 1 keeps (subsample.chosen), or None."""
    share = subsample.fraction(job.config)
    if share >= 1:
        return None
    labels = _train_labels(job)
    by = strata(job.task, labels)
    return subsample.chosen(labels if by is None else by, share, seed, by is not None,
                            folds.train_groups(job.entry, _folds(job)))


def _build_model(job: Job, objective, device):
    """The model with the output width its objective needs; returns (model, shape as built, condition width)."""
    config, task = job.config, job.task
    shape = objectives.head_shape(config, task, job.model_shape)  # het x2, qtl x3, abstention +1 unit
    condition = 0
    if task == "autoencoder" and config.get("model") == "cvae":  # condition on the class, appended to the input
        condition = int(read_manifest(job.entry)["num_classes"])
        shape = {**shape, "input_dim": shape["input_dim"] + condition, "condition_dim": condition}
    try:
        model = models.build(job.model, {**config, **shape}).to(device)
    except ValueError as exc:  # the config does not fit the data: a usage error, which launch never retries
        raise UsageError(f"model {job.model} cannot be built for {read_manifest(job.entry)['name']} "
                         f"({shape['input_dim']} features): {exc}; change the config (--set, --config-file) "
                         f"or the data") from None
    objective.init_head(model)
    return model, shape, condition


def _make_schedule(optimizer, config: dict, mode: str) -> RateSchedule:
    """The run's learning-rate schedule: Keras' ReduceLROnPlateau with CANDLE's reduce_lr_* keys, warm-up or
    the cyclic rate (candle_ray.lr_schedule)."""
    plateau = ReduceLROnPlateau(optimizer, mode=mode, factor=float(config.get("reduce_lr_factor", 0.1)),
                                patience=int(config.get("reduce_lr_patience", 10)),
                                min_delta=float(config.get("reduce_lr_min_delta", 1e-4)),
                                cooldown=int(config.get("reduce_lr_cooldown", 0)),
                                min_lr=float(config.get("reduce_lr_min_lr", 0.0)))
    return RateSchedule(optimizer, config, plateau)


def _restore(ckpt_dir: Path, config: dict, model, optimizer, schedule, objective) -> dict | None:
    """Resume after a worker failure (or a PBT clone): weights, optimizer, schedules and RNG; returns the
    checkpoint's progress (epoch, best, history, elapsed_s, bad_epochs), or None for a fresh start."""
    state = checkpoint.load(ckpt_dir, "last", missing_ok=True)
    if state is None:
        return None
    model.load_state_dict(state["weights"])
    if "optimizer" in state:  # else slimmed once the trial ended (checkpoint.slim), which a resume restarts
        optimizer.load_state_dict(state["optimizer"])  # only when its driver died before Tune recorded the end
    if any(state["config"].get(k) != config.get(k) for k in OPTIMIZER_KEYS):
        apply_optimizer_keys(optimizer, config)  # a PBT clone: the donor's moments, this trial's keys
    schedule.load_state_dict(state["plateau"])  # the key older checkpoints have: the plateau's state
    objective.load_state_dict(state.get("objective", {}))  # abstention's adapted alpha
    torch.set_rng_state(state["rng"])
    return state


def _step_settings(job: Job, device, condition: int) -> dict:
    """What every training step uses: the device, mixed precision (autocast and fp16's loss scaler), and
    whether the target is the input (autoencoders) and how many class columns condition it (cvae)."""
    amp_dtype = autocast_dtype(job.precision, device)
    return {"device": device, "reconstruct": job.task == "autoencoder", "condition": condition,
            "amp": torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else nullcontext(),
            "scaler": torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)}


def _train_one_epoch(ddp_model, model, feed, epoch: int, objective, optimizer, step: dict):
    """One pass over this worker's training rows; returns the objective's sums, still on the device."""
    device, reconstruct, amp, scaler = step["device"], step["reconstruct"], step["amp"], step["scaler"]
    after_step = step["after_step"]
    regularized = hasattr(model, "regularization_loss")
    ddp_model.train()
    totals = torch.zeros(objective.train_width, dtype=torch.float64, device=device)
    for xb, yb in feed.epoch(epoch):
        xb = xb.to(device, non_blocking=True)
        yb = yb.to(device, non_blocking=True)
        with amp:
            out = ddp_model(_conditioned(xb, yb, step["condition"]))
            loss = _objective(model, out, xb if reconstruct else yb, objective, reconstruct)
            if regularized:  # e.g. P1B2's L2 on kernels and activities, as Keras adds it
                loss = loss + model.regularization_loss()
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        if after_step:  # a cyclic learning rate moves after every step
            after_step()
        # Accumulate on the device: no host sync per step.
        with torch.no_grad():
            totals += objective.train_sums(out, xb if reconstruct else yb, loss.detach())
    return totals


def early_stop_reason(config: dict, metric: str, bad_epochs: int) -> str | None:
    """CANDLE's early_stop: `bad_epochs` epochs in a row without a better `metric`, against its patience."""
    if config.get("early_stop") and bad_epochs >= int(config.get("early_stop_patience", 10)):
        return f"early stop: no {metric} improvement in {bad_epochs} epochs"
    return None


def _stop_reason(config: dict, metric: str, bad_epochs: int | None, elapsed: float, epoch: int) -> str | None:
    """Why the run ends after `epoch`, or None; `bad_epochs` None: early stopping is the caller's."""
    timeout, epochs = float(config.get("timeout", -1)), int(config["epochs"])
    if bad_epochs is not None and (reason := early_stop_reason(config, metric, bad_epochs)):
        return reason
    if timeout > 0 and elapsed >= timeout and epoch < epochs:
        return f"timeout: {elapsed:.0f}s >= {timeout:.0f}s"
    return None


class _Checkpoints:
    """The loop's checkpoint writes (rank 0's), of two kinds for two readers.

    `last` resumes the run: the weights with the optimizer's state, the schedules' and the RNG's. It is
    written every `ckpt_save_interval` epochs (CANDLE's; 0: only the final one) and at the final epoch;
    for a Tune trial no more often than `job.last_every_s`, the pace at which it hands Tune a checkpoint:
    its restores read only those. `best` is the model: the best epoch's weights, written when an epoch
    improves on the best, without the optimizer's state unless it is the `last` too (only resuming reads
    it, and Adam's is twice the weights). On 61,860 features a [256, 64] MLP's weights are 63 MB and
    Adam's state 127 MB more; writing both every epoch took 57% of a 5-fold trial's time.

    A loop that does not select its best epoch (`tune --cv`'s folds) writes nothing itself: each of its
    results carries `keep(kinds, value)`, with which its caller writes that epoch's checkpoint, once,
    while the loop waits at that result.
    """

    def __init__(self, job: Job, world: World, selects_best: bool, parts: dict):
        self.dir, self.on, self.selects_best = Path(job.run_dir) / "checkpoints", world.rank == 0, selects_best
        self.interval = int(job.config.get("ckpt_save_interval", 1))
        self.save_best = bool(job.config.get("ckpt_save_best", True))
        self.every_s, self.written_at = float(job.last_every_s), None
        self.parts = parts  # the model, optimizer, schedule and objective, and what prediction needs
        self.progress: dict = {}

    def end_epoch(self, progress: dict, final: bool, improved: bool) -> dict:
        """Write what this epoch is due (`progress`: its epoch, best, history, elapsed_s, bad_epochs);
        returns what its result carries."""
        self.progress, epoch = progress, progress["epoch"]
        if not self.selects_best:
            return {"keep": self._keeper(epoch)} if self.on else {}
        last = final or (self.interval > 0 and epoch % self.interval == 0 and
                         (self.written_at is None or time.monotonic() - self.written_at >= self.every_s))
        self.write([k for k, due in (("last", last), ("best", improved and self.save_best)) if due])
        return {}

    def write(self, kinds: list[str], value: float | None = None) -> None:
        if not (self.on and kinds):
            return
        p = self.parts
        state = {"model": p["model_name"], "config": p["config"], "model_shape": p["shape"],  # as built (UQ head)
                 "weights": p["model"].state_dict(), "plateau": p["schedule"].state_dict(),
                 "objective": p["objective"].state_dict(), "rng": torch.get_rng_state(), **self.progress,
                 "origin": p["origin"],  # which run wrote it: PBT hands checkpoints between trials
                 "data": p["data"]}  # features, scalers, classes: prediction needs no cache or experiment
        if "last" in kinds:
            state["optimizer"] = p["optimizer"].state_dict()
            self.written_at = time.monotonic()
        checkpoint.save(self.dir, state, kinds=kinds, value=value)

    def _keeper(self, epoch: int):
        kept = []

        def keep(kinds: list[str], value: float | None = None) -> None:
            if self.progress["epoch"] != epoch or kept:
                raise RuntimeError(f"epoch {epoch}'s checkpoint can be kept once, before the loop goes on")
            kept.append(epoch)
            self.write(list(kinds), value)
        return keep


def _prediction_data(job: Job, objective) -> dict | None:
    """What prediction needs besides the weights: features, their scaler, classes, a regressor's target
    scaler (its outputs are standardised targets), and a cv fold model's fold (it trained on the other
    folds of train+val, so predict knows the val file's rows trained it; so did an `--all-rows` model's)."""
    data = job.data
    if data is not None and getattr(objective, "target_scaler", None):
        data = {**data, "target_scaler": objective.target_scaler}
    if data is not None and job.all_rows:  # every labelled row trained it
        data = {**data, "all_rows": True}
    elif data is not None and job.cv:
        data = {**data, "cv_fold": int(job.cv["fold"])}
    return data


def _judged(job: Job, metrics: dict, best: dict, bad_epochs: int) -> tuple[bool, dict, int]:
    """(whether this epoch is the run's model now, the best epoch so far, epochs since then): the best value
    of the job's metric; with `--all-rows`, which has no validation rows, always the newest epoch."""
    metric, epoch = job.metric, metrics["epoch"]
    if job.all_rows:
        return True, {"metric": metric, "value": None, "epoch": epoch}, 0
    tie = tie_value(metrics, metric)
    if improves(metrics.get(metric), best["value"], job.mode, tie, best.get("tie")):
        return True, {"metric": metric, "value": metrics[metric], "epoch": epoch, "tie": tie}, 0
    return False, best, bad_epochs + 1


def train_epochs(job: Job | dict, world: World, *, selects_best: bool = True) -> Iterator[dict]:
    job = as_job(job)  # scripts and tests may pass the fields as a dict
    config, task, device = job.config, job.task, world.device
    torch.set_num_threads(max(1, int(job.threads or torch.get_num_threads())))
    _prepare_device(device)
    remote_cache.ensure_local(job.entry)  # an S3 entry is read from this node's verified copy, fetched once per node
    seed = int(config.get("rng_seed", 0))
    seed_everything(seed)
    # CANDLE's batch_size is the global batch: each of N workers takes 1/N of it.
    per_worker = max(1, math.ceil(int(config["batch_size"]) / world.world_size))
    keep = _kept_rows(job, seed)  # train_fraction's rows; None: all of them
    feed, val_feed, test_feed = _make_feeds(job, world, per_worker, seed, keep)
    objective = objectives.make(config, task, job.model_shape, device=device,
                                train_labels=lambda: _train_labels(job, keep))
    model, shape, condition = _build_model(job, objective, device)
    optimizer = make_optimizer(config["optimizer"], model.parameters(), float(config["learning_rate"]),
                               float(config.get("momentum", 0.0)), float(config.get("weight_decay", 0.0)))
    plateau_metric, plateau_mode = _monitored(config, job.metric, job.mode, objective)
    schedule = _make_schedule(optimizer, config, plateau_mode)
    step = {**_step_settings(job, device, condition), "after_step": schedule.after_step}

    metric = job.metric
    state = _restore(Path(job.run_dir) / "checkpoints", config, model, optimizer, schedule, objective) or {
        "epoch": 0, "best": {"metric": metric, "value": None, "epoch": None}, "history": [], "elapsed_s": 0.0,
        "bad_epochs": 0}
    start_epoch, best, history = state["epoch"], state["best"], state["history"]
    elapsed_before, bad_epochs = state["elapsed_s"], state["bad_epochs"]
    for past in history:
        yield {**past, "replayed": True}
    ddp_model = world.wrap(model)
    saver = _Checkpoints(job, world, selects_best, {
        "model_name": job.model, "config": config, "shape": shape, "model": model, "optimizer": optimizer,
        "schedule": schedule, "objective": objective, "origin": job.run_dir, "data": _prediction_data(job, objective)})

    def evaluate(split_feed):
        return objective.eval_metrics(_evaluate(ddp_model, split_feed, world, objective, task, step["amp"], condition))

    t_start, epochs = time.monotonic() - elapsed_before, int(config["epochs"])
    usage = EpochUsage(device) if world.rank == 0 and config.get("system_metrics", True) else None  # rank 0 reports
    for epoch in range(start_epoch + 1, epochs + 1):
        _maybe_inject_fault(job, world, epoch)
        schedule.begin_epoch(epoch)
        t0 = time.perf_counter()
        totals = _train_one_epoch(ddp_model, model, feed, epoch, objective, optimizer, step)
        world.all_reduce_sum(totals)
        train_s = time.perf_counter() - t0
        metrics = {"epoch": epoch, **objective.train_metrics(totals), **(evaluate(val_feed) if val_feed else {}),
                   "lr": optimizer.param_groups[0]["lr"]}
        if test_feed is not None:  # CANDLE's P1B3 reports test loss and accuracy every epoch too
            metrics.update({f"test_{k[len('val_'):]}": v for k, v in evaluate(test_feed).items() if k.startswith("val_")})
        metrics.update(epoch_time_s=time.perf_counter() - t0, n_params=sum(p.numel() for p in model.parameters()),
                       samples_per_s=totals[1].item() / train_s if train_s > 0 else 0.0,
                       **(usage.sample() if usage else {}))
        if not all(math.isfinite(metrics[k]) for k in ("loss", "val_loss") if k in metrics):
            metrics["stop_reason"] = "non-finite loss"
        schedule.end_epoch(metrics.get(plateau_metric, math.nan))  # --all-rows: none to follow (train.for_all_rows)
        objective.end_epoch(epoch, metrics)
        improved, best, bad_epochs = _judged(job, metrics, best, bad_epochs)
        elapsed = time.monotonic() - t_start
        reason = _stop_reason(config, metric, bad_epochs if selects_best else None, elapsed, epoch)
        if reason and "stop_reason" not in metrics:
            metrics["stop_reason"] = reason
        history.append(metrics)

        carried = saver.end_epoch({"epoch": epoch, "best": best, "history": history, "elapsed_s": elapsed,
                                   "bad_epochs": bad_epochs}, epoch == epochs or "stop_reason" in metrics, improved)
        yield {**metrics, "best_epoch": best["epoch"], **carried}
        if "stop_reason" in metrics:
            break
