"""The storage contract (docs/storage.md): Zarr row groups, Parquet tables, atomic writes.

``<root>/<experiment>.zarr/row-<n>`` holds one polytope's arrays and, in its attrs,
everything needed to rebuild its table row. A row group is built under a temporary
name outside the store and renamed into place, so a reader sees the old row or the new
one, never a mix; Parquet and PNG files are written the same way.

Each row's attrs carry a ``manifest``: the size and sha256 of every file of its arrays.
Zarr reads a deleted chunk as the fill value (zeros) without a word; reading a row,
the resume check and ``status`` compare the files with the manifest first, so a damaged
row is an error that names it, never a row of zeros.
"""

from __future__ import annotations

import glob
import json
import math
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import zarr
import zarr.errors

from collide._io import atomic_file, file_sha256, json_digest, temporary_name
from collide.errors import DataError

TABLE_COLUMNS = (
    "experiment", "row", "method", "model", "layer", "n_vertices", "n_samples",
    "success_rate", "target_top_prob", "samples_top_prob", "dataset_avg_distance",
    "vertex_avg_distance", "max_feature_rel_error",
)


# Columns that may be NaN in every row (no valid polytope anywhere) and are still numbers.
FLOAT_COLUMNS = (
    "success_rate", "target_top_prob", "samples_top_prob", "dataset_avg_distance", "vertex_avg_distance",
    "max_feature_rel_error", "max_feature_rel_error_all", "samples_max_feature_rel_error", "exact_proximity",
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


MANIFEST = "manifest"


def _array_files(group_dir: Path) -> dict[str, Path]:
    """Every file of a row group's arrays (metadata and chunks) by path relative to the
    group: all but the group's own ``zarr.json``, which holds the manifest."""
    return {p.relative_to(group_dir).as_posix(): p for p in sorted(group_dir.rglob("*"))
            if p.is_file() and p.relative_to(group_dir).as_posix() != "zarr.json"}


ATTRS_KEY = "attrs"  # the manifest's entry for the row's own attrs (all but the manifest)


def _attrs_digest(attrs: Mapping[str, Any]) -> str:
    return json_digest({k: v for k, v in attrs.items() if k != MANIFEST}, 32)


def _manifest(group_dir: Path, attrs: Mapping[str, Any]) -> dict[str, Any]:
    files: dict[str, Any] = {name: [p.stat().st_size, file_sha256(p)[:32]]
                             for name, p in _array_files(group_dir).items()}
    return {"files": files, ATTRS_KEY: _attrs_digest(attrs)}


def row_damage(root: str | Path, experiment: str, row: int, attrs: Mapping[str, Any] | None = None) -> str | None:
    """What is wrong with the files of row group ``row`` against its manifest, or None.

    Reads the files' bytes (their sizes and hashes), never decodes an array.
    """
    path = store_path(root, experiment) / f"row-{row}"
    if attrs is None:
        try:
            attrs = dict(zarr.open_group(path, mode="r").attrs)
        except Exception as exc:  # an unreadable zarr.json is damage too
            return f"its metadata {path / 'zarr.json'} cannot be read ({type(exc).__name__})"
    manifest = attrs.get(MANIFEST)
    if not isinstance(manifest, Mapping) or not isinstance(manifest.get("files"), Mapping):
        return "it has no manifest of its files (written by a collide before checksums)"
    if manifest.get(ATTRS_KEY) != _attrs_digest(attrs):
        return f"its attrs ({path / 'zarr.json'}) changed since they were written"
    written = manifest["files"]
    files = _array_files(path)
    for name, (size, digest) in sorted(written.items()):
        file = files.get(name)
        if file is None:
            return f"{name} is missing"
        if file.stat().st_size != size:
            return f"{name} is {file.stat().st_size} bytes, {size} were written"
        if file_sha256(file)[:32] != digest:
            return f"{name} changed since it was written"
    extra = sorted(set(files) - set(written))
    if extra:
        return f"{extra[0]} was not written with the row"
    return None


def run_record_path(root: str | Path, experiment: str) -> Path:
    return Path(root) / f"{experiment}.run.json"


RUN_RECORD = "collide run record"


def write_run_record(root: str | Path, experiment: str, *, kind: str, rows: int, config: Any,
                     outputs: Iterable[str | Path] = ()) -> Path:
    """What the last run planned: the experiment kind, the row count, the full config.

    Written once the plan is known, before any row changes, so a store cut short by a
    kill says how many rows it should hold; ``collide run KIND --config <this file>``
    runs that config again. ``outputs``: every file the run writes beside the store (by
    name), so that ``collide tables`` finds a killed run's temporaries of them too.
    """
    record = {"kind": RUN_RECORD, "experiment": kind, "name": experiment, "rows": int(rows),
              "config_digest": config.digest(), "config": _jsonable(config.to_dict()),
              "outputs": sorted(Path(p).name for p in outputs)}
    path, text = run_record_path(root, experiment), json.dumps(record, indent=1, sort_keys=True)
    if not (path.is_file() and path.read_text() == text):  # a rerun of the same plan writes nothing
        with atomic_file(path) as tmp:
            tmp.write_text(text)
    return path


def read_run_record(root: str | Path, experiment: str) -> dict[str, Any] | None:
    """The record :func:`write_run_record` wrote, or None (no run planned here, or unreadable)."""
    try:
        record = json.loads(run_record_path(root, experiment).read_text())
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return record if isinstance(record, dict) and record.get("kind") == RUN_RECORD else None


def rerun_hint(root: str | Path, experiment: str) -> str:
    """How to rerun the experiment's last config (which also repairs damaged rows)."""
    record = read_run_record(root, experiment)
    if record is None:
        return f"rerun the experiment with its config (`collide run <experiment> --set name={experiment} ...`)"
    return f"rerun `collide run {record['experiment']} --config {run_record_path(root, experiment)}`"


def damaged_text(root: str | Path, experiment: str, row: int, why: str) -> str:
    return f"row {row} of {experiment} is damaged: {why}; {rerun_hint(root, experiment)}, which recomputes it"


def ensure_store(path: Path) -> None:
    """Create the store's root group unless it exists, or rewrite its metadata when it was
    damaged (emptied, not JSON). Jobs of one run write rows at once: one that finds the
    group made between its check and its create goes on."""
    if (path / "zarr.json").is_file() and store_damage(path.parent, path.name.removesuffix(".zarr")) is None:
        return
    if (path / "zarr.json").is_file():  # damaged: the rows beside it are checked by their own manifests
        with atomic_file(path / "zarr.json") as tmp:
            tmp.write_text(json.dumps({"attributes": {}, "zarr_format": 3, "node_type": "group"}, indent=2))
        return
    try:
        zarr.open_group(path, mode="a")
    except zarr.errors.ContainsGroupError:
        pass


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
    ensure_store(target_store)
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
        merged_attrs.pop(MANIFEST, None)
        group.attrs.update({**merged_attrs, MANIFEST: _manifest(tmp / name, merged_attrs)})
        if final.exists():
            trash = scratch / f"{experiment}-old-{uuid.uuid4().hex}"
            os.replace(final, trash)
            os.replace(tmp / name, final)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp / name, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _open_row(root: str | Path, experiment: str, row: int) -> tuple[zarr.Group, dict[str, Any]]:
    """A row group and its attrs, checked against its manifest; no array is decoded."""
    path = store_path(root, experiment) / f"row-{row}"
    if not (path / "zarr.json").is_file():
        raise DataError(f"no row {row} in {store_path(root, experiment)}: run the experiment first")
    try:
        group = zarr.open_group(path, mode="r")
        attrs = dict(group.attrs)
    except Exception as exc:
        raise DataError(damaged_text(root, experiment, row, f"{path / 'zarr.json'} cannot be read ({exc})")) from None
    why = row_damage(root, experiment, row, attrs)
    if why is not None:
        raise DataError(damaged_text(root, experiment, row, why))
    return group, attrs


def read_attrs(root: str | Path, experiment: str, row: int) -> dict[str, Any]:
    """The attrs of one row group, its files checked against its manifest; no array is decoded."""
    return _open_row(root, experiment, row)[1]


def read_row(root: str | Path, experiment: str, row: int) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The arrays and attrs of one row group, its files checked against its manifest first."""
    group, attrs = _open_row(root, experiment, row)
    try:
        arrays = {name: np.asarray(arr[...]) for name, arr in group.arrays()}
    except Exception as exc:  # a decode error past the manifest (a codec missing here, say)
        path = store_path(root, experiment) / f"row-{row}"
        raise DataError(f"row {row} of {experiment} ({path}) cannot be decoded: {type(exc).__name__}: {exc}") from None
    return arrays, attrs


def own_outputs(root: str | Path, experiment: str) -> list[Path]:
    """The files every experiment writes beside its store: table, figure, ledger, run record."""
    return [table_path(root, experiment), figure_path(root, experiment), ledger_path(root, experiment),
            run_record_path(root, experiment)]


def recorded_outputs(root: str | Path, experiment: str) -> list[Path]:
    """The outputs the last run declared (its run record's ``outputs``), as files of ``root``.

    The record is data: only plain names of ``<experiment>-...`` or ``<experiment>....``
    files directly under ``root`` are taken, never a path elsewhere."""
    record = read_run_record(root, experiment) or {}
    names = record.get("outputs") if isinstance(record.get("outputs"), list) else []
    plain = re.compile(rf"{re.escape(experiment)}[-.][A-Za-z0-9._-]+")
    return [Path(root) / n for n in names if isinstance(n, str) and plain.fullmatch(n) and ".." not in n]


def leftovers(root: str | Path, experiment: str, outputs: Iterable[str | Path] | None = None) -> list[Path]:
    """What killed writers of ``experiment`` left under ``root``: half-built row groups and
    replaced rows in ``.tmp``, and the temporaries of its outputs (``.<name>-xxxxxxxx.png``).

    ``outputs``: the files the experiment declares (the engine derives them from the
    experiment's ``OUTPUTS``); by default its own outputs and those its last run record
    declared. Names are matched exactly, so nothing of an experiment called
    ``mnist-targets`` is taken for a leftover of ``mnist``. Remove them only while
    holding the experiment's lock.
    """
    root = Path(root)
    name = re.escape(experiment)
    scratch = re.compile(rf"{name}-(row-\d+-[a-z0-9_]{{8}}|old-[0-9a-f]{{32}})")
    found = [p for p in (root / ".tmp").iterdir() if scratch.fullmatch(p.name)] if (root / ".tmp").is_dir() else []
    declared = [Path(p) for p in outputs] if outputs is not None else recorded_outputs(root, experiment)
    outputs = list(dict.fromkeys([*own_outputs(root, experiment), *declared]))
    if root.is_dir():
        for output in outputs:
            pattern = temporary_name(output)
            candidates = root.glob(f".{glob.escape(output.stem)}-*{output.suffix}")
            found += [p for p in candidates if pattern.fullmatch(p.name)]
    return sorted(found)


def remove_leftovers(root: str | Path, experiment: str, outputs: Iterable[str | Path] | None = None) -> list[Path]:
    """Remove :func:`leftovers`; returns what was removed."""
    gone = leftovers(root, experiment, outputs)
    for path in gone:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return gone


ROW_NAME = re.compile(r"row-(0|[1-9][0-9]*)")


def _row_entries(root: str | Path, experiment: str) -> tuple[list[int], list[str]]:
    path = store_path(root, experiment)
    if not path.is_dir():
        return [], []
    rows, strays = [], []
    for child in path.iterdir():
        if child.name == "zarr.json":
            continue
        found = ROW_NAME.fullmatch(child.name)
        if found and child.is_dir() and not child.is_symlink():
            if (child / "zarr.json").is_file():  # without it: a row never finished, as good as absent
                rows.append(int(found.group(1)))
        elif child.name.startswith("row-") or (child / "zarr.json").is_file():
            strays.append(child.name)  # a backup (row-5.bak), a group of another name: never a row
    return sorted(rows), sorted(strays)


def list_rows(root: str | Path, experiment: str) -> list[int]:
    """The row numbers of the store's groups named ``row-<n>`` (n without leading zeros).

    Anything else in the store (``row-abc``, ``row-5.bak``, a group by another name) is
    no row: it is skipped here, and :func:`stray_entries` names it."""
    return _row_entries(root, experiment)[0]


def stray_entries(root: str | Path, experiment: str) -> list[str]:
    """Entries of the store that look like groups but are not rows ``row-<n>``: skipped by
    every reader, named by ``status`` and ``verify``."""
    return _row_entries(root, experiment)[1]


def stray_text(root: str | Path, experiment: str, strays: list[str]) -> str:
    base = store_path(root, experiment)
    return (f"{', '.join(str(base / s) for s in strays)}: not a row (rows are row-<n>), skipped; "
            "move it out of the store")


def store_damage(root: str | Path, experiment: str) -> str | None:
    """What is wrong with the store's own root metadata (``<experiment>.zarr/zarr.json``), or None.

    A run rewrites it (:func:`ensure_store`); ``status`` and ``verify`` report it."""
    path = store_path(root, experiment) / "zarr.json"
    try:
        meta = json.loads(path.read_bytes())
    except FileNotFoundError:
        return f"{path} is missing"
    except (OSError, ValueError) as exc:
        return f"{path} cannot be read ({type(exc).__name__})"
    if not isinstance(meta, dict) or meta.get("node_type") != "group" or meta.get("zarr_format") != 3:
        return f"{path} is not a Zarr group's metadata"
    return None


def table_from_store(root: str | Path, experiment: str) -> pd.DataFrame:
    """One row per evaluated polytope, from the ``metrics`` attrs of each row group.

    Rows not yet evaluated (a run cut short) are left out; :func:`collide.results.tables.write_outputs`
    compares the count with the run record's and flags the table as incomplete.
    """
    records = []
    rows = list_rows(root, experiment)
    for row in rows:
        attrs = read_attrs(root, experiment, row)
        if "metrics" in attrs:  # a row solved but not yet evaluated is left out; the caller says so
            records.append(attrs["metrics"])
    if not records:
        if rows:
            raise DataError(f"no row of {experiment} was evaluated yet (never evaluated): "
                            f"{rerun_hint(root, experiment)}")
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
