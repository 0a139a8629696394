"""The per-worker training loop: pure PyTorch, no Ray.

`train_epochs(job, world)` yields one metrics dict per epoch. Ray Train workers forward each to
`ray.train.report`; the one-worker fast path streams them from a Ray task. The loop is the same in
both, so one worker gives the same numbers either way under the same seed.

`job` is a plain dict built by the driver (candle_ray.train.make_job):
  config       the experiment's CANDLE keywords (epochs, batch_size, learning_rate, optimizer, ...)
  model        registry name; model_shape {"input_dim", "classes"} from the cache manifest
  entry        absolute path of the prepared cache entry
  run_dir      absolute path; checkpoints go to run_dir/checkpoints
  metric, mode the experiment's objective (for the best checkpoint and early stopping)
  threads      intra-op threads per worker; precision "auto" | "fp32" | "bf16" | "fp16"
  fault        optional {"epoch", "rank", "marker"}: kill this worker process once (fault-tolerance tests)
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

from candle_ray import checkpoint, models
from candle_ray.data.cache import open_split
from candle_ray.data.feed import BatchFeed, as_tensor, make_feed


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


def make_optimizer(name: str, params, lr: float, momentum: float = 0.0):
    """CANDLE's optimizer names with Keras' default hyperparameters (candle keras_default_config)."""
    optim = torch.optim
    makers = {
        "sgd": lambda: optim.SGD(params, lr=lr, momentum=momentum),
        "adam": lambda: optim.Adam(params, lr=lr, betas=(0.9, 0.999), eps=1e-8),
        "rmsprop": lambda: optim.RMSprop(params, lr=lr, alpha=0.9, eps=1e-8),
        "adagrad": lambda: optim.Adagrad(params, lr=lr, initial_accumulator_value=0.1, eps=1e-8),
        "adadelta": lambda: optim.Adadelta(params, lr=lr, rho=0.95, eps=1e-8),
        "adamax": lambda: optim.Adamax(params, lr=lr, betas=(0.9, 0.999), eps=1e-8),
        "nadam": lambda: optim.NAdam(params, lr=lr, betas=(0.9, 0.999), eps=1e-8),
    }
    return makers[name]()


class ReduceLROnPlateau:
    """Keras' ReduceLROnPlateau (CANDLE: monitor val_loss, factor 0.1, patience 10, min_delta 1e-4).

    Keras reduces when `wait >= patience` (PyTorch's scheduler waits one epoch longer), so it is
    written out here to keep CANDLE's schedule; its state goes into checkpoints.
    """

    def __init__(self, optimizer, *, mode="min", factor=0.1, patience=10, min_delta=1e-4, cooldown=0, min_lr=0.0):
        self.optimizer, self.mode, self.factor = optimizer, mode, factor
        self.patience, self.min_delta, self.cooldown, self.min_lr = patience, min_delta, cooldown, min_lr
        self.best, self.wait, self.cooldown_counter = (math.inf if mode == "min" else -math.inf), 0, 0

    def _improved(self, value: float) -> bool:
        return value < self.best - self.min_delta if self.mode == "min" else value > self.best + self.min_delta

    def step(self, value: float) -> None:
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.wait = 0
        if self._improved(value):
            self.best, self.wait = value, 0
        elif self.cooldown_counter <= 0:
            self.wait += 1
            if self.wait >= self.patience:
                for group in self.optimizer.param_groups:
                    group["lr"] = max(group["lr"] * self.factor, self.min_lr)
                self.cooldown_counter, self.wait = self.cooldown, 0

    def state_dict(self) -> dict:
        return {"best": self.best, "wait": self.wait, "cooldown_counter": self.cooldown_counter}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.wait, self.cooldown_counter = state["best"], state["wait"], state["cooldown_counter"]


def autocast_dtype(precision: str, device: torch.device):
    if device.type != "cuda" or precision == "fp32":
        return None
    if precision == "fp16":
        return torch.float16
    if precision == "bf16" or torch.cuda.is_bf16_supported():  # auto: bf16 where the GPU has it
        return torch.bfloat16
    return torch.float16


def _maybe_inject_fault(job: dict, world: World, epoch: int) -> None:
    fault = job.get("fault")
    if not fault or fault["epoch"] != epoch or fault.get("rank", 0) != world.rank:
        return
    marker = Path(fault["marker"])
    if marker.exists():
        return
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(f"killed rank {world.rank} at epoch {epoch}\n")
    os.kill(os.getpid(), signal.SIGKILL)  # a real worker death, not an exception


def _aligned(out, target):
    """A regressor's [B, 1] output against its [B] targets (MSELoss would broadcast them to [B, B])."""
    return out.squeeze(-1) if out.dim() == target.dim() + 1 and out.shape[-1] == 1 else out


def _objective(model, out, target, loss_fn, reconstruct: bool):
    """The training loss; a VAE adds its KL term as CANDLE does (mean KL / features)."""
    loss = loss_fn(_aligned(out.float(), target), target)
    kl = getattr(model, "kl", None) if reconstruct else None
    if kl is not None:
        loss = loss + kl.float().mean() / target.shape[1]
    return loss


def _evaluate(model, x: np.ndarray, y: np.ndarray, world: World, loss_fn, task: str, batch: int, amp):
    """Validation over this rank's rows (every world_size-th row, no padding); sums all-reduced.

    totals: loss sum, correct, count; for regression and reconstruction the sums that give Pearson's r
    (CANDLE's `corr`) and R² over all values: sum a, sum b, sum ab, sum a², sum b², number of values,
    and the sum of absolute errors (MAE).
    """
    device = world.device
    totals = torch.zeros(10, dtype=torch.float64, device=device)
    rows = np.arange(world.rank, len(y), world.world_size)
    xt, yt = as_tensor(x), as_tensor(y)
    model.eval()
    with torch.no_grad():
        for start in range(0, len(rows), batch):
            idx = torch.from_numpy(rows[start:start + batch])
            xb = xt.index_select(0, idx).to(device, non_blocking=True)
            target = xb if task == "autoencoder" else yt.index_select(0, idx).to(device, non_blocking=True)
            with amp:
                out = model(xb)
            out = _aligned(out.float(), target)
            totals[0] += loss_fn(out, target).double() * len(idx)
            if task == "classification":
                totals[1] += (out.argmax(1) == target).sum()
            else:  # regression (targets of shape [B] against outputs [B, 1]) or reconstruction
                a, b = target.double().flatten(), out.double().flatten()
                totals[3:10] += torch.stack([a.sum(), b.sum(), (a * b).sum(), (a * a).sum(), (b * b).sum(),
                                             torch.tensor(float(a.numel()), dtype=torch.float64, device=device),
                                             (a - b).abs().sum()])
            totals[2] += len(idx)
    world.all_reduce_sum(totals)
    return totals


def _fit_metrics(t) -> dict:
    """corr (Pearson's r), r2 (1 - SS_res / SS_tot, as CANDLE's r2) and mae from _evaluate's sums."""
    sa, sb, sab, saa, sbb, n, abs_err = (v.item() for v in t[3:10])
    cov, va, vb = sab / n - sa * sb / n**2, saa / n - (sa / n) ** 2, sbb / n - (sb / n) ** 2
    ss_res = saa - 2 * sab + sbb  # sum (a - b)^2
    return {"val_corr": cov / math.sqrt(va * vb) if va > 0 and vb > 0 else 0.0,
            "val_r2": 1 - ss_res / (va * n) if va > 0 else 0.0, "val_mae": abs_err / n}


def train_epochs(job: dict, world: World) -> Iterator[dict]:
    config = job["config"]
    torch.set_num_threads(max(1, int(job.get("threads") or torch.get_num_threads())))
    device = world.device
    if device.type == "cuda":
        torch.cuda.set_device(device)
        # cuDNN picks the fastest convolution algorithms for NT3's fixed shapes; TF32 for fp32 matmuls.
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    seed = int(config.get("rng_seed", 0))
    seed_everything(seed)

    entry = job["entry"]
    task = job["task"]
    classification, reconstruct = task == "classification", task == "autoencoder"
    batch_size = int(config["batch_size"])
    # CANDLE's batch_size is the global batch: each of N workers takes 1/N of it.
    per_worker = max(1, math.ceil(batch_size / world.world_size))
    feed = make_feed(entry, "train", per_worker, shuffle=True, seed=seed, rank=world.rank,
                     world_size=world.world_size, mode=job.get("feed", "auto"))
    if device.type == "cuda" and isinstance(feed, BatchFeed):
        # An NT3 split is ~270 MB: keep it on the GPU and skip a pageable host-to-device copy per step.
        free, _ = torch.cuda.mem_get_info(device)
        if feed.x.numel() * feed.x.element_size() < free / 4:
            feed.to(device)
    x_val, y_val = open_split(entry, "val")

    model = models.build(job["model"], {**config, **job["model_shape"]}).to(device)
    optimizer = make_optimizer(config["optimizer"], model.parameters(), float(config["learning_rate"]),
                               float(config.get("momentum", 0.0)))
    mode = job["mode"]
    plateau = ReduceLROnPlateau(optimizer, mode="min", factor=float(config.get("reduce_lr_factor", 0.1)),
                                patience=int(config.get("reduce_lr_patience", 10)),
                                min_delta=float(config.get("reduce_lr_min_delta", 1e-4)))
    loss_fn = nn.CrossEntropyLoss() if classification else nn.MSELoss()
    amp_dtype = autocast_dtype(job.get("precision", "auto"), device)
    amp = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else nullcontext()
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

    ckpt_dir = Path(job["run_dir"]) / "checkpoints"
    metric = job["metric"]
    best = {"metric": metric, "value": None, "epoch": None}
    history: list[dict] = []
    start_epoch, elapsed_before, bad_epochs = 0, 0.0, 0
    state = checkpoint.load(ckpt_dir, "last", missing_ok=True)
    if state is not None:  # resume after a worker failure: weights, optimizer, schedules and RNG
        model.load_state_dict(state["weights"])
        optimizer.load_state_dict(state["optimizer"])
        if state["config"].get("learning_rate") != config["learning_rate"]:
            # PBT cloned another trial's weights with a perturbed learning rate: this trial's rate wins.
            for group in optimizer.param_groups:
                group["lr"] = float(config["learning_rate"])
        plateau.load_state_dict(state["plateau"])
        torch.set_rng_state(state["rng"])
        start_epoch, best, history = state["epoch"], state["best"], state["history"]
        elapsed_before, bad_epochs = state["elapsed_s"], state["bad_epochs"]
        for past in history:
            yield {**past, "replayed": True}
    ddp_model = world.wrap(model)
    regularized = hasattr(model, "regularization_loss")

    t_start = time.monotonic() - elapsed_before
    timeout = float(config.get("timeout", -1))
    epochs = int(config["epochs"])
    for epoch in range(start_epoch + 1, epochs + 1):
        _maybe_inject_fault(job, world, epoch)
        t0 = time.perf_counter()
        ddp_model.train()
        totals = torch.zeros(3, dtype=torch.float64, device=device)
        for xb, yb in feed.epoch(epoch):
            xb = xb.to(device, non_blocking=True)
            yb = yb.to(device, non_blocking=True)
            with amp:
                out = ddp_model(xb)
                loss = _objective(model, out, xb if reconstruct else yb, loss_fn, reconstruct)
                if regularized:  # e.g. P1B2's L2 on kernels and activities, as Keras adds it
                    loss = loss + model.regularization_loss()
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            # Accumulate on the device: no host sync per step.
            totals[0] += loss.detach().double() * len(yb)
            if classification:
                totals[1] += (out.detach().argmax(1) == yb).sum()
            totals[2] += len(yb)
        world.all_reduce_sum(totals)
        train_s = time.perf_counter() - t0
        val = _evaluate(ddp_model, x_val, y_val, world, loss_fn, task, max(per_worker, 256), amp)
        loss_v, val_loss = (totals[0] / totals[2]).item(), (val[0] / val[2]).item()
        metrics = {"epoch": epoch, "loss": loss_v, "val_loss": val_loss,
                   "lr": optimizer.param_groups[0]["lr"]}
        if classification:
            metrics["accuracy"] = (totals[1] / totals[2]).item()
            metrics["val_accuracy"] = (val[1] / val[2]).item()
        elif reconstruct:
            metrics["val_corr"] = _fit_metrics(val)["val_corr"]
        else:
            metrics.update(_fit_metrics(val))
        metrics["epoch_time_s"] = time.perf_counter() - t0
        metrics["samples_per_s"] = totals[2].item() / train_s if train_s > 0 else 0.0
        if not all(math.isfinite(metrics[k]) for k in ("loss", "val_loss")):
            metrics["stop_reason"] = "non-finite loss"

        if config.get("reduce_lr", True):
            plateau.step(val_loss)
        value = metrics.get(metric)
        improved = value is not None and (best["value"] is None or
                                          (value < best["value"] if mode == "min" else value > best["value"]))
        if improved:
            best, bad_epochs = {"metric": metric, "value": value, "epoch": epoch}, 0
        else:
            bad_epochs += 1
        elapsed = time.monotonic() - t_start
        if config.get("early_stop") and bad_epochs >= int(config.get("early_stop_patience", 10)):
            metrics["stop_reason"] = f"early stop: no {metric} improvement in {bad_epochs} epochs"
        if timeout > 0 and elapsed >= timeout and epoch < epochs:
            metrics["stop_reason"] = f"timeout: {elapsed:.0f}s >= {timeout:.0f}s"
        history.append(metrics)

        # CANDLE's ckpt_save_interval (0 = only the final epoch) and ckpt_save_best; NT3 at full size
        # writes 1.2 GB per checkpoint, which a fast GPU epoch should not pay every time.
        interval = int(config.get("ckpt_save_interval", 1))
        last_epoch = epoch == epochs or "stop_reason" in metrics
        kinds = [k for k, due in (("last", last_epoch or (interval > 0 and epoch % interval == 0)),
                                  ("best", improved and config.get("ckpt_save_best", True))) if due]
        if world.rank == 0 and kinds:
            checkpoint.save(ckpt_dir, {
                "model": job["model"], "config": config, "model_shape": job["model_shape"],
                "weights": model.state_dict(), "optimizer": optimizer.state_dict(),
                "plateau": plateau.state_dict(), "rng": torch.get_rng_state(), "epoch": epoch,
                "best": best, "history": history, "elapsed_s": elapsed, "bad_epochs": bad_epochs,
                "origin": job["run_dir"],  # which run wrote it: PBT hands checkpoints between trials
            }, kinds=kinds)
        yield {**metrics, "best_epoch": best["epoch"]}
        if "stop_reason" in metrics:
            break
