"""One local Ray cluster for the whole test session (starting Ray costs ~8 s on two cores).

Tests isolate themselves by fleet name / namespace instead of restarting Ray."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session")
def ray_cluster():
    """A private local Ray cluster (never attaches to a developer's running cluster)."""
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
                 logging_level="ERROR")
    yield ray
    ray.shutdown()
