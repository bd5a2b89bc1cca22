"""The thin-data experiment's config (:mod:`collide.experiments.thin`, paper §5.1).
Imports no torch."""

from __future__ import annotations

from dataclasses import dataclass

from collide.checks import require
from collide.experiments.configs.scanning import ScannedExperiment


@dataclass(frozen=True, kw_only=True)
class ThinExperiment(ScannedExperiment):
    """Does collision size predict misclassification or low confidence on the test set?

    For each training seed (the MNIST MLP of ``train`` with that seed: the shipped
    checkpoints for seeds 0-4), ``wrong_scanned`` misclassified and ``right_scanned``
    correctly classified test images, drawn with ``subset_seed + seed``, are scanned.
    Drawing both classes apart keeps a few dozen scans informative where 2% of the test
    set is misclassified; an AUROC does not depend on the classes' proportions. Low
    confidence is the top-class probability below ``low_confidence``.

    The default (10 + 10 images, 3 seeds) runs in minutes on 2 cores; the whole test set
    is ``--set wrong_scanned=10000 --set right_scanned=10000`` (every image of both kinds,
    about 20 CPU-hours a seed at 7 s an exact set).

    Attributes:
        wrong_scanned: misclassified test images scanned per seed (all there are, if fewer).
        right_scanned: correctly classified test images scanned per seed.
        low_confidence: a top-class probability below this is low confidence.
    """

    name: str = "thin"
    wrong_scanned: int = 10
    right_scanned: int = 10
    low_confidence: float = 0.9

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.wrong_scanned >= 1, f"expected wrong_scanned >= 1, got {self.wrong_scanned}")
        require(self.right_scanned >= 1, f"expected right_scanned >= 1, got {self.right_scanned}")
        require(0 < self.low_confidence <= 1, f"expected 0 < low_confidence <= 1, got {self.low_confidence}")


Config = ThinExperiment
