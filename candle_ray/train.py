"""Run one training job on Ray: a single worker as a streaming Ray task, or N DDP workers on Ray Train.

Ray Train costs ~24 s of fixed start-up per fit here, so one worker runs the same loop in a plain Ray
task (same results under the same seed) and only multi-worker jobs pay for a TorchTrainer.
Both paths stream per-epoch metrics back to the driver through `on_epoch`.
"""

from __future__ import annotations

import math
import queue as queue_lib
import threading
from dataclasses import dataclass

import ray

from candle_ray.errors import CandleRayError, TrainingError, UsageError


@dataclass(frozen=True)
class Plan:
    """Resources for one job, sized from the cluster so that it can always be scheduled."""

    workers: int
    cpus_per_worker: float
    gpus_per_worker: int
    threads: int

    @property
    def use_gpu(self) -> bool:
        return self.gpus_per_worker > 0


def plan_resources(cluster: dict, workers: int, *, use_gpu: bool | None = None, cpus_per_worker: float | None = None) -> Plan:
    """Size the workers from what the cluster has: never ask for more CPUs or GPUs than exist.

    With N workers on C CPUs each worker gets C/N CPUs (a fraction below one CPU, otherwise whole
    CPUs) and as many torch threads. Ray Train's controller takes no CPU and we use no Ray Data read
    tasks, so the 2-core deadlock of 2 x 1-CPU workers + read tasks cannot happen.
    """
    if workers < 1:
        raise UsageError(f"--workers must be >= 1, got {workers}")
    total_cpus, total_gpus = float(cluster.get("CPU", 0)), int(cluster.get("GPU", 0))
    if use_gpu is None:
        use_gpu = total_gpus > 0
    if use_gpu and total_gpus < workers:
        raise UsageError(f"{workers} GPU workers asked for but the cluster has {total_gpus} GPU(s); "
                         f"pass --workers {max(total_gpus, 1)} or --cpu")
    if cpus_per_worker is None:
        share = total_cpus / workers
        cpus_per_worker = share if share < 1 else float(math.floor(share))
    if cpus_per_worker <= 0 or cpus_per_worker * workers > total_cpus + 1e-9:
        raise UsageError(f"{workers} workers x {cpus_per_worker} CPUs do not fit the cluster's {total_cpus:g} CPUs; "
                         f"lower --workers or --cpus-per-worker")
    return Plan(workers, cpus_per_worker, 1 if use_gpu else 0, max(1, int(cpus_per_worker)))


def device_for(use_gpu: bool):
    import torch

    # Ray sets CUDA_VISIBLE_DEVICES to the task's one GPU, which torch then sees as device 0.
    return torch.device("cuda", 0) if use_gpu else torch.device("cpu")


@ray.remote(num_returns="streaming", max_retries=0)
def _single_worker(job: dict):
    from candle_ray.loop import World, train_epochs

    yield from train_epochs(job, World(device=device_for(job["use_gpu"])))


def ddp_worker(job: dict):
    import logging

    import ray.train
    import ray.train.torch

    from candle_ray.loop import World, train_epochs

    try:  # Ray Train 2.60 logs every report at INFO on a logger named by file path, past LoggingConfig
        from ray.train.v2._internal.execution import context as train_context

        logging.getLogger(train_context.__file__).setLevel(logging.WARNING)
    except ImportError:
        pass

    ctx = ray.train.get_context()
    world = World(rank=ctx.get_world_rank(), world_size=ctx.get_world_size(), local_rank=ctx.get_local_rank(),
                  device=ray.train.torch.get_device())
    for metrics in train_epochs(job, world):
        ray.train.report(metrics)  # a barrier: every rank reports every epoch


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


def run(job: dict, plan: Plan, *, on_epoch, max_failures: int = 1, storage_path: str, run_name: str,
        launcher: str = "auto", log=print) -> None:
    """Train; call `on_epoch(metrics)` in this process for each epoch (replays after a resume included).

    launcher "auto" runs one worker as a Ray task and several on Ray Train; "ray-train" forces Ray Train
    (to check that both give the same numbers); "task" needs workers == 1.
    """
    job = {**job, "threads": plan.threads, "use_gpu": plan.use_gpu}
    if launcher == "task" and plan.workers != 1:
        raise UsageError(f"the task launcher runs one worker, not {plan.workers}; use --launcher auto")
    if launcher != "ray-train" and plan.workers == 1:
        _run_single(job, plan, on_epoch=on_epoch, max_failures=max_failures, log=log)
    else:
        _run_ddp(job, plan, on_epoch=on_epoch, max_failures=max_failures, storage_path=storage_path,
                 run_name=run_name)


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


def _run_ddp(job, plan, *, on_epoch, max_failures, storage_path, run_name):
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.util.queue import Queue

    progress = Queue()
    resources = {"CPU": plan.cpus_per_worker, **({"GPU": 1} if plan.use_gpu else {})}
    trainer = TorchTrainer(
        ddp_worker,
        train_loop_config=job,
        torch_config=TorchConfig(backend="nccl" if plan.use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(num_workers=plan.workers, use_gpu=plan.use_gpu,
                                               resources_per_worker=resources),
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
                on_epoch(progress.get(timeout=0.5))
            except queue_lib.Empty:
                continue
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
