"""`candle-ray cluster check`: will this `ray up` cluster YAML run this experiment's trials?

Offline: Ray's own JSON schema and node-type rules for cluster configs (no cloud call), then the
arithmetic candle-ray's sweeps do on a live cluster (runtime.worker_slots, which runtime.trials_at_once
uses too): one trial is `workers_per_trial` bundles of {CPU: cpus_per_worker, GPU: gpus_per_worker} (an
elastic MIN-MAX trial counts at MIN, what it needs to start), and Ray may place them on one node or
several. A trial asking for GPUs on a cluster whose node types declare none, or needing more bundles
than the cluster can grow to (max_workers), is refused with one line (exit 2).
"""

from __future__ import annotations

import copy
import math
import os
from dataclasses import dataclass
from pathlib import Path

from candle_ray.errors import UsageError
from candle_ray.job import Workers
from candle_ray.runtime import worker_slots


RAY_DEFAULT_MAX_WORKERS = 2  # the global max_workers `ray up` fills in (its providers' defaults.yaml)


@dataclass(frozen=True)
class NodeType:
    name: str
    cpus: float | None  # None: not declared (the AWS launcher auto-detects it at `ray up`)
    gpus: float
    min_workers: int
    max_workers: int
    head: bool

    def bundles(self, cpus_per_worker: float, gpus_per_worker: float) -> int:
        """How many trial workers of that size one node of this type holds."""
        return worker_slots(self.cpus, self.gpus, cpus_per_worker, gpus_per_worker)


@dataclass(frozen=True)
class Report:
    node_types: list[NodeType]
    max_bundles: int  # trial workers the cluster holds at its largest
    min_bundles: int  # ... and with min_workers nodes only (what `ray up` starts)
    workers_per_trial: Workers

    @property
    def max_trials(self) -> int:
        return self.max_bundles // self.workers_per_trial.min

    @property
    def start_trials(self) -> int:
        return self.min_bundles // self.workers_per_trial.min


