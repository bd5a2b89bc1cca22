"""The regularisers experiment's config (:mod:`collide.experiments.regularisers`, paper
§5.2). Imports no torch."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from collide.checks import distinct, require
from collide.config import GeometryConfig, RowSpec, TrainConfig
from collide.experiments.configs.mnist import ARCH_ALIASES, MnistExperiment

PENALTY_KINDS = ("none", "weight-decay", "cosine")
REGULARISER_ROWS = (RowSpec("exact", "target"),)


@dataclass(frozen=True)
class Penalty:
    """One training penalty (:func:`collide.models.regularised.train_regularised`).

    Attributes:
        kind: none, weight-decay (Adam's L2 term on every parameter) or cosine (positive cosine similarity
            between rows of the weights in front of the collision layer).
        strength: the penalty's weight (0 for none).
    """

    kind: str
    strength: float = 0.0

    def __post_init__(self) -> None:
        require(self.kind in PENALTY_KINDS, f"expected a penalty kind in {PENALTY_KINDS}, got {self.kind!r}")
        require(self.strength >= 0, f"expected a penalty strength >= 0, got {self.strength}")
        require(self.kind != "none" or self.strength == 0, f"penalty none takes strength 0, got {self.strength}")

    @property
    def label(self) -> str:
        return "none" if self.kind == "none" else f"{self.kind} {self.strength:g}"


DEFAULT_PENALTIES = (Penalty("none"), Penalty("weight-decay", 1e-4), Penalty("cosine", 1.0), Penalty("cosine", 10.0),
                     Penalty("cosine", 100.0))


@dataclass(frozen=True, kw_only=True)
class RegularisersExperiment(MnistExperiment):
    """The MLP trained with each of ``penalties`` (and each of ``seeds``): its test accuracy
    and the collision sets of the same targets at ``layer``.

    The cosine penalty weighs ``mean_{i≠j} relu(cos(w_i, w_j))²`` over the rows of the
    weights in front of ``layer`` (``fc1`` for ``relu1``); ``weight-decay`` is the plain
    baseline. The targets are the first ``targets`` test images that every model
    classifies correctly; each (seed, penalty, target) is one exact row with its
    collision set measured (dimension, inscribed radius, mean width over width
    directions). Seed ``i``, penalty ``j`` and target ``k`` own row
    ``(i * len(penalties) + j) * targets + k``.

    The default (5 penalties, 2 seeds, 2 targets: 10 trainings of 4 epochs on the first
    20,000 training images, 20 sets with 4 width directions each) runs in about 20 minutes
    on a loaded 2-core machine; the intervals over two seeds are wide. The full experiment
    trains as the MNIST experiment does (``--set train.epochs=8 --set
    train.train_limit=null``) from five seeds on ten targets (``--set seeds=[0,1,2,3,4]
    --set targets=10 --set geometry.n_directions=8 --set geometry.max_directions=32``).

    Attributes:
        penalties: the training penalties compared, each a kind and a strength.
        seeds: training seeds: every penalty is trained once per seed.
        targets: the first n test images every model classifies correctly are the targets.
        train: how every model is trained (seed replaced by each of seeds).
        geometry: how each target's collision set is measured (widths; samples are not summarised).
    """

    # One model per (seed, penalty), targets by count, every row exact.
    NOT_USED: ClassVar[tuple[str, ...]] = ("target_label", "train.seed", "rows", "paper", "gradient")

    name: str = "regularisers"
    rows: tuple[RowSpec, ...] = REGULARISER_ROWS
    penalties: tuple[Penalty, ...] = DEFAULT_PENALTIES
    seeds: tuple[int, ...] = (0, 1)
    targets: int = 2
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=4, train_limit=20000, min_accuracy=0.5))
    geometry: GeometryConfig = field(default_factory=lambda: GeometryConfig(
        n_samples=1, chains=2, n_directions=4, max_directions=4, max_seconds=0))

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.rows == REGULARISER_ROWS, f"expected rows {REGULARISER_ROWS}, got {self.rows!r}")
        distinct("penalties", self.penalties)
        require(all(isinstance(p, Penalty) for p in self.penalties),
                 f"expected penalties as Penalty values, got {self.penalties!r}")
        distinct("seeds", self.seeds)
        require(all(s >= 0 for s in self.seeds), f"expected seeds >= 0, got {self.seeds!r}")
        require(self.targets >= 1, f"expected targets >= 1, got {self.targets}")
        require(self.targets_per_class == 0, "the regularisers pick their targets with targets, not targets_per_class")
        require(self.train.arch == "mlp", f"the penalty is wired for the MLP, got train.arch={self.train.arch!r}")
        require(self.checkpoint != "shipped", "no shipped checkpoint was trained with a penalty: expected "
                 "checkpoint auto or train")

    @property
    def penalty_module(self) -> str:
        """The Linear in front of ``layer``, whose rows the cosine penalty spreads."""
        aliases = ARCH_ALIASES[self.train.arch]
        for module, relu in aliases.items():
            if self.layer in (module, relu):
                return module
        return self.layer

    @property
    def n_targets(self) -> int:
        return self.targets

    @property
    def n_rows(self) -> int:
        return len(self.seeds) * len(self.penalties) * self.targets


Config = RegularisersExperiment
