"""Where a job runs: the CPU cores it may take, and the shared files it must see.

A job may run in the process that planned it or on a Dask worker in another process,
folder or machine. Two things then differ from a plain run:

- cores: a worker's task slots (its ``nthreads``) each run a job at once, and several
  workers may share one host, so a job that sizes a thread pool by the machine's core
  count oversubscribes it. :func:`job_cores` gives the job its share instead;
- files: paths sent to a worker are absolute (the submitter resolves them), so they mean
  the same file everywhere only on one shared filesystem. :func:`require_visible` fails
  with the worker named, rather than letting a job write a private copy of the results
  or train a checkpoint of its own.

Imports nothing of Dask unless the process is already a Dask worker.
"""

from __future__ import annotations

import os
import queue
import socket
import sys
import threading
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from collide.errors import ConfigError, DataError

SHARED = ("every worker needs the same filesystem as the submitting process (the results root, the data and "
          "the checkpoints)")


# What a worker count counts, in its refusal (collide.checks.count_in): a local cluster of
# none or fewer would start and wait for ever, since no job reaches it.
WORKER_PROCESSES = "worker processes"


def machine_cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS tells it)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):  # no affinity on macOS and Windows
        return os.cpu_count() or 1


def core_share(cores: int, slots: int) -> int:
    """Cores per job when ``slots`` jobs at most run at once on ``cores`` cores: at least one."""
    return max(1, cores // max(1, slots))


def dask_worker() -> Any | None:
    """The Dask worker running this code, or None (plain Python, a thread, a Prefect run
    without Dask). Dask is looked up, never imported: a process that runs a Dask task has
    it loaded already."""
    distributed = sys.modules.get("distributed")
    if distributed is None:
        return None
    try:
        return distributed.get_worker()
    except ValueError:  # "No worker found": not inside a task
        return None


def host_slots(worker: Any) -> int:
    """How many jobs may run at once on this worker's host: the task slots of every worker
    the scheduler knows there (a host may run several worker processes, ``dask worker
    --nworkers``), else, when the scheduler cannot be asked, this worker's own."""
    own = int(getattr(getattr(worker, "state", worker), "nthreads", 1) or 1)
    try:
        host = worker.address.rsplit(":", 1)[0]
        info = worker.client.scheduler_info(n_workers=-1)["workers"]
        slots = sum(int(w.get("nthreads", 1)) for addr, w in info.items() if addr.rsplit(":", 1)[0] == host)
    except Exception:  # noqa: BLE001  (any failure to ask: fall back to this worker's slots, never fail a job)
        return own
    return max(own, slots)


def job_cores() -> int:
    """CPU cores a job may take for a thread pool of its own.

    Outside Dask: every core of the machine (what a plain run always did). On a Dask
    worker: the host's cores shared among the task slots of the workers on that host, at
    least one, so that two workers on a two-core host run one LP each, not two each.
    """
    worker = dask_worker()
    if worker is None:
        return machine_cores()
    return core_share(machine_cores(), host_slots(worker))


def where() -> str:
    """This process as an error message names it: the Dask worker and its host and pid."""
    host, pid = socket.gethostname(), os.getpid()
    worker = dask_worker()
    if worker is None:
        return f"this process (host {host}, pid {pid})"
    return f"this Dask worker ({getattr(worker, 'address', '?')}, host {host}, pid {pid})"


def require_visible(paths: Mapping[str, str]) -> None:
    """Fail unless every path exists here; ``paths`` maps what each is (``the data``) to it.

    Raises:
        DataError: naming this worker, what it cannot see and where, and that every
            worker needs the submitter's filesystem.
    """
    for what, path in paths.items():
        if not os.path.exists(path):
            raise DataError(f"{where()} cannot see {what} at {path}: {SHARED}")


# The environment variable that names a Dask scheduler for every flow run (flows.runner).
DASK_ADDRESS_ENV = "COLLIDE_DASK_ADDRESS"


# How long a given scheduler has to accept a connection, its name's lookup included, before
# the run is refused: a wrong address otherwise cost Dask's own retries (44 s, two
# tracebacks, exit 1) and left a run record with no store behind (a new user's trial).
SCHEDULER_CONNECT_S = 10.0


def _addresses(host: str, port: int, timeout: float) -> list[tuple[Any, ...]]:
    """``host``'s addresses for a TCP connection to ``port`` (``socket.getaddrinfo``), looked
    up on a thread of its own: the lookup takes no timeout, and a resolver that does not
    answer would otherwise hold the run for as long as it likes.

    Raises:
        OSError: the lookup failed, or took more than ``timeout`` seconds (its thread is left
            to end on its own).
    """
    found: queue.Queue[list[tuple[Any, ...]] | OSError] = queue.Queue()

    def look_up() -> None:
        try:
            found.put(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
        except OSError as exc:
            found.put(exc)

    threading.Thread(target=look_up, name="collide-scheduler-lookup", daemon=True).start()
    try:
        got = found.get(timeout=timeout)
    except queue.Empty:
        raise OSError(f"looking up {host} took over {timeout:g} s") from None
    if isinstance(got, OSError):
        raise got
    return got


def _connect(host: str, port: int, timeout: float) -> None:
    """Open and close a TCP connection to ``host:port`` within ``timeout`` seconds in all,
    trying each of its addresses in turn. Raises: OSError where none accepts it."""
    deadline = time.monotonic() + timeout
    error: OSError = OSError(f"{host} has no address")
    for family, kind, proto, _, address in _addresses(host, port, timeout):
        left = deadline - time.monotonic()
        if left <= 0:
            raise OSError(f"no connection within {timeout:g} s")
        try:
            with socket.socket(family, kind, proto) as sock:
                sock.settimeout(left)
                sock.connect(address)
            return
        except OSError as exc:
            error = exc
    raise error


def require_scheduler(address: str, where: str) -> None:
    """Refuse a ``tcp://host:port`` Dask scheduler address that nothing accepts connections
    on within ``SCHEDULER_CONNECT_S`` (its name's lookup included), before any work;
    ``where`` names where it came from (a flag, a variable). Other schemes (tls, ucx) are
    left to Dask.

    Raises:
        ConfigError: naming the address, where it came from and the ways round it.
    """
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
        _connect(host, port, SCHEDULER_CONNECT_S)
    except OSError as exc:
        raise ConfigError(f"no Dask scheduler answers at {address} ({where}: {exc.strerror or exc}): start one there "
                          "(`dask scheduler`, with workers that see this machine's files), or drop the address to "
                          "run on a local cluster") from None
