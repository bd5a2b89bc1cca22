"""The baselines experiment's config (:mod:`collide.experiments.baselines`): the MNIST
experiment's target, model and gradient solver, and each baseline's settings. Imports no
torch."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from collide.checks import distinct, require
from collide.comparisons.baseline_configs import BallConfig, InversionConfig, NullSpaceConfig
from collide.config import SAMPLERS, GeometryConfig, RowSpec, Sampler
from collide.experiments.configs.mnist import MnistExperiment

METHODS = ("gradient-hull", "exact-region", "random-ball", "null-space", "null-space-deeper", "inversion")


@dataclass(frozen=True, kw_only=True)
class HullConfig:
    """How the gradient polytope is sampled: ``n`` points uniform on the simplex of its
    valid vertices (``dirichlet``; ``stick`` is the authors' stick-breaking).

    Attributes:
        n: points drawn from the gradient polytope's hull.
        sampler: stick or dirichlet weights of the vertices.
        seed: seeds the points' weights.
    """

    n: int = 2000
    sampler: Sampler = "dirichlet"
    seed: int = 0

    def __post_init__(self) -> None:
        require(self.n >= 1, f"expected hull.n >= 1, got {self.n}")
        require(self.sampler in SAMPLERS, f"expected hull.sampler in {SAMPLERS}, got {self.sampler!r}")


@dataclass(frozen=True, kw_only=True)
class BaselinesExperiment(MnistExperiment):
    """The MNIST experiment's target, model and gradient solver, with the baselines' rows.

    ``methods`` picks rows of :data:`METHODS` (in that order) for every target: target
    ``k`` owns rows ``k*len(methods)`` on, all solved in one job (the baselines take their
    distances from the gradient polytope). ``layer`` must be the model's first ReLU (the
    null-space construction's); ``deeper_layer`` is where row ``null-space-deeper``
    measures the same points. The inherited ``rows`` are not used.

    Attributes:
        layer: the model's first ReLU layer (where the null-space construction works).
        deeper_layer: where row null-space-deeper measures the null-space points.
        methods: the rows per target, in the order of METHODS (gradient-hull, exact-region, random-ball, ...).
        rows: inherited and not used (methods picks the rows).
        hull: how the gradient polytope's hull is sampled (row gradient-hull).
        geometry: how the exact collision set is measured and sampled (row exact-region).
        ball: the random-ball baseline's points (row random-ball).
        null_space: the null-space baseline's points (rows null-space, null-space-deeper).
        inversion: the code-inversion baseline's optimisation (row inversion).
    """

    NOT_USED: ClassVar[tuple[str, ...]] = ("rows", "exact", "paper")  # methods picks its rows: none exact

    name: str = "baselines"
    layer: str = "relu1"
    deeper_layer: str = "relu2"
    methods: tuple[str, ...] = METHODS
    rows: tuple[RowSpec, ...] = (RowSpec("gradient", "target"),)
    hull: HullConfig = field(default_factory=HullConfig)
    # Row exact-region is the set's samples, its statistics withheld where the chains did not
    # mix: at the default 150 draws a chain the first 7's set stopped at R-hat 1.09.
    geometry: GeometryConfig = field(default_factory=lambda: GeometryConfig(max_draws=1500, max_seconds=600))
    ball: BallConfig = field(default_factory=BallConfig)
    null_space: NullSpaceConfig = field(default_factory=NullSpaceConfig)
    inversion: InversionConfig = field(default_factory=InversionConfig)

    def __post_init__(self) -> None:
        super().__post_init__()
        unknown = [m for m in self.methods if m not in METHODS]
        require(not unknown, f"expected methods from {METHODS}, got {unknown}")
        distinct("methods", self.methods)
        require(list(self.methods) == [m for m in METHODS if m in self.methods],
                 f"expected methods in the order {METHODS}, got {self.methods!r}")
        require("gradient-hull" in self.methods or not {"random-ball", "null-space", "null-space-deeper"}
                 & set(self.methods),
                 "random-ball and null-space rows take their distances from the gradient polytope: keep "
                 "'gradient-hull' in methods")

    @property
    def n_rows(self) -> int:
        return self.n_targets * len(self.methods)


Config = BaselinesExperiment
