"""The storage contract (docs/storage.md): one :class:`ExperimentStore` owns an experiment's layout.

``<root>/<name>.zarr/row-<n>`` holds one polytope's arrays and, in its attrs,
everything needed to rebuild its table row. A row group is built under a temporary
name outside the store and renamed into place, so a reader sees the old row or the new
one, never a mix; Parquet and PNG files are written the same way.

Each row's attrs carry a ``manifest``: the size and sha256 of every file of its arrays.
Zarr reads a deleted chunk as the fill value (zeros) without a word; reading a row,
the resume check and ``status`` compare the files with the manifest first, so a damaged
row is an error that names it, never a row of zeros.

Every file an experiment writes beside its store is an *output*, named ``<name><suffix>``:
the store's own (table, figure, ledger, run record) and those the experiment declares
(a summary, a figure of its own). What a killed writer leaves behind is derived from
that list, never from one kept by hand.
"""

from __future__ import annotations

import contextlib
import glob
import json
import math
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import zarr
import zarr.errors

from collide._io import atomic_file, experiment_lock, file_sha256, json_digest, lock_holder, temporary_name
from collide.config import EXPERIMENT_NAME
from collide.errors import ConfigError, DataError
from collide.results.run_record import RUN_RECORD

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

# The outputs every experiment writes beside its store, as suffixes of its name.
TABLE, FIGURE, LEDGER, RUN_RECORD_FILE = ".parquet", "-vertices.png", ".outputs.json", ".run.json"
OWN_OUTPUTS = (TABLE, FIGURE, LEDGER, RUN_RECORD_FILE)
# A declared output's suffix: what follows the name, then a plain file name.
OUTPUT_SUFFIX = re.compile(r"[-.][A-Za-z0-9._-]+")
# The ledger's record of the declared outputs a run wrote: file name -> sha256.
DECLARED = "declared_sha256"

# The ``kind`` attr of a row that holds points, not a polytope (collide.results.points);
# told apart here, where reading a row needs no torch (`collide status`).
POINTS = "points"


def plain_file(path: Path) -> bool:
    """A regular file that is not a link: what collide writes as an output."""
    return path.is_file() and not path.is_symlink()


def _sha256_or_none(path: Path) -> str | None:
    """A file's sha256, not through a link (one put there after a check included)."""
    try:
        return file_sha256(path, follow=False)
    except OSError:
        return None


def is_points_row(attrs: Mapping[str, Any]) -> bool:
    return attrs.get("kind") == POINTS


MANIFEST = "manifest"
ATTRS_KEY = "attrs"  # the manifest's entry for the row's own attrs (all but the manifest)
ROW_NAME = re.compile(r"row-(0|[1-9][0-9]*)")


def jsonable(value: Any) -> Any:
    """Plain JSON types only: numpy scalars and arrays, NaN (as None), tuples."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_table(frame: pd.DataFrame, path: str | Path) -> Path:
    """``frame`` as Parquet at ``path``, atomically."""
    with atomic_file(path) as tmp:
        frame.to_parquet(tmp, index=False)
    return Path(path)


def _array_files(group_dir: Path) -> dict[str, Path]:
    """Every file of a row group's arrays (metadata and chunks) by path relative to the
    group: all but the group's own ``zarr.json``, which holds the manifest."""
    return {p.relative_to(group_dir).as_posix(): p for p in sorted(group_dir.rglob("*"))
            if p.is_file() and p.relative_to(group_dir).as_posix() != "zarr.json"}


