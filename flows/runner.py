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

import os
from typing import Any

from prefect_dask import DaskTaskRunner

from collide.errors import ConfigError
from collide.workers import worker_count

ADDRESS_ENV = "COLLIDE_DASK_ADDRESS"
WORKERS_ENV = "COLLIDE_DASK_WORKERS"


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
        if not self.address and self._cluster is None and (url := _api_url()):
            self.cluster_kwargs = {**self.cluster_kwargs, "env": {"PREFECT_API_URL": url}}
        return super().__enter__()

    def duplicate(self) -> LocalDaskRunner:
        return type(self)(address=self.address, cluster_kwargs=self.cluster_kwargs, client_kwargs=self.client_kwargs)


# How long a given scheduler has to accept a connection before the run is refused: a
# wrong address otherwise cost Dask's own retries (44 s, two tracebacks, exit 1) and left
# a run record with no store behind (a new user's trial).
SCHEDULER_CONNECT_S = 10.0


def require_scheduler(address: str | None) -> None:
    """Refuse a ``tcp://host:port`` scheduler address (``--dask-address``, else
    ``COLLIDE_DASK_ADDRESS``) that nothing accepts connections on, before any work; other
    schemes (tls, ucx) are left to Dask."""
    import socket
    from urllib.parse import urlsplit

    where = "--dask-address" if address else ADDRESS_ENV
    address = address or os.environ.get(ADDRESS_ENV) or None
    if not address:
        return
    parts = urlsplit(address if "://" in address else f"tcp://{address}")
    if parts.scheme != "tcp":
        return
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        host, port = None, None
    if not host or not port:
        raise ConfigError(f"{where} {address!r}: expected tcp://HOST:PORT (a Dask scheduler's address, e.g. "
                          "tcp://10.0.0.5:8786)")
    try:
        with socket.create_connection((host, port), timeout=SCHEDULER_CONNECT_S):
            pass
    except OSError as exc:
        raise ConfigError(f"no Dask scheduler answers at {address} ({where}: {exc.strerror or exc}): start one there "
                          "(`dask scheduler`, with workers that see this machine's files), or drop the address to "
                          "run on a local cluster") from None


def dask_runner(address: str | None = None, workers: int | None = None) -> Any:
    """A Dask task runner for ``address``, else for a fresh local cluster of ``workers``."""
    address = address or os.environ.get(ADDRESS_ENV) or None
    if address:
        return DaskTaskRunner(address=address)
    if workers is not None:
        workers = worker_count(str(workers), "workers")
    elif os.environ.get(WORKERS_ENV, "0").strip() not in ("", "0"):  # 0: one per core
        workers = worker_count(os.environ[WORKERS_ENV], WORKERS_ENV)
    workers = workers or os.cpu_count() or 1
    return LocalDaskRunner(cluster_kwargs={
        "n_workers": workers, "threads_per_worker": 1, "processes": True,
        "host": "127.0.0.1", "dashboard_address": "127.0.0.1:0",
    })