def load(path: str | Path) -> dict:
    """The YAML as Ray reads it, with Ray's defaults filled in and Ray's schema checked."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise UsageError(f"cluster file not found: {path}; pass a `ray up` YAML such as cluster/ray.yaml")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise UsageError(f"{path}{where}: not valid YAML ({getattr(exc, 'problem', None) or exc})") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("provider"), dict) or "type" not in raw["provider"]:
        raise UsageError(f"{path}: not a Ray cluster config (no provider.type); see cluster/ray.yaml")
    return validate(raw, str(path))


def validate(raw: dict, name: str = "cluster config") -> dict:
    """The checks `ray up` makes before any cloud call: Ray's JSON schema for cluster configs (shipped in
    the ray.autoscaler package), then the node-type rules Ray adds (head_node_type among
    available_node_types, the min_workers within the global max_workers). Returns a copy of the config."""
    import json
    from importlib import resources

    import jsonschema

    schema = json.loads((resources.files("ray.autoscaler") / "ray-schema.json").read_text())
    try:
        jsonschema.validate(raw, schema)
    except jsonschema.ValidationError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "top level"
        raise UsageError(f"{name}: Ray rejects it at {where}: {exc.message.splitlines()[0]}") from None
    types = raw.get("available_node_types") or {}
    head = raw.get("head_node_type")
    if not types or head not in types:
        raise UsageError(f"{name}: Ray rejects it: head_node_type {head!r} must be one of available_node_types "
                         f"({', '.join(types) or 'none declared'}); see cluster/ray.yaml")
    config = {"max_workers": RAY_DEFAULT_MAX_WORKERS, **copy.deepcopy(raw)}
    least = sum(int(spec.get("min_workers", 0)) for spec in types.values())
    if least > int(config["max_workers"]):
        raise UsageError(f"{name}: Ray rejects it: the node types' min_workers add up to {least}, more than the "
                         f"global max_workers {config['max_workers']}; raise max_workers")
    return config


def node_types(config: dict) -> list[NodeType]:
    head = config["head_node_type"]
    types = []
    for name, spec in config["available_node_types"].items():
        res = spec.get("resources") or {}
        is_head = name == head
        types.append(NodeType(name=name, cpus=res.get("CPU"), gpus=float(res.get("GPU", 0)),
                              min_workers=int(spec.get("min_workers", 0)),
                              max_workers=0 if is_head else int(spec.get("max_workers", config.get("max_workers", 0))),
                              head=is_head))
    return types


def _bundles(types: list[NodeType], global_max: int, cpus_per_worker: float, gpus_per_worker: float,
             largest: bool) -> int:
    """Trial workers that fit: the head plus worker nodes (at min_workers, or grown to max_workers within
    the global max_workers, the roomiest node types first)."""
    total = sum(t.bundles(cpus_per_worker, gpus_per_worker) for t in types if t.head)
    workers = [t for t in types if not t.head]
    if not largest:
        return total + sum(t.min_workers * t.bundles(cpus_per_worker, gpus_per_worker) for t in workers)
    left = global_max
    for t in sorted(workers, key=lambda t: -t.bundles(cpus_per_worker, gpus_per_worker)):
        n = min(t.max_workers, left)
        total += n * t.bundles(cpus_per_worker, gpus_per_worker)
        left -= n
    return total


def check(config: dict, *, workers_per_trial: Workers = Workers(1, 1), gpus_per_worker: float = 1,
          cpus_per_worker: float = 1.0, name: str = "cluster config") -> Report:
    """Refuse (UsageError) a cluster that cannot run one trial of this size; else say what fits."""
    needed = workers_per_trial.min
    if gpus_per_worker < 0 or cpus_per_worker < 0:
        raise UsageError("--gpus-per-worker and --cpus-per-worker cannot be negative")
    types = node_types(config)
    if gpus_per_worker > 0 and not any(t.gpus > 0 for t in types):
        raise UsageError(
            f"{name}: the run asks for {gpus_per_worker:g} GPU per worker but no node type in available_node_types "
            f"declares resources: {{\"GPU\": n}} ({', '.join(t.name for t in types)}); add a GPU worker type "
            f"(e.g. g5.xlarge with resources: {{\"CPU\": 4, \"GPU\": 1}}) or pass --gpus-per-worker 0")
    largest = _bundles(types, int(config.get("max_workers", 0)), cpus_per_worker, gpus_per_worker, largest=True)
    if largest < needed:
        fitting = [t for t in types if t.bundles(cpus_per_worker, gpus_per_worker) > 0 and not t.head]
        size = f"{cpus_per_worker:g} CPU" + (f" + {gpus_per_worker:g} GPU" if gpus_per_worker else "")
        if fitting:
            best = max(fitting, key=lambda t: t.bundles(cpus_per_worker, gpus_per_worker))
            per_node = best.bundles(cpus_per_worker, gpus_per_worker)
            fix = (f"raise max_workers of {best.name} (and the global max_workers) to "
                   f"{math.ceil(needed / per_node)}")
        else:
            fix = "add a worker type whose resources hold one worker"
        raise UsageError(
            f"{name}: one trial needs {needed} worker(s) of {size} but the cluster holds at most "
            f"{largest} (max_workers {config.get('max_workers', 0)}); {fix}, or lower --workers-per-trial")
    start = _bundles(types, int(config.get("max_workers", 0)), cpus_per_worker, gpus_per_worker, largest=False)
    return Report(types, largest, start, workers_per_trial)


def shipped(config: dict, path: Path, cwd: Path | None = None) -> str | None:
    """The remote path under which a local file reaches the nodes through file_mounts, or None."""
    path = Path(path).resolve()
    cwd = cwd or Path.cwd()
    for remote, local in (config.get("file_mounts") or {}).items():
        local_path = (cwd / os.path.expanduser(local)).resolve()
        if path == local_path:
            return remote
        if local_path.is_dir() and path.is_relative_to(local_path):
            return f"{remote.rstrip('/')}/{path.relative_to(local_path).as_posix()}"
    return None


def missing_mounts(config: dict, cwd: Path | None = None) -> list[str]:
    cwd = cwd or Path.cwd()
    return [local for local in (config.get("file_mounts") or {}).values()
            if not (cwd / os.path.expanduser(local)).exists()]


def placeholders(raw_text: str) -> list[int]:
    """Line numbers still holding the CHANGE-ME placeholders of the shipped YAMLs."""
    return [i for i, line in enumerate(raw_text.splitlines(), 1) if "change-me" in line.lower()
            and not line.lstrip().startswith("#")]
