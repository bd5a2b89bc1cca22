"""A child process that ends with the process that started it (on Linux).

The Prefect servers collide starts (`collide run`'s temporary one, `collide serve`'s) run
in sessions of their own, so that a Ctrl-C in the terminal reaches the run and not the
server; the run then stops its server itself. A run killed outright (SIGKILL, the OOM
killer) cannot, and its server kept its port and its memory until someone stopped it by
hand. Started through this module, the server first asks the kernel to send it SIGTERM
when its parent ends (``prctl(PR_SET_PDEATHSIG)``, which ``execve`` keeps) and then
becomes the command itself; it shuts down on that SIGTERM as on any other. Elsewhere
(macOS, Windows) the command is run as it is.

The kernel sends the signal when the *thread* that started the child ends, not only the
process: start the command from a thread that lives as long as the child should (the
main thread, in collide's commands).

Usage: ``python -P .../flows/parent_bound.py PARENT_PID COMMAND [ARG ...]`` (:func:`bound`
writes it). Run by its path, with ``-P`` and the standard library alone: nothing in the
folder the user runs collide from (a ``flows`` package of their own, say) is imported.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from pathlib import Path

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>

# The exit status where the parent had already ended before the request took hold.
PARENT_GONE = 3


def bound(argv: list[str]) -> list[str]:
    """``argv`` as a command that gets SIGTERM when this process (its starting thread) ends;
    ``argv`` itself where the platform has no such request."""
    if not sys.platform.startswith("linux"):
        return argv
    return [sys.executable, "-P", str(Path(__file__).resolve()), str(os.getpid()), *argv]


def main(args: list[str]) -> int:
    parent, argv = int(args[0]), args[1:]
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) != 0:
        # The command still runs, as it ran before: only a parent killed outright leaves it.
        print(f"flows.parent_bound: prctl(PR_SET_PDEATHSIG) failed ({os.strerror(ctypes.get_errno())}): {argv[0]} "
              "will not stop by itself if its parent is killed outright", file=sys.stderr)
    # A parent that ended between the fork and the request above sent nothing: this
    # process has been handed to another (init, a subreaper) already.
    if os.getppid() != parent:
        print(f"flows.parent_bound: process {parent} ended before {argv[0]} started; not starting it",
              file=sys.stderr)
        return PARENT_GONE
    os.execvp(argv[0], argv)
    return 1  # not reached: execvp replaces this process or raises


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
