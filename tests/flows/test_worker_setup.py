"""The flow's local Dask workers leave a terminal's Ctrl-C to the run (flows.worker_setup):
each raised KeyboardInterrupt and printed two tracebacks while the run stopped them; and
once told of it, they go quiet and end as they close rather than after their jobs."""

import logging
import os
import signal
import threading
import time
from unittest import mock

import pytest

from flows import worker_setup
from flows.runner import dask_runner


def _handlers() -> tuple[bool, bool, bool]:
    """Whether SIGINT is the preload's, whether it is ignored, whether the run's note is the preload's."""
    sigint = signal.getsignal(signal.SIGINT)
    return (sigint is worker_setup._note_interrupt, sigint is signal.SIG_IGN,
            signal.getsignal(worker_setup.NOTE) is worker_setup._note_interrupt)


def _dask_level() -> int:
    return logging.getLogger("distributed").getEffectiveLevel()


def _executing(dask_worker) -> int:
    return len(dask_worker.state.executing)


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _until(condition, what: str, seconds: float = 60) -> None:
    deadline = time.time() + seconds
    while not condition():
        assert time.time() < deadline, f"waited {seconds} s for {what}"
        time.sleep(0.05)


def _cluster_kwargs() -> dict:
    """A 1-worker cluster's arguments as the flow's runner gives them, its scratch in this
    user's own folder (not Dask's default, shared by every user of the machine)."""
    from prefect_dask import DaskTaskRunner

    with mock.patch.object(DaskTaskRunner, "__enter__", lambda self: self):  # the arguments, no cluster
        return {**dask_runner(workers=1).__enter__().cluster_kwargs, "n_workers": 1}


def _close_under_a_busy_job(sig: signal.Signals | None) -> list[str]:
    """What the nanny (in this process) logs as a 1-worker cluster closes while its worker
    runs a 60 s job, the worker sent ``sig`` first (None: nothing)."""
    from distributed import Client, LocalCluster

    kwargs = _cluster_kwargs()
    records, nanny = _Records(), logging.getLogger("distributed.nanny")
    nanny.addHandler(records)
    try:
        with LocalCluster(**kwargs) as cluster, Client(cluster) as client:
            job = client.submit(time.sleep, 60, pure=False)
            _until(lambda: list(client.run(_executing).values()) == [1], "the job to start")
            if sig is not None:
                [pid] = client.run(os.getpid).values()
                os.kill(pid, sig)
                _until(lambda: list(client.run(_dask_level).values()) == [logging.CRITICAL], "the worker to go quiet")
            del job
    finally:
        nanny.removeHandler(records)
    return records.messages


@pytest.mark.slow
def test_a_local_worker_process_takes_sigint_as_a_note_not_an_interrupt(monkeypatch):
    from distributed import Client, LocalCluster

    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers belong to the main thread")
    monkeypatch.delenv("COLLIDE_DASK_ADDRESS", raising=False)
    kwargs = _cluster_kwargs()
    # As a terminal starts a run (a test started in the background would ignore SIGINT, and
    # so would the workers it starts, preload or not).
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with LocalCluster(**kwargs) as cluster, Client(cluster) as client:
            assert list(client.run(_handlers).values()) == [(True, False, True)]
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # this process's own: untouched
        # A run started ignoring SIGINT: its workers keep ignoring it, and still take the run's note.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        with LocalCluster(**kwargs) as cluster, Client(cluster) as client:
            assert list(client.run(_handlers).values()) == [(False, True, True)]
        # The control: without the preload a worker takes SIGINT as Python does.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        del kwargs["preload"]
        with LocalCluster(**kwargs) as cluster, Client(cluster) as client:
            assert list(client.run(_handlers).values()) == [(False, False, False)]
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, worker_setup.NOTE], ids=["ctrl-c", "the-runs-note"])
def test_a_worker_told_of_an_interrupt_ends_as_it_closes_not_after_its_job(monkeypatch, sig):
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers belong to the main thread")
    monkeypatch.delenv("COLLIDE_DASK_ADDRESS", raising=False)
    # Workers take SIGINT only where the run does, as from a terminal: a test process started
    # in the background ignores it, and so would the workers it starts (kept so).
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        told = _close_under_a_busy_job(sig)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert not any("still alive" in m for m in told), told


@pytest.mark.slow
def test_the_control_a_worker_not_told_is_killed_by_its_nanny_inside_its_job(monkeypatch):
    monkeypatch.delenv("COLLIDE_DASK_ADDRESS", raising=False)
    untold = _close_under_a_busy_job(None)
    assert any("still alive" in m for m in untold), untold


def test_a_local_cluster_keeps_its_scratch_in_a_folder_of_the_users_own(monkeypatch, tmp_path):
    """Dask's default, <tmp>/dask-scratch-space, is one folder for every user of the machine
    (a new user's trial found it left there); the cluster's goes in <tmp>/collide-dask-<uid>."""
    from prefect_dask import DaskTaskRunner

    from collide.errors import BusyError

    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    monkeypatch.setattr(DaskTaskRunner, "__enter__", lambda self: self)  # no cluster: its arguments only
    runner = dask_runner(workers=1).__enter__()
    mine = tmp_path / f"collide-dask-{os.getuid()}"
    assert runner.cluster_kwargs["local_directory"] == str(mine)
    assert runner.cluster_kwargs["scheduler_kwargs"] == {"local_directory": str(mine)}
    assert mine.stat().st_mode & 0o777 == 0o700
    os.chmod(mine, 0o777)  # open to others: refused, never used
    with pytest.raises(BusyError, match="not a folder of this user's alone"):
        dask_runner(workers=1).__enter__()
    import dask

    with dask.config.set({"temporary-directory": str(tmp_path / "chosen")}):  # the user's own choice stands
        assert "local_directory" not in dask_runner(workers=1).__enter__().cluster_kwargs
