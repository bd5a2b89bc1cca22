"""CPU threads: how many a job gives torch and the BLAS and OpenMP pools, and the sections
that run threads of their own and want one BLAS thread under each.

Both settings are process-wide (torch's, OpenBLAS's), so blocks that overlap in one
process share them: the first block to open saves what was there, every open and close
applies what the open blocks ask for together, and the last to close restores what it
saved, never while another block still runs.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import threadpoolctl
import torch
from threadpoolctl import ThreadpoolController, threadpool_limits

_lock = threading.Lock()
_jobs = 0  # job_threads blocks open
_job_n = 0
_serial = 0  # one_blas_thread blocks open
_saved: tuple[int, dict[str, int]] | None = None  # torch's threads and each pool's, before the first block


def _pools() -> dict[str, int]:
    return {lib.filepath: lib.num_threads for lib in ThreadpoolController().lib_controllers}


def _apply() -> None:
    """Under ``_lock``: set what the open blocks ask for, or restore what was saved."""
    global _saved
    if _saved is None:
        _saved = (torch.get_num_threads(), _pools())
    saved_torch, saved_pools = _saved
    for lib in ThreadpoolController().lib_controllers:
        if lib.filepath in saved_pools:
            lib.set_num_threads(saved_pools[lib.filepath])
    torch.set_num_threads(_job_n if _jobs else saved_torch)
    if _jobs:
        threadpool_limits(limits=_job_n)
    if _serial and _jobs <= 1:
        threadpool_limits(limits=1, user_api="blas")
    if not (_jobs or _serial):
        _saved = None
    # threadpoolctl 3.8 lets only the thread that last set OpenBLAS's process-wide count
    # set it again, while that thread lives; a block may close in another thread than the
    # one that opened the first, so give the control back after every change.
    release = getattr(getattr(threadpoolctl, "OpenBLASController", None), "clear_controlling_thread", None)
    if release is not None:
        release()


@contextmanager
def job_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` CPU threads for torch and for the BLAS and OpenMP pools
    that numpy and scipy call (threadpoolctl), then restore the old counts.

    Both fix a row's last bits (a matrix product's sums run in an order set by its
    threads), so a job computes the same bits in plain Python and on a Dask worker, whose
    nanny starts it with ``OMP_NUM_THREADS=1`` and the like: unpinned, numpy's float64
    products in the exact set's sampler differed in the 10th digit between the two.
    Jobs overlapping in one process must ask for the same ``n``.
    """
    global _jobs, _job_n
    with _lock:
        if _jobs and _job_n != n:
            raise RuntimeError(f"jobs asking for {n} and {_job_n} torch threads overlap")
        _jobs, _job_n = _jobs + 1, n
        _apply()
    try:
        yield
    finally:
        with _lock:
            _jobs -= 1
            _apply()


@contextmanager
def one_blas_thread() -> Iterator[None]:
    """Run the block with one BLAS thread: for a section whose own threads each call
    numpy's products (LPs side by side, the lazy-row loop's products between solves).

    OpenBLAS's threads wait busily between products, on the cores the section's threads
    need: on 2 cores LeNet-5's ``relu3`` polytope took 12.4 s (23.6 s of CPU) with two
    BLAS threads under each of two LP threads, and 8.9 s (16.2 s of CPU) with one; under
    a single LP thread, two BLAS threads used 18-20 s of CPU against 11-14 s for the same
    time. The vertices were the same bits.

    A product's last bits depend on its BLAS threads, and the count is the process's: a
    caller's other threads that multiply meanwhile do so on one thread too. Where two
    jobs (:func:`job_threads`) overlap in the process, the count stays what they set, so
    that neither job's products change with the other's timing.
    """
    global _serial
    with _lock:
        _serial += 1
        _apply()
    try:
        yield
    finally:
        with _lock:
            _serial -= 1
            _apply()
