import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
# Prefect's environment defaults (a generous temporary-server start-up among them) for
# this process and every `collide` subprocess a test starts.
import flows  # noqa: E402, F401
from collide.experiments.mnist import MnistExperiment  # noqa: E402
from tests.support import small_mnist_config, synthetic_mnist  # noqa: E402


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_mnist(tmp_path_factory) -> Path:
    return synthetic_mnist(tmp_path_factory.mktemp("mnist"))


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
