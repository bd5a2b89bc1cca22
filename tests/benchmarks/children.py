"""Targets for benchmarks.common.in_child's test: a module that imports nothing heavy, so
the spawned child starts in a fraction of a second."""

import time


def reports(first: int, out) -> None:
    out.put({"a": first, "b": 0})
    out.put({"b": 2})


def hangs(out) -> None:
    time.sleep(60)


def dies(out) -> None:
    out.put({"a": 1})
    raise SystemExit(3)
