"""A saved kNN index as plain arrays and JSON: nothing in the file can run code.

A pickle of a pynndescent index runs whatever its bytes say when it is loaded, and the
cache folder is writable by anyone who can write the results. The file
here is an ``.npz`` read with ``allow_pickle=False``: numbers only, plus one JSON
document. An index is rebuilt from it by filling a fresh ``NNDescent`` with the state
pynndescent itself pickles (its ``__getstate__``), the functions in that state being
looked up again by the metric's name, never read from the file. Every graph and tree
index is bounds-checked before numba code (which does not check) walks it.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from collide._io import atomic_file
from collide.errors import DataError

# State entries that are functions or types: rebuilt by NNDescent.__setstate__ from the
# metric's name (or, for the input dtype, from the name recorded in its place).
_REBUILT = ("_distance_func", "_distance_correction", "_deheap_function", "_rerank_function",
            "_search_function", "_query_finisher_fn", "_true_distance_func")
_DTYPES = {"float32": np.float32, "uint8": np.uint8}
_TREE_FIELDS = ("hyperplanes", "offsets", "children", "indices")


class UnsafeIndexError(DataError):
    """A saved index that is not what this module writes (damaged, planted, or foreign)."""


def nndescent_state(nn: Any, prefix: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """A prepared NNDescent as (JSON-able entries, arrays named ``prefix``...)."""
    from scipy.sparse import csr_array

    meta: dict[str, Any] = {}
    arrays: dict[str, np.ndarray] = {}
    for key, value in nn.__getstate__().items():
        if key in _REBUILT:
            continue
        if key == "_input_dtype":
            meta[key] = {"dtype": np.dtype(value).name}
        elif key == "_search_forest":
            meta[key] = {"trees": len(value), "leaf_size": [int(t[4]) for t in value]}
            for t, tree in enumerate(value):
                for field, part in zip(_TREE_FIELDS, tree[:4], strict=True):
                    arrays[f"{prefix}{key}.{t}.{field}"] = np.asarray(part)
        elif key == "_neighbor_graph":
            meta[key] = {"pair": True}
            arrays[f"{prefix}{key}.indices"], arrays[f"{prefix}{key}.distances"] = map(np.asarray, value)
        elif isinstance(value, csr_array):
            meta[key] = {"csr": list(value.shape)}
            for part in ("indptr", "indices", "data"):
                arrays[f"{prefix}{key}.{part}"] = getattr(value, part)
        elif isinstance(value, np.ndarray):
            meta[key] = {"array": True}
            arrays[f"{prefix}{key}"] = value
        elif isinstance(value, np.generic):
            meta[key] = {"scalar": value.item(), "dtype": value.dtype.name}
        elif value is None or isinstance(value, bool | int | float | str):
            meta[key] = {"value": value}
        elif isinstance(value, tuple) and not value:
            meta[key] = {"empty_tuple": True}
        else:  # a pynndescent that keeps something new: refuse to save what we cannot read back
            raise TypeError(f"cannot store NNDescent state {key!r} of type {type(value).__name__}")
    return meta, arrays


def _check_bounds(state: dict[str, Any], where: str) -> None:
    n = len(state["_raw_data"])
    graph = state["_search_graph"]
    if graph.shape != (n, n) or (graph.indices.size and not 0 <= graph.indices.min() <= graph.indices.max() < n):
        raise UnsafeIndexError(f"{where}: search graph indices out of range")
    if graph.indptr[0] != 0 or graph.indptr[-1] != graph.indices.size or np.any(np.diff(graph.indptr) < 0):
        raise UnsafeIndexError(f"{where}: search graph offsets are not monotone")
    order = state["_vertex_order"]
    if order.shape != (n,) or not np.array_equal(np.sort(order), np.arange(n)):
        raise UnsafeIndexError(f"{where}: vertex order is not a permutation of the {n} items")
    for tree in state["_search_forest"]:
        hyperplanes, offsets, children, indices, _ = tree
        nodes = len(children)
        if len(offsets) != nodes or len(hyperplanes) != nodes:
            raise UnsafeIndexError(f"{where}: search tree arrays differ in length")
        if indices.size and not 0 <= indices.min() <= indices.max() < n:
            raise UnsafeIndexError(f"{where}: search tree points out of range")
        # Inner nodes name child nodes; leaves hold -start, -end into the point indices.
        if children.size and not (children.min() >= -len(indices) and children.max() < nodes):
            raise UnsafeIndexError(f"{where}: search tree children out of range")


def nndescent_from_state(meta: dict[str, Any], arrays: Any, prefix: str, where: str) -> Any:
    """The NNDescent :func:`nndescent_state` recorded, rebuilt and bounds-checked."""
    from pynndescent import NNDescent
    from pynndescent.distances import named_distances
    from pynndescent.rp_trees import FlatTree
    from scipy.sparse import csr_array

    state: dict[str, Any] = {}
    for key, how in meta.items():
        if "value" in how:
            state[key] = how["value"]
        elif "scalar" in how:
            state[key] = np.dtype(how["dtype"]).type(how["scalar"])
        elif "dtype" in how:
            if how["dtype"] not in _DTYPES:
                raise UnsafeIndexError(f"{where}: input dtype {how['dtype']!r} is not one collide indexes")
            state[key] = _DTYPES[how["dtype"]]
        elif "empty_tuple" in how:
            state[key] = ()
        elif "array" in how:
            state[key] = arrays[f"{prefix}{key}"]
        elif "pair" in how:
            state[key] = (arrays[f"{prefix}{key}.indices"], arrays[f"{prefix}{key}.distances"])
        elif "csr" in how:
            parts = [arrays[f"{prefix}{key}.{p}"] for p in ("data", "indices", "indptr")]
            state[key] = csr_array(tuple(parts), shape=tuple(how["csr"]))
        elif "trees" in how:
            state[key] = tuple(
                FlatTree(*(arrays[f"{prefix}{key}.{t}.{f}"] for f in _TREE_FIELDS), int(how["leaf_size"][t]))
                for t in range(how["trees"]))
        else:
            raise UnsafeIndexError(f"{where}: unknown entry {key!r}")
    metric = state.get("metric")
    if not isinstance(metric, str) or metric not in named_distances or state.get("_dist_args", ()) != ():
        raise UnsafeIndexError(f"{where}: metric {metric!r} is not one of pynndescent's named distances")
    missing = [k for k in ("_raw_data", "_search_graph", "_vertex_order", "_search_forest") if k not in state]
    if missing:
        raise UnsafeIndexError(f"{where}: no {', '.join(missing)}")
    _check_bounds(state, where)
    nn = NNDescent.__new__(NNDescent)
    nn.__setstate__(state)
    return nn


def write_index_file(path: str | Path, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> Path:
    """``arrays`` and ``meta`` (as JSON bytes) in one ``.npz``, written atomically."""
    blob = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    with atomic_file(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, __meta__=blob, **arrays)
    return Path(path)


def read_index_file(path: str | Path) -> tuple[dict[str, Any], Any]:
    """The meta and arrays of a file :func:`write_index_file` wrote; never unpickles."""
    path = Path(path)
    try:
        arrays = np.load(path, allow_pickle=False)
        meta = json.loads(bytes(arrays["__meta__"]).decode())
    except (ValueError, OSError, KeyError, UnicodeDecodeError, EOFError, zipfile.BadZipFile) as exc:
        # ValueError covers "Object arrays cannot be loaded when allow_pickle=False".
        raise UnsafeIndexError(f"{path} is not a collide kNN index ({type(exc).__name__}: {exc}): "
                               "delete it; the next run rebuilds it") from None
    if not isinstance(meta, dict):
        raise UnsafeIndexError(f"{path} is not a collide kNN index: delete it; the next run rebuilds it")
    return meta, arrays
