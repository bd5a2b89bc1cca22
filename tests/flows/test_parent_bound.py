"""A command started through flows.parent_bound ends when the process that started it is
killed outright (the Prefect servers collide starts: flows.serve.start_server)."""

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flows.parent_bound import PARENT_GONE, bound

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")

# How long a killed parent's child may take to end: the kernel signals it at once.
ENDS_WITHIN_S = 10.0

# A parent that starts a long sleep in a session of its own, as the servers are started,
# prints its pid and waits to be killed. BOUND decides whether it goes through bound().
_PARENT = """
import subprocess, sys, time
from flows.parent_bound import bound
argv = [sys.executable, "-c", "import time; time.sleep(120)"]
child = subprocess.Popen(bound(argv) if {bound} else argv, start_new_session=True)
print(child.pid, flush=True)
time.sleep(120)
"""


def _running(pid: int) -> bool:
    """Alive and not a zombie (a container's init may not reap an orphan at once)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def _child_of_killed_parent(through_bound: bool) -> int:
    parent = subprocess.Popen([sys.executable, "-c", _PARENT.format(bound=through_bound)], stdout=subprocess.PIPE,
                              text=True, cwd=Path(__file__).resolve().parents[2])
    try:
        child = int(parent.stdout.readline())
        deadline = time.monotonic() + ENDS_WITHIN_S
        while time.monotonic() < deadline and b"parent_bound" in Path(f"/proc/{child}/cmdline").read_bytes():
            time.sleep(0.05)  # until the wrapper has become the command (its request made)
    finally:
        parent.kill()
        parent.wait()
        parent.stdout.close()
    return child


def _end(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # ended already
        os.kill(pid, signal.SIGKILL)


def test_a_bound_child_ends_when_its_parent_is_killed_outright():
    child = _child_of_killed_parent(through_bound=True)
    try:
        deadline = time.monotonic() + ENDS_WITHIN_S
        while _running(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _running(child)
    finally:
        _end(child)  # no sleep left behind by a failure


def test_an_unbound_child_outlives_its_killed_parent():
    """The control: without the request the same child keeps running (what the servers did)."""
    child = _child_of_killed_parent(through_bound=False)
    try:
        time.sleep(0.5)
        assert _running(child)
    finally:
        _end(child)


def test_a_parent_gone_before_the_request_took_hold_starts_nothing(tmp_path):
    """The wrapper finds another parent than the one named: the command is not started."""
    assert bound(["true"])[-1] == "true" and bound(["true"])[3] == str(os.getpid())
    (tmp_path / "flows").mkdir()  # a package of the user's own in the folder it runs from: never imported
    (tmp_path / "flows" / "__init__.py").write_text("raise SystemExit('imported from the working folder')")
    marker = tmp_path / "started"
    wrapper = bound(["touch", str(marker)])
    wrapper[3] = str(os.getpid() + 10**6)  # a parent that is not this process's
    gone = subprocess.run(wrapper, capture_output=True, text=True, cwd=tmp_path)
    assert gone.returncode == PARENT_GONE
    assert "ended before touch started" in gone.stderr
    assert not marker.exists()
