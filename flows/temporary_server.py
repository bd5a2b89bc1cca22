"""The Prefect server of one `collide run` that names none (no ``PREFECT_API_URL``).

Prefect would start a temporary server of its own, in the run's process group: a Ctrl-C
in the terminal then stopped the server along with the run, and Prefect spent minutes
retrying its crash report and queued logs against it before the run ended, exit code 1
and "the run failed" (a helper's trial, 2026-12-06: 2 min 40 s). This one runs in its own
session (``prefect server start``, without the UI): a Ctrl-C reaches the run alone, the
server records the crash, and it is stopped once the run has ended and its logs are sent.
Its start-up is limited by the setting Prefect's own temporary server reads
(:data:`flows.STARTUP_TIMEOUT_ENV`), and it writes to ``<PREFECT_HOME>/temporary-server.log``.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from flows import EPHEMERAL_STARTUP_TIMEOUT_S, STARTUP_TIMEOUT_ENV
from flows.serve import HOST, drain_prefect, environment, start_server, stop, wait_healthy


class TemporaryServerError(RuntimeError):
    """The temporary server exited or did not answer within its start-up limit."""


def free_port() -> int:
    """A loopback port nothing listens on now (the server binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


@contextmanager
def temporary_server() -> Iterator[str]:
    """A Prefect server for the block, and Prefect's settings pointed at it: yields its API URL."""
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME, temporary_settings

    home = Path(PREFECT_HOME.value()).expanduser()
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = {**environment(port, home), "PREFECT_UI_ENABLED": "false"}
    log = home / "temporary-server.log"
    print(f"collide: starting a temporary Prefect server on {HOST}:{port} (log {log}); "
          "set PREFECT_API_URL to use a running one", file=sys.stderr)
    server = start_server(port, env, log)
    try:
        limit = float(os.environ.get(STARTUP_TIMEOUT_ENV) or EPHEMERAL_STARTUP_TIMEOUT_S)
        try:
            wait_healthy(env["PREFECT_API_URL"], server, log, threading.Event(), timeout=limit)
        except RuntimeError as exc:
            raise TemporaryServerError(str(exc)) from None
        with temporary_settings(updates={PREFECT_API_URL: env["PREFECT_API_URL"]}):
            try:
                yield env["PREFECT_API_URL"]
            finally:
                drain_prefect()  # the run's last logs and its crash report, while the server answers
    finally:
        stop(server)
