"""Frozen, validated configuration for every stage.

Each dataclass checks itself in ``__post_init__`` and says what was wrong, so a bad
value fails before any work starts or any file is written.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Self

from collide.errors import ConfigError

ARCHITECTURES = ("mlp", "lenet5")
LOSSES = ("paper", "penalty")
METHODS = ("gradient", "exact")
INITS = ("target", "other")
SAMPLERS = ("stick", "dirichlet")


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _positive(name: str, value: float) -> None:
    _require(
        isinstance(value, int | float) and math.isfinite(value) and value > 0,
        f"expected {name} > 0, got {value!r}",
    )


def _non_negative(name: str, value: float) -> None:
    _require(
        isinstance(value, int | float) and math.isfinite(value) and value >= 0,
        f"expected {name} >= 0, got {value!r}",
    )


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    _require(value in allowed, f"expected {name} in {allowed}, got {value!r}")


@dataclass(frozen=True)
class TrainConfig:
    """How a classifier is trained (or found already trained) on MNIST.

    ``min_accuracy`` is the paper's reported test accuracy for the MLP (§3.1); a model
    that misses it is an error, not a silent weaker reproduction.
    """

    arch: str = "mlp"
    epochs: int = 8
    batch_size: int = 128
    lr: float = 1e-3
    seed: int = 0
    min_accuracy: float = 0.9664
    train_limit: int | None = None

    def __post_init__(self) -> None:
        _choice("arch", self.arch, ARCHITECTURES)
        _require(self.epochs >= 1, f"expected epochs >= 1, got {self.epochs}")
        _require(self.batch_size >= 1, f"expected batch_size >= 1, got {self.batch_size}")
        _positive("lr", self.lr)
        _require(0 <= self.min_accuracy <= 1, f"expected 0 <= min_accuracy <= 1, got {self.min_accuracy}")
        _require(
            self.train_limit is None or self.train_limit >= 1,
            f"expected train_limit >= 1 or None, got {self.train_limit}",
        )


@dataclass(frozen=True)
class GradientConfig:
    """The gradient vertex solver (paper §2, with an optional penalty continuation).

    Adam on the input, projected onto ``[lower, upper]`` after every step, with the
    learning rate decaying geometrically from ``lr`` to ``lr_end`` over ``max_steps``.

    ``loss="paper"`` minimises ``alpha*L+ + beta*L-^i`` alone. ``loss="penalty"`` adds
    ``gamma/2 * ||relu(y~ on the target's non-positive units)||^2`` and raises ``alpha``
    and ``gamma`` by the factor ``growth`` every step (continuation), which turns the
    approximate collision into a tight one.

    A vertex is *done* once the collision criterion holds: the largest relative
    post-activation error at the layer is at most ``rel_tol`` and every unit the target
    has non-positive is at most ``neg_tol``. The criterion is checked only from
    ``min_steps`` on, so a vertex started at the target first moves away from it.
    """

    loss: str = "penalty"
    alpha: float = 1.0
    beta: float = 1.0
    gamma: float = 1.0
    growth: float = 1.01
    lr: float = 0.01
    lr_end: float = 1e-4
    min_steps: int = 50
    max_steps: int = 1000
    rel_tol: float = 1e-2
    neg_tol: float = 1e-2
    lower: float = 0.0
    upper: float = 1.0

    def __post_init__(self) -> None:
        _choice("loss", self.loss, LOSSES)
        for name in ("alpha", "beta", "lr", "lr_end", "rel_tol"):
            _positive(name, getattr(self, name))
        _non_negative("gamma", self.gamma)
        _non_negative("neg_tol", self.neg_tol)
        _require(
            math.isfinite(self.growth) and self.growth >= 1.0,
            f"expected growth >= 1, got {self.growth}",
        )
        _require(self.min_steps >= 0, f"expected min_steps >= 0, got {self.min_steps}")
        _require(
            self.max_steps >= max(1, self.min_steps),
            f"expected max_steps >= max(1, min_steps={self.min_steps}), got {self.max_steps}",
        )
        _require(self.lower < self.upper, f"expected lower < upper, got {self.lower} >= {self.upper}")


@dataclass(frozen=True)
class ExactConfig:
    """The exact (linear programming) vertex solver, beyond the paper.

    ``proximity`` weighs the L1 distance to the init, as a multiple of the mean absolute
    coefficient of the pushed unit; 0 ignores the init.
    """

    proximity: float = 0.5
    feasibility_tol: float = 1e-9
    region_tol: float = 1e-5
    lower: float = 0.0
    upper: float = 1.0

    def __post_init__(self) -> None:
        _non_negative("proximity", self.proximity)
        _positive("feasibility_tol", self.feasibility_tol)
        _positive("region_tol", self.region_tol)
        _require(self.lower < self.upper, f"expected lower < upper, got {self.lower} >= {self.upper}")


@dataclass(frozen=True)
class SampleConfig:
    """How points are drawn from a polytope: convex combinations of its vertices."""

    n_samples: int = 2000
    sampler: str = "stick"
    seed: int = 0
    n_dataset_pairs: int = 2000

    def __post_init__(self) -> None:
        _require(self.n_samples >= 1, f"expected n_samples >= 1, got {self.n_samples}")
        _choice("sampler", self.sampler, SAMPLERS)
        _require(self.n_dataset_pairs >= 1, f"expected n_dataset_pairs >= 1, got {self.n_dataset_pairs}")


@dataclass(frozen=True)
class RowSpec:
    """One polytope of a table: how its vertices are found and where they start."""

    method: str
    init: str

    def __post_init__(self) -> None:
        _choice("method", self.method, METHODS)
        _choice("init", self.init, INITS)


DEFAULT_ROWS = (
    RowSpec("gradient", "target"),
    RowSpec("gradient", "other"),
    RowSpec("exact", "target"),
    RowSpec("exact", "other"),
)


class _Experiment:
    """What every experiment config shares: checks, JSON round trip, a stable digest."""

    _nested: ClassVar[dict[str, type]] = {}

    def _check_common(self) -> None:
        name, device = self.name, self.device  # type: ignore[attr-defined]
        _require(bool(name) and "/" not in name, f"expected a plain experiment name, got {name!r}")
        _require(self.n_vertices >= 1, f"expected n_vertices >= 1, got {self.n_vertices}")  # type: ignore[attr-defined]
        label = self.target_label  # type: ignore[attr-defined]
        _require(0 <= label <= 9, f"expected target_label in 0..9, got {label}")
        _require(len(self.rows) >= 1, "expected at least one row, got none")  # type: ignore[attr-defined]
        _require(
            device == "auto" or device.split(":")[0] in ("cpu", "cuda"),
            f"expected device 'auto', 'cpu' or 'cuda[:n]', got {device!r}",
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def digest(self) -> str:
        """A short hash of everything that shapes the results, stable across processes.

        Where the results are written is left out: the same experiment written to two
        places is the same experiment.
        """
        science = {k: v for k, v in self.to_dict().items() if k != "results_root"}
        return hashlib.sha256(json.dumps(science, sort_keys=True).encode()).hexdigest()[:16]

    @classmethod
    def _rows(cls, rows: Any) -> tuple[Any, ...]:
        return tuple(rows)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Self:
        """Build from plain JSON-like values; nested configs may be dicts."""
        raw = dict(raw)
        for key, kind in cls._nested.items():
            if isinstance(raw.get(key), dict):
                try:
                    raw[key] = kind(**raw[key])
                except TypeError as exc:
                    raise ConfigError(f"bad {key} configuration: {exc}") from exc
        if "rows" in raw:
            raw["rows"] = cls._rows(raw["rows"])
        try:
            return cls(**raw)
        except TypeError as exc:
            raise ConfigError(f"bad experiment configuration: {exc}") from exc


@dataclass(frozen=True)
class MnistExperiment(_Experiment):
    """The MNIST experiment of paper §3.1 (Tables 1-2), with the exact rows added.

    ``target_label`` picks the first test image of that label that the model classifies
    correctly; ``init="other"`` rows start from the first test image of another label.

    ``targets_per_class`` > 0 replaces that single target by the first that many correctly
    classified test images of every class; target ``k`` owns rows ``k*len(rows)`` to
    ``(k+1)*len(rows) - 1``, each polytope job writes its own. ``threads`` is torch's CPU
    thread count inside a job: results are the same bit for bit wherever a job runs (a
    Dask worker, a thread, plain Python) only for the same count.
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
    sample: SampleConfig = field(default_factory=SampleConfig)
    targets_per_class: int = 0
    threads: int = 1

    _nested: ClassVar[dict[str, type]] = {
        "train": TrainConfig, "gradient": GradientConfig, "exact": ExactConfig, "sample": SampleConfig,
    }

    def __post_init__(self) -> None:
        self._check_common()
        _require(
            all(isinstance(r, RowSpec) for r in self.rows),
            f"expected rows to be RowSpec values, got {self.rows!r}",
        )
        _require(self.targets_per_class >= 0, f"expected targets_per_class >= 0, got {self.targets_per_class}")
        _require(self.threads >= 1, f"expected threads >= 1, got {self.threads}")

    @property
    def n_targets(self) -> int:
        """One target (``target_label``'s), or ``targets_per_class`` of each of the 10 classes."""
        return 1 if self.targets_per_class == 0 else 10 * self.targets_per_class

    @property
    def n_rows(self) -> int:
        return self.n_targets * len(self.rows)

    def row_spec(self, row: int) -> RowSpec:
        """How row ``row`` is found: every target repeats ``rows`` in order."""
        _require(0 <= row < self.n_rows, f"expected row in 0..{self.n_rows - 1}, got {row}")
        return self.rows[row % len(self.rows)]

    @classmethod
    def _rows(cls, rows: Any) -> tuple[Any, ...]:
        return tuple(r if isinstance(r, RowSpec) else RowSpec(**r) for r in rows)

    def with_paths(self, root: str | Path) -> MnistExperiment:
        """The same experiment with data, checkpoints and results under ``root``."""
        root = Path(root)
        return dataclasses.replace(
            self,
            data_root=str(root / "raw" / "mnist"),
            checkpoint_dir=str(root / "checkpoints"),
            results_root=str(root / "results"),
        )


def resolve_device(device: str) -> str:
    """``auto`` becomes ``cuda`` when a GPU is visible, else ``cpu``."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass(frozen=True)
class PatchConfig:
    """Sliding-window patches of a corpus (paper §4.1: 32x32 at a constant stride).

    ``share`` of each class's images is sampled (seeded) into the corpus; the store is
    written ``images_per_chunk`` images at a time, one Zarr chunk per Dask task.
    """

    size: int = 8
    stride: int = 4
    share: float = 0.1
    images_per_chunk: int = 200
    seed: int = 0

    def __post_init__(self) -> None:
        _require(self.size >= 1, f"expected patch size >= 1, got {self.size}")
        _require(self.stride >= 1, f"expected patch stride >= 1, got {self.stride}")
        _require(0 < self.share <= 1, f"expected 0 < share <= 1, got {self.share}")
        _require(self.images_per_chunk >= 1, f"expected images_per_chunk >= 1, got {self.images_per_chunk}")


@dataclass(frozen=True)
class KnnConfig:
    """Approximate kNN over the patch store (pynndescent), checked against exact search.

    ``n_components`` > 0 indexes a PCA projection; answers are re-ranked with exact
    distances in the full space. ``shards`` > 1 builds one index per slice of the store
    and merges their answers.
    """

    k: int = 10
    n_neighbors: int = 30
    n_components: int = 0
    shards: int = 1
    rerank: int = 3
    epsilon: float = 0.3
    seed: int = 0

    def __post_init__(self) -> None:
        _require(self.k >= 1, f"expected k >= 1, got {self.k}")
        _non_negative("epsilon", self.epsilon)
        _require(self.n_neighbors >= 2, f"expected n_neighbors >= 2, got {self.n_neighbors}")
        _require(self.n_components >= 0, f"expected n_components >= 0, got {self.n_components}")
        _require(self.shards >= 1, f"expected shards >= 1, got {self.shards}")
        _require(self.rerank >= 1, f"expected rerank >= 1, got {self.rerank}")


PATCH_ROWS = ("self", "other")

# Logits move in softmax units, so the solver takes larger steps than in pixel space.
PATCH_GRADIENT = GradientConfig(lr=0.1, lr_end=1e-3, max_steps=1500, growth=1.01, min_steps=50)


@dataclass(frozen=True)
class PatchExperiment(_Experiment):
    """Patch-composition collisions (paper §4, Tables 5-6), embedded on MNIST + LeNet-5.

    The start image is the first correctly classified test image of ``target_label``.
    Row ``self`` makes compositions of its neighbours' patches collide with the start
    image itself; row ``other`` with the first test image of another label (the paper's
    church -> cleaver). Collisions are sought at ``layer`` (LeNet-5's first fully
    connected layer: the analogue of VGG's fc6).

    Each window's candidates are the start image's own patch and the ``knn.k`` nearest
    store patches of it (``candidates_from="start"``, the paper's choice). By default
    (``"start+target"``) the ``other`` row also gets the target's window patch and its
    neighbours: on MNIST a 7's blank corners have only blank neighbours, from which no
    2 can be composed (measured: success 0.0 with ``"start"``).

    ``dataset="folder"`` runs the paper's setting instead: images of ``image_root`` (an
    ImageNet-style folder) at ``image_size``, VGG-16 with ``weights`` (see
    :class:`ImagenetExperiment`), ``layer="fc6"``; the start is the first image of the
    first class and the other target the first image of another class.
    """

    name: str = "patches"
    layer: str = "fc1"
    n_vertices: int = 5
    target_label: int = 7
    rows: tuple[str, ...] = PATCH_ROWS
    tv_weight: float = 0.01
    own_logit: float = 5.0
    candidates_from: str = "start+target"
    dataset: str = "mnist"
    image_root: str = "data/raw/imagenet"
    image_size: int = 224
    weights: str = "torchvision"
    n_dataset_images: int = 200
    data_root: str = "data/raw/mnist"
    checkpoint_dir: str = "data/checkpoints"
    cache_root: str = "data/cache"
    results_root: str = "data/results"
    device: str = "auto"
    allow_download: bool = True
    train: TrainConfig = field(default_factory=lambda: TrainConfig(arch="lenet5", epochs=4, min_accuracy=0.98))
    patch: PatchConfig = field(default_factory=PatchConfig)
    knn: KnnConfig = field(default_factory=KnnConfig)
    gradient: GradientConfig = PATCH_GRADIENT
    sample: SampleConfig = field(default_factory=SampleConfig)

    _nested: ClassVar[dict[str, type]] = {
        "train": TrainConfig, "gradient": GradientConfig, "patch": PatchConfig, "knn": KnnConfig,
        "sample": SampleConfig,
    }

    def __post_init__(self) -> None:
        self._check_common()
        _require(all(r in PATCH_ROWS for r in self.rows), f"expected rows from {PATCH_ROWS}, got {self.rows!r}")
        _non_negative("tv_weight", self.tv_weight)
        _choice("candidates_from", self.candidates_from, ("start", "start+target"))
        _choice("dataset", self.dataset, ("mnist", "folder"))
        _require(self.image_size >= 32, f"expected image_size >= 32, got {self.image_size}")


@dataclass(frozen=True)
class ImagenetExperiment(_Experiment):
    """VGG-16 collisions at the fc6 pre-activation in pixel space (paper §3.2, Tables 3-4).

    ``image_root`` is an ImageNet-style folder (one subfolder per class). The target is
    ``target`` (a path inside it) or the first image of the first class; ``init="other"``
    rows start from the first image of another class. ``weights`` is ``torchvision``
    (IMAGENET1K_V1, downloaded or cached), a local file, or ``random`` (explicit only).
    Distances are reported in 0-255 pixel units, as in the paper.
    """

    name: str = "imagenet"
    layer: str = "fc6"
    n_vertices: int = 5
    target_label: int = 0
    rows: tuple[str, ...] = ("other",)
    image_root: str = "data/raw/imagenet"
    target: str = ""
    image_size: int = 224
    weights: str = "torchvision"
    seed: int = 0
    n_dataset_images: int = 200
    results_root: str = "data/results"
    device: str = "auto"
    gradient: GradientConfig = field(default_factory=GradientConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)

    _nested: ClassVar[dict[str, type]] = {"gradient": GradientConfig, "sample": SampleConfig}

    def __post_init__(self) -> None:
        self._check_common()
        _require(all(r in INITS for r in self.rows), f"expected rows from {INITS}, got {self.rows!r}")
        _require(self.image_size >= 32, f"expected image_size >= 32 (VGG-16 pools 5 times), got {self.image_size}")
        _require(bool(self.weights), "expected weights: 'torchvision', a file path, or 'random'")
        _require(self.n_dataset_images >= 2, f"expected n_dataset_images >= 2, got {self.n_dataset_images}")