def _link_or_copy(src: str, dst: str) -> str:
    """A hard link to ``src`` at ``dst`` (row files are replaced whole, never edited in
    place, so the old and the new group may share them), a copy where linking fails."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
    return dst


def _attrs_digest(attrs: Mapping[str, Any]) -> str:
    return json_digest({k: v for k, v in attrs.items() if k != MANIFEST}, 32)


@dataclass(frozen=True)
class _Scratch:
    """The folders writers of experiment ``name`` make in ``<root>/.tmp``, named and
    recognised in this one place, so that a rerun clears exactly what a killed writer left:
    ``<name>-row-N-xxxxxxxx`` (a row being written), ``<name>-row-N-attrs-xxxxxxxx`` (a stage
    key being added) and ``<name>-old-<32 hex>`` (a replaced row on its way out).
    """

    root: Path
    name: str

    @property
    def dir(self) -> Path:
        return self.root / ".tmp"

    def make(self, row: int, *, attrs: bool = False) -> Path:
        prefix = f"{self.name}-row-{row}-" + ("attrs-" if attrs else "")
        tries = 3
        while True:
            tries -= 1
            self.dir.mkdir(parents=True, exist_ok=True)
            try:
                return Path(tempfile.mkdtemp(dir=self.dir, prefix=prefix))
            except FileNotFoundError:
                # Another experiment's run in this root tidied the folder away between the
                # two steps (tidy): it is made again.
                if not tries:
                    raise

    def tidy(self) -> None:
        """Remove the scratch folder where it is empty: a finished run leaves no ``.tmp``
        behind. Never one that holds anything (another experiment's writer in this root)."""
        with contextlib.suppress(OSError):
            self.dir.rmdir()

    def trash(self) -> Path:
        return self.dir / f"{self.name}-old-{uuid.uuid4().hex}"

    def found(self) -> list[Path]:
        # mkdtemp's suffix is 8 of [a-z0-9_]; uuid4().hex, 32 hex digits.
        pattern = re.compile(rf"{re.escape(self.name)}-(row-\d+-(attrs-)?[a-z0-9_]{{8}}|old-[0-9a-f]{{32}})")
        try:
            entries = list(self.dir.iterdir())
        except (FileNotFoundError, NotADirectoryError):  # none yet, or tidied away by another run just now
            return []
        return sorted(p for p in entries if pattern.fullmatch(p.name))


@dataclass(frozen=True)
class ExperimentStore:
    """Where experiment ``name`` keeps everything under ``root``, and how it reads and writes it.

    A small value: the name is checked once, here; every path, row, output and check of
    the experiment comes from its methods. ``declared``: the suffixes of the outputs the
    experiment writes beyond the store's own (``OUTPUTS`` of its module, e.g.
    ``("-summary.parquet", "-summary.png")``); a store built without them (``collide
    tables`` knows no experiment module) takes them from its last run record.
    """

    root: Path
    name: str
    declared: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))
        object.__setattr__(self, "declared", tuple(self.declared))
        if not isinstance(self.name, str) or EXPERIMENT_NAME.fullmatch(self.name) is None:
            raise ConfigError(f"expected a plain experiment name (letters, digits, '.', '_' or '-', starting with a "
                              f"letter or digit), got {str(self.name)[:60]!r}")
        bad = [s for s in self.declared if not (isinstance(s, str) and OUTPUT_SUFFIX.fullmatch(s) and ".." not in s)]
        if bad:
            raise ConfigError(f"{self.name}: declared outputs must be plain suffixes like '-summary.png', got {bad}")

    @classmethod
    def of(cls, config: Any, declared: Iterable[str] = ()) -> ExperimentStore:
        """The store of an experiment config (its ``results_root`` and ``name``)."""
        return cls(Path(config.results_root), config.name, tuple(declared))

    # Paths ------------------------------------------------------------------------------

    @property
    def _scratch(self) -> _Scratch:
        return _Scratch(self.root, self.name)

    @property
    def path(self) -> Path:
        """The Zarr store, ``<name>.zarr``."""
        return self.root / f"{self.name}.zarr"

    def output(self, suffix: str) -> Path:
        """The output file ``<name><suffix>`` beside the store."""
        return self.root / f"{self.name}{suffix}"

    @property
    def table_path(self) -> Path:
        return self.output(TABLE)

    @property
    def figure_path(self) -> Path:
        return self.output(FIGURE)

    @property
    def ledger_path(self) -> Path:
        return self.output(LEDGER)

    @property
    def run_record_path(self) -> Path:
        return self.output(RUN_RECORD_FILE)

    def row_path(self, row: int) -> Path:
        return self.path / f"row-{row}"

    # Rows -------------------------------------------------------------------------------

    def _row_entries(self) -> tuple[list[int], list[str]]:
        if not self.path.is_dir():
            return [], []
        rows, strays = [], []
        for child in self.path.iterdir():
            if child.name == "zarr.json":
                continue
            found = ROW_NAME.fullmatch(child.name)
            if found and child.is_dir() and not child.is_symlink():
                if (child / "zarr.json").is_file():  # without it: a row never finished, as good as absent
                    rows.append(int(found.group(1)))
            elif child.name.startswith("row-") or (child / "zarr.json").is_file():
                strays.append(child.name)  # a backup (row-5.bak), a group of another name: never a row
        return sorted(rows), sorted(strays)

    def rows(self) -> list[int]:
        """The row numbers of the store's groups named ``row-<n>`` (n without leading zeros).

        Anything else in the store (``row-abc``, ``row-5.bak``, a group by another name) is
        no row: it is skipped here, and :meth:`strays` names it."""
        return self._row_entries()[0]

    def strays(self) -> list[str]:
        """Entries of the store that look like groups but are not rows ``row-<n>``: skipped by
        every reader, named by ``status`` and ``verify``."""
        return self._row_entries()[1]

    def metadata(self, row: int) -> dict[str, Any] | None:
        """A row group's attrs as its ``zarr.json`` holds them, unchecked and without reading
        an array: None when there is no such row or its metadata cannot be read.
        :meth:`row_damage` says whether its files still match them."""
        path = self.row_path(row)
        if not (path / "zarr.json").is_file():
            return None
        try:
            return dict(zarr.open_group(path, mode="r").attrs)
        except Exception:  # a damaged zarr.json: the callers report it rather than stop
            return None

    def _open_row(self, row: int) -> tuple[zarr.Group, dict[str, Any]]:
        """A row group and its attrs, checked against its manifest; no array is decoded."""
        path = self.row_path(row)
        if not (path / "zarr.json").is_file():
            raise DataError(f"no row {row} in {self.path}: run the experiment first")
        try:
            group = zarr.open_group(path, mode="r")
            attrs = dict(group.attrs)
        except Exception as exc:
            raise DataError(self.damaged_text(row, f"{path / 'zarr.json'} cannot be read ({exc})")) from None
        why = self.row_damage(row, attrs)
        if why is not None:
            raise DataError(self.damaged_text(row, why))
        return group, attrs

    def read_attrs(self, row: int) -> dict[str, Any]:
        """The attrs of one row group, its files checked against its manifest; no array is decoded."""
        return self._open_row(row)[1]

    def read_row(self, row: int) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """The arrays and attrs of one row group, its files checked against its manifest first."""
        group, attrs = self._open_row(row)
        try:
            arrays = {name: np.asarray(arr[...]) for name, arr in group.arrays()}
        except Exception as exc:  # a decode error past the manifest (a codec missing here, say)
            raise DataError(f"row {row} of {self.name} ({self.row_path(row)}) cannot be decoded: "
                            f"{type(exc).__name__}: {exc}") from None
        return arrays, attrs

    def write_row(
        self,
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
        Carried arrays are checked against the manifest and linked (copied where links
        fail) into the new group as they are, never decoded and written again.
        """
        self.ensure()
        name = f"row-{row}"
        final = self.row_path(row)
        new_arrays = {k: np.asarray(v) for k, v in arrays.items()}
        merged_attrs: dict[str, Any] = {}
        carried: list[str] = []
        old_files: dict[str, Any] = {}
        if keep_existing and final.exists():
            group, old_attrs = self._open_row(row)
            carried = [k for k, _ in group.arrays() if k not in drop and k not in new_arrays]
            old_files = dict(old_attrs[MANIFEST]["files"])
            merged_attrs.update(old_attrs)
        merged_attrs.update(jsonable(dict(attrs)))
        tmp = self._scratch.make(row)
        try:
            group = zarr.open_group(tmp / name, mode="w")
            for key in carried:
                shutil.copytree(final / key, tmp / name / key, copy_function=_link_or_copy)
            for key, value in new_arrays.items():
                group.create_array(key, data=value, chunks=value.shape or "auto")
            merged_attrs.pop(MANIFEST, None)
            # Carried files keep their manifest entries (checked above); new ones are hashed.
            kept = {f: old_files[f] for f in old_files if f.split("/", 1)[0] in carried}
            fresh = {f: [p.stat().st_size, file_sha256(p)[:32]] for f, p in _array_files(tmp / name).items()
                     if f not in kept}
            manifest = {"files": dict(sorted({**kept, **fresh}.items())), ATTRS_KEY: _attrs_digest(merged_attrs)}
            # One write of zarr.json: ``attrs.update`` rewrites it once per key (30 a row).
            group.attrs.put({**merged_attrs, MANIFEST: manifest})
            if final.exists():
                trash = self._scratch.trash()
                os.replace(final, trash)
                os.replace(tmp / name, final)
                shutil.rmtree(trash, ignore_errors=True)
            else:
                os.replace(tmp / name, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return final

    def update_attrs(self, row: int, attrs: Mapping[str, Any]) -> Path:
        """Add ``attrs`` to row group ``row``'s attrs, its arrays untouched (a stage key).

        The row is checked against its manifest first (file hashes, no array decoded); then
        only its ``zarr.json`` is rewritten, with the manifest's attrs digest renewed and its
        file list kept, and renamed into place: one atomic step, as :meth:`write_row` is.
        """
        old = self.read_attrs(row)
        final = self.row_path(row)
        merged = {k: v for k, v in old.items() if k != MANIFEST}
        merged.update(jsonable(dict(attrs)))
        manifest = {**old[MANIFEST], ATTRS_KEY: _attrs_digest(merged)}
        tmp = self._scratch.make(row, attrs=True)
        try:
            shutil.copy2(final / "zarr.json", tmp / "zarr.json")
            zarr.open_group(tmp, mode="r+").attrs.put({**merged, MANIFEST: manifest})
            os.replace(tmp / "zarr.json", final / "zarr.json")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return final

    def remove_row(self, row: int) -> None:
        shutil.rmtree(self.row_path(row))

    def table(self) -> pd.DataFrame:
        """One row per evaluated polytope, from the ``metrics`` attrs of each row group.

        Rows not yet evaluated (a run cut short) are left out; :func:`collide.results.tables.write_outputs`
        compares the count with the run record's and flags the table as incomplete.
        """
        records = []
        rows = self.rows()
        for row in rows:
            attrs = self.read_attrs(row)
            if "metrics" in attrs:  # a row solved but not yet evaluated is left out; the caller says so
                records.append(attrs["metrics"])
        if not records:
            if rows:
                raise DataError(f"no row of {self.name} was evaluated yet (never evaluated): {self.rerun_hint()}")
            raise DataError(f"no rows in {self.path}: run the experiment first")
        frame = pd.DataFrame.from_records(records)
        missing = [c for c in TABLE_COLUMNS if c not in frame.columns]
        if missing:
            raise DataError(f"rows of {self.name} lack table columns {missing}")
        for column in frame.columns:
            # NaN is stored as JSON null: a column of numbers and nulls is a float column again
            # (one of nulls alone would otherwise come back as objects).
            values = frame[column].dropna()
            if column in FLOAT_COLUMNS or (len(values) and all(
                    isinstance(v, int | float) and not isinstance(v, bool) for v in values)):
                frame[column] = pd.to_numeric(frame[column], errors="coerce")
        rest = [c for c in frame.columns if c not in TABLE_COLUMNS]
        return frame[list(TABLE_COLUMNS) + rest].sort_values("row").reset_index(drop=True)

    def read_table(self) -> pd.DataFrame:
        """The table file ``<name>.parquet`` as written (not rebuilt from the rows)."""
        return pd.read_parquet(self.table_path)

    # Damage -----------------------------------------------------------------------------

    def row_damage(self, row: int, attrs: Mapping[str, Any] | None = None) -> str | None:
        """What is wrong with the files of row group ``row`` against its manifest, or None.

        Reads the files' bytes (their sizes and hashes), never decodes an array.
        """
        path = self.row_path(row)
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

    def damage(self) -> str | None:
        """What is wrong with the store's own root metadata (``<name>.zarr/zarr.json``), or None.

        A run rewrites it (:meth:`ensure`); ``status`` and ``verify`` report it."""
        path = self.path / "zarr.json"
        try:
            meta = json.loads(path.read_bytes())
        except FileNotFoundError:
            return f"{path} is missing"
        except (OSError, ValueError) as exc:
            return f"{path} cannot be read ({type(exc).__name__})"
        if not isinstance(meta, dict) or meta.get("node_type") != "group" or meta.get("zarr_format") != 3:
            return f"{path} is not a Zarr group's metadata"
        return None

    def ensure(self) -> None:
        """Create the store's root group unless it exists, or rewrite its metadata when it was
        damaged (emptied, not JSON). Jobs of one run write rows at once: one that finds the
        group made between its check and its create goes on."""
        meta = self.path / "zarr.json"
        if meta.is_file() and self.damage() is None:
            return
        if meta.is_file():  # damaged: the rows beside it are checked by their own manifests
            with atomic_file(meta) as tmp:
                tmp.write_text(json.dumps({"attributes": {}, "zarr_format": 3, "node_type": "group"}, indent=2))
            return
        try:
            zarr.open_group(self.path, mode="a")
        except zarr.errors.ContainsGroupError:
            pass

    def rerun_hint(self) -> str:
        """How to rerun the experiment's last config (which also repairs damaged rows)."""
        record = self.run_record()
        if record is None:
            return f"rerun the experiment with its config (`collide run <experiment> --set name={self.name} ...`)"
        return f"rerun `collide run {record['experiment']} --config {self.run_record_path}`"

    def damaged_text(self, row: int, why: str) -> str:
        return f"row {row} of {self.name} is damaged: {why}; {self.rerun_hint()}, which recomputes it"

    def stray_text(self, strays: list[str]) -> str:
        return (f"{', '.join(str(self.path / s) for s in strays)}: not a row (rows are row-<n>), skipped; "
                "move it out of the store")

    # Run record and ledger --------------------------------------------------------------

    def write_run_record(self, *, kind: str, rows: int, config: Any) -> Path:
        """What the last run planned: the experiment kind, the row count, the full config.

        Written once the plan is known, before any row changes, so a store cut short by a
        kill says how many rows it should hold; ``collide run KIND --config <this file>``
        runs that config again. Its ``outputs`` name every file the run writes beside the
        store (own and declared), so that ``collide tables`` finds a killed run's
        temporaries of them too.
        """
        record = {"kind": RUN_RECORD, "experiment": kind, "name": self.name, "rows": int(rows),
                  "config_digest": config.digest(), "config": jsonable(config.to_dict()),
                  "outputs": sorted(p.name for p in self._known_outputs())}
        path, text = self.run_record_path, json.dumps(record, indent=1, sort_keys=True)
        if not (path.is_file() and path.read_text() == text):  # a rerun of the same plan writes nothing
            with atomic_file(path) as tmp:
                tmp.write_text(text)
        return path

    def run_record(self) -> dict[str, Any] | None:
        """The record :meth:`write_run_record` wrote, or None (no run planned here, or unreadable)."""
        try:
            record = json.loads(self.run_record_path.read_text())
        except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
            return None
        return record if isinstance(record, dict) and record.get("kind") == RUN_RECORD else None

    def planned_rows(self) -> int | None:
        """How many rows the last run of the experiment planned (its run record), if known."""
        record = self.run_record()
        return None if record is None else int(record["rows"])

    def ledger(self) -> dict[str, Any]:
        """What the last writing of the table and figure recorded (``<name>.outputs.json``); {} if none."""
        try:
            ledger = json.loads(self.ledger_path.read_text())
        except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
            return {}
        return ledger if isinstance(ledger, dict) else {}  # data: another shape records nothing

    def write_ledger(self, record: Mapping[str, Any]) -> Path:
        with atomic_file(self.ledger_path) as tmp:
            tmp.write_text(json.dumps(record, indent=1))
        return self.ledger_path

    def record_declared(self) -> None:
        """Record in the ledger the sha256 of each declared output now beside the store: what
        a run's summaries wrote (or kept). An output the run did not write (the scan's
        certified table without ``certify``) is not there, so nothing will ask for it."""
        found = {p.name: sha for p in (self.output(s) for s in self.declared)
                 if plain_file(p) and (sha := _sha256_or_none(p)) is not None}
        ledger = self.ledger()
        if ledger.get(DECLARED) != found:  # a rerun that changed nothing writes nothing
            self.write_ledger({**ledger, DECLARED: found})

    def declared_outputs(self) -> dict[str, Path]:
        """The outputs the experiment declares (its own, or those its run record names), by
        file name: not the table, figure, ledger or run record every store has."""
        own = {self.output(s) for s in OWN_OUTPUTS}
        return {p.name: p for p in self.outputs() if p not in own}

    def declared_damage(self, ledger: Mapping[str, Any] | None = None) -> dict[str, str]:
        """The declared outputs the ledger recorded that are no longer the files written:
        file name -> ``missing`` or ``changed since it was written``.

        The ledger is data: only the experiment's declared outputs (its own, or those its
        run record names; not the table, figure, ledger or run record) are looked at, and a
        link is not followed (it is reported as changed)."""
        ledger = self.ledger() if ledger is None else ledger
        recorded = ledger.get(DECLARED)
        ours = self.declared_outputs()
        out = {}
        for name, sha in (recorded.items() if isinstance(recorded, dict) else []):
            path = ours.get(name) if isinstance(name, str) else None
            if path is None:
                continue
            if not (path.exists() or path.is_symlink()):
                out[name] = "missing"
            elif not plain_file(path) or _sha256_or_none(path) != sha:
                out[name] = "changed since it was written"
        return out

    def declared_text(self, name: str, why: str) -> str:
        return f"{self.root / name} is {why}; {self.rerun_hint()}, which rewrites it"

    def remove_damaged_declared(self) -> None:
        """Remove the declared outputs that are not the files the ledger recorded, and any
        that is a link (the link alone), so that the run's summaries write them again as
        files of their own (a summary whose values are unchanged is otherwise kept as it
        is found, and read through a link). Only outputs this store declares, and only
        while holding :meth:`lock`."""
        damaged = self.declared_damage()
        for path in (self.output(s) for s in self.declared):
            if path.is_symlink() or (path.name in damaged and path.is_file()):
                path.unlink()

    # Outputs and what killed writers leave ----------------------------------------------

    def _known_outputs(self) -> list[Path]:
        return [self.output(s) for s in dict.fromkeys([*OWN_OUTPUTS, *self.declared])]

    def _recorded_outputs(self) -> list[Path]:
        """The outputs the last run declared (its run record's ``outputs``), as files of ``root``.

        The record is data: only plain names of ``<name>-...`` or ``<name>....`` files
        directly under ``root`` are taken, never a path elsewhere."""
        record = self.run_record() or {}
        names = record.get("outputs") if isinstance(record.get("outputs"), list) else []
        plain = re.compile(rf"{re.escape(self.name)}{OUTPUT_SUFFIX.pattern}")
        return [self.root / n for n in names if isinstance(n, str) and plain.fullmatch(n) and ".." not in n]

    def outputs(self) -> list[Path]:
        """Every file the experiment writes beside its store: the store's own (table, figure,
        ledger, run record), those it declared, and those its last run record declared."""
        return list(dict.fromkeys([*self._known_outputs(), *self._recorded_outputs()]))

    def leftovers(self) -> list[Path]:
        """What killed writers of the experiment left under ``root``: half-built row groups,
        half-added stage keys and replaced rows in ``.tmp``, and the temporaries of its :meth:`outputs`
        (``.<name>-vertices-xxxxxxxx.png``).

        Names are matched exactly, so nothing of an experiment called ``mnist-targets`` is
        taken for a leftover of ``mnist``. Remove them only while holding :meth:`lock`.
        """
        found = self._scratch.found()
        if self.root.is_dir():
            for output in self.outputs():
                pattern = temporary_name(output)
                candidates = self.root.glob(f".{glob.escape(output.stem)}-*{output.suffix}")
                found += [p for p in candidates if pattern.fullmatch(p.name)]
        return sorted(found)

    def tidy_scratch(self) -> None:
        """Remove ``<root>/.tmp`` where it is empty (:meth:`_Scratch.tidy`)."""
        self._scratch.tidy()

    def remove_leftovers(self) -> list[Path]:
        """Remove :meth:`leftovers`; returns what was removed."""
        gone = self.leftovers()
        for path in gone:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        self.tidy_scratch()
        return gone

    # Lock -------------------------------------------------------------------------------

    def lock(self) -> contextlib.AbstractContextManager[None]:
        """One writer of the experiment at a time (:func:`collide._io.experiment_lock`)."""
        return experiment_lock(self.root, self.name)

    def lock_holder(self) -> str | None:
        """Who holds :meth:`lock` now, or None."""
        return lock_holder(self.root, self.name)


def stores(root: str | Path) -> list[ExperimentStore]:
    """The experiments with a store (``<name>.zarr``) under ``root``, sorted by name.

    A folder ending in ``.zarr`` whose name no experiment could have is not one of them."""
    root = Path(root)
    if not root.is_dir():
        return []
    names = sorted(p.name.removesuffix(".zarr") for p in root.glob("*.zarr") if p.is_dir())
    return [ExperimentStore(root, n) for n in names if EXPERIMENT_NAME.fullmatch(n)]
