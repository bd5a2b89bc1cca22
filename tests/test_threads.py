import threading

import pytest
import torch
from threadpoolctl import threadpool_info

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


def test_one_blas_thread_inside_a_job_goes_back_to_the_jobs_counts():
    before, blas_before, omp_before = torch.get_num_threads(), blas(), openmp()
    with job_threads(2):
        with one_blas_thread():
            assert set(blas()) <= {1}
            assert torch.get_num_threads() == 2 and set(openmp()) <= {2}  # only BLAS changes
        assert set(blas()) <= {2} and torch.get_num_threads() == 2
    assert (torch.get_num_threads(), blas(), openmp()) == (before, blas_before, omp_before)


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


def test_one_blas_thread_leaves_overlapping_jobs_their_count():
    """Two jobs in one process: a section in one must not change the count the other's
    products run with (their last bits would then follow the other's timing)."""
    with job_threads(2):
        with one_blas_thread():
            assert set(blas()) <= {1}  # one job: the section has its one thread
        with job_threads(2):
            jobs = blas()
            with one_blas_thread():
                assert blas() == jobs
