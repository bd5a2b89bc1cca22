"""Tables, figures and their freshness, rebuilt from the Zarr stores alone.

Works for any ``<name>.zarr`` under a results root whose row groups carry a ``metrics``
attr (the storage contract): no experiment-specific code, no vertex is recomputed.
Each experiment's outputs are keyed on the content of its store; ``<name>.outputs.json``
records the key, so outputs are rewritten only when a row changed.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import zarr

from collide._io import code_version, experiment_lock, file_sha256, lock_holder
from collide.errors import DataError
from collide.results.cells import FLAGS, flag_text, missing, pairs_text, row_flags, success_text, valid_text
from collide.results.reference import reference_for
from collide.results.report import write_report
from collide.results.store import (
    atomic_file,
    damaged_text,
    figure_path,
    is_points_row,
    ledger_path,
    list_rows,
    read_ledger,
    read_row,
    read_run_record,
    remove_leftovers,
    rerun_hint,
    row_damage,
    store_damage,
    store_path,
    stray_entries,
    stray_text,
    table_from_store,
    table_path,
    write_table,
)

FIGURE_ROWS = 16  # a figure of more polytopes than this is too tall to read
POINTS_SHOWN = 5  # the first points of a points row, as many as the paper shows vertices

def experiments(root: str | Path) -> list[str]:
    """Names of the experiments with a store under ``root``, sorted."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p.name.removesuffix(".zarr") for p in root.glob("*.zarr") if p.is_dir())


def expected_rows(root: str | Path, experiment: str) -> int | None:
    """How many rows the last run of the experiment planned (its run record), if known."""
    record = read_run_record(root, experiment)
    return None if record is None else int(record["rows"])


def incomplete_text(root: str | Path, experiment: str, evaluated: int, expected: int) -> str:
    return (f"{evaluated}/{expected} planned rows evaluated: INCOMPLETE (a run was cut short); "
            f"{rerun_hint(root, experiment)}")


def store_digest(root: str | Path, experiment: str) -> str:
    """sha256 (16 hex) of every file of every row group and of the planned row count:
    changes iff a row changed or a run planned another number of rows."""
    digest = hashlib.sha256(f"{code_version()} {expected_rows(root, experiment)}".encode())
    base = store_path(root, experiment)
    for row in list_rows(root, experiment):
        for path in sorted((base / f"row-{row}").rglob("*")):
            if path.is_file():
                digest.update(path.relative_to(base).as_posix().encode())
                digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _label(row: int, attrs: dict[str, Any]) -> str:
    """Method, init, valid vertices, success (or why none) and the paper's row, if any."""
    metrics = attrs.get("metrics", {})
    if is_points_row(attrs):
        return _points_label(row, attrs, metrics)
    head = f"row {row}: {attrs.get('method', '?')}, init={attrs.get('init', '?')}"
    if attrs.get("target_index") is not None and attrs.get("config", {}).get("targets_per_class"):
        head += f" t={attrs['target_index']}"
    lines = [head]
    if metrics:
        # The full reason is in the table and report; the label only has room for the gist.
        if missing(metrics.get("success_rate")):
            lines.append(f"valid {valid_text(metrics)}: no success rate")
        else:
            lines.append(f"valid {valid_text(metrics)}, success {success_text(metrics)}")
        dist, err = metrics.get("vertex_avg_distance"), metrics.get("max_feature_rel_error_all")
        lines.append(f"dist {'n/a' if missing(dist) else format(dist, '.3g') + pairs_text(metrics)}, "
                     f"err {'n/a' if missing(err) else format(err, '.1e')}")
    reference = reference_for({**attrs, **metrics})
    if reference is not None:
        lines.append(f"{reference.name}: {reference.success_rate:.0%}, dist {reference.vertex_avg_distance:.4g}")
    return "\n".join(textwrap.fill(line, 28) for line in lines)


def _points_label(row: int, attrs: dict[str, Any], metrics: dict[str, Any]) -> str:
    """Method, what its columns asked for (ε), success, feature error and distance to the target."""
    asked = "".join(f", {k}={v:.3g}" for k, v in attrs.get("columns", {}).items() if k == "epsilon")
    lines = [f"row {row}: {attrs.get('method', '?')}{asked}, {metrics.get('n_samples', '?')} pts"]
    if metrics:
        err, dist = metrics.get("max_feature_rel_error"), metrics.get("mean_distance_to_target")
        lines.append(f"success {success_text(metrics)}")
        lines.append(f"err {'n/a' if missing(err) else format(err, '.1e')}, "
                     f"to target {'n/a' if missing(dist) else format(dist, '.3g')}")
    return "\n".join(textwrap.fill(line, 28) for line in lines)


