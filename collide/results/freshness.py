"""Whether an experiment's table and figure still match its store, and whether its store is complete.

An experiment's outputs are keyed on the content of its store (:func:`store_digest`);
its ledger (``<name>.outputs.json``) records the key and the hashes of the files it wrote,
so outputs are rewritten only when a row changed, and a table edited by hand is stale.
"""

from __future__ import annotations

import hashlib
from typing import Any

from collide._io import code_version, file_sha256
from collide.results.store import ExperimentStore


def store_digest(store: ExperimentStore) -> str:
    """sha256 (16 hex) of every file of every row group and of the planned row count:
    changes iff a row changed or a run planned another number of rows."""
    digest = hashlib.sha256(f"{code_version()} {store.planned_rows()}".encode())
    for row in store.rows():
        for path in sorted(store.row_path(row).rglob("*")):
            if path.is_file():
                digest.update(path.relative_to(store.path).as_posix().encode())
                digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def outputs_intact(store: ExperimentStore, ledger: dict[str, Any]) -> bool:
    """Whether the table and figure are the very files the ledger recorded writing: an
    edited or replaced table is stale however fresh the store's key."""
    table, figure = store.table_path, store.figure_path
    return (table.is_file() and figure.is_file() and ledger.get("table_sha256") == file_sha256(table)
            and ledger.get("figure_sha256") == file_sha256(figure))


def incomplete_text(store: ExperimentStore, evaluated: int, expected: int) -> str:
    return (f"{evaluated}/{expected} planned rows evaluated: INCOMPLETE (a run was cut short); "
            f"{store.rerun_hint()}")
