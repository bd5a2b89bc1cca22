"""The vulnerability scan's config (:mod:`collide.experiments.scan`): the MNIST
experiment's with many targets per class. Imports no torch."""

from __future__ import annotations

from dataclasses import dataclass, field

from collide.checks import require
from collide.config import GeometryConfig, RowSpec
from collide.experiments.configs.mnist import MnistExperiment

SCAN_ROWS = (RowSpec("gradient", "target"), RowSpec("exact", "target"))


@dataclass(frozen=True, kw_only=True)
class ScanExperiment(MnistExperiment):
    """The MNIST experiment's config with the scan's defaults: ``targets_per_class``
    targets of each class (at least 1), each with the rows ``SCAN_ROWS``, the gradient
    rows ``targets_per_batch`` targets to a solver batch. Each exact row measures its
    collision set with a lighter ``geometry`` than the MNIST experiment's (200 samples,
    4 width directions): a scan measures one set per target.

    50 per batch: a scan runs several times as many polytopes per second as with one
    target per job, within a tenth of the best batch size (benchmarks/results.md,
    "targets per batch"), while a killed scan redoes at most 50 targets' gradient rows.

    Attributes:
        rows: the rows per target (gradient and exact, from the target).
        targets_per_class: the first n correctly classified test images of every digit are targets (at least 1).
        targets_per_batch: targets whose gradient rows one solver batch solves together.
        geometry: how each exact row's collision set is measured (lighter than the MNIST experiment's).
    """

    name: str = "scan"
    rows: tuple[RowSpec, ...] = SCAN_ROWS
    targets_per_class: int = 3
    targets_per_batch: int = 50
    geometry: GeometryConfig = field(default_factory=lambda: GeometryConfig(n_samples=200, chains=20,
                                                                            n_directions=4))

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.targets_per_class >= 1, f"a scan needs targets_per_class >= 1, got {self.targets_per_class}")


Config = ScanExperiment