def _difference_boxes(vertices: np.ndarray, size: int, stride: int, n: int) -> list[tuple[int, int, int]]:
    """The ``n`` windows where the vertices differ most from each other (their spread)."""
    spread = vertices.std(0).sum(0)  # (H, W)
    h, w = spread.shape
    scores = []
    for r in range(0, h - size + 1, stride):
        for c in range(0, w - size + 1, stride):
            scores.append((float(spread[r : r + size, c : c + size].sum()), r, c))
    scores.sort(reverse=True)
    picked: list[tuple[int, int, int]] = []
    for _, r, c in scores:  # skip windows overlapping one already picked
        if all(abs(r - pr) >= size or abs(c - pc) >= size for pr, pc, _ in picked):
            picked.append((r, c, size))
        if len(picked) == n:
            break
    return picked


def write_figure(root: str | Path, experiment: str, rows: list[int], *, warning: str = "") -> Path:
    """Targets, inits and vertices of the first :data:`FIGURE_ROWS` rows (the paper's Tables 1, 3, 5).

    Invalid vertices are drawn, framed in red; each row's label gives its valid vertices
    and success rate (or why it has none); the title names every row flag. Rows of a
    patch experiment get boxes where their vertices differ most.
    """
    from collide.results.figures import vertex_grid

    targets, inits, vertices, valid, labels, boxes = [], [], [], [], [], []
    layer, flags = "?", []
    for row in rows[:FIGURE_ROWS]:
        arrays, attrs = read_row(root, experiment, row)
        targets.append(arrays["target"])
        inits.append(arrays.get("init"))
        # A points row shows its first points where a polytope row shows its vertices.
        vertices.append(arrays["vertices"] if "vertices" in arrays else arrays["points"][:POINTS_SHOWN])
        valid.append(arrays.get("vertex_valid"))
        labels.append(_label(row, attrs))
        layer = attrs.get("layer", layer)
        flags += [f for f in row_flags({**attrs, **attrs.get("metrics", {})}) if f not in flags]
        patch = attrs.get("composition")
        boxes.append(_difference_boxes(arrays["vertices"], patch["size"], patch["stride"], 3) if patch else [])
    shown = "" if len(rows) <= FIGURE_ROWS else f" (first {FIGURE_ROWS} of {len(rows)} rows)"
    note = "".join(f" - {flag_text(f).upper()}" for f in flags)
    kind = "patch compositions (boxes: largest differences)" if any(boxes) else "polytopes"
    title = f"{experiment}: {kind} colliding with the target at {layer}{shown}{note}"
    if warning:
        title += f"\n{warning}"
    if any(v is not None and not np.all(v) for v in valid):
        title += "\nred frame: invalid vertex (missed its criterion; no sample weight)"
    return vertex_grid(
        targets, inits, vertices, labels, figure_path(root, experiment), valid=valid, title=title, boxes=boxes,
    )


