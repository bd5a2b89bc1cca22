import os
from pathlib import Path

import pytest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
# Tests call the library outside any flow run in a worker where an earlier test ran a flow
# and attached Prefect's API log handler to collide's loggers: nothing to send there.
os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs one worker per core: each keeps to one thread (torch, OpenMP),
    # and so do the `collide` processes its tests start: threads beyond the cores spin
    # against each other (30 gradient steps on ResNet-18 took 60-90 s with torch's two
    # threads on the loaded 2-core machine, 2-5 s with one). (numba's pool stays:
    # pynndescent asks it for n_jobs threads, and tests set n_jobs=2.)
    for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_var, "1")
    # numpy's OpenBLAS read its count before this file ran (zarr's pytest plugin imports
    # numpy) and started a thread per core: the pools already loaded get the same count.
    import threadpoolctl

    if os.environ["OMP_NUM_THREADS"].isdigit():  # "4,2" (nested levels) is left alone
        threadpoolctl.threadpool_limits(int(os.environ["OMP_NUM_THREADS"]))
        # threadpoolctl 3.8 lets only the thread that last set OpenBLAS's count set it
        # again: collide.threads' blocks, opened from any thread, must be able to.
        release = getattr(getattr(threadpoolctl, "OpenBLASController", None), "clear_controlling_thread", None)
        if release is not None:
            release()
import torch  # noqa: E402

# Prefect's environment defaults (a generous temporary-server start-up among them) for
# this process and every `collide` subprocess a test starts.
import flows  # noqa: E402, F401
from collide.config import RowSpec  # noqa: E402
from collide.experiments import engine, mnist  # noqa: E402
from collide.experiments.mnist import MnistExperiment  # noqa: E402
from collide.piecewise import ball as ball_lp  # noqa: E402
from tests.support import SHARED_WORKER, small_mnist_config, synthetic_mnist  # noqa: E402


@pytest.hookimpl(optionalhook=True)  # xdist's hook: pytest without xdist (-p no:xdist) knows none
def pytest_xdist_make_scheduler(config, log):
    # tests.support.SHARED_WORKER's files run in one worker. In the scheduler, by path:
    # xdist's own groups (--dist loadgroup) do nothing under pytest 9.2 (pytest-xdist
    # issue 1386).
    if config.getvalue("dist") != "loadfile":
        return None  # xdist's own scheduler
    from xdist.scheduler import LoadFileScheduling  # a plugin's module: only where xdist runs

    class Files(LoadFileScheduling):
        """A work unit per file, as --dist loadfile, except SHARED_WORKER's files: one unit."""

        def _split_scope(self, nodeid: str) -> str:
            path = super()._split_scope(nodeid)
            return SHARED_WORKER.get(path, path)

    return Files(config, log)


def pytest_collection_modifyitems(config, items):
    # Files holding slow tests first (in their own order): `make test`'s workers, which
    # take a file at a time, then end on short files rather than wait for one long one.
    slow_files = {item.path for item in items if "slow" in item.keywords}
    items.sort(key=lambda item: item.path not in slow_files)
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


_TORCH_THREADS = torch.get_num_threads()  # as the tests start: one under `make test`


@pytest.fixture(autouse=True)
def _torch_threads_as_found():
    """Error a test (or a fixture it set up) that leaves torch on another thread count: every
    later test in its worker would run on it (a patch index's numba launch once left a
    worker on 2 threads, and test_audit.py then took 150 s of CPU instead of 17)."""
    yield
    if (now := torch.get_num_threads()) != _TORCH_THREADS:
        torch.set_num_threads(_TORCH_THREADS)
        pytest.fail(f"torch was left on {now} threads; the tests started on {_TORCH_THREADS}")


@pytest.fixture(scope="session")
def tiny_mnist(tmp_path_factory) -> Path:
    return synthetic_mnist(tmp_path_factory.mktemp("mnist"))


@pytest.fixture(scope="session")
def mnist_run(tiny_mnist, tmp_path_factory) -> tuple[MnistExperiment, dict]:
    """One finished run of the small MNIST experiment, every default row: the modules that
    read a finished run share it (under `make test`, one per worker that runs any of them).
    Never change it: a test that damages, extends or reruns a run works on a copy
    (``tests.support.copy_run``)."""
    config = small_mnist_config(tiny_mnist, tmp_path_factory.mktemp("mnist-run"))
    return config, engine.run(mnist, config=config)


@pytest.fixture(scope="session")
def two_row_run(tiny_mnist, tmp_path_factory) -> tuple[MnistExperiment, dict]:
    """One finished run of a gradient and an exact row, shared like ``mnist_run``."""
    rows = (RowSpec("gradient", "target"), RowSpec("exact", "other"))
    config = small_mnist_config(tiny_mnist, tmp_path_factory.mktemp("two-row-run"), rows=rows)
    return config, engine.run(mnist, config=config)


@pytest.fixture
def tiny_config(tiny_mnist, tmp_path) -> MnistExperiment:
    return small_mnist_config(tiny_mnist, tmp_path)


@pytest.fixture
def mlp_model():
    """A seeded, untrained MNIST MLP."""
    from collide.models.zoo import mlp

    with torch.random.fork_rng():
        torch.manual_seed(0)
        return mlp().eval()


@pytest.fixture(params=["simplex", "interior-point", "interior-point-then-simplex"])
def ball_solver(request, monkeypatch) -> str:
    """The ball LPs by either of HiGHS's solvers, whatever the set's size, or by the
    interior point handing every round after its first to the simplex: the MNIST models'
    large sets take the interior point (ball.IPM_REGION_ROWS) and hand it their last
    rounds (ball.SIMPLEX_TAIL_ROWS), these small ones the simplex unless told."""
    monkeypatch.setattr(ball_lp, "IPM_REGION_ROWS", 10**9 if request.param == "simplex" else 0)
    monkeypatch.setattr(ball_lp, "SIMPLEX_TAIL_ROWS", 10**9 if request.param.endswith("then-simplex") else 0)
    return request.param
