"""What every task shares: progress in the run's log, and retrying only what may pass."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prefect import get_run_logger
from prefect.cache_policies import NO_CACHE

from collide.errors import CollideError


def transient(_task: Any, _task_run: Any, state: Any) -> bool:
    """Retry a failure unless it is collide saying the input is wrong: that never passes."""
    return not isinstance(getattr(state, "data", None), CollideError)


# Stages reuse finished work themselves (checkpoints by config hash); Prefect's own
# cache would pickle the config to hash it for nothing.
TASK_OPTIONS: dict[str, Any] = {
    "cache_policy": NO_CACHE,
    "retries": 2,
    "retry_delay_seconds": 3,
    "retry_condition_fn": transient,
}


def logging_progress(every: float = 0.25) -> Callable[[str, int, int], None]:
    """A collide progress callback that logs each stage at about every ``every`` of it."""
    logger = get_run_logger()
    last: dict[str, float] = {}

    def report(stage: str, done: int, total: int) -> None:
        share = done / total if total else 1.0
        if share >= 1.0 or share - last.get(stage, -1.0) >= every:
            last[stage] = share
            logger.info("%s: %d of %d (%.0f%%)", stage, done, total, 100 * share)

    return report
