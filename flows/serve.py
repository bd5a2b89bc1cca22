"""`collide serve`: a Prefect server with its UI on loopback, serving prefect.yaml.

One process tree: ``prefect server start`` (API, UI and the scheduler service, which
turns cron schedules into scheduled runs) as a child, and this process serving every
deployment of ``prefect.yaml`` (a Prefect runner, which starts each due run in a
subprocess). Ctrl-C or SIGTERM stops both. Scheduled runs fire only on such a server,
never on the temporary one ``collide run`` starts on its own.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

PROJECT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"  # loopback only: the server has no authentication
DEFAULT_PORT = 4200


class ServeError(ValueError):
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


def start_server(port: int, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", HOST, "--port", str(port), "--analytics-off"],
        env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )


def wait_healthy(api_url: str, server: subprocess.Popen, timeout: float = 180.0) -> float:
    """Seconds until the API answers ``/health``; fails if the server exits first."""
    import httpx

    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        if server.poll() is not None:
            err = server.stderr.read() if server.stderr else ""
            raise RuntimeError(f"prefect server exited with code {server.returncode}: {err[-2000:]}")
        try:
            if httpx.get(f"{api_url}/health", timeout=2).status_code == 200:
                return time.perf_counter() - start
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"prefect server did not answer {api_url}/health within {timeout:.0f} s")


def stop(process: subprocess.Popen, grace: float = 15.0) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


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
        ))
    return out


def serve(*, port: int, file: str | Path, home: str | Path, log: Any = print) -> int:
    """Start the server, then serve the deployments of ``file`` until stopped."""
    specs = read_deployments(file)
    if not port_free(port):
        raise ServeError(f"port {port} on {HOST} is in use (another Prefect server?): pass --port")
    env = environment(port, home)
    os.environ.update(env)  # before prefect loads its settings, here and in every flow run
    Path(env["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)
    server = start_server(port, env)
    try:
        seconds = wait_healthy(env["PREFECT_API_URL"], server)
        log(f"Prefect server and UI up in {seconds:.1f} s: http://{HOST}:{port}  (API {env['PREFECT_API_URL']})")
        log(f"serving {len(specs)} deployments from {file}: " + ", ".join(d["name"] for d in specs))
        from prefect import serve as prefect_serve

        os.chdir(PROJECT)  # entrypoints are relative to the project root, as for `prefect deploy`
        prefect_serve(*runner_deployments(specs), print_starting_message=False)
    finally:
        _drain_prefect()
        stop(server)
    return 0


def _drain_prefect() -> None:
    """Send the logs and events still queued while the server is up; at exit they would
    be retried against a stopped server, and the process would not end."""
    if "prefect" not in sys.modules:
        return
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for service in (APILogWorker, EventsWorker):
        service.drain_all(timeout=10)
