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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from collide.errors import DataError
from collide.store import atomic_file, list_rows, read_row, store_path, table_from_store, table_path, write_table

FIGURE_ROWS = 16  # a figure of more polytopes than this is too tall to read


def experiments(root: str | Path) -> list[str]:
    """Names of the experiments with a store under ``root``, sorted."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p.name.removesuffix(".zarr") for p in root.glob("*.zarr") if p.is_dir())


def figure_path(root: str | Path, experiment: str) -> Path:
    return Path(root) / f"{experiment}-vertices.png"


def ledger_path(root: str | Path, experiment: str) -> Path:
    return Path(root) / f"{experiment}.outputs.json"


def store_digest(root: str | Path, experiment: str) -> str:
    """sha256 (16 hex) of every file of every row group: changes iff a row changed."""
    from collide.resume import code_version

    digest = hashlib.sha256(code_version().encode())
    base = store_path(root, experiment)
    for row in list_rows(root, experiment):
        for path in sorted((base / f"row-{row}").rglob("*")):
            if path.is_file():
                digest.update(path.relative_to(base).as_posix().encode())
                digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def read_ledger(root: str | Path, experiment: str) -> dict[str, Any]:
    path = ledger_path(root, experiment)
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def _label(row: int, attrs: dict[str, Any]) -> str:
    parts = [f"row {row}: {attrs.get('method', '?')}"]
    if "init" in attrs:
        parts.append(f"init={attrs['init']}")
    if attrs.get("target_index") is not None and attrs.get("config", {}).get("targets_per_class"):
        parts[-1] += f" t={attrs['target_index']}"
    return "\n".join(parts)


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


def write_figure(root: str | Path, experiment: str, rows: list[int]) -> Path:
    """Targets and vertices of the first :data:`FIGURE_ROWS` rows (the paper's Tables 1, 3, 5).

    Rows of a patch experiment get boxes where their vertices differ most; a model with
    random weights is named in the title.
    """
    from collide.figures import vertex_grid

    targets, vertices, labels, boxes, layer, random = [], [], [], [], "?", False
    for row in rows[:FIGURE_ROWS]:
        arrays, attrs = read_row(root, experiment, row)
        targets.append(arrays["target"])
        vertices.append(arrays["vertices"])
        labels.append(_label(row, attrs))
        layer = attrs.get("layer", layer)
        random |= bool(attrs.get("model_source", {}).get("random"))
        patch = attrs.get("composition")
        boxes.append(_difference_boxes(arrays["vertices"], patch["size"], patch["stride"], 3) if patch else [])
    shown = "" if len(rows) <= FIGURE_ROWS else f" (first {FIGURE_ROWS} of {len(rows)} rows)"
    note = " - RANDOM WEIGHTS" if random else ""
    kind = "patch compositions (boxes: largest differences)" if any(boxes) else "polytopes"
    return vertex_grid(
        targets, vertices, labels, figure_path(root, experiment),
        title=f"{experiment}: {kind} colliding with the target at {layer}{shown}{note}", boxes=boxes,
    )


def write_outputs(root: str | Path, experiment: str, *, force: bool = False) -> dict[str, Any]:
    """The table (Parquet) and figure (PNG) of one store, unless they are already up to date.

    Returns:
        ``table``, ``figure`` paths, ``rows`` count, ``key`` and ``reused`` (nothing written).
    """
    key = store_digest(root, experiment)
    table, figure = table_path(root, experiment), figure_path(root, experiment)
    ledger = read_ledger(root, experiment)
    if not force and ledger.get("key") == key and table.is_file() and figure.is_file():
        return {"table": str(table), "figure": str(figure), "rows": ledger["rows"], "key": key, "reused": True}
    frame = table_from_store(root, experiment)
    write_figure(root, experiment, [int(r) for r in frame["row"]])
    write_table(frame, table)
    digests = sorted({str(d) for d in frame.get("config_digest", pd.Series(dtype=str)).dropna()})
    record = {
        "key": key, "table": str(table), "figure": str(figure), "rows": len(frame),
        "config_digests": digests, "written": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    with atomic_file(ledger_path(root, experiment)) as tmp:
        tmp.write_text(json.dumps(record, indent=1))
    return {**{k: record[k] for k in ("table", "figure", "rows", "key")}, "reused": False}


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
    from collide.report import write_report

    names = experiments(root)
    if not names:
        raise DataError(f"no <experiment>.zarr store under {root}: run an experiment first")
    outputs = {}
    for k, name in enumerate(names):
        outputs[name] = write_outputs(root, name, force=True)
        if progress is not None:
            progress("tables", k + 1, len(names))
    return {"experiments": outputs, "report": str(write_report(root, names))}


def status(root: str | Path) -> list[dict[str, Any]]:
    """Per store: rows, evaluated rows, configs, newest row time, and whether the table is fresh."""
    out = []
    for name in experiments(root):
        rows = list_rows(root, name)
        base = store_path(root, name)
        evaluated, configs, newest = 0, {}, None
        for row in rows:
            _, attrs = read_row(root, name, row)
            evaluated += "metrics" in attrs
            if "config_digest" in attrs:
                configs.setdefault(attrs["config_digest"], attrs.get("config"))
            stamp = (base / f"row-{row}" / "zarr.json").stat().st_mtime
            newest = stamp if newest is None else max(newest, stamp)
        ledger = read_ledger(root, name)
        fresh = bool(rows) and ledger.get("key") == store_digest(root, name) and table_path(root, name).is_file()
        out.append({
            "experiment": name,
            "rows": len(rows),
            "evaluated": evaluated,
            "configs": sorted(configs),
            "config": configs,  # digest -> the full config the rows were computed with
            "updated": None if newest is None
            else dt.datetime.fromtimestamp(newest, dt.UTC).isoformat(timespec="seconds"),
            "table": str(table_path(root, name)) if table_path(root, name).is_file() else None,
            "table_written": ledger.get("written"),
            "table_fresh": fresh,
        })
    return out
