import os
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
# Prefect's environment defaults (a generous temporary-server start-up among them) for
# this process and every `collide` subprocess a test starts.
import flows  # noqa: E402, F401
from collide.config import GeometryConfig, PaperConfig, SampleConfig, TrainConfig  # noqa: E402
from collide.experiments.mnist import MnistExperiment


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write ``array`` (uint8) as an IDX file: the format MNIST ships in."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", n) for n in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def synthetic_mnist(root: Path, *, n_train: int = 1000, n_test: int = 300, seed: int = 0) -> Path:
    """MNIST-shaped IDX files: one smooth random template per digit plus noise.

    Learnable in one epoch, so tests run the real pipeline without the real data.
    """
    rng = np.random.default_rng(seed)
    templates = rng.random((10, 7, 7)).repeat(4, 1).repeat(4, 2) > 0.6
    root.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, 10, n)
        labels[:2] = (7, 2)  # like MNIST's test set: a 7 first, another digit next
        images = templates[labels] * 200 + rng.integers(0, 55, (n, 28, 28))
        write_idx(root / f"{split}-images-idx3-ubyte", images)
        write_idx(root / f"{split}-labels-idx1-ubyte", labels)
    return root


@pytest.fixture(scope="session")
def tiny_mnist(tmp_path_factory) -> Path:
    return synthetic_mnist(tmp_path_factory.mktemp("mnist"))


# Exact rows' collision sets, measured cheaply: the numbers are checked, not their precision.
LIGHT_GEOMETRY = GeometryConfig(n_samples=60, chains=6, burn_in=20, thin=2, n_directions=2, max_draws=30)


def small_mnist_config(data_root: Path, root: Path, **changes) -> MnistExperiment:
    """The MNIST experiment sized for tests: 2 epochs, 300 samples, CPU, no downloads."""
    settings = dict(
        data_root=str(data_root),
        checkpoint_dir=str(root / "checkpoints"),
        results_root=str(root / "results"),
        device="cpu",
        allow_download=False,
        train=TrainConfig(epochs=2, min_accuracy=0.0),
        sample=SampleConfig(n_samples=300, n_dataset_pairs=200),
        paper=PaperConfig(steps=300),
        geometry=LIGHT_GEOMETRY,
    )
    return MnistExperiment(**{**settings, **changes})


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
