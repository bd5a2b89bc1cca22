"""What each worker process of a flow's local Dask cluster does first and last (a Dask preload).

A Ctrl-C in the terminal reaches every process of its foreground group, the local
cluster's worker processes too. Each then raised KeyboardInterrupt in its own event loop
and printed two tracebacks, while the run was already stopping them through their
nannies (a new user's trial: about 70 lines before "interrupted"). A worker process
therefore takes SIGINT as a note that the run is stopping, not as an interrupt of its
own: the run stops it, as it stops the cluster, once the flow run has recorded the
interrupt (and, where the signal went to the run alone, a SIGTERM or SIGHUP, the run
sends it a note of its own, SIGUSR1: flows/runner.py).

What Dask then said in the worker was about that shutdown alone, and printed from under
the run's own last lines (make run's MNIST jobs, 2026-12-07): a warning per job
cancelled under a running worker, a 25-line traceback of a heartbeat to the scheduler
that had just closed, and, 4 s later, the nanny's warning that the worker, still inside
its job, was killed. So once the Ctrl-C (or the run's note) has reached it, Dask logs
nothing below critical in the worker, and as its close reaches this module's teardown the
worker ends at once instead of waiting for its job: what a job had not written by then is
redone by the rerun, as it was when the nanny killed the worker.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Any

# The signal by which the run itself tells a worker that it is stopping (flows/runner.py),
# where the signal that stopped it did not reach the worker.
NOTE = signal.SIGUSR1

# Set (in the worker's main thread, where every handler and hook here runs) once the
# terminal's Ctrl-C or the run's note has reached this worker process. A plain flag: an
# Event's lock could be held by the very code a second signal interrupts.
_interrupted = False


def _note_interrupt(_signum: int, _frame: Any) -> None:
    global _interrupted
    _interrupted = True
    logging.getLogger("distributed").setLevel(logging.CRITICAL)


def dask_setup(_worker: Any) -> None:
    """Dask calls this in the worker process as the worker starts."""
    if threading.current_thread() is threading.main_thread():  # only the main thread may set handlers
        signal.signal(NOTE, _note_interrupt)
        # A run started ignoring SIGINT (in the background of a shell without job control)
        # starts its workers ignoring it too: kept so, as the run keeps it.
        if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
            signal.signal(signal.SIGINT, _note_interrupt)


def dask_teardown(_worker: Any) -> None:
    """Dask calls this as the worker closes, before it waits for the job it is running."""
    if _interrupted:
        os._exit(0)  # the job's thread would hold the process until the nanny killed it
