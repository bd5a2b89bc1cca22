"""The Prefect server of one `collide run` that names none (no ``PREFECT_API_URL``).

Prefect would start a temporary server of its own, in the run's process group: a Ctrl-C
in the terminal then stopped the server along with the run, and Prefect spent minutes
retrying its crash report and queued logs against it before the run ended, exit code 1
and "the run failed" (a helper's trial, 2026-12-06: 2 min 40 s). This one runs in its own
session (``prefect server start``, without the UI): a Ctrl-C reaches the run alone, the
server records the crash, and it is stopped once the run has ended and its logs are sent.
Its start-up is limited by the setting Prefect's own temporary server reads
(:data:`flows.STARTUP_TIMEOUT_ENV`); it runs the services Prefect's own temporary server
runs, no scheduler; and it writes to ``<PREFECT_HOME>/temporary-server-<port>.log``.
A run killed outright (SIGKILL, the OOM killer) left it running, as it left Prefect's; on
Linux it now stops with the run (:mod:`flows.parent_bound`), though it cannot record the crash.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from flows.serve import HOST, drain_prefect, environment, start_server, stop, wait_healthy


class TemporaryServerError(RuntimeError):
    """The temporary server exited (``exited``) or did not answer within its start-up limit."""

    def __init__(self, message: str, *, exited: bool) -> None:
        super().__init__(message)
        self.exited = exited


# Start-up tries: a server that exits before it answers (its port taken between
# free_port and its bind, say) is started again on another port, as Prefect's own does.
STARTS = 3


# What the temporary server runs: Prefect's own temporary server's services only (the
# events and the task-run recorder), never the scheduler that turns a deployment's cron
# into runs, nor the services that mark them late or reschedule them: a deployment that
# `collide serve` left active would otherwise get runs from every `collide run`.
_QUIET = {"PREFECT__SERVER_EPHEMERAL": "1", "PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED": "false",
          "PREFECT_SERVER_SERVICES_LATE_RUNS_ENABLED": "false", "PREFECT_UI_ENABLED": "false"}


def free_port() -> int:
    """A loopback port nothing listens on now (the server binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def _started(home: Path, limit: float) -> tuple[subprocess.Popen, str, Path]:
    """A server answering on a free port: the process, its API URL and its log."""
    tries = 0
    while True:
        tries += 1
        port = free_port()
        env = {**environment(port, home), **_QUIET}
        log = home / f"temporary-server-{port}.log"
        print(f"collide: starting a temporary Prefect server on {HOST}:{port} (log {log}); "
              "set PREFECT_API_URL to use a running one", file=sys.stderr)
        server = start_server(port, env, log)
        try:
            wait_healthy(env["PREFECT_API_URL"], server, log, threading.Event(), timeout=limit)
        except RuntimeError as exc:
            exited = server.poll() is not None
            stop(server)
            if exited and tries < STARTS:
                continue
            raise TemporaryServerError(str(exc), exited=exited) from None
        except BaseException:  # an interrupt while it starts
            stop(server)
            raise
        return server, env["PREFECT_API_URL"], log


@contextmanager
def temporary_server() -> Iterator[str]:
    """A Prefect server for the block, and Prefect's settings pointed at it: yields its API URL.
    Its log is removed once it has stopped after a run; one that failed to start keeps it."""
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_HOME,
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
        PREFECT_UI_URL,
        temporary_settings,
    )

    home = Path(PREFECT_HOME.value()).expanduser()
    home.mkdir(parents=True, exist_ok=True)
    server, url, log = _started(home, float(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value()))
    try:
        # No UI URL: the server serves none (PREFECT_UI_ENABLED false) and is gone once the
        # command ends, so the "View at <link>" Prefect logs for each run would lead nowhere.
        with temporary_settings(updates={PREFECT_API_URL: url, PREFECT_UI_URL: ""}):
            try:
                yield url
            finally:
                drain_prefect()  # the run's last logs and its crash report, while the server answers
    finally:
        stop(server)
        log.unlink(missing_ok=True)
