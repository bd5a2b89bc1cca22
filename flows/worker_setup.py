"""What each worker process of a flow's local Dask cluster does first (a Dask preload).

A Ctrl-C in the terminal reaches every process of its foreground group, the local
cluster's worker processes too. Each then raised KeyboardInterrupt in its own event loop
and printed two tracebacks, while the run was already stopping them through their
nannies (a new user's trial: about 70 lines before "interrupted"). A worker process
therefore ignores SIGINT: the run stops it, as it stops the cluster, once the flow run
has recorded the interrupt.
"""

from __future__ import annotations

import signal
import threading
from typing import Any


def dask_setup(_worker: Any) -> None:
    """Dask calls this in the worker process as the worker starts."""
    if threading.current_thread() is threading.main_thread():  # only the main thread may set handlers
        signal.signal(signal.SIGINT, signal.SIG_IGN)
