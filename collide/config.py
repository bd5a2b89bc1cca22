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
from typing import Any

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


@dataclass(frozen=True)
class MnistExperiment:
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

    def __post_init__(self) -> None:
        _require(bool(self.name) and "/" not in self.name, f"expected a plain experiment name, got {self.name!r}")
        _require(self.n_vertices >= 1, f"expected n_vertices >= 1, got {self.n_vertices}")
        _require(0 <= self.target_label <= 9, f"expected target_label in 0..9, got {self.target_label}")
        _require(len(self.rows) >= 1, "expected at least one row, got none")
        _require(
            all(isinstance(r, RowSpec) for r in self.rows),
            f"expected rows to be RowSpec values, got {self.rows!r}",
        )
        _require(
            self.device == "auto" or self.device.split(":")[0] in ("cpu", "cuda"),
            f"expected device 'auto', 'cpu' or 'cuda[:n]', got {self.device!r}",
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

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

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
    def from_dict(cls, raw: dict[str, Any]) -> MnistExperiment:
        raw = dict(raw)
        nested = {"train": TrainConfig, "gradient": GradientConfig, "exact": ExactConfig, "sample": SampleConfig}
        for key, kind in nested.items():
            if isinstance(raw.get(key), dict):
                raw[key] = kind(**raw[key])
        if "rows" in raw:
            raw["rows"] = tuple(r if isinstance(r, RowSpec) else RowSpec(**r) for r in raw["rows"])
        try:
            return cls(**raw)
        except TypeError as exc:
            raise ConfigError(f"bad experiment configuration: {exc}") from exc

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
