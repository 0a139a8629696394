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
}


def connect(address: str | None = None, *, num_cpus: int | None = None, num_gpus: int | None = None) -> dict:
    """Start or join Ray and return the cluster's resources. Reuses a session already started."""
    for key, value in _ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    import ray

    # Tune's result analysis looks for the per-trial result files we switch off; it warns per trial.
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)

    if not ray.is_initialized():
        address = address or os.environ.get("RAY_ADDRESS") or None
        kwargs = dict(logging_level=logging.WARNING, log_to_driver=True)
        if address is None:
            # ray[default]'s dashboard silences Train V2's State-API polling spam; it binds 127.0.0.1.
            kwargs.update(num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=True, dashboard_host="127.0.0.1")
        try:
            ray.init(address=address, **kwargs)
        except ConnectionError as exc:
            raise UsageError(f"cannot connect to the Ray cluster at {address!r} ({exc}); "
                             f"check --address / RAY_ADDRESS or start one with `ray start --head`") from None
        except Exception as exc:
            raise CandleRayError(f"Ray failed to start: {type(exc).__name__}: {exc}") from None
    return ray.cluster_resources()
