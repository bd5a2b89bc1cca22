"""What every task shares: progress in the run's log, and retrying only what may pass."""

from __future__ import annotations

import errno
from collections.abc import Callable
from typing import Any

from prefect import get_run_logger
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE

from collide.errors import CollideError

# OSErrors that a retry three seconds later cannot cure: the path or the disk is wrong.
PERMANENT_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EISDIR,
                              errno.ENAMETOOLONG, errno.ENOSPC, errno.EDQUOT, errno.ELOOP})


def transient(_task: Any, _task_run: Any, state: Any) -> bool:
    """Retry a failure unless it cannot pass: collide saying the input is wrong, or an
    OSError about the path or disk itself (read-only, not a folder, name too long, full)."""
    error = getattr(state, "data", None)
    if isinstance(error, CollideError | ValueError):
        return False
    return not (isinstance(error, OSError) and error.errno in PERMANENT_ERRNOS)


# Stages reuse finished work themselves (checkpoints by config hash); Prefect's own
# cache would pickle the config to hash it for nothing.
TASK_OPTIONS: dict[str, Any] = {
    "cache_policy": NO_CACHE,
    "retries": 2,
    "retry_delay_seconds": 3,
    "retry_condition_fn": transient,
}


def logging_progress(every: float = 0.25, bar_every: float = 0.1) -> Callable[[str, int, int], None]:
    """A collide progress callback: a progress artifact per stage (the task run's bar in
    the UI, moved every ``bar_every``) and a log line at about every ``every`` of it."""
    logger = get_run_logger()
    last: dict[str, float] = {}
    bars: dict[str, tuple[Any, float]] = {}

    def report(stage: str, done: int, total: int) -> None:
        share = min(done / total, 1.0) if total else 1.0
        if share >= 1.0 or share - last.get(stage, -1.0) >= every:
            last[stage] = share
            logger.info("%s: %d of %d (%.0f%%)", stage, done, total, 100 * share)
        bar = bars.get(stage)
        if bar is None:
            artifact = create_progress_artifact(100 * share, description=f"{stage}: {total} steps")
            bars[stage] = (artifact, share)
        elif share >= 1.0 or share - bar[1] >= bar_every:
            update_progress_artifact(bar[0], 100 * share)
            bars[stage] = (bar[0], share)

    return report
