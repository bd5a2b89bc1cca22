"""Stage keys: what makes a rerun reuse finished work and change nothing.

A stage's key hashes everything its result depends on: the config digest, the code
version (a hash of collide's sources), and the content hashes and paths of its inputs.
A finished row carries its stage keys in the ``keys`` attr of its group; a rerun whose key
matches skips the stage, one whose key differs redoes it. Keys are written after the
stage's results, each as one atomic rewrite of the row's attrs, so a run killed in between leaves
a row without a key, and the rerun redoes that stage: never a key without its result.
"""

from __future__ import annotations

from collections.abc import Mapping
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
    """Record that ``stage`` of ``row`` finished with ``key``: one atomic rewrite of the row's
    attrs, its arrays untouched (:meth:`ExperimentStore.update_attrs`)."""
    keys = row_keys(store, row)  # unchecked here: update_attrs checks the row first
    keys[stage] = key
    store.update_attrs(row, {"keys": keys})


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


