"""Launch one training job on Ray, from its driver: N ranks as a streaming Ray task (rank 0) and peer
actors (candle_ray.ddp), or an elastic run on Ray Train V2.

Ray Train costs ~24 s of fixed start-up per fit here, so fixed-size runs skip it: rank 0 is a plain
Ray task in bundle 0 of the run's placement group and starts its peers in the other bundles, as a
sweep's DDP trial does. Both paths stream per-epoch metrics back to the driver through `on_epoch`.

Elastic jobs (`--workers MIN-MAX`) are Ray Train V2 runs with ScalingConfig(num_workers=(min, max)):
they start with as many workers as the cluster fits (at least MIN), and Train restarts the worker
group with more workers when nodes join (checked every CANDLE_RAY_ELASTIC_RESIZE_S, default 60 s) or
fewer when a node leaves. Each restart resumes from the newest checkpoint any rank's run folder holds
(candle_ray.ddp.sync_checkpoints).
"""

from __future__ import annotations

import contextlib
import os
import queue as queue_lib
import threading
from dataclasses import replace

import ray

from candle_ray.errors import CandleRayError, TrainingError, UsageError
from candle_ray.runtime import Plan


@ray.remote(num_returns="streaming", max_retries=0)
def _rank0(job):
    """Rank 0 of the run (alone, or with its peers in this task's placement group), streaming its epochs."""
    from candle_ray import ddp

    yield from ddp.epochs(job)


def _user_error(exc: BaseException) -> CandleRayError | None:
    """The candle-ray error a worker raised (bad data, corrupt cache...), which no retry can fix: the error
    itself, not Ray's wrapper of it (a RayTaskError is also an instance of the error it wraps, and its text is
    the worker's traceback: the one-line message was "error: ray::_rank0() (pid=..., ip=...)")."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        cause = getattr(exc, "cause", None)
        if isinstance(exc, CandleRayError) and not isinstance(cause, BaseException):
            return exc
        exc = cause if isinstance(cause, BaseException) else (exc.__cause__ or exc.__context__)
    return None


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[-1] if text else ''}"


def sized(job, plan: Plan):
    """The job as its workers run it: the planned workers, their CPUs, threads and device."""
    return replace(job, workers=plan.workers, cpus_per_worker=plan.cpus_per_worker, threads=plan.threads,
                   use_gpu=plan.use_gpu)


def run(job, plan: Plan, *, on_epoch, max_failures: int = 1, storage_path: str, run_name: str,
        launcher: str = "auto", log=print) -> None:
    """Train; call `on_epoch(metrics)` in this process for each epoch (replays after a resume included).

    launcher "auto" runs the ranks as a Ray task and peer actors (candle_ray.ddp), and an elastic run on
    Ray Train; "ray-train" forces Ray Train (to compare both); "task" needs workers == 1.
    """
    job = sized(job, plan)
    if launcher == "task" and plan.workers.max != 1:
        raise UsageError(f"the task launcher runs one worker, not {plan.workers}; use --launcher auto")
    if launcher != "ray-train" and not plan.workers.elastic:
        _run_ranks(job, plan, on_epoch=on_epoch, max_failures=max_failures, log=log)
    else:
        for metrics in ddp_epochs(job, plan, max_failures=max_failures, storage_path=storage_path, run_name=run_name):
            on_epoch(metrics)


def _run_ranks(job, plan, *, on_epoch, max_failures, log):
    """Rank 0 as a streaming task in bundle 0 of the run's placement group (its peers take the other
    bundles); a failed attempt starts again from rank 0's last checkpoint. The group is held across
    attempts, so rank 0 comes back on the node that holds its checkpoints."""
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    group = placement_group([plan.bundle] * plan.workers.min, strategy="PACK")
    ray.get(group.ready())
    task = _rank0.options(num_cpus=plan.cpus_per_worker, num_gpus=plan.gpus_per_worker,
                          scheduling_strategy=PlacementGroupSchedulingStrategy(
                              group, placement_group_bundle_index=0, placement_group_capture_child_tasks=True))
    failures = 0
    try:
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
    finally:
        remove_placement_group(group)


def _drain(progress, outcome: dict):
    """Rank 0's metrics from the progress queue until the fit is done and the queue is empty; the run's
    controller, when it hands itself over, goes to outcome["controller"]."""
    while not outcome.get("done") or not progress.empty():
        try:
            item = progress.get(timeout=0.5)
        except queue_lib.Empty:
            continue
        if isinstance(item, tuple):  # (_CONTROLLER, its actor handle)
            outcome["controller"] = item[1]
        else:
            yield item


def _progress_callback(progress_queue):
    """A Train callback that forwards rank 0's per-epoch metrics from the controller to the driver."""
    from ray.train import UserCallback  # Ray Train's import costs ~2 s: only multi-worker jobs pay it

    class ForwardProgress(UserCallback):
        def after_report(self, run_context, metrics, checkpoint):
            progress_queue.put(metrics[0])

    return ForwardProgress()


