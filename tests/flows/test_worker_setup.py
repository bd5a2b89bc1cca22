"""The flow's local Dask workers leave a terminal's Ctrl-C to the run (flows.worker_setup):
each raised KeyboardInterrupt and printed two tracebacks while the run stopped them; and
once told of it, they go quiet and end as they close rather than after their jobs."""

import logging
import os
import signal
import threading
import time

import pytest

from flows import worker_setup
from flows.runner import dask_runner


def _sigint_handler_is_the_preloads() -> bool:
    return signal.getsignal(signal.SIGINT) is worker_setup._note_interrupt


def _dask_level() -> int:
    return logging.getLogger("distributed").getEffectiveLevel()


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _close_under_a_busy_job(interrupt: bool) -> list[str]:
    """What the nanny (in this process) logs as a 1-worker cluster closes while its worker
    runs a 60 s job, the worker told of an interrupt first or not."""
    from distributed import Client, LocalCluster

    kwargs = {**dask_runner(workers=1).cluster_kwargs, "n_workers": 1}
    records, nanny = _Records(), logging.getLogger("distributed.nanny")
    nanny.addHandler(records)
    try:
        with LocalCluster(**kwargs) as cluster, Client(cluster) as client:
            job = client.submit(time.sleep, 60, pure=False)
            while not client.processing() or not any(client.processing().values()) or job.status != "pending":
                time.sleep(0.05)
            time.sleep(0.5)  # in its thread now
            if interrupt:
                [pid] = client.run(os.getpid).values()
                os.kill(pid, signal.SIGINT)
                deadline = time.time() + 30
                while list(client.run(_dask_level).values()) != [logging.CRITICAL] and time.time() < deadline:
                    time.sleep(0.05)
                assert list(client.run(_dask_level).values()) == [logging.CRITICAL]  # quiet from now on
    finally:
        nanny.removeHandler(records)
    return records.messages


@pytest.mark.slow
def test_a_local_worker_process_takes_sigint_as_a_note_not_an_interrupt(monkeypatch):
    from distributed import Client, LocalCluster

    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers belong to the main thread")
    monkeypatch.delenv("COLLIDE_DASK_ADDRESS", raising=False)
    kwargs = {**dask_runner(workers=1).cluster_kwargs, "n_workers": 1}
    # As a terminal starts a run (a test started in the background would ignore SIGINT, and
    # so would the workers it starts, preload or not).
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with LocalCluster(**kwargs) as cluster, Client(cluster) as client:
            assert list(client.run(_sigint_handler_is_the_preloads).values()) == [True]
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # this process's own: untouched
        # The control: without the preload a worker takes SIGINT as Python does.
        del kwargs["preload"]
        with LocalCluster(**kwargs) as cluster, Client(cluster) as client:
            assert list(client.run(_sigint_handler_is_the_preloads).values()) == [False]
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.mark.slow
def test_a_worker_told_of_an_interrupt_ends_as_it_closes_not_after_its_job(monkeypatch):
    monkeypatch.delenv("COLLIDE_DASK_ADDRESS", raising=False)
    told = _close_under_a_busy_job(interrupt=True)
    assert not any("still alive" in m for m in told), told
    # The control: a worker not told waits for its job, and its nanny kills it after 4 s.
    untold = _close_under_a_busy_job(interrupt=False)
    assert any("still alive" in m for m in untold), untold
