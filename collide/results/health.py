"""``collide status``: per store, what it holds and what a reader must not take at face value.

Reads the row groups' attrs, never their arrays (freshness and damage hash the stored
files without decoding them).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from collide.results.cells import FLAGS, flag_text, missing, row_flags, valid_text
from collide.results.freshness import incomplete_text, outputs_intact, store_digest
from collide.results.store import LEDGER, RUN_RECORD_FILE, ExperimentStore, is_points_row, plain_file, stores


def _rows_text(rows: list[int]) -> str:
    return f"row{'s' if len(rows) > 1 else ''} {', '.join(map(str, rows))}"


def _warnings(
    flagged: dict[str, list[int]], invalid: dict[int, str], no_success: dict[int, str], unchecked: list[int]
) -> list[str]:
    out = [f"{_rows_text(rows)}: {flag_text(flag)}: {FLAGS[flag][1] if flag in FLAGS else 'flagged'}"
           for flag, rows in flagged.items()]
    out += [f"row {r}: only {v} vertices valid; the others carry no sample weight" for r, v in invalid.items()]
    out += [f"row {r}: no success rate: {why}" for r, why in no_success.items()]
    if unchecked:
        out.append(f"{_rows_text(unchecked)}: evaluated before vertex validity was recorded; "
                   "their success rates count every vertex, valid or not")
    return out


def _readable(store: ExperimentStore) -> list[str]:
    """The outputs beside ``store`` that are there to be read, by file name: not its ledger
    nor its run record, which are collide's own bookkeeping."""
    return [p.name for p in store.outputs() if not p.name.endswith((LEDGER, RUN_RECORD_FILE)) and plain_file(p)]


def status(root: str | Path, *, only: str | None = None) -> list[dict[str, Any]]:
    """Per store: rows, evaluated rows, configs, newest row time, whether the table is fresh,
    and the rows a reader must not take at face value.

    Reads the row groups' attrs, never their arrays (freshness and damage hash the stored
    files, :func:`~collide.results.freshness.store_digest` and
    :meth:`~collide.results.store.ExperimentStore.row_damage`, without decoding them).
    ``expected_rows`` is the run record's planned count; ``incomplete``
    says a store holds fewer evaluated rows, ``damaged_rows`` maps a row to what is wrong
    with its files, ``damaged_outputs`` a summary or figure the last run wrote to why it is
    no longer that file (missing, changed). ``flagged`` maps each flag to its
    rows; ``invalid_vertex_rows`` maps a row to its ``k/V`` valid vertices where k < V;
    ``no_success_rate`` maps a row to the reason; ``unchecked_rows`` were evaluated by a
    version that did not check vertices; ``warnings`` says all of it in words. ``files``:
    the outputs beside the store that a reader opens (its table, figure and those it declares,
    a scan's ranking, gallery and certified table among them), by name, where they are.
    ``only``: the store of that experiment alone (the others are not read).
    """
    out = []
    for store in stores(root):
        if only is not None and store.name != only:
            continue  # `collide status NAME`: the other stores' files are not read
        name = store.name
        rows = store.rows()
        evaluated, configs, newest = 0, {}, None
        flagged: dict[str, list[int]] = {}
        invalid: dict[int, str] = {}
        no_success: dict[int, str] = {}
        unchecked: list[int] = []
        damaged: dict[int, str] = {}
        evaluated_rows: list[int] = []
        for row in rows:
            attrs = store.metadata(row)
            why = store.row_damage(row, attrs) if attrs is not None else "its zarr.json cannot be read"
            if why is not None:
                damaged[row] = why
                continue
            assert attrs is not None
            metrics = attrs.get("metrics")
            evaluated += metrics is not None
            if metrics is not None:
                evaluated_rows.append(row)
            if "config_digest" in attrs:
                configs.setdefault(attrs["config_digest"], attrs.get("config"))
            for flag in row_flags({**attrs, **(metrics or {})}):
                flagged.setdefault(flag, []).append(row)
            if metrics is not None:
                if is_points_row(attrs):  # no vertices: a missed claim withholds its success rate
                    pass
                elif missing(metrics.get("valid_vertices")):
                    unchecked.append(row)
                elif metrics["valid_vertices"] < metrics.get("n_vertices", 0):
                    invalid[row] = valid_text(metrics)
                if missing(metrics.get("success_rate")):
                    no_success[row] = metrics.get("invalid_reason") or "reason not recorded"
            stamp = (store.row_path(row) / "zarr.json").stat().st_mtime
            newest = stamp if newest is None else max(newest, stamp)
        ledger = store.ledger()
        store_broken = store.damage()
        strays = store.strays()
        fresh = (bool(rows) and not damaged and store_broken is None and ledger.get("key") == store_digest(store)
                 and outputs_intact(store, ledger))
        expected = store.planned_rows()
        incomplete = None
        # Damaged rows are reported as such below, not as rows a killed run never wrote.
        if expected is not None and sorted(r for r in [*evaluated_rows, *damaged] if r < expected) != list(
                range(expected)):
            incomplete = incomplete_text(store, sum(r < expected for r in evaluated_rows), expected)
        holder = store.lock_holder()
        # A run in progress removes and rewrites its summaries: nothing to report until it ends.
        declared_broken = {} if holder is not None else store.declared_damage(ledger)
        if holder is not None and incomplete:  # not cut short: still being written
            incomplete = (f"{sum(r < expected for r in evaluated_rows)}/{expected} planned rows evaluated so far: "
                          f"a run is in progress ({holder})")
        warnings = [incomplete] if incomplete else []
        if store_broken is not None:
            warnings.append(f"the store's own metadata is damaged: {store_broken}; {store.rerun_hint()}, "
                            "which rewrites it")
        if strays:
            warnings.append(store.stray_text(strays))
        warnings += [store.damaged_text(r, why) for r, why in damaged.items()]
        warnings += [store.declared_text(name, why) for name, why in declared_broken.items()]
        out.append({
            "experiment": name,
            "rows": len(rows),
            "evaluated": evaluated,
            "expected_rows": expected,
            "incomplete": incomplete,
            "damaged_rows": {str(r): why for r, why in damaged.items()},
            "damaged_outputs": declared_broken,
            "store_damage": store_broken,
            "strays": strays,
            "running": holder,
            "configs": sorted(configs),
            "config": configs,  # digest -> the full config the rows were computed with
            "updated": None if newest is None
            else dt.datetime.fromtimestamp(newest, dt.UTC).isoformat(timespec="seconds"),
            "table": str(store.table_path) if store.table_path.is_file() else None,
            "files": _readable(store),
            "table_written": ledger.get("written"),
            "table_fresh": fresh,
            "flagged": flagged,
            "invalid_vertex_rows": {str(r): v for r, v in invalid.items()},
            "no_success_rate": {str(r): why for r, why in no_success.items()},
            "unchecked_rows": unchecked,
            "warnings": warnings + _warnings(flagged, invalid, no_success, unchecked),
        })
    return out