_CONTROLLER = "controller"


def _controller_callback(progress_queue):
    """A Train callback that hands the driver its run's controller actor as the controller starts, so that
    a cut-short run can abort it (`_abort`). ControllerCallback is a Ray 2.60 internal: if it moves, the
    run goes on without the hand-over and `_abort` only cancels the resource request."""
    try:
        from ray.train.v2._internal.execution.callback import ControllerCallback
    except ImportError:
        return None

    class HandOverController(ControllerCallback):
        def after_controller_start(self, train_run_context):
            progress_queue.put((_CONTROLLER, ray.get_runtime_context().current_actor))

    return HandOverController()


def elastic_resize_s() -> float:
    return float(os.environ.get("CANDLE_RAY_ELASTIC_RESIZE_S", "60"))


# Ray Train V2's elastic policy sizes the worker group from the nodes that Ray's AutoscalingCoordinator
# actor last saw, and that actor looks at the cluster only every 20 s. A joined node waited up to 20 s
# more to be used, and after a node left, Train tried groups that counted it, each until a start-up
# timeout (node removed: 35 s to the next epoch). Asking it to recompute (a `ray.nodes()` call) every
# few seconds keeps its view as fresh as Ray's own node health. The actor's name and its `recompute`
# argument are Ray internals (2.60): if they change, the refresh stops and the run goes on as Ray has it.
_COORDINATOR = "AutoscalingCoordinator"  # the actor's name, and its namespace's
_CLUSTER_VIEW_REFRESH_S = 2.0


