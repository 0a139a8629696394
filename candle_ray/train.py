"""Run one training job on Ray: a single worker as a streaming Ray task, or N DDP workers on Ray Train.

Ray Train costs ~24 s of fixed start-up per fit here, so one worker runs the same loop in a plain Ray
task (same results under the same seed) and only multi-worker jobs pay for a TorchTrainer.
Both paths stream per-epoch metrics back to the driver through `on_epoch`.

Elastic jobs (`--workers MIN-MAX`) are Ray Train V2 runs with ScalingConfig(num_workers=(min, max)):
they start with as many workers as the cluster fits (at least MIN), and Train restarts the worker
group with more workers when nodes join (checked every CANDLE_RAY_ELASTIC_RESIZE_S, default 60 s) or
fewer when a node leaves. Each restart resumes from rank 0's last checkpoint in the run folder, which
every worker must see: one machine, or --output-dir on a shared filesystem.
"""

from __future__ import annotations

import os
import queue as queue_lib
import threading
from dataclasses import replace
from pathlib import Path

import ray

from candle_ray.errors import CandleRayError, TrainingError, UsageError
from candle_ray.runtime import Plan


def device_for(use_gpu: bool):
    import torch

    # Ray sets CUDA_VISIBLE_DEVICES to the task's one GPU, which torch then sees as device 0.
    return torch.device("cuda", 0) if use_gpu else torch.device("cpu")


@ray.remote(num_returns="streaming", max_retries=0)
def _single_worker(job):
    from candle_ray.loop import World, train_epochs

    yield from train_epochs(job, World(device=device_for(job.use_gpu)))


def record_rank(run_dir, rank: int, **extra) -> None:
    """Where this rank runs (node, address, pid), in the run's folder on that node: ranks/rank-<r>.json."""
    import json
    import time

    ctx = ray.get_runtime_context()
    folder = Path(run_dir) / "ranks"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"rank-{rank}.json").write_text(json.dumps({
        "rank": rank, "node_id": ctx.get_node_id(), "ip": ray.util.get_node_ip_address(), "pid": os.getpid(),
        "time": time.time(), **extra}))


def sync_checkpoints(run_dir, world) -> int:
    """Before a (re)started worker group resumes, every rank must see the same newest checkpoint: after a
    resize or a node loss, ranks may sit on nodes whose run folder has an older one or none (no shared
    filesystem). The ranks compare the epochs they hold (one small all-gather); if they differ, the lowest
    rank with the newest sends its files (broadcast) and the others write them. Returns that epoch."""
    import torch
    import torch.distributed as dist

    from candle_ray import checkpoint

    if world.world_size == 1:
        return 0
    if world.device.type == "cuda":
        torch.cuda.set_device(world.device)
    ckpt_dir = Path(run_dir) / "checkpoints"
    try:
        mine = int((checkpoint.pointer(ckpt_dir, "last") or {}).get("epoch") or 0)
        if mine and not (ckpt_dir / checkpoint.pointer(ckpt_dir, "last")["file"]).exists():
            mine = 0
    except CandleRayError:
        mine = 0
    held = [None] * world.world_size
    dist.all_gather_object(held, mine)
    newest = max(held)
    if all(e == newest for e in held):
        return newest
    source = held.index(newest)
    payload = [None]
    if world.rank == source:
        files = {}
        for kind in checkpoint.KINDS:
            pointer = checkpoint.pointer(ckpt_dir, kind)
            if pointer and (ckpt_dir / pointer["file"]).exists():
                files[pointer["file"]] = (ckpt_dir / pointer["file"]).read_bytes()
                files[f"{kind}.json"] = (ckpt_dir / f"{kind}.json").read_bytes()
        payload = [files]
    dist.broadcast_object_list(payload, src=source)
    if mine < newest:  # ranks sharing a node write the same bytes: each through its own temporary name
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        for name in sorted(payload[0], key=lambda n: n.endswith(".json")):  # weights before their pointers
            tmp = ckpt_dir / f".{name}.sync-{os.getpid()}"
            tmp.write_bytes(payload[0][name])
            os.replace(tmp, ckpt_dir / name)
    dist.barrier()
    return newest


def ddp_worker(loop_config: dict):
    import logging

    import ray.train
    import ray.train.torch

    from candle_ray.loop import World, train_epochs

    try:  # Ray Train 2.60 logs every report at INFO on a logger named by file path, past LoggingConfig
        from ray.train.v2._internal.execution import context as train_context

        logging.getLogger(train_context.__file__).setLevel(logging.WARNING)
    except ImportError:
        pass

    job = loop_config["job"]
    ctx = ray.train.get_context()
    world = World(rank=ctx.get_world_rank(), world_size=ctx.get_world_size(), local_rank=ctx.get_local_rank(),
                  device=ray.train.torch.get_device())
    record_rank(job.run_dir, world.rank, world_size=world.world_size)
    sync_checkpoints(job.run_dir, world)
    for metrics in train_epochs(job, world):
        # A barrier: every rank reports every epoch. `workers` shows an elastic run's size per epoch
        # (0 on epochs replayed from a checkpoint: an earlier group trained them).
        ray.train.report({**metrics, "workers": 0 if metrics.get("replayed") else world.world_size})


