"""The only `ray.init` (a local cluster by default, or `--address` / RAY_ADDRESS for an existing one) and
the one resource planner: how big each worker of a `train` job is (`plan`), how many trials of a sweep fit
at once (`trials_at_once`), and how many workers a node holds (`worker_slots`, which `cluster check` also
uses on a cluster YAML's node types). Ray itself is imported by `connect` only."""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass

from candle_ray.errors import CandleRayError, UsageError
from candle_ray.job import Workers

# Quiet, predictable defaults; a user's own setting wins.
_ENV_DEFAULTS = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS": "0",
    "RAY_DATA_DISABLE_PROGRESS_BARS": "1",
    "RAY_DATA_EXECUTION_NO_PROGRESS_TIMEOUT_S": "120",
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",  # no per-trial CSV/JSON/TensorBoard files
    "RAY_AIR_NEW_OUTPUT": "0",  # our own progress lines instead of Tune's tables
    # Checkpoint retention (num_to_keep) forces an experiment-state snapshot when trials checkpoint often;
    # that is the price of bounded files per trial, so Tune's warning about it is noise.
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
}


def set_env_defaults() -> None:
    """Ray's and Tune's switches, where the user has not set them; some are read when ray.tune is imported."""
    for key, value in _ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)


_PROBE_S = 5.0
_FORWARD = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION", "AWS_REGION")  # not credentials


def probe(address: str | None) -> None:
    """Fail fast, before `ray.init` starts or waits for anything, when `address` (host:port of a cluster's
    GCS, or ray://host:port) does not accept a TCP connection. `auto`, `local` and None are left to Ray."""
    import socket

    if not address or address in ("auto", "local"):
        return
    hostport = address.split("://", 1)[1] if "://" in address else address
    host, sep, port = hostport.rstrip("/").rpartition(":")
    if not sep or not port.isdigit() or not host:
        if ":" in hostport or "://" in address:
            raise UsageError(f"--address {address!r} is not host:port (e.g. 10.0.0.5:6379), ray://host:10001 or auto")
        return  # a bare host: Ray adds its default port
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=_PROBE_S).close()
    except OSError as exc:
        reason = "timed out" if isinstance(exc, socket.timeout) else (exc.strerror or str(exc))
        raise UsageError(f"cannot reach a Ray cluster at {address} ({reason}); check --address / RAY_ADDRESS "
                         f"(`ray status` on the head node prints it), or start one there with "
                         f"`ray start --head --port {port}`") from None


def connect(address: str | None = None, *, num_cpus: int | None = None, num_gpus: int | None = None,
            ray_train: bool = True) -> dict:
    """Start or join Ray and return the cluster's resources. Reuses a session already started.

    A local cluster runs the dashboard only for jobs that use Ray Train (`ray_train`): it silences Train
    V2's State-API polling spam, and costs ~1.4 s of start-up that a job without Ray Train saves."""
    set_env_defaults()
    import ray

    # Tune's result analysis looks for the per-trial result files we switch off; it warns per trial.
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)

    if not ray.is_initialized():
        address = address or os.environ.get("RAY_ADDRESS") or None
        probe(address)  # ray.init would retry an unreachable GCS for a long time
        kwargs = dict(logging_level=logging.WARNING, log_to_driver=True)
        if address is None:
            kwargs.update(num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=ray_train, dashboard_host="127.0.0.1")
        else:
            # Workers of an existing cluster do not inherit this shell: they need the S3 endpoint and region to
            # fetch an s3:// cache entry (credentials stay with each node: instance role, profile or env).
            forward = {key: os.environ[key] for key in _FORWARD if os.environ.get(key)}
            if forward:
                kwargs["runtime_env"] = {"env_vars": forward}
        try:
            ray.init(address=address, **kwargs)
        except ConnectionError as exc:
            raise UsageError(f"cannot connect to the Ray cluster at {address!r} ({exc}); "
                             f"check --address / RAY_ADDRESS or start one with `ray start --head`") from None
        except Exception as exc:
            raise CandleRayError(f"Ray failed to start: {type(exc).__name__}: {exc}") from None
    return ray.cluster_resources()


