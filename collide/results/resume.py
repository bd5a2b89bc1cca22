"""Stage keys: what makes a rerun reuse finished work and change nothing.

A stage's key hashes everything its result depends on: the config digest, the code
version (a hash of collide's sources), and the content hashes and paths of its inputs.
A finished row carries its stage keys in the ``keys`` attr of its group; a rerun whose key
matches skips the stage, one whose key differs redoes it. Keys are written after the
stage's results, each as one atomic row replacement, so a run killed in between leaves
a row without a key, and the rerun redoes that stage: never a key without its result.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from collide._io import code_version, json_digest
from collide.results.store import ExperimentStore


def stage_key(stage: str, inputs: Mapping[str, Any]) -> str:
    """The key of ``stage`` run on ``inputs`` (JSON-able) with this code."""
    return json_digest({"stage": stage, "code": code_version(), "inputs": inputs}, 24)


def row_keys(store: ExperimentStore, row: int) -> dict[str, str]:
    """The stage keys recorded on a row; empty when the row does not exist (or its metadata
    cannot be read: then every stage is redone)."""
    return dict((store.metadata(row) or {}).get("keys", {}))


def is_done(store: ExperimentStore, row: int, stage: str, key: str) -> bool:
    return row_keys(store, row).get(stage) == key


def mark_done(store: ExperimentStore, row: int, stage: str, key: str) -> None:
    """Record that ``stage`` of ``row`` finished with ``key`` (one atomic row rewrite)."""
    attrs = store.read_attrs(row)
    keys = dict(attrs.get("keys", {}))
    keys[stage] = key
    store.write_row(row, {}, {"keys": keys}, keep_existing=True)


def drop_damaged(store: ExperimentStore, rows: list[int]) -> dict[int, str]:
    """Remove each of ``rows`` whose files disagree with its manifest, so that the run
    recomputes it from scratch; returns what was wrong with each removed row."""
    dropped = {}
    for row in rows:
        if store.row_path(row).exists() and (why := store.row_damage(row)) is not None:
            store.remove_row(row)
            dropped[row] = why
    return dropped


def prune_rows(store: ExperimentStore, keep: int) -> list[int]:
    """Remove rows numbered ``keep`` and above (left by an earlier config with more rows).

    Call it once every job of the run succeeded: a config that fails in a job leaves an
    earlier run's rows as they were.
    """
    gone = [r for r in store.rows() if r >= keep]
    for row in gone:
        store.remove_row(row)
    return gone


_lock = threading.Lock()
_depth = 0
_saved = 0


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with torch using ``n`` CPU threads, then restore the old count.

    Jobs overlapping in one process share the setting; the count is restored when the
    last one leaves, never while another still runs.
    """
    import torch

    global _depth, _saved
    with _lock:
        if _depth == 0:
            _saved = torch.get_num_threads()
            torch.set_num_threads(n)
        elif torch.get_num_threads() != n:
            raise RuntimeError(f"jobs asking for {n} and {torch.get_num_threads()} torch threads overlap")
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                torch.set_num_threads(_saved)
