"""The task runner of every experiment flow: Dask, on a local cluster or a given scheduler.

``COLLIDE_DASK_ADDRESS`` (``tcp://host:8786``) sends the tasks to an existing Dask
scheduler; without it each flow run starts a local cluster on 127.0.0.1 with
``COLLIDE_DASK_WORKERS`` worker processes (unset or 0: one per CPU core), one thread each,
and stops it when the run ends. The scheduler's dashboard listens on a free loopback
port, logged at the start of the run.

An existing scheduler's workers must see the submitter's files at the same absolute
paths (the flow makes the config's folders absolute; a worker that cannot see them says
so: :func:`collide.workers.require_visible`) and should report to the same Prefect API
(``PREFECT_API_URL`` in their environment).
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Any

import dask
from prefect_dask import DaskTaskRunner

from collide._io import private_dir
from collide.checks import count_in
from collide.workers import DASK_ADDRESS_ENV, WORKER_PROCESSES
from flows.worker_setup import NOTE

ADDRESS_ENV = DASK_ADDRESS_ENV
WORKERS_ENV = "COLLIDE_DASK_WORKERS"
# The module each local worker process runs as it starts (flows/worker_setup.py).
WORKER_SETUP = "flows.worker_setup"


def _api_url() -> str | None:
    """The Prefect API this process talks to, the temporary one included."""
    from prefect.settings import PREFECT_API_URL

    if url := PREFECT_API_URL.value():
        return url
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()  # the running temporary server, when there is one
    return server.api_url if server.running else None


class LocalDaskRunner(DaskTaskRunner):
    """A Dask runner whose local workers report to the flow's own Prefect API.

    Worker processes do not share the flow's in-process settings; without the address
    each would start a temporary Prefect server of its own.
    """

    def __enter__(self) -> LocalDaskRunner:
        if not self.address and self._cluster is None:
            kwargs = dict(self.cluster_kwargs)
            if url := _api_url():
                kwargs["env"] = {"PREFECT_API_URL": url}
            # Dask's default scratch, <tmp>/dask-scratch-space, is one folder for every user of
            # the machine (another's, or holding their links): the scheduler's and workers'
            # scratch (locks, spilled data) goes in this user's own, made when a cluster starts,
            # unless the user chose one (Dask's temporary-directory).
            if not dask.config.get("temporary-directory", None):
                scratch = str(private_dir("dask", runtime=False))
                kwargs.setdefault("local_directory", scratch)
                kwargs["scheduler_kwargs"] = {"local_directory": scratch, **kwargs.get("scheduler_kwargs", {})}
            self.cluster_kwargs = kwargs
        return super().__enter__()

    def __exit__(self, *exc_info: Any) -> None:
        # An interrupt (Ctrl-C, SIGTERM or SIGHUP: not an Exception) stops the cluster under
        # running jobs. A terminal's Ctrl-C reaches the workers too, a SIGTERM to the run
        # does not: either way each worker is told (NOTE), and goes quiet and ends as it closes
        # (flows/worker_setup.py). One still busy after the nanny's 4 s (a worker importing
        # collide for its first job takes longer) is killed, as it must be: the nanny's
        # warning that it did so is no news to whoever stopped the run, and it came after
        # the run's own last lines.
        interrupted = exc_info[0] is not None and not issubclass(exc_info[0], Exception)
        nanny = logging.getLogger("distributed.nanny")
        level = nanny.level
        try:
            if interrupted:
                nanny.setLevel(logging.ERROR)
                for worker in list(self._cluster.workers.values()) if self._cluster is not None else []:
                    # A worker may be ending under us (its nanny's pid then reads None or
                    # fails half-way): the close below deals with it either way.
                    with contextlib.suppress(Exception):
                        os.kill(worker.pid, NOTE)
            super().__exit__(*exc_info)
        finally:
            nanny.setLevel(level)

    def duplicate(self) -> LocalDaskRunner:
        return type(self)(address=self.address, cluster_kwargs=self.cluster_kwargs, client_kwargs=self.client_kwargs)


def dask_runner(address: str | None = None, workers: int | None = None) -> Any:
    """A Dask task runner for ``address``, else for a fresh local cluster of ``workers``."""
    address = address or os.environ.get(ADDRESS_ENV) or None
    if address:
        return DaskTaskRunner(address=address)
    if workers is not None:
        workers = count_in(str(workers), "workers", of=WORKER_PROCESSES)
    elif os.environ.get(WORKERS_ENV, "0").strip() not in ("", "0"):  # 0: one per core
        workers = count_in(os.environ[WORKERS_ENV], WORKERS_ENV, of=WORKER_PROCESSES)
    workers = workers or os.cpu_count() or 1
    return LocalDaskRunner(cluster_kwargs={
        "n_workers": workers, "threads_per_worker": 1, "processes": True,
        "host": "127.0.0.1", "dashboard_address": "127.0.0.1:0",
        "preload": [WORKER_SETUP],  # a terminal's Ctrl-C is the run's to handle, not each worker's
    })
