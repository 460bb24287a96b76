"""Connecting to Ray: a local instance by default, or an existing cluster.

Every node that runs search trials grants the custom resource `graphopt_measure` once
(`ray start ... --resources '{"graphopt_measure": 1}'`); a local instance started here
grants it itself. The resource is a per-node readers-writer lock: a trial's build asks for
a sliver of it (BUILD_SHARE), a trial's timing for all of it. So builds run side by side,
and a timing runs alone on its node: never beside a build or another timing.
"""

from __future__ import annotations

import logging
import os
import platform
from contextlib import contextmanager
from typing import Iterator

from ..errors import GraphoptError

log = logging.getLogger(__name__)

MEASURE_RESOURCE = "graphopt_measure"
BUILD_SHARE = 0.01  # of MEASURE_RESOURCE: up to 100 builds at once per node
LOCAL_CPUS = 2


def require_ray():
    try:
        import ray  # noqa: F401
    except ImportError:
        raise GraphoptError("this command needs Ray: pip install 'graphopt[distributed]'") from None
    return ray


def require_optuna():
    try:
        import optuna  # noqa: F401
    except ImportError:
        raise GraphoptError("graphopt search needs Optuna: pip install 'graphopt[distributed]'") from None
    return optuna


@contextmanager
def connect(address: str | None = None, *, num_cpus: int | None = None) -> Iterator[None]:
    """Use the Ray instance already initialized in this process, else join `address`, else
    start a local one (num_cpus, default 2, no dashboard). Shuts down only what it started."""
    ray = require_ray()
    if ray.is_initialized():
        yield
        return
    try:
        if address:
            ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False)
        else:
            ray.init(num_cpus=num_cpus or LOCAL_CPUS, resources={MEASURE_RESOURCE: 1},
                     include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
    except (ConnectionError, ValueError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise GraphoptError(f"cannot connect to Ray{f' at {address}' if address else ''}: {first}") from None
    try:
        yield
    finally:
        ray.shutdown()


def build_cpus() -> int:
    """CPUs in the cluster (the default number of trials built at once)."""
    ray = require_ray()
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def check_measure_resource() -> None:
    """Raise a one-line error when no live node grants the measure resource."""
    ray = require_ray()
    if not any(n.get("Alive") and n["Resources"].get(MEASURE_RESOURCE, 0) >= 1 for n in ray.nodes()):
        raise GraphoptError(f"no Ray node grants the '{MEASURE_RESOURCE}' resource: start each node "
                            f"with ray start --resources '{{\"{MEASURE_RESOURCE}\": 1}}'")


def node_info() -> dict:
    """Where this task runs: the Ray node id and a description of the machine type."""
    import ray

    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"node_id": ray.get_runtime_context().get_node_id(), "host": platform.node(),
            "node_type": f"{cpu or platform.machine()} x{os.cpu_count()}"}
