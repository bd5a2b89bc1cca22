"""Jobs on Dask workers: absolute paths from the submitter, a clear refusal where a worker
cannot see the shared files, and thread pools sized by the worker's share of the cores.
No cluster here: the worker is a stand-in with the attributes collide reads."""

import os
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from collide import workers
from collide.errors import DataError
from collide.experiments import engine
from collide.experiments import mnist as mnist_module
from collide.experiments.configs.mnist import MnistExperiment
from collide.experiments.configs.scan import ScanExperiment
from collide.experiments.contract import PATH_FIELDS, job


def _worker(address: str = "tcp://10.0.0.5:40000", nthreads: int = 1, peers: dict | None = None,
            fail: bool = False) -> SimpleNamespace:
    """A stand-in Dask worker: its address, task slots, and a client whose scheduler knows ``peers``."""

    def scheduler_info(n_workers: int = -1) -> dict:
        if fail:
            raise OSError("scheduler unreachable")
        return {"workers": peers if peers is not None else {address: {"nthreads": nthreads}}}

    return SimpleNamespace(address=address, state=SimpleNamespace(nthreads=nthreads),
                           client=SimpleNamespace(scheduler_info=scheduler_info))


@pytest.mark.parametrize(("cores", "slots", "share"), [(2, 2, 1), (16, 4, 4), (2, 4, 1), (8, 0, 8), (7, 2, 3)])
def test_a_jobs_share_of_the_cores_is_at_least_one(cores, slots, share):
    assert workers.core_share(cores, slots) == share


def test_outside_dask_a_job_takes_every_core(monkeypatch):
    monkeypatch.setattr(workers, "machine_cores", lambda: 16)
    assert workers.dask_worker() is None  # no task of a Dask worker runs this test
    assert workers.job_cores() == 16


def test_on_a_worker_a_job_takes_its_share_of_the_hosts_cores(monkeypatch):
    # Two workers of two slots each on 10.0.0.5, one elsewhere: 4 jobs at once share 8 cores.
    peers = {"tcp://10.0.0.5:40000": {"nthreads": 2}, "tcp://10.0.0.5:40001": {"nthreads": 2},
             "tcp://10.0.0.6:40000": {"nthreads": 8}}
    monkeypatch.setattr(workers, "machine_cores", lambda: 8)
    monkeypatch.setattr(workers, "dask_worker", lambda: _worker(nthreads=2, peers=peers))
    assert workers.job_cores() == 2


def test_a_worker_that_cannot_ask_its_scheduler_shares_by_its_own_slots(monkeypatch):
    monkeypatch.setattr(workers, "machine_cores", lambda: 8)
    monkeypatch.setattr(workers, "dask_worker", lambda: _worker(nthreads=2, fail=True))
    assert workers.job_cores() == 4


def test_a_config_built_from_relative_paths_hands_its_jobs_absolute_ones(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    config = ScanExperiment(data_root="data/raw/mnist", checkpoint_dir="ckpt", results_root="out")
    sent = config.absolute()
    for field in PATH_FIELDS:
        if getattr(config, field, ""):  # "" is unset (the scan's image_root): it stays so
            assert Path(getattr(sent, field)).is_absolute(), field
        elif hasattr(config, field):
            assert getattr(sent, field) == ""
    assert sent.data_root == str(tmp_path / "data/raw/mnist")
    assert sent.results_root == str(tmp_path / "out")
    assert sent.absolute() == sent and sent.digest() == sent.absolute().digest()
    # What prepare records for the jobs is absolute too: the checkpoint and the data found.
    (tmp_path / "data/raw/mnist").mkdir(parents=True)
    shared = engine.shared_files(sent, {"checkpoint": str(tmp_path / "ckpt" / "m.pt")})
    assert shared == {"the data": str(tmp_path / "data/raw/mnist"), "the checkpoint": str(tmp_path / "ckpt/m.pt")}


def test_a_plain_run_hands_its_jobs_absolute_paths(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    seen = []

    class Stop(Exception):
        pass

    def validate(experiment, *, config):
        seen.append(config)
        raise Stop

    monkeypatch.setattr(engine, "validate", validate)
    with pytest.raises(Stop):
        engine.run(mnist_module, config=MnistExperiment(data_root="d", checkpoint_dir="c", results_root="r"))
    assert (seen[0].data_root, seen[0].checkpoint_dir, seen[0].results_root) == tuple(
        str(tmp_path / p) for p in ("d", "c", "r"))


@pytest.mark.parametrize("what", ["the data", "the checkpoint"])
def test_a_worker_that_cannot_see_the_shared_files_says_so(monkeypatch, tmp_path, what):
    submitter = tmp_path / "submitter"
    (submitter / "results").mkdir(parents=True)
    monkeypatch.chdir(submitter)
    config = MnistExperiment(results_root="results").absolute()
    missing = str(tmp_path / "elsewhere" / "mnist")  # absolute, on a filesystem this worker lacks
    context = {"shared": {what: missing}, "inputs": {}}
    (tmp_path / "worker").mkdir()
    monkeypatch.chdir(tmp_path / "worker")  # the worker was started in another folder
    monkeypatch.setattr(workers, "dask_worker", lambda: _worker(address="tcp://10.0.0.5:40000"))
    with pytest.raises(DataError) as caught:
        engine.run_job(mnist_module, job("j", [0]), context, config=config)
    message = str(caught.value)
    assert message.startswith(f"this Dask worker (tcp://10.0.0.5:40000, host {os.uname().nodename}, "
                              f"pid {os.getpid()}) cannot see {what} at {missing}: ")
    assert "every worker needs the same filesystem as the submitting process (the results root, the data and " \
           "the checkpoints)" in message
    assert not any((tmp_path / "worker").iterdir())  # nothing written where the worker was started


def test_a_worker_that_cannot_see_the_results_root_writes_nothing(monkeypatch, tmp_path):
    config = MnistExperiment(results_root=str(tmp_path / "gone")).absolute()
    with pytest.raises(DataError, match=r"^this process \(host .*\) cannot see the results root at .*gone"):
        engine.run_job(mnist_module, job("j", [0]), {"inputs": {}}, config=config)
    assert not (tmp_path / "gone").exists()


def test_a_scheduler_address_is_refused_within_its_limit_even_where_the_name_lookup_hangs(monkeypatch):
    import socket
    import time

    from collide.errors import ConfigError

    with socket.create_server(("127.0.0.1", 0)) as server:  # something listening: accepted, by name too
        port = server.getsockname()[1]
        workers.require_scheduler(f"tcp://127.0.0.1:{port}", "--dask-address")
        workers.require_scheduler(f"tcp://localhost:{port}", "--dask-address")
    released = threading.Event()

    def resolver_that_does_not_answer(*args, **kwargs):
        released.wait(30)  # a resolver's own timeout can be far longer than the limit
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    monkeypatch.setattr(workers, "SCHEDULER_CONNECT_S", 0.3)
    monkeypatch.setattr(socket, "getaddrinfo", resolver_that_does_not_answer)
    start = time.monotonic()
    try:
        with pytest.raises(ConfigError, match=r"no Dask scheduler answers at tcp://sched\.example:8786 "
                                              r"\(COLLIDE_DASK_ADDRESS: looking up sched\.example took over 0\.3 s\)"):
            workers.require_scheduler("tcp://sched.example:8786", "COLLIDE_DASK_ADDRESS")
    finally:
        released.set()
    assert time.monotonic() - start < 5
