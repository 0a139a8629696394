"""The only `ray.init`: a local cluster by default, or `--address` / RAY_ADDRESS for an existing one."""

from __future__ import annotations

import logging
import os

from candle_ray.errors import CandleRayError, UsageError

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


def connect(address: str | None = None, *, num_cpus: int | None = None, num_gpus: int | None = None) -> dict:
    """Start or join Ray and return the cluster's resources. Reuses a session already started."""
    set_env_defaults()
    import ray

    # Tune's result analysis looks for the per-trial result files we switch off; it warns per trial.
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)

    if not ray.is_initialized():
        address = address or os.environ.get("RAY_ADDRESS") or None
        probe(address)  # ray.init would retry an unreachable GCS for a long time
        kwargs = dict(logging_level=logging.WARNING, log_to_driver=True)
        if address is None:
            # ray[default]'s dashboard silences Train V2's State-API polling spam; it binds 127.0.0.1.
            kwargs.update(num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=True, dashboard_host="127.0.0.1")
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
