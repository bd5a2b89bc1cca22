"""`collide serve`: a Prefect server with its UI on loopback, serving prefect.yaml.

One process tree: ``prefect server start`` (API, UI and the scheduler service, which
turns cron schedules into scheduled runs) as a child, and this process serving every
deployment of ``prefect.yaml`` (a Prefect runner, which starts each due run in a
subprocess). Scheduled runs fire only on such a server, never on the temporary one
``collide run`` starts on its own.

Stopping: SIGTERM or Ctrl-C at any moment, start-up included, stops both, within
:data:`SHUTDOWN_LIMIT` seconds. The handlers are installed before the server starts;
the server runs in its own process group (so Ctrl-C reaches this process alone, which
then pauses the deployments while the server can still answer) and is stopped as a
group; a second signal, or the limit, stops everything at once. The runner works in a
thread of its own, so Prefect never takes the signals over. The server writes to
``<home>/server.log``, never to a pipe nobody reads.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from collide.errors import CollideError
from flows.parent_bound import bound

PROJECT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"  # loopback only: the server has no authentication
DEFAULT_PORT = 4200
SHUTDOWN_LIMIT = 60.0  # seconds from the first signal to exit, whatever still hangs
RUNNER_GRACE = 20.0  # of which the runner gets this long to pause the deployments
SERVER_GRACE = 15.0  # and the server this long after SIGTERM before SIGKILL


class ServeError(CollideError, ValueError):
    """Bad input to ``collide serve``: port taken, deployments file missing or malformed."""


def read_deployments(path: str | Path) -> list[dict[str, Any]]:
    """The ``deployments`` of a prefect.yaml, checked for what serving needs."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ServeError(f"deployments file {path} does not exist: pass --file or run from the project root")
    spec = yaml.safe_load(path.read_text()) or {}
    deployments = spec.get("deployments") or []
    if not deployments:
        raise ServeError(f"{path} lists no deployments")
    for d in deployments:
        for key in ("name", "entrypoint"):
            if not d.get(key):
                raise ServeError(f"a deployment in {path} has no {key!r}: {d}")
        limit = d.get("concurrency_limit")
        if limit is not None and not (isinstance(limit, int) or (isinstance(limit, dict) and "limit" in limit)):
            raise ServeError(f"deployment {d['name']!r} in {path}: concurrency_limit must be a number or "
                             f"{{limit: N, collision_strategy: ENQUEUE|CANCEL_NEW}}, got {limit!r}")
        for s in d.get("schedules") or []:
            if "cron" not in s:
                raise ServeError(f"deployment {d['name']!r} in {path}: expected cron schedules, got {s}")
    return deployments


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        return sock.connect_ex((HOST, port)) != 0


def environment(port: int, home: str | Path) -> dict[str, str]:
    """Settings for the server and every client (this process, flow runs): loopback, no telemetry."""
    return {
        "PREFECT_HOME": str(Path(home).resolve()),
        "PREFECT_API_URL": f"http://{HOST}:{port}/api",
        "PREFECT_SERVER_API_HOST": HOST,
        "PREFECT_SERVER_API_PORT": str(port),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
    }


def server_log(home: str | Path) -> Path:
    return Path(home) / "server.log"


