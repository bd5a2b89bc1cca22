"""The task runner of every experiment flow: Dask, on a local cluster or a given scheduler.

``COLLIDE_DASK_ADDRESS`` (``tcp://host:8786``) sends the tasks to an existing Dask
scheduler; without it each flow run starts a local cluster on 127.0.0.1 with
``COLLIDE_DASK_WORKERS`` worker processes (default: one per CPU core), one thread each,
and stops it when the run ends.
"""

from __future__ import annotations

import os

from prefect_dask import DaskTaskRunner

ADDRESS_ENV = "COLLIDE_DASK_ADDRESS"
WORKERS_ENV = "COLLIDE_DASK_WORKERS"


def dask_runner(address: str | None = None, workers: int | None = None) -> DaskTaskRunner:
    """A Dask task runner for ``address``, else for a fresh local cluster of ``workers``."""
    address = address or os.environ.get(ADDRESS_ENV) or None
    if address:
        return DaskTaskRunner(address=address)
    workers = workers or int(os.environ.get(WORKERS_ENV) or 0) or os.cpu_count() or 1
    return DaskTaskRunner(cluster_kwargs={
        "n_workers": workers, "threads_per_worker": 1, "processes": True,
        "host": "127.0.0.1", "dashboard_address": None,
    })
