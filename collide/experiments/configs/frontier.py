"""The frontier experiment's config (:mod:`collide.experiments.frontier`): the MNIST
experiment's data, checkpoint and targets, and the feature-error budgets. Imports no
torch."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from collide.checks import require
from collide.comparisons.frontier_config import FrontierConfig
from collide.config import RowSpec
from collide.experiments.configs.mnist import MnistExperiment

# The row spec the MNIST config requires; the frontier's only start is "other".
FRONTIER_ROWS = (RowSpec("exact", "other"),)


@dataclass(frozen=True, kw_only=True)
class FrontierExperiment(MnistExperiment):
    """The MNIST experiment's data, checkpoint and targets, with one points row per
    (target, ε): target ``k`` owns rows ``k*len(frontier.epsilons)`` on, in ε's order.

    ``rows`` and ``n_vertices`` only serve the MNIST stages this experiment reuses
    (target picking needs at least ``n_vertices`` non-positive units).

    Attributes:
        layer: the activation layer where features must stay within ε.
        rows: serves only the MNIST stages this experiment reuses.
        n_vertices: the fewest non-positive units a target must have (target picking only).
        frontier: the feature-error budgets ε and the solver of each frontier point.
    """

    # Its points come from frontier.solver: no polytope solver, no collision set.
    NOT_USED: ClassVar[tuple[str, ...]] = ("gradient", "exact", "paper", "geometry")

    name: str = "frontier"
    layer: str = "relu1"
    rows: tuple[RowSpec, ...] = FRONTIER_ROWS
    n_vertices: int = 1
    frontier: FrontierConfig = field(default_factory=FrontierConfig)

    def __post_init__(self) -> None:
        super().__post_init__()
        require(isinstance(self.frontier, FrontierConfig),
                 f"expected frontier to be a FrontierConfig, got {self.frontier!r}")

    @property
    def n_rows(self) -> int:
        return self.n_targets * len(self.frontier.epsilons)


Config = FrontierExperiment