def start_server(port: int, env: dict[str, str], log: Path) -> subprocess.Popen:
    """``prefect server start`` in a new session (its own process group), writing to ``log``;
    it stops when this process ends, even killed outright (on Linux: :mod:`flows.parent_bound`).
    Call it from a thread that lives as long as the server should (the main thread)."""
    with log.open("ab") as out:
        return subprocess.Popen(
            # -P: nothing of the folder collide runs from is imported by the server.
            bound([sys.executable, "-P", "-m", "prefect", "server", "start", "--host", HOST, "--port", str(port),
                   "--analytics-off"]),
            env={**os.environ, **env}, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _tail(path: Path, n: int = 2000) -> str:
    try:
        return path.read_bytes()[-n:].decode(errors="replace")
    except OSError:
        return ""


def wait_healthy(api_url: str, server: subprocess.Popen, log: Path, stopping: threading.Event,
                 timeout: float = 180.0) -> float | None:
    """Seconds until the API answers ``/health``; None if asked to stop first; fails if
    the server exits first."""
    import httpx

    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        if stopping.is_set():
            return None
        if server.poll() is not None:
            raise RuntimeError(f"prefect server exited with code {server.returncode} (log {log}): {_tail(log)}")
        try:
            if httpx.get(f"{api_url}/health", timeout=2).status_code == 200:
                return time.perf_counter() - start
        except httpx.HTTPError:
            pass
        stopping.wait(0.5)
    raise RuntimeError(f"prefect server did not answer {api_url}/health within {timeout:.0f} s (log {log})")


def stop(process: subprocess.Popen, grace: float = SERVER_GRACE) -> None:
    """SIGTERM to the process's group, SIGKILL to it after ``grace`` seconds."""
    if process.poll() is not None:
        return
    _signal_group(process, signal.SIGTERM)
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        _signal_group(process, signal.SIGKILL)
        process.wait()


def _signal_group(process: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(process.pid, sig)  # the server's session leader: its pid is its group
    except (ProcessLookupError, PermissionError):
        pass


@contextmanager
def stop_signals(on_first: Callable[[], None], on_second: Callable[[], None]) -> Iterator[None]:
    """SIGTERM and SIGINT call ``on_first`` once, then ``on_second``; the old handlers
    come back when the block ends."""
    count = 0

    def handler(_signum: int, _frame: Any) -> None:
        nonlocal count
        count += 1
        (on_first if count == 1 else on_second)()

    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, previous in old.items():
            signal.signal(sig, previous)


def _concurrency(spec: dict[str, Any]) -> Any:
    """A deployment's ``concurrency_limit`` (an int, or limit and collision strategy) as Prefect takes it."""
    from prefect.client.schemas.objects import ConcurrencyLimitConfig

    limit = spec.get("concurrency_limit")
    if limit is None or isinstance(limit, int):
        return limit
    return ConcurrencyLimitConfig(**limit)


def runner_deployments(specs: list[dict[str, Any]]) -> list[Any]:
    """prefect.yaml entries as deployments this process serves (the flow runs locally)."""
    from prefect.flows import load_flow_from_entrypoint
    from prefect.schedules import Cron

    out = []
    for d in specs:
        flow = load_flow_from_entrypoint(d["entrypoint"])
        out.append(flow.to_deployment(
            name=d["name"],
            description=d.get("description"),
            tags=d.get("tags"),
            parameters=d.get("parameters") or {},
            schedules=[Cron(s["cron"], timezone=s.get("timezone")) for s in d.get("schedules") or []],
            concurrency_limit=_concurrency(d),
        ))
    return out


def serve(*, port: int, file: str | Path, home: str | Path, log: Any = print) -> int:
    """Start the server, then serve the deployments of ``file`` until a signal stops both."""
    specs = read_deployments(file)
    if not port_free(port):
        raise ServeError(f"port {port} on {HOST} is in use (another Prefect server?): pass --port")
    env = environment(port, home)
    os.environ.update(env)  # before prefect loads its settings, here and in every flow run
    Path(env["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)
    logfile = server_log(env["PREFECT_HOME"])
    stopping = threading.Event()
    server: subprocess.Popen | None = None

    def force() -> None:  # a second signal, or the limit: nothing more is waited for
        if server is not None:
            _signal_group(server, signal.SIGKILL)
        os._exit(1)

    def first() -> None:
        stopping.set()
        watchdog = threading.Timer(SHUTDOWN_LIMIT, force)
        watchdog.daemon = True
        watchdog.start()

    with stop_signals(first, force):
        server = start_server(port, env, logfile)
        try:
            seconds = wait_healthy(env["PREFECT_API_URL"], server, logfile, stopping)
            if seconds is None:
                log("stopped before the server was up")
                return 0
            log(f"Prefect server and UI up in {seconds:.1f} s: http://{HOST}:{port}  (API {env['PREFECT_API_URL']}); "
                f"its log: {logfile}")
            os.chdir(PROJECT)  # entrypoints are relative to the project root, as for `prefect deploy`
            _serve_until(runner_deployments(specs), stopping, log)
        finally:
            drain_prefect()
            stop(server)
    log("stopped: deployments paused, server down")
    return 0


def _serve_until(deployments: list[Any], stopping: threading.Event, log: Any) -> None:
    """Serve ``deployments`` with a Prefect runner in a thread until ``stopping`` is set
    (or the runner ends); then stop the runner, which pauses the deployments."""
    from prefect.runner import Runner

    if stopping.is_set():
        return
    runner = Runner(pause_on_shutdown=True)
    for deployment in deployments:
        runner.add_deployment(deployment)
    log(f"serving {len(deployments)} deployments: " + ", ".join(d.name for d in deployments))
    thread = threading.Thread(target=lambda: asyncio.run(runner.start()), name="collide-runner", daemon=True)
    thread.start()
    while not stopping.wait(0.5):
        if not thread.is_alive():
            return
    loop = getattr(runner, "_loop", None)
    if runner.started and loop is not None and loop.is_running():
        runner.execute_in_background(runner.astop)
    thread.join(RUNNER_GRACE)
    if thread.is_alive():
        log(f"the runner did not stop within {RUNNER_GRACE:.0f} s; stopping the server anyway")


def drain_prefect() -> None:
    """Send the logs and events still queued while the server is up; at exit they would
    be retried against a stopped server, and the process would not end."""
    if "prefect" not in sys.modules:
        return
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for service in (APILogWorker, EventsWorker):
        service.drain_all(timeout=5)
