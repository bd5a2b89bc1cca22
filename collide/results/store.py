"""The storage contract (DESIGN.md): Zarr row groups, Parquet tables, atomic writes.

``<root>/<experiment>.zarr/row-<n>`` holds one polytope's arrays and, in its attrs,
everything needed to rebuild its table row. A row group is built under a temporary
name outside the store and renamed into place, so a reader sees the old row or the new
one, never a mix; Parquet and PNG files are written the same way.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import zarr

from collide._io import atomic_file
from collide.errors import DataError

TABLE_COLUMNS = (
    "experiment", "row", "method", "model", "layer", "n_vertices", "n_samples",
    "success_rate", "target_top_prob", "samples_top_prob", "dataset_avg_distance",
    "vertex_avg_distance", "max_feature_rel_error",
)


# Columns that may be NaN in every row (no valid polytope anywhere) and are still numbers.
FLOAT_COLUMNS = (
    "success_rate", "target_top_prob", "samples_top_prob", "dataset_avg_distance", "vertex_avg_distance",
    "max_feature_rel_error", "max_feature_rel_error_all", "samples_max_feature_rel_error",
)


def store_path(root: str | Path, experiment: str) -> Path:
    return Path(root) / f"{experiment}.zarr"


def table_path(root: str | Path, experiment: str) -> Path:
    return Path(root) / f"{experiment}.parquet"


def figure_path(root: str | Path, experiment: str) -> Path:
    return Path(root) / f"{experiment}-vertices.png"


def ledger_path(root: str | Path, experiment: str) -> Path:
    return Path(root) / f"{experiment}.outputs.json"


def read_ledger(root: str | Path, experiment: str) -> dict[str, Any]:
    path = ledger_path(root, experiment)
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def _jsonable(value: Any) -> Any:
    """Plain JSON types only: numpy scalars and arrays, NaN (as None), tuples."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_row(
    root: str | Path,
    experiment: str,
    row: int,
    arrays: Mapping[str, np.ndarray],
    attrs: Mapping[str, Any],
    *,
    keep_existing: bool = False,
    drop: tuple[str, ...] = (),
) -> Path:
    """Write (or replace) group ``row-<row>`` atomically.

    With ``keep_existing`` the arrays and attrs already in the group are carried over
    and the new ones added on top, still as one atomic replacement; arrays named in
    ``drop`` are not carried over (results of an earlier evaluation that no longer hold).
    """
    root = Path(root)
    target_store = store_path(root, experiment)
    zarr.open_group(target_store, mode="a")
    name = f"row-{row}"
    final = target_store / name
    merged_arrays: dict[str, np.ndarray] = {}
    merged_attrs: dict[str, Any] = {}
    if keep_existing and final.exists():
        old_arrays, old_attrs = read_row(root, experiment, row)
        merged_arrays.update({k: v for k, v in old_arrays.items() if k not in drop})
        merged_attrs.update(old_attrs)
    merged_arrays.update({k: np.asarray(v) for k, v in arrays.items()})
    merged_attrs.update(_jsonable(dict(attrs)))
    scratch = root / ".tmp"
    scratch.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=scratch, prefix=f"{experiment}-{name}-"))
    try:
        group = zarr.open_group(tmp / name, mode="w")
        for key, value in merged_arrays.items():
            group.create_array(key, data=value, chunks=value.shape or "auto")
        group.attrs.update(merged_attrs)
        if final.exists():
            trash = scratch / f"old-{uuid.uuid4().hex}"
            os.replace(final, trash)
            os.replace(tmp / name, final)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp / name, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def read_row(root: str | Path, experiment: str, row: int) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The arrays and attrs of one row group."""
    path = store_path(root, experiment) / f"row-{row}"
    if not (path / "zarr.json").is_file():
        raise DataError(f"no row {row} in {store_path(root, experiment)}: run the experiment first")
    group = zarr.open_group(path, mode="r")
    arrays = {name: np.asarray(arr[...]) for name, arr in group.arrays()}
    return arrays, dict(group.attrs)


def list_rows(root: str | Path, experiment: str) -> list[int]:
    path = store_path(root, experiment)
    if not path.is_dir():
        return []
    rows = []
    for child in path.iterdir():
        if child.name.startswith("row-") and (child / "zarr.json").is_file():
            rows.append(int(child.name.removeprefix("row-")))
    return sorted(rows)


def table_from_store(root: str | Path, experiment: str) -> pd.DataFrame:
    """One row per polytope, from the ``metrics`` attrs of each row group."""
    records = []
    for row in list_rows(root, experiment):
        _, attrs = read_row(root, experiment, row)
        if "metrics" not in attrs:
            raise DataError(f"row {row} of {experiment} was never evaluated: rerun the experiment")
        records.append(attrs["metrics"])
    if not records:
        raise DataError(f"no rows in {store_path(root, experiment)}: run the experiment first")
    frame = pd.DataFrame.from_records(records)
    missing = [c for c in TABLE_COLUMNS if c not in frame.columns]
    if missing:
        raise DataError(f"rows of {experiment} lack table columns {missing}")
    for column in frame.columns:
        # NaN is stored as JSON null: a column of numbers and nulls is a float column again
        # (one of nulls alone would otherwise come back as objects).
        values = frame[column].dropna()
        if column in FLOAT_COLUMNS or (len(values) and all(
                isinstance(v, int | float) and not isinstance(v, bool) for v in values)):
            frame[column] = pd.to_numeric(frame[column], errors="coerce")
    rest = [c for c in frame.columns if c not in TABLE_COLUMNS]
    return frame[list(TABLE_COLUMNS) + rest].sort_values("row").reset_index(drop=True)


def write_table(frame: pd.DataFrame, path: str | Path) -> Path:
    with atomic_file(path) as tmp:
        frame.to_parquet(tmp, index=False)
    return Path(path)


def config_json(config: Any) -> str:
    return json.dumps(_jsonable(config), sort_keys=True)
