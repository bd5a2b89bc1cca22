"""Sliding-window patch extraction into a Zarr store, chunk by chunk with Dask.

The store holds ``patches`` (M, C, p, p) uint8 and ``index`` (M, 3) int32 rows of
(image id, row, col), both chunked by ``images_per_chunk`` images. Each Dask task
writes a run of consecutive whole chunks of each array (about ``TASK_BYTES``), so no
two writers share one. A chunk is marked finished in ``done`` (one element per chunk)
only after its data is written: a rerun skips finished chunks, and a killed run redoes
only the chunks of the tasks it was in.
"""

from __future__ import annotations

import functools
import hashlib
import json
import shutil
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import dask
import numpy as np
import zarr

from collide._io import atomic_file
from collide.config import PatchConfig
from collide.errors import ConfigError, DataError

LoadImages = Callable[[Sequence[int]], np.ndarray]
"""Returns the images with the given ids as uint8 (n, C, H, W)."""


def window_starts(length: int, size: int, stride: int) -> np.ndarray:
    """Top (or left) coordinates of the windows along one axis."""
    if size > length:
        raise ConfigError(f"patch size {size} is larger than the image side {length}: use a smaller patch size")
    return np.arange(0, length - size + 1, stride)


def extract(
    images: np.ndarray, size: int, stride: int, ids: Sequence[int] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """All windows of each image, image-major then row-major (the plain numpy path).

    Shapes:
        images: (N, C, H, W) -> patches (N*P, C, size, size), index (N*P, 3)
    """
    if images.ndim != 4:
        raise DataError(f"expected images of shape (N, C, H, W), got {images.shape}")
    n, c, h, w = images.shape
    rows, cols = window_starts(h, size, stride), window_starts(w, size, stride)
    view = np.lib.stride_tricks.sliding_window_view(images, (size, size), axis=(2, 3))
    view = view[:, :, rows][:, :, :, cols]  # (N, C, R, Q, size, size)
    patches = view.transpose(0, 2, 3, 1, 4, 5).reshape(n * len(rows) * len(cols), c, size, size)
    image_ids = np.arange(n) if ids is None else np.asarray(ids)
    rr, cc = np.meshgrid(rows, cols, indexing="ij")
    index = np.stack(
        [np.repeat(image_ids, rr.size), np.tile(rr.ravel(), n), np.tile(cc.ravel(), n)], axis=1
    ).astype(np.int32)
    return np.ascontiguousarray(patches), index


def patches_per_image(height: int, width: int, size: int, stride: int) -> int:
    return len(window_starts(height, size, stride)) * len(window_starts(width, size, stride))


def sample_ids(labels: np.ndarray, share: float, seed: int) -> np.ndarray:
    """A seeded ``share`` of each class's images (at least one each), sorted."""
    if len(labels) == 0:
        raise DataError("the dataset is empty: no images to take patches from")
    rng = np.random.default_rng(seed)
    picked = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        n = max(1, int(round(share * len(members))))
        picked.append(rng.choice(members, size=n, replace=False))
    return np.sort(np.concatenate(picked))


# Raw patch bytes one Dask task extracts and writes: whole Zarr chunks, as many as fit.
# Profiled on MNIST (200-image chunks of 0.45 MiB), each Zarr write call costs about
# 1.2 ms whatever its size (a round trip through Zarr's event-loop thread) and each task
# three of them, against 2.5 ms to extract the chunk: grouping chunks pays that once per
# task. Larger tasks were no faster there, and a running task holds a few times this.
TASK_BYTES = 1 << 20


def _runs(todo: Sequence[int], longest: int) -> list[tuple[int, int]]:
    """Consecutive unfinished chunks as (first, stop) runs of at most ``longest``."""
    runs: list[tuple[int, int]] = []
    for k in todo:
        if runs and runs[-1][1] == k and k - runs[-1][0] < longest:
            runs[-1] = (runs[-1][0], k + 1)
        else:
            runs.append((k, k + 1))
    return runs


def _write_chunks(arrays: tuple[Any, Any, Any], first: int, stop: int, ids: np.ndarray, load: LoadImages,
                  config: PatchConfig) -> int:
    """Extract and write chunks ``first`` to ``stop`` (exclusive), whose images are ``ids``.

    ``arrays`` are the store's opened (patches, index, done): reopening the group in every
    task read three metadata files per chunk.
    """
    patches_out, index_out, done = arrays
    ids_list = ids.tolist()
    patches, index = extract(load(ids_list), config.size, config.stride, ids_list)
    start = first * patches_out.chunks[0]
    patches_out[start : start + len(patches)] = patches
    index_out[start : start + len(index)] = index
    done[first:stop] = True  # last: a chunk counts as finished only once it is all there
    return stop - first


def _run_tasks(jobs: list[Any], scheduler: Any, finished: Callable[[int], None]) -> None:
    """Compute ``jobs`` (each returns its number of chunks), calling ``finished`` as each
    ends. No waves: a barrier after each wave left a core idle behind its slowest task."""
    if hasattr(scheduler, "compute"):  # a distributed.Client
        from distributed import as_completed

        for future in as_completed(scheduler.compute(jobs)):
            finished(future.result())
        return
    from dask.callbacks import Callback

    keys = {job.key for job in jobs}

    def posttask(key: Any, result: Any, dsk: Any, state: Any, worker_id: Any) -> None:
        if key in keys:
            finished(result)

    with Callback(posttask=posttask):  # local schedulers call it in this thread
        dask.compute(*jobs, scheduler=scheduler)


def build_store(
    path: str | Path,
    image_ids: Sequence[int],
    load: LoadImages,
    *,
    image_shape: tuple[int, int, int],
    config: PatchConfig,
    source: dict[str, Any] | None = None,
    scheduler: Any = "threads",
    progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, Any]:
    """Extract every patch of ``image_ids`` into the store at ``path``, resuming.

    Args:
        path: the ``.zarr`` directory; created, or resumed when its settings match.
        image_ids: which images, in the order their patches are stored.
        load: loads a list of image ids as uint8 (n, C, H, W).
        image_shape: (C, H, W) of every image.
        config: patch size, stride, chunking.
        source: a description of the corpus, kept in the attrs.
        scheduler: a Dask scheduler name or a ``distributed.Client``.
        progress: called as ``progress("patches", chunks_done, n_chunks)``.

    Returns:
        A summary: path, number of patches, chunks written now and reused.
    """
    path = Path(path)
    c, h, w = image_shape
    per_image = patches_per_image(h, w, config.size, config.stride)
    ids = [int(i) for i in image_ids]
    if not ids:
        raise DataError("no images to take patches from")
    n_chunks = -(-len(ids) // config.images_per_chunk)
    settings = {"config": asdict(config), "image_shape": list(image_shape), "source": source or {}}
    # The ids go into an array and only their hash into the attrs: every Dask task
    # reopens the group, and attrs that grow with the corpus would grow its memory too.
    id_array = np.asarray(ids, dtype=np.int64)
    fingerprint = hashlib.sha256(
        json.dumps(settings, sort_keys=True).encode() + id_array.tobytes()
    ).hexdigest()
    if path.exists():
        try:
            old = zarr.open_group(path, mode="r").attrs.get("fingerprint")
        except Exception:  # a store from a crash before its attrs were written
            old = None
        if old != fingerprint or store_damage(path) is not None:  # a damaged cache is rebuilt
            shutil.rmtree(path)
            _manifest_path(path).unlink(missing_ok=True)
    if not path.exists():
        tmp = path.with_name(f".{path.name}.creating")
        shutil.rmtree(tmp, ignore_errors=True)
        group = zarr.open_group(tmp, mode="w")
        rows = config.images_per_chunk * per_image
        total = len(ids) * per_image
        group.create_array("patches", shape=(total, c, config.size, config.size), dtype="uint8",
                           chunks=(rows, c, config.size, config.size))
        group.create_array("index", shape=(total, 3), dtype="int32", chunks=(rows, 3))
        group.create_array("done", shape=(n_chunks,), dtype="bool", chunks=(1,), fill_value=False)
        group.create_array("image_ids", data=id_array, chunks=(min(len(id_array), 1 << 20),))
        group.attrs.update({"fingerprint": fingerprint, **settings, "patches_per_image": per_image})
        tmp.rename(path)
    group = zarr.open_group(path, mode="r+")
    # Every chunk is written, even one equal to the fill value: Zarr's check for that
    # scanned each chunk (a fifth of its write time), and the manifest then lists them all.
    arrays = tuple(group[name].with_config({"write_empty_chunks": True}) for name in ("patches", "index", "done"))
    done = arrays[2][...]
    todo = [k for k in range(n_chunks) if not done[k]]
    finished = n_chunks - len(todo)
    if progress is not None:
        progress("patches", finished, n_chunks)
    chunk_bytes = config.images_per_chunk * per_image * c * config.size**2
    runs = _runs(todo, max(1, TASK_BYTES // chunk_bytes))
    # The arrays and config are bound into the function, and the ids go as an array: Dask
    # walks every list, tuple and dataclass among a task's arguments, item by item.
    write = dask.delayed(functools.partial(_write_chunks, arrays, load=load, config=config), pure=False)
    per = config.images_per_chunk
    jobs = [write(first, stop, id_array[first * per : stop * per]) for first, stop in runs]

    def finished_chunks(count: int) -> None:
        nonlocal finished
        finished += count
        if progress is not None:
            progress("patches", finished, n_chunks)

    _run_tasks(jobs, scheduler, finished_chunks)
    if todo or not _manifest_path(path).is_file():
        _write_manifest(path)
    return {"path": str(path), "n_patches": len(ids) * per_image, "n_chunks": n_chunks,
            "chunks_written": len(todo), "chunks_reused": n_chunks - len(todo)}


def _manifest_path(path: Path) -> Path:
    return path.with_name(f"{path.name}.manifest.json")


def _store_files(path: Path) -> dict[str, int]:
    """Every file of the store's arrays (all but its root ``zarr.json``) and its size."""
    return {p.relative_to(path).as_posix(): p.stat().st_size for p in sorted(path.rglob("*"))
            if p.is_file() and p.relative_to(path).as_posix() != "zarr.json"}


def _write_manifest(path: Path) -> None:
    """The size of every file of a finished store, beside it: Zarr reads a missing chunk
    as zeros, so :func:`open_store` checks that each is still there, whole."""
    with atomic_file(_manifest_path(path)) as tmp:
        tmp.write_text(json.dumps(_store_files(path), sort_keys=True))


def store_damage(path: str | Path) -> str | None:
    """What is missing or cut short in a finished store, against its manifest; None when
    whole or not yet finished (no manifest). Sizes only: a store can hold gigabytes."""
    path = Path(path)
    try:
        written = json.loads(_manifest_path(path).read_text())
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, UnicodeDecodeError):
        return f"its manifest {_manifest_path(path)} is not JSON"
    files = _store_files(path)
    for name, size in sorted(written.items()):
        if name not in files:
            return f"{name} is missing"
        if files[name] != size:
            return f"{name} is {files[name]} bytes, {size} were written"
    return None


def open_store(path: str | Path) -> zarr.Group:
    path = Path(path)
    if not (path / "zarr.json").is_file():
        raise DataError(f"no patch store at {path}: build it first (collide run patches)")
    group = zarr.open_group(path, mode="r")
    if not bool(group["done"][...].all()):
        raise DataError(f"patch store {path} is incomplete: rerun to finish it")
    why = store_damage(path)
    if why is not None:
        raise DataError(f"patch store {path} is damaged: {why}; rerun the experiment, which rebuilds it")
    return group