# ------------------------------------------------------------------------------ the resource planner


@dataclass(frozen=True)
class Plan:
    """Resources for one job or one trial: `workers` bundles of one worker's CPUs and GPUs."""

    workers: Workers
    cpus_per_worker: float
    gpus_per_worker: int
    threads: int  # torch's intra-op threads per worker

    @classmethod
    def sized(cls, workers: Workers, cpus_per_worker: float, gpus_per_worker: int) -> Plan:
        """Workers of this size, each with as many torch threads as it has whole CPUs (at least one)."""
        return cls(workers, cpus_per_worker, gpus_per_worker, max(1, int(cpus_per_worker)))

    @property
    def use_gpu(self) -> bool:
        return self.gpus_per_worker > 0

    @property
    def elastic(self) -> bool:
        return self.workers.elastic

    @property
    def num_workers(self):
        """Ray Train's ScalingConfig(num_workers=...): a count, or (min, max) when elastic."""
        return (self.workers.min, self.workers.max) if self.elastic else self.workers.min

    @property
    def bundle(self) -> dict:
        """One worker's resources, as a placement-group bundle."""
        return {"CPU": self.cpus_per_worker, **({"GPU": self.gpus_per_worker} if self.gpus_per_worker else {})}

    def describe(self) -> str:
        return f"{self.workers} (elastic)" if self.elastic else str(self.workers)


def worker_slots(cpus: float | None, gpus: float, cpus_per_worker: float, gpus_per_worker: float) -> int:
    """How many workers of {CPU: cpus_per_worker, GPU: gpus_per_worker} fit in `cpus` and `gpus` (a node's,
    or a whole cluster's). A resource the worker does not ask for, or that is not declared (None), does not
    limit it; a worker that asks for nothing limited fits nowhere."""
    fits = []
    if gpus_per_worker > 0:
        fits.append(math.floor(gpus / gpus_per_worker + 1e-9))
    if cpus_per_worker > 0 and cpus is not None:
        fits.append(math.floor(cpus / cpus_per_worker + 1e-9))
    return min(fits) if fits else 0


def node_resources() -> list[dict]:
    """Each live node's resources: a worker's bundle must fit on one of them."""
    import ray

    return [node["Resources"] for node in ray.nodes() if node.get("Alive")]


def _slots(nodes: list[dict], cpus_per_worker: float, gpus_per_worker: float) -> int:
    return sum(worker_slots(float(n.get("CPU", 0)), float(n.get("GPU", 0)), cpus_per_worker, gpus_per_worker)
               for n in nodes)


def plan(cluster_resources: dict, workers: Workers, *, use_gpu: bool | None = None,
         cpus_per_worker: float | None = None, nodes: list[dict] | None = None) -> Plan:
    """Size the workers of a `train` job from what the cluster has: never ask for more CPUs or GPUs than exist.

    With N workers on C CPUs each worker gets C/N CPUs (a fraction below one CPU, otherwise whole
    CPUs) and as many torch threads, but never more than the largest node has: a worker cannot span
    nodes (`nodes`: each node's resources; unknown, the cluster counts as one node). Ray Train's
    controller takes no CPU and we use no Ray Data read tasks, so the 2-core deadlock of 2 x 1-CPU
    workers + read tasks cannot happen.

    Elastic (MIN-MAX): a worker's size cannot follow the cluster (it grows by nodes joining), so it
    is whole CPUs, C/MAX of today's cluster but at least 1; MIN workers must fit now.
    """
    nodes = nodes or [cluster_resources]
    total_cpus, total_gpus = float(cluster_resources.get("CPU", 0)), int(cluster_resources.get("GPU", 0))
    if use_gpu is None:
        use_gpu = total_gpus > 0
    size = _elastic_worker_cpus if workers.elastic else _fixed_worker_cpus
    cpus = size(workers, total_cpus, total_gpus, use_gpu, cpus_per_worker,
                largest=max(float(n.get("CPU", 0)) for n in nodes))
    sized = Plan.sized(workers, cpus, 1 if use_gpu else 0)
    fit = _slots(nodes, sized.cpus_per_worker, sized.gpus_per_worker)
    if fit < workers.min:
        raise UsageError(f"{workers.min} workers of {sized.cpus_per_worker:g} CPU{' + 1 GPU' if use_gpu else ''} "
                         f"do not fit on the cluster's {len(nodes)} node(s): at most {fit} do (a worker cannot span "
                         f"nodes); lower --cpus-per-worker or --workers")
    return sized