def write_outputs(root: str | Path, experiment: str, *, force: bool = False) -> dict[str, Any]:
    """The table (Parquet) and figure (PNG) of one store, unless they are already up to date.

    A store holding fewer evaluated rows than its run record planned (a run cut short)
    still gets its table, flagged: ``incomplete`` holds the warning, which the figure's
    title, the ledger, the report and ``collide status`` repeat.

    Returns:
        ``table``, ``figure`` paths, ``rows`` count, ``expected_rows``, ``incomplete``
        (a warning, or None), ``key`` and ``reused`` (nothing written).
    """
    key = store_digest(root, experiment)
    table, figure = table_path(root, experiment), figure_path(root, experiment)
    ledger = read_ledger(root, experiment)
    kept = ("table", "figure", "rows", "expected_rows", "incomplete", "key")
    if not force and ledger.get("key") == key and outputs_intact(root, experiment, ledger):
        return {**{k: ledger.get(k) for k in kept}, "table": str(table), "figure": str(figure), "reused": True}
    frame = table_from_store(root, experiment)
    expected = expected_rows(root, experiment)
    complete = expected is None or frame["row"].tolist() == list(range(expected))
    warning = None if complete else incomplete_text(root, experiment, len(frame), expected or 0)
    write_figure(root, experiment, [int(r) for r in frame["row"]], warning=warning or "")
    write_table(frame, table)
    digests = sorted({str(d) for d in frame.get("config_digest", pd.Series(dtype=str)).dropna()})
    record = {
        "key": key, "table": str(table), "figure": str(figure), "rows": len(frame), "expected_rows": expected,
        "table_sha256": file_sha256(table), "figure_sha256": file_sha256(figure),
        "incomplete": warning, "config_digests": digests,
        "written": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    with atomic_file(ledger_path(root, experiment)) as tmp:
        tmp.write_text(json.dumps(record, indent=1))
    return {**{k: record[k] for k in kept}, "reused": False}


def outputs_intact(root: str | Path, experiment: str, ledger: dict[str, Any]) -> bool:
    """Whether the table and figure are the very files the ledger recorded writing: an
    edited or replaced table is stale however fresh the store's key."""
    table, figure = table_path(root, experiment), figure_path(root, experiment)
    return (table.is_file() and figure.is_file() and ledger.get("table_sha256") == file_sha256(table)
            and ledger.get("figure_sha256") == file_sha256(figure))


def records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as plain-JSON dicts (numpy scalars to Python, NaN to None)."""
    out = []
    for rec in frame.to_dict(orient="records"):
        clean = {}
        for k, v in rec.items():
            if isinstance(v, np.generic):
                v = v.item()
            if isinstance(v, float) and not np.isfinite(v):
                v = None
            clean[str(k)] = v
        out.append(clean)
    return out


def regenerate(
    root: str | Path, *, progress: Callable[[str, int, int], None] | None = None
) -> dict[str, Any]:
    """Rewrite every table and figure under ``root`` from its store, then the report."""
    names = experiments(root)
    if not names:
        raise DataError(f"no <experiment>.zarr store under {root}: run an experiment first")
    outputs = {}
    for k, name in enumerate(names):
        with experiment_lock(root, name):  # not while a run of it is writing rows
            remove_leftovers(root, name)
            outputs[name] = write_outputs(root, name, force=True)
        if progress is not None:
            progress("tables", k + 1, len(names))
    return {"experiments": outputs, "report": str(write_report(root, names))}


def _read_attrs(root: str | Path, experiment: str, row: int) -> dict[str, Any] | None:
    """A row group's attrs alone: its metadata is read, none of its arrays (None: unreadable)."""
    try:
        return dict(zarr.open_group(store_path(root, experiment) / f"row-{row}", mode="r").attrs)
    except Exception:  # a damaged zarr.json; status reports it rather than stopping
        return None


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


def status(root: str | Path) -> list[dict[str, Any]]:
    """Per store: rows, evaluated rows, configs, newest row time, whether the table is fresh,
    and the rows a reader must not take at face value.

    Reads the row groups' attrs, never their arrays (freshness and damage hash the stored
    files, :func:`store_digest` and :func:`~collide.results.store.row_damage`, without
    decoding them). ``expected_rows`` is the run record's planned count; ``incomplete``
    says a store holds fewer evaluated rows, ``damaged_rows`` maps a row to what is wrong
    with its files. ``flagged`` maps each flag to its
    rows; ``invalid_vertex_rows`` maps a row to its ``k/V`` valid vertices where k < V;
    ``no_success_rate`` maps a row to the reason; ``unchecked_rows`` were evaluated by a
    version that did not check vertices; ``warnings`` says all of it in words.
    """
    out = []
    for name in experiments(root):
        rows = list_rows(root, name)
        base = store_path(root, name)
        evaluated, configs, newest = 0, {}, None
        flagged: dict[str, list[int]] = {}
        invalid: dict[int, str] = {}
        no_success: dict[int, str] = {}
        unchecked: list[int] = []
        damaged: dict[int, str] = {}
        evaluated_rows: list[int] = []
        for row in rows:
            attrs = _read_attrs(root, name, row)
            why = row_damage(root, name, row, attrs) if attrs is not None else "its zarr.json cannot be read"
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
            stamp = (base / f"row-{row}" / "zarr.json").stat().st_mtime
            newest = stamp if newest is None else max(newest, stamp)
        ledger = read_ledger(root, name)
        store_broken = store_damage(root, name)
        strays = stray_entries(root, name)
        fresh = (bool(rows) and not damaged and store_broken is None and ledger.get("key") == store_digest(root, name)
                 and outputs_intact(root, name, ledger))
        expected = expected_rows(root, name)
        incomplete = None
        # Damaged rows are reported as such below, not as rows a killed run never wrote.
        if expected is not None and sorted(r for r in [*evaluated_rows, *damaged] if r < expected) != list(
                range(expected)):
            incomplete = incomplete_text(root, name, sum(r < expected for r in evaluated_rows), expected)
        holder = lock_holder(root, name)
        if holder is not None and incomplete:  # not cut short: still being written
            incomplete = (f"{sum(r < expected for r in evaluated_rows)}/{expected} planned rows evaluated so far: "
                          f"a run is in progress ({holder})")
        warnings = [incomplete] if incomplete else []
        if store_broken is not None:
            warnings.append(f"the store's own metadata is damaged: {store_broken}; {rerun_hint(root, name)}, "
                            "which rewrites it")
        if strays:
            warnings.append(stray_text(root, name, strays))
        warnings += [damaged_text(root, name, r, why) for r, why in damaged.items()]
        out.append({
            "experiment": name,
            "rows": len(rows),
            "evaluated": evaluated,
            "expected_rows": expected,
            "incomplete": incomplete,
            "damaged_rows": {str(r): why for r, why in damaged.items()},
            "store_damage": store_broken,
            "strays": strays,
            "running": holder,
            "configs": sorted(configs),
            "config": configs,  # digest -> the full config the rows were computed with
            "updated": None if newest is None
            else dt.datetime.fromtimestamp(newest, dt.UTC).isoformat(timespec="seconds"),
            "table": str(table_path(root, name)) if table_path(root, name).is_file() else None,
            "table_written": ledger.get("written"),
            "table_fresh": fresh,
            "flagged": flagged,
            "invalid_vertex_rows": {str(r): v for r, v in invalid.items()},
            "no_success_rate": {str(r): why for r, why in no_success.items()},
            "unchecked_rows": unchecked,
            "warnings": warnings + _warnings(flagged, invalid, no_success, unchecked),
        })
    return out
