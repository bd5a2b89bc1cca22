"""The flow's local Dask workers leave a terminal's Ctrl-C to the run (flows.worker_setup):
each raised KeyboardInterrupt and printed two tracebacks while the run stopped them."""

import signal
import threading

import pytest

from flows.runner import dask_runner


def _sigint_ignored() -> bool:
    return signal.getsignal(signal.SIGINT) is signal.SIG_IGN


@pytest.mark.slow
def test_a_local_worker_process_ignores_sigint(monkeypatch):
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
            assert list(client.run(_sigint_ignored).values()) == [True]
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # this process's own: untouched
        # The control: without the preload a worker takes SIGINT as Python does.
        del kwargs["preload"]
        with LocalCluster(**kwargs) as cluster, Client(cluster) as client:
            assert list(client.run(_sigint_ignored).values()) == [False]
    finally:
        signal.signal(signal.SIGINT, previous)