def _fixed_worker_cpus(workers: Workers, total_cpus: float, total_gpus: int, use_gpu: bool,
                       cpus_per_worker: float | None, largest: float) -> float:
    n = workers.min
    if use_gpu and total_gpus < n:
        raise UsageError(f"{n} GPU workers asked for but the cluster has {total_gpus} GPU(s); "
                         f"pass --workers {max(total_gpus, 1)} or --cpu")
    if cpus_per_worker is None:
        share = min(total_cpus / n, largest)
        cpus_per_worker = share if share < 1 else float(math.floor(share))
    if cpus_per_worker <= 0 or cpus_per_worker * n > total_cpus + 1e-9:
        raise UsageError(f"{n} workers x {cpus_per_worker} CPUs do not fit the cluster's {total_cpus:g} CPUs; "
                         f"lower --workers or --cpus-per-worker")
    return cpus_per_worker


def _elastic_worker_cpus(workers: Workers, total_cpus: float, total_gpus: int, use_gpu: bool,
                         cpus_per_worker: float | None, largest: float) -> float:
    low, high = workers.min, workers.max
    if use_gpu and total_gpus < low:
        raise UsageError(f"{low} GPU workers (the minimum) asked for but the cluster has {total_gpus} GPU(s); "
                         f"lower the minimum of --workers or pass --cpu")
    if cpus_per_worker is None:
        cpus_per_worker = max(1.0, float(math.floor(min(total_cpus / high, largest))))
    if cpus_per_worker <= 0 or cpus_per_worker * low > total_cpus + 1e-9:
        raise UsageError(f"the minimum of {low} workers x {cpus_per_worker:g} CPUs does not fit the cluster's "
                         f"{total_cpus:g} CPUs; lower the minimum of --workers or --cpus-per-worker")
    return cpus_per_worker


def trials_at_once(cluster_resources: dict, trial: Plan, requested: int | None, *, autoscale: bool = False,
                   nodes: list[dict] | None = None) -> int:
    """How many trials of this size fit at once, counting workers node by node (`nodes`: each node's
    resources; unknown, the cluster counts as one node); more would only queue drivers that wait for
    workers. Elastic trials count at their minimum size. On an autoscaling cluster (`autoscale`) the
    nodes up now say nothing: `requested` trials run at once, and their waiting placement groups make
    the autoscaler add nodes."""
    if autoscale:
        if not requested:
            raise UsageError("--autoscale needs --max-concurrent N: how many trials run at once once the cluster "
                             "has grown (the nodes up now do not tell)")
        return requested
    fits = _slots(nodes or [cluster_resources], trial.cpus_per_worker, trial.gpus_per_worker) // trial.workers.min
    if fits < 1:
        raise UsageError(f"one trial needs {trial.workers.min} x {trial.cpus_per_worker:g} CPU"
                         f"{' + 1 GPU' if trial.gpus_per_worker else ''} but the cluster has "
                         f"{cluster_resources.get('CPU', 0):g} CPU / {cluster_resources.get('GPU', 0):g} GPU; "
                         f"lower --workers-per-trial or --cpus-per-worker")
    return min(fits, requested) if requested else fits
