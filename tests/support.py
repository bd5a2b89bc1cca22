"""What several test modules build on: synthetic MNIST files, the MNIST experiment sized
for tests, and one snapshot of a folder's files. Tests import these by name; conftest.py
holds only fixtures and hooks."""

import copy
import dataclasses
import shutil
import struct
from collections import OrderedDict
from pathlib import Path

import numpy as np
import scipy.optimize
import torch
from torch import nn

from collide.config import GeometryConfig, GradientConfig, PaperConfig, SampleConfig, TrainConfig
from collide.experiments.mnist import MnistExperiment
from collide.objective import feature_rel_error
from collide.taps import preactivation
from tests.tolerances import IMPLICIT_SLACK

# The repository's root: tests read its README, docs, pyproject and reference tables.
PROJECT = Path(__file__).resolve().parent.parent

# Files whose tests build pynndescent indexes: under `make test` (--dist loadfile) they
# share one worker (tests/conftest.py's scheduler), so that numba compiles pynndescent's
# kernels once rather than once per worker: 35 to 56 s a compile on the loaded 2-core
# machine (2026-12-06).
SHARED_WORKER = dict.fromkeys(
    ("tests/patches/test_knn.py", "tests/patches/test_patch_candidates.py",
     "tests/experiments/test_vision_pipelines.py"), "pynndescent")


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


# Exact rows' collision sets, measured cheaply: the numbers are checked, not their precision.
LIGHT_GEOMETRY = GeometryConfig(n_samples=60, chains=6, burn_in=20, thin=2, n_directions=2, max_draws=30)


# The gradient solver's step budget in the tests' small runs: its learning rate decays over
# it, and every vertex of the tiny model meets the criterion within it (all 20 rows of the
# operations tests' fan-out: 5 of 5 valid at 400 steps as at 2,000). That fan-out took 24.9 s
# in one process against 38.7 s at 2,000 steps (one-off, 2026-12-06, a loaded 2-core machine).
TEST_GRADIENT = GradientConfig(max_steps=400)


def small_mnist_config(data_root: Path, root: Path, **changes) -> MnistExperiment:
    """The MNIST experiment sized for tests: 2 epochs, 300 samples, gradient vertices of at
    most 400 steps, CPU, no downloads."""
    settings = dict(
        data_root=str(data_root),
        checkpoint_dir=str(root / "checkpoints"),
        results_root=str(root / "results"),
        device="cpu",
        allow_download=False,
        train=TrainConfig(epochs=2, min_accuracy=0.0),
        sample=SampleConfig(n_samples=300, n_dataset_pairs=200),
        paper=PaperConfig(steps=300),
        gradient=TEST_GRADIENT,
        geometry=LIGHT_GEOMETRY,
    )
    return MnistExperiment(**{**settings, **changes})


def snapshot(root: str | Path) -> dict[str, tuple[int, bytes]]:
    """Every file under ``root`` (scratch in ``.tmp`` aside), by relative path: its mtime
    and its bytes. Two equal snapshots: not one byte and not one mtime changed."""
    root = Path(root)
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, p.read_bytes())
            for p in sorted(root.rglob("*")) if p.is_file() and ".tmp" not in p.parts}


def copy_run(config: MnistExperiment, dest: Path) -> MnistExperiment:
    """A finished run's results in a folder of their own, to damage or rerun freely; the
    checkpoint stays shared (a rerun reuses it and never writes it)."""
    shutil.copytree(config.results_root, dest)
    return dataclasses.replace(config, results_root=str(dest))


class _Planted:
    """Unpickled, touches ``marker``: what a checkpoint must never be able to do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import pathlib

        return pathlib.Path.touch, (pathlib.Path(self.marker),)


def planted_pickle(marker) -> bytes:
    """Bytes that, unpickled without torch's safe loader, create ``marker``."""
    import io

    buffer = io.BytesIO()
    torch.save({"arch": "mlp", "state_dict": _Planted(marker)}, buffer)
    return buffer.getvalue()


def feature_errors_f64(model: nn.Module, layer: str, target: torch.Tensor, vertices: torch.Tensor) -> torch.Tensor:
    """The oracle: each stored (float32) vertex's relative feature error, in float64."""
    net = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        pre = preactivation(net, vertices.double(), layer)
        t_pre = preactivation(net, target.double().unsqueeze(0), layer)
    return feature_rel_error(pre, t_pre)


def shrunk_mlp(model: nn.Module, factor: float) -> nn.Module:
    """A copy of the MNIST MLP with relu1's and relu2's pre-activations multiplied by
    ``factor``: the same pieces and the same collision sets, every row of their LPs
    ``factor`` times as large (exactly, for a power of two in float32's range)."""
    small = copy.deepcopy(model)
    with torch.no_grad():
        for p in (small.fc1.weight, small.fc1.bias, small.fc2.bias):
            p.mul_(factor)
    return small


def tiny_conv_net() -> nn.Module:
    """A seeded 1x8x8 net in eval mode, ``conv, relu1, pool (max 2), flatten, fc, relu2``:
    at ``relu2`` its exact LPs hold region rows (relu1's signs and the pooling winners)
    and still solve in milliseconds. The caller's generator is left as it was."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return nn.Sequential(OrderedDict(
            conv=nn.Conv2d(1, 2, 3), relu1=nn.ReLU(), pool=nn.MaxPool2d(2), flatten=nn.Flatten(),
            fc=nn.Linear(2 * 3 * 3, 8), relu2=nn.ReLU())).eval()


def relu_net(*weights: tuple[list[list[float]], list[float]]) -> nn.Sequential:
    """Linear layers of the given (weight, bias) each followed by a ReLU: ``fc1``,
    ``relu1``, ``fc2``, ..."""
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    for k, (w, b) in enumerate(weights, start=1):
        fc = nn.Linear(len(w[0]), len(w))
        with torch.no_grad():
            fc.weight.copy_(torch.tensor(w))
            fc.bias.copy_(torch.tensor(b))
        layers[f"fc{k}"], layers[f"relu{k}"] = fc, nn.ReLU()
    return nn.Sequential(layers)


# A set flattened by rows tight at its target, some holding all over it and some not:
# x1 = 0.6 (an equality); x3 + x4 ≤ 0 with the box's x3, x4 ≥ 0 pins x3 = x4 = 0; x5 and x6
# sit on their lower faces at the target, but x6 ≤ x5 lets both rise; x2, x7, x8 are inside.
# The equality subspace's dimension is 7, the hull's 5.
FLAT_NET = (([[1.0, 0, 0, 0, 0, 0, 0, 0], [0, 0, 1.0, 1.0, 0, 0, 0, 0], [0, 0, 0, 0, -1.0, 1.0, 0, 0]],
             [-0.3, 0.0, 0.0]),)
FLAT_TARGET = torch.tensor([0.6, 0.3, 0.0, 0.0, 0.0, 0.0, 0.5, 0.2])


def holds_all_over(cs, rows: np.ndarray) -> np.ndarray:
    """Oracle: each row's largest slack over C by scipy's LP (one LP a row), at most rounding."""
    a_all, b_all = cs.all_rows()
    out = []
    for i in rows:
        res = scipy.optimize.linprog(a_all[i], A_ub=a_all, b_ub=b_all, A_eq=cs.equalities,
                                     b_eq=cs.equalities @ cs.origin, bounds=(None, None), method="highs")
        assert res.status == 0, res.message
        out.append(b_all[i] - res.fun <= IMPLICIT_SLACK)
    return np.array(out, dtype=bool)
