"""Tables and figures, rebuilt from the Zarr stores alone.

Works for any ``<name>.zarr`` under a results root whose row groups carry a ``metrics``
attr (the storage contract): no experiment-specific code, no vertex is recomputed.
Outputs are rewritten only when their store changed (:mod:`collide.results.freshness`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from collide._io import file_sha256
from collide.errors import DataError
from collide.results.freshness import incomplete_text, outputs_intact, store_digest
from collide.results.report import write_report
from collide.results.store import DECLARED, ExperimentStore, jsonable, stores, write_table
from collide.results.vertex_figure import write_figure


def write_outputs(store: ExperimentStore, *, force: bool = False) -> dict[str, Any]:
    """The table (Parquet) and figure (PNG) of one store, unless they are already up to date.

    A store holding fewer evaluated rows than its run record planned (a run cut short)
    still gets its table, flagged: ``incomplete`` holds the warning, which the figure's
    title, the ledger, the report and ``collide status`` repeat.

    Returns:
        ``table``, ``figure`` paths, ``rows`` count, ``expected_rows``, ``incomplete``
        (a warning, or None), ``key`` and ``reused`` (nothing written).
    """
    key = store_digest(store)
    table, figure = store.table_path, store.figure_path
    ledger = store.ledger()
    kept = ("table", "figure", "rows", "expected_rows", "incomplete", "key")
    if not force and ledger.get("key") == key and outputs_intact(store, ledger):
        return {**{k: ledger.get(k) for k in kept}, "table": str(table), "figure": str(figure), "reused": True}
    frame = store.table()
    expected = store.planned_rows()
    complete = expected is None or frame["row"].tolist() == list(range(expected))
    warning = None if complete else incomplete_text(store, len(frame), expected or 0)
    write_figure(store, [int(r) for r in frame["row"]], warning=warning or "")
    write_table(frame, table)
    digests = sorted({str(d) for d in frame.get("config_digest", pd.Series(dtype=str)).dropna()})
    # The files by name, beside the ledger: it reads the same however the root was given (the
    # run's absolute folders, `collide tables`' relative one).
    record = {
        "key": key, "table": table.name, "figure": figure.name, "rows": len(frame), "expected_rows": expected,
        "table_sha256": file_sha256(table), "figure_sha256": file_sha256(figure),
        "incomplete": warning, "config_digests": digests,
        "written": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    if DECLARED in ledger:  # the summaries were not rewritten: what they were written as still holds
        record[DECLARED] = ledger[DECLARED]
    store.write_ledger(record)
    return {**{k: record[k] for k in kept}, "table": str(table), "figure": str(figure), "reused": False}


def records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as plain-JSON dicts (numpy scalars to Python, NaN to None)."""
    return [jsonable(rec) for rec in frame.to_dict(orient="records")]


def regenerate(
    root: str | Path, *, progress: Callable[[str, int, int], None] | None = None
) -> dict[str, Any]:
    """Rewrite every table and figure under ``root`` from its store, then the report."""
    found = stores(root)
    if not found:
        raise DataError(f"no <experiment>.zarr store under {root}: run an experiment first")
    outputs = {}
    for k, store in enumerate(found):
        with store.lock():  # not while a run of it is writing rows
            store.remove_leftovers()
            outputs[store.name] = write_outputs(store, force=True)
        if progress is not None:
            progress("tables", k + 1, len(found))
    return {"experiments": outputs, "report": str(write_report(root, found))}