def _user_error(exc: BaseException) -> CandleRayError | None:
    """The candle-ray error a worker raised (bad data, corrupt cache...), which no retry can fix."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, CandleRayError):
            return exc
        cause = getattr(exc, "cause", None)
        exc = cause if isinstance(cause, BaseException) else (exc.__cause__ or exc.__context__)
    return None


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[-1] if text else ''}"


def run(job, plan: Plan, *, on_epoch, max_failures: int = 1, storage_path: str, run_name: str,
        launcher: str = "auto", log=print) -> None:
    """Train; call `on_epoch(metrics)` in this process for each epoch (replays after a resume included).

    launcher "auto" runs one worker as a Ray task and several on Ray Train; "ray-train" forces Ray Train
    (to check that both give the same numbers); "task" needs workers == 1.
    """
    job = replace(job, threads=plan.threads, use_gpu=plan.use_gpu)
    if launcher == "task" and plan.workers.max != 1:
        raise UsageError(f"the task launcher runs one worker, not {plan.workers}; use --launcher auto")
    if launcher != "ray-train" and plan.workers.max == 1:
        _run_single(job, plan, on_epoch=on_epoch, max_failures=max_failures, log=log)
    else:
        for metrics in ddp_epochs(job, plan, max_failures=max_failures, storage_path=storage_path, run_name=run_name):
            on_epoch(metrics)


def _run_single(job, plan, *, on_epoch, max_failures, log):
    task = _single_worker.options(num_cpus=plan.cpus_per_worker, num_gpus=plan.gpus_per_worker)
    failures = 0
    while True:
        try:
            for ref in task.remote(job):
                on_epoch(ray.get(ref))
            return
        except Exception as exc:  # RayTaskError, WorkerCrashedError, ...
            user = _user_error(exc)
            if user is not None:
                raise user from None
            failures += 1
            if failures > max_failures:
                raise TrainingError(f"training failed after {failures} attempt(s): {_one_line(exc)}; "
                                    f"see the worker log above, or raise --max-failures") from None
            log(f"worker failed ({_one_line(exc)}); resuming from its last checkpoint "
                f"(retry {failures}/{max_failures})")


def _progress_callback(progress_queue):
    """A Train callback that forwards rank 0's per-epoch metrics from the controller to the driver."""
    from ray.train import UserCallback  # Ray Train's import costs ~2 s: only multi-worker jobs pay it

    class ForwardProgress(UserCallback):
        def after_report(self, run_context, metrics, checkpoint):
            progress_queue.put(metrics[0])

    return ForwardProgress()


def elastic_resize_s() -> float:
    return float(os.environ.get("CANDLE_RAY_ELASTIC_RESIZE_S", "60"))


def ddp_epochs(job, plan, *, max_failures, storage_path, run_name):
    """Run the job on Ray Train (fixed or elastic) and yield rank 0's metrics of each epoch as they come.

    A worker group restarted after a failure or a resize replays its checkpoint's epochs (`replayed`)."""
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.util.queue import Queue

    job = replace(job, threads=plan.threads, use_gpu=plan.use_gpu)
    # Train V2 workers hold at most one unread report, and the controller reads them each health check
    # (Ray's default: every 2 s): epochs shorter than that were held to one per 2 s (measured: 0.45 s
    # epochs ran at 2.0 s). Its 0-CPU controller polls more often instead; a dead worker is seen sooner too.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25")
    # No CPU: inside an elastic Tune trial it is placed in the trial's CPU-less placement group.
    progress = Queue(actor_options={"num_cpus": 0})
    resources = {"CPU": plan.cpus_per_worker, **({"GPU": 1} if plan.use_gpu else {})}
    scaling = {}
    if plan.elastic:
        scaling["elastic_resize_monitor_interval_s"] = elastic_resize_s()
        # After a node leaves, Train may still count its resources once and wait for a group that cannot
        # be placed, for this long (Ray's default: 60 s) before it re-decides with what is there. Such a
        # start-up timeout is a controller error: it does not use up --max-failures.
        os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "20")
    trainer = TorchTrainer(
        ddp_worker,
        train_loop_config={"job": job},  # Ray Train hands workers a dict
        torch_config=TorchConfig(backend="nccl" if plan.use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(num_workers=plan.num_workers, use_gpu=plan.use_gpu,
                                               resources_per_worker=resources, **scaling),
        run_config=ray.train.RunConfig(
            # A fixed name: a restarted controller finds its own state again.
            name=run_name,
            storage_path=storage_path,
            failure_config=ray.train.FailureConfig(max_failures=max_failures),
            callbacks=[_progress_callback(progress)],
            logging_config=ray.train.LoggingConfig(log_level="WARNING"),
        ),
    )
    outcome: dict = {}

    def fit():
        try:
            trainer.fit()
        except BaseException as exc:  # handed to the main thread
            outcome["error"] = exc
        finally:
            outcome["done"] = True

    thread = threading.Thread(target=fit, name="candle-ray-fit", daemon=True)
    thread.start()
    try:
        while not outcome.get("done") or not progress.empty():
            try:
                metrics = progress.get(timeout=0.5)
            except queue_lib.Empty:
                continue
            yield metrics
    finally:
        thread.join()
        ray.kill(progress.actor)
    if "error" in outcome:
        exc = outcome["error"]
        user = _user_error(exc)
        if user is not None:
            raise user from None
        raise TrainingError(f"distributed training failed: {_one_line(exc)}; see the worker log above, "
                            f"or raise --max-failures") from None
