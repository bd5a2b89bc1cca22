"""`collide serve` stops cleanly whenever it is signalled: no orphaned server, port free.

SIGTERM (a service manager) and SIGINT to the whole foreground group (Ctrl-C in a
terminal) at three moments: during start-up, the instant `/api/health` first answers,
and once the deployments are served. Each time `collide serve` must exit by itself
within its shutdown limit, with code 0, and leave no `prefect server` behind holding
the port: the next `serve` on that port must be able to start.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from flows.serve import PROJECT, SHUTDOWN_LIMIT

pytestmark = pytest.mark.slow
STARTUP_LIMIT = 240.0  # a cold Prefect database on a loaded 2-core machine


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def _servers_on(port: int) -> list[int]:
    """Pids of live `prefect server start ... --port PORT` processes."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"server" in argv and b"start" in argv and str(port).encode() in argv:
            found.append(int(proc.name))
    return found


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    spec = yaml.safe_load((PROJECT / "prefect.yaml").read_text())
    spec["deployments"] = spec["deployments"][:1]  # one deployment: nothing runs, it is only served
    deployments = root / "prefect.yaml"
    deployments.write_text(yaml.safe_dump(spec))
    env = {**os.environ, "PREFECT_HOME": str(root / "home"),
           "PYTHONPATH": os.pathsep.join([str(PROJECT), os.environ.get("PYTHONPATH", "")])}
    env.pop("PREFECT_API_URL", None)
    return root, deployments, env


def _wait_for(check, limit: float, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.time() + limit
    while time.time() < deadline:
        assert proc.poll() is None, log.read_text()
        try:
            if check():
                return
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.05)
    pytest.fail(f"not reached within {limit} s: {log.read_text()[-3000:]}")


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
@pytest.mark.parametrize("moment", ["starting", "healthy", "serving"])
def test_serve_stops_cleanly_when_signalled(setup, moment, sig):
    root, deployments, env = setup
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    log = root / f"serve-{moment}-{sig}.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "flows.cli", "serve", "--port", str(port), "--file", str(deployments),
             "--home", str(root / "home")],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=PROJECT,
        )
    try:
        if moment == "starting":
            _wait_for(lambda: _servers_on(port), 60, proc, log)  # the child exists, not yet healthy
        elif moment == "healthy":
            _wait_for(lambda: httpx.get(f"{api}/health", timeout=1).status_code == 200, STARTUP_LIMIT, proc, log)
        else:
            _wait_for(lambda: "serving 1 deployments" in log.read_text()
                      and httpx.post(f"{api}/deployments/filter", json={}, timeout=5).json(),
                      STARTUP_LIMIT, proc, log)
            time.sleep(2)  # the runner is polling
        if sig == "SIGINT":
            os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: the terminal signals the foreground group
        else:
            proc.send_signal(signal.SIGTERM)  # a service manager signals the main process
        code = proc.wait(SHUTDOWN_LIMIT + 30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert code == 0, log.read_text()
    deadline = time.time() + 10
    while (_servers_on(port) or not _port_free(port)) and time.time() < deadline:
        time.sleep(0.2)
    assert not _servers_on(port), f"orphaned prefect server: {log.read_text()}"
    assert _port_free(port)
    assert "stopped" in log.read_text()
