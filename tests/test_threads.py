import threading

import pytest
import torch
from threadpoolctl import ThreadpoolController, threadpool_info

from collide import threads
from collide.errors import ConfigError
from collide.threads import job_threads, one_blas_thread


def blas() -> list[int]:  # numpy's BLAS: pinned too, since a Dask worker's starts at one thread
    return [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]


def openmp() -> list[int]:
    return [p["num_threads"] for p in threadpool_info() if p["user_api"] == "openmp"]


def test_job_threads_nests_and_restores():
    before, blas_before = torch.get_num_threads(), blas()
    with job_threads(1):
        with job_threads(1):
            assert torch.get_num_threads() == 1
            assert set(blas()) <= {1}
        assert torch.get_num_threads() == 1 and set(blas()) <= {1}
        with pytest.raises(RuntimeError, match="overlap"), job_threads(3):
            pass
    assert torch.get_num_threads() == before and blas() == blas_before


def test_one_blas_thread_outside_jobs_sets_blas_alone_and_inside_a_job_changes_nothing():
    """Inside a job the job's count holds, so a row's bits do not depend on which other
    jobs ran beside it."""
    before, blas_before, omp_before = torch.get_num_threads(), blas(), openmp()
    with one_blas_thread():
        assert set(blas()) <= {1}
        assert torch.get_num_threads() == before and openmp() == omp_before  # only BLAS changes
    assert (torch.get_num_threads(), blas(), openmp()) == (before, blas_before, omp_before)
    with job_threads(2):
        in_job = blas()
        with one_blas_thread():
            assert blas() == in_job
        with job_threads(2), one_blas_thread():  # two jobs overlapping, as on a Dask worker
            assert blas() == in_job
    assert (torch.get_num_threads(), blas(), openmp()) == (before, blas_before, omp_before)


def test_nested_blocks_set_no_count_that_is_already_right(monkeypatch):
    """Opening or closing an inner block must not pass the pools through their saved
    counts: other threads' products would run on those meanwhile."""
    import threadpoolctl

    calls = []
    original = threadpoolctl.OpenBLASController.set_num_threads

    def spy(self, n):
        calls.append(n)
        return original(self, n)

    monkeypatch.setattr(threadpoolctl.OpenBLASController, "set_num_threads", spy)
    saved = blas()
    found = []  # pools looked up: each lookup reads /proc/self/maps (3 ms beside torch)
    monkeypatch.setattr(threads, "ThreadpoolController",
                        lambda: found.append(1) or threadpoolctl.ThreadpoolController())
    with one_blas_thread():
        opened = list(calls)
        with one_blas_thread():
            pass
        assert calls == opened  # the inner block changed nothing
    assert len(found) == 1  # one lookup for the nest: the outer block's, kept until it closed
    if saved and set(saved) != {1}:
        assert opened and set(opened) == {1} and calls[len(opened):] and set(calls[len(opened):]) <= set(saved)


def test_a_job_that_fails_to_start_leaves_no_trace(monkeypatch):
    before, blas_before = torch.get_num_threads(), blas()

    def broken(n):
        raise RuntimeError("torch refuses")

    with monkeypatch.context() as m:
        m.setattr(torch, "set_num_threads", broken)
        with pytest.raises(RuntimeError, match="refuses"), job_threads(1):
            pass
    assert torch.get_num_threads() == before and blas() == blas_before
    with job_threads(2):  # no phantom job left open: a different count is accepted
        assert torch.get_num_threads() == 2
    with pytest.raises(ConfigError, match=">= 1"), job_threads(0):
        pass


def test_blocks_closing_out_of_order_across_threads_restore_the_original_counts():
    """A job in one thread ends while another thread's one-BLAS section still runs: the
    section keeps its one thread, and once both are closed the counts are the original
    ones, not what either block saw when it opened."""
    before, blas_before = torch.get_num_threads(), blas()
    section_open, job_closed, seen = threading.Event(), threading.Event(), {}

    def section() -> None:
        with one_blas_thread():
            section_open.set()
            job_closed.wait(10)
            seen["blas after the job closed"] = blas()

    with job_threads(2):
        other = threading.Thread(target=section)
        other.start()
        section_open.wait(10)
    job_closed.set()
    other.join(10)
    assert set(seen["blas after the job closed"]) <= {1}
    assert torch.get_num_threads() == before and blas() == blas_before


def test_a_section_closing_before_a_job_in_another_thread_leaves_the_jobs_count_then_the_original():
    """BLAS's count is the process's. (An OpenMP pool's is per thread: the section's thread
    keeps the job's count it was given as the section closed, as it always did.)"""
    torch_before, blas_before = torch.get_num_threads(), blas()
    pools = [lib for lib in ThreadpoolController().lib_controllers if lib.user_api == "openmp"]
    pools_before = [lib.num_threads for lib in pools]
    section_closed, job_open, seen = threading.Event(), threading.Event(), {}

    def job() -> None:
        with job_threads(3):
            job_open.set()
            section_closed.wait(10)
            seen["blas in the job after the section closed"] = blas()

    with one_blas_thread():
        other = threading.Thread(target=job)
        other.start()
        job_open.wait(10)
        seen["blas in the section during the job"] = blas()
    section_closed.set()
    other.join(10)
    assert set(seen["blas in the section during the job"]) <= {3}
    assert set(seen["blas in the job after the section closed"]) <= {3}
    assert blas() == blas_before
    # This thread's OpenMP counts, left at the job's (see above), back as they were: the
    # rest of the process's tests would otherwise run those pools on 3 threads.
    torch.set_num_threads(torch_before)
    for lib, n in zip(pools, pools_before, strict=True):
        lib.set_num_threads(n)


def test_a_section_opened_in_another_thread_during_a_job_gives_that_thread_the_jobs_openmp_count():
    """An OpenMP pool's count is per thread: a section's thread (an exact solver's worker)
    gets the job's count as it opens, as the job's own thread did."""
    seen = {}

    def section() -> None:
        with one_blas_thread():
            seen["openmp in the section"] = openmp()

    with job_threads(1):
        other = threading.Thread(target=section)
        other.start()
        other.join(10)
    assert set(seen["openmp in the section"]) <= {1}