@contextlib.contextmanager
def _fresh_cluster_view():
    """While the block runs, have the AutoscalingCoordinator re-read the cluster's nodes every few seconds."""
    stop = threading.Event()

    def refresh():
        coordinator = None
        while not stop.wait(_CLUSTER_VIEW_REFRESH_S):
            try:
                coordinator = coordinator or ray.get_actor(_COORDINATOR, namespace=_COORDINATOR)
            except ValueError:  # Train's controller has not created it yet
                continue
            try:
                ray.get(coordinator.get_reserved_resources.remote("candle-ray-refresh", recompute=True),
                        timeout=10)
            except Exception:  # noqa: BLE001 - an internal API changed, or the run is ending
                return

    thread = threading.Thread(target=refresh, name="candle-ray-cluster-view", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()


_ABORT_S = 15.0  # for the controller to stop its workers and exit


def _abort(controller, trainer) -> None:
    """Abort a cut-short run (Ctrl-C, an error in on_epoch, a trial Tune stopped) as Train's own Ctrl-C
    handler does, which fit() in a thread does not get: the controller cancels its resource request on
    the AutoscalingCoordinator, stops its workers and exits. Left to die with this driver, the controller
    renews that request every 20 s until it is gone: a renewal after a bare cancel kept the cluster's CPUs
    reserved for 180 s (Ray's expiry), and the next elastic run waited that long without a word (seen in
    CI: 191 s for a test that takes 25). The request is cancelled once more after the controller has gone,
    when nothing can renew it, and as the only step where no controller was handed over."""
    if controller is not None:
        try:
            ray.get(controller.abort.remote(), timeout=_ABORT_S)
        except ray.exceptions.GetTimeoutError:
            ray.kill(controller, no_restart=True)
        except Exception:  # noqa: BLE001 - the actor exits inside abort(): RayActorError is its answer
            pass
    _release_reservation(trainer)


def _release_reservation(trainer) -> None:
    """Cancel the run's resource request on the AutoscalingCoordinator. The requester id is Train's
    ("train-<run id>"), an internal of Ray 2.60 like the coordinator's name: if either changes, the call
    fails and Ray's expiry applies."""
    try:
        coordinator = ray.get_actor(_COORDINATOR, namespace=_COORDINATOR)
        ray.get(coordinator.cancel_request.remote(f"train-{trainer.train_run_context.run_id}"), timeout=5)
    except Exception:  # noqa: BLE001 - best effort: the run is ending either way
        pass


def ddp_epochs(job, plan, *, max_failures, storage_path, run_name):
    """Run the job on Ray Train (fixed or elastic) and yield rank 0's metrics of each epoch as they come.

    A worker group restarted after a failure or a resize replays its checkpoint's epochs (`replayed`)."""
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.util.queue import Queue

    from candle_ray import ddp

    job = sized(job, plan)
    # Train V2 workers hold at most one unread report, and the controller reads them each health check
    # (Ray's default: every 2 s): epochs shorter than that were held to one per 2 s (measured: 0.45 s
    # epochs ran at 2.0 s). Its 0-CPU controller polls more often instead; a dead worker is seen sooner too.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25")
    # No CPU: inside an elastic Tune trial it is placed in the trial's CPU-less placement group.
    progress = Queue(actor_options={"num_cpus": 0})
    scaling = {}
    if plan.elastic:
        scaling["elastic_resize_monitor_interval_s"] = elastic_resize_s()
        # After a node leaves, Train may still count its resources once and wait for a group that cannot
        # be placed, for this long (Ray's default: 60 s) before it re-decides with what is there. Such a
        # start-up timeout is a controller error: it does not use up --max-failures, and an elastic run
        # grows again later, so waiting long buys nothing (node removed: 37 s lost at 20 s, 24 s at 5 s).
        os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "5")
    trainer = TorchTrainer(
        ddp.ray_train_worker,
        train_loop_config={"job": job},  # Ray Train hands workers a dict
        torch_config=TorchConfig(backend="nccl" if plan.use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(num_workers=plan.num_workers, use_gpu=plan.use_gpu,
                                               resources_per_worker=plan.bundle, **scaling),
        run_config=ray.train.RunConfig(
            # A fixed name: a restarted controller finds its own state again.
            name=run_name,
            storage_path=storage_path,
            failure_config=ray.train.FailureConfig(max_failures=max_failures),
            callbacks=[cb for cb in (_progress_callback(progress), _controller_callback(progress)) if cb],
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
        with _fresh_cluster_view() if plan.elastic else contextlib.nullcontext():
            yield from _drain(progress, outcome)
    finally:
        # Cut short (Ctrl-C, an error in on_epoch): waiting for fit() would wait for the whole run. The
        # thread is a daemon: it ends with the aborted controller.
        if outcome.get("done"):
            thread.join()
        else:
            _abort(outcome.get("controller"), trainer)
        ray.kill(progress.actor)
    if "error" in outcome:
        exc = outcome["error"]
        user = _user_error(exc)
        if user is not None:
            raise user from None
        raise TrainingError(f"distributed training failed: {_one_line(exc)}; see the worker log above, "
                            f"or raise --max-failures") from None
