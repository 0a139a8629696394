"""MLflow tracking: the only module that imports mlflow.

One MLflow run per `candle-ray train`: flat params, per-epoch metrics (step = epoch), tags, artifacts.
The default tracking URI is a SQLite file in the working directory, so `mlflow ui` started there
shows every run.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import time
from pathlib import Path

from candle_ray import __version__
from candle_ray.errors import CandleRayError, UsageError

# Metrics that are bookkeeping, not measurements.
_NOT_METRICS = {"epoch", "replayed", "stop_reason", "best_epoch"}


def default_tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def check_uri(uri: str) -> str:
    if uri.startswith("file:") or (("://" not in uri) and not uri.startswith("databricks")):
        raise UsageError(f"tracking URI {uri!r} is MLflow's file store, which MLflow >= 3.13 refuses; "
                         f"use sqlite:///mlflow.db or http://host:port")
    return uri


def git_commit(path: Path) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def flatten_params(config: dict, prefix: str = "") -> dict[str, str]:
    """Flat string params: lists as CANDLE writes them ("128 20 1"), dicts as dotted keys."""
    flat = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten_params(value, f"{name}."))
        elif isinstance(value, (list, tuple)):
            flat[name] = " ".join(str(v) for v in value)
        else:
            flat[name] = str(value)
    return flat


class RunTracker:
    """One MLflow run, created on start and ended exactly once."""

    def __init__(self, tracking_uri: str, experiment_name: str):
        from mlflow.tracking import MlflowClient

        # A new SQLite store announces its schema set-up at INFO: not news for the user.
        for name in ("mlflow.store.db.utils", "alembic"):
            logging.getLogger(name).setLevel(logging.WARNING)

        self.uri = check_uri(tracking_uri)
        self.client = MlflowClient(tracking_uri=self.uri)
        self.experiment_name = experiment_name
        self.run_id: str | None = None

    def start(self, run_name: str, params: dict, tags: dict) -> str:
        try:
            exp = self.client.get_experiment_by_name(self.experiment_name)
            exp_id = exp.experiment_id if exp else self.client.create_experiment(self.experiment_name)
            run = self.client.create_run(exp_id, run_name=run_name,
                                         tags={"candle_ray.version": __version__, **{k: str(v) for k, v in tags.items() if v is not None}})
        except Exception as exc:
            raise CandleRayError(f"MLflow at {self.uri} is not usable ({type(exc).__name__}: "
                                 f"{str(exc).splitlines()[0][:200]}); check --tracking-uri") from None
        self.run_id = run.info.run_id
        self.log_params(params)
        return self.run_id

    def log_params(self, params: dict) -> None:
        from mlflow.entities import Param

        items = [Param(k, v[:6000]) for k, v in flatten_params(params).items()]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=items[i:i + 100])

    def log_epoch(self, metrics: dict) -> None:
        from mlflow.entities import Metric

        now, step = int(time.time() * 1000), int(metrics["epoch"])
        items = [Metric(k, float(v), now, step) for k, v in metrics.items()
                 if k not in _NOT_METRICS and isinstance(v, (int, float)) and not isinstance(v, bool)]
        self.client.log_batch(self.run_id, metrics=items)

    def set_tags(self, tags: dict) -> None:
        for key, value in tags.items():
            self.client.set_tag(self.run_id, key, str(value))

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_dict(self, data: dict, name: str) -> None:
        self.client.log_text(self.run_id, json.dumps(data, indent=1, sort_keys=True, default=str), name)

    def finish(self, status: str = "FINISHED") -> None:
        if self.run_id is not None:
            self.client.set_terminated(self.run_id, status)
