"""Connecting to Ray: a given address (or RAY_ADDRESS), else an embedded local
Ray bound to the loopback interface."""
from __future__ import annotations

import logging
import os

from ..logs import LEVEL_ENV


def verbose() -> bool:
    """`pointpeft-ray -v`: Ray's own INFO messages too."""
    return os.environ.get(LEVEL_ENV, "").upper() == "DEBUG"


def train_logging_config():
    """Ray Train's controller announces every resource request and worker-group start at
    INFO; our own lines say what matters. Kept at WARNING unless verbose."""
    import ray.train

    return ray.train.LoggingConfig(log_level="INFO" if verbose() else "WARNING")


def ensure_ray(address: str | None = None) -> None:
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        # A cluster started elsewhere does not inherit our environment: the level goes in the
        # runtime_env, but not in a submitted job's driver (its job's runtime_env is the place).
        level = os.environ.get(LEVEL_ENV) if "RAY_JOB_CONFIG_JSON_ENV_VAR" not in os.environ else None
        ray.init(address=address, log_to_driver=True, logging_level=_ray_log_level(),
                 runtime_env={"env_vars": {LEVEL_ENV: level}} if level else None)
        return
    # Ray Train's controller polls its workers every 2 s by default, so a finished run is
    # noticed up to 2 s late and a short run pays it every time (an empty TorchTrainer:
    # 11.8 s with 2 s, 7.4 s with 0.25 s on 2 cores). The processes of an embedded Ray
    # inherit this environment; a user's own setting wins.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25")
    # Ray Train also starts a preemption watcher per run: one more idle process, polling
    # for the draining of nodes (spot reclaim, autoscaler). This embedded Ray is one
    # node that nothing drains, and on a small machine every idle process takes from
    # the run (this one about 0.5% of 2 cores by its CPU time; docs/benchmarks.md, "Ray Train overhead").
    os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
    # The dashboard (bound to loopback) also serves the state API that Ray
    # Train's clean-up monitor polls; without it that monitor logs warnings.
    ray.init(address="local", include_dashboard=True, dashboard_host="127.0.0.1",
             _node_ip_address="127.0.0.1", log_to_driver=True, logging_level=_ray_log_level())


def _ray_log_level() -> int:
    return logging.INFO if verbose() else logging.WARNING
