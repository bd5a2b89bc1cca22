"""CPU threads: how many a job gives torch and the BLAS and OpenMP pools, and the sections
that run threads of their own and want one BLAS thread under each.

The pools' counts (threadpoolctl) are process state: OpenBLAS's is one count for every
thread, while an OpenMP pool's and torch's, set from a thread, hold for that thread. Blocks
that overlap in one process therefore share one record: a pool's count is saved the first
time a block meets the pool, each open and close sets only the counts that must change
(never passing through the saved ones while other blocks run), and the last block to
close puts the saved counts back. The pools are looked up when the outermost block opens
and kept until the last one closes: a lookup reads ``/proc/self/maps`` (3 ms in a process
with torch), and each of an exact polytope's re-linearisations opens and closes a section
inside the solver's. A pool first loaded meanwhile keeps its own count until then.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import threadpoolctl
import torch
from threadpoolctl import ThreadpoolController

from collide.errors import ConfigError

_lock = threading.Lock()
_open = {"jobs": 0, "sections": 0}  # job_threads and one_blas_thread blocks open
_job_n = 0
_saved_torch = 0
_saved_pools: dict[str, int] = {}  # each pool's count when a block first met it
_libs: list | None = None  # threadpoolctl's controllers, while any block is open


def _pools() -> list:
    """Under ``_lock``: the pools' controllers, looked up when none are held yet."""
    global _libs
    if _libs is None:
        _libs = ThreadpoolController().lib_controllers
    return _libs


def _set_pools() -> None:
    """Under ``_lock``: each pool at the count the open blocks ask for (a job's ``n``; one
    for BLAS in a section outside jobs), or at its saved count when none is open, from
    the calling thread (an OpenMP pool's count is that thread's)."""
    global _libs
    for lib in _pools():
        saved = _saved_pools.setdefault(lib.filepath, lib.num_threads)
        want = _job_n if _open["jobs"] else saved
        if _open["sections"] and not _open["jobs"] and lib.user_api == "blas":
            want = 1
        if lib.num_threads != want:
            lib.set_num_threads(want)
    if not any(_open.values()):
        _saved_pools.clear()
        _libs = None
    # threadpoolctl 3.8 lets only the thread that last set OpenBLAS's count set it again,
    # while that thread lives; a block may close in another thread than the one that
    # opened the first, so the control is given back after every change.
    release = getattr(getattr(threadpoolctl, "OpenBLASController", None), "clear_controlling_thread", None)
    if release is not None:
        release()


def _enter(kind: str, also: Callable[[], None] | None = None) -> None:
    """Under ``_lock``: one more block of ``kind`` open, ``also`` run, the pools set; on a
    failure, all of it undone."""
    # Every pool's count is saved before anything changes: torch's count is also its
    # OpenMP pool's, which ``also`` may set.
    for lib in _pools():
        _saved_pools.setdefault(lib.filepath, lib.num_threads)
    _open[kind] += 1
    try:
        if also is not None:
            also()
        _set_pools()
    except BaseException:
        _open[kind] -= 1
        _set_pools()
        raise


@contextmanager
def job_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` CPU threads for torch and for the BLAS and OpenMP pools
    that numpy and scipy call (threadpoolctl), then restore the old counts.

    Both fix a row's last bits (a matrix product's sums run in an order set by its
    threads), so a job computes the same bits in plain Python and on a Dask worker, whose
    nanny starts it with ``OMP_NUM_THREADS=1`` and the like: unpinned, numpy's float64
    products in the exact set's sampler differed in the 10th digit between the two.
    Jobs overlapping in one process must ask for the same ``n``; torch's count is set in
    the thread that opens a job and restored by the thread that closes the last.
    """
    global _job_n, _saved_torch
    if n < 1:
        raise ConfigError(f"expected a job's threads >= 1, got {n}")
    with _lock:
        if _open["jobs"] and _job_n != n:
            raise RuntimeError(f"jobs asking for {n} and {_job_n} torch threads overlap")
        if not _open["jobs"]:
            _saved_torch = torch.get_num_threads()
        _job_n = n
        try:
            _enter("jobs", lambda: torch.set_num_threads(n))
        except BaseException:
            if not _open["jobs"]:
                torch.set_num_threads(_saved_torch)
            raise
    try:
        yield
    finally:
        with _lock:
            _open["jobs"] -= 1
            _set_pools()
            if not _open["jobs"]:
                torch.set_num_threads(_saved_torch)


@contextmanager
def one_blas_thread() -> Iterator[None]:
    """Run the block with one BLAS thread: for a section whose own threads each call
    numpy's products (LPs side by side, the lazy-row loop's products between solves).

    OpenBLAS's threads wait busily between products, on the cores the section's threads
    need: on 2 cores LeNet-5's ``relu3`` polytope took 12.4 s (23.6 s of CPU) with two
    BLAS threads under each of two LP threads, and 8.9 s (16.2 s of CPU) with one; under
    a single LP thread, two BLAS threads used 18-20 s of CPU against 11-14 s for the same
    time. The vertices were the same bits.

    Inside a job (:func:`job_threads`) nothing changes: the job's count holds, so that a
    row's bits do not depend on which other jobs ran beside it (a product's last bits
    follow its BLAS threads: a 9137 x 784 gemv differs by 4e-15 between one and two).
    Jobs run with one thread unless their config asks for more. Outside jobs, a caller's
    other threads that multiply during the block do so on one BLAS thread too.
    """
    with _lock:
        _enter("sections")
    try:
        yield
    finally:
        with _lock:
            _open["sections"] -= 1
            _set_pools()


@contextmanager
def torch_threads_kept() -> Iterator[None]:
    """Run the block, then give torch back the thread count it had in this thread.

    For blocks that run numba's parallel code (pynndescent's index): numba's OpenMP layer,
    when it first launches its threads in a process, sets their count (a thread per core
    by default) with ``omp_set_num_threads`` in the calling thread, in the libgomp that
    torch loaded, and torch reads its own count there. Building an index left torch on 2
    threads where the caller had 1, for the rest of the process: in the test suite, the
    scans of test_audit.py took 150 s of CPU in a process that had built one before, 17 s
    in one that had not.
    """
    saved = torch.get_num_threads()
    try:
        yield
    finally:
        if torch.get_num_threads() != saved:
            torch.set_num_threads(saved)
