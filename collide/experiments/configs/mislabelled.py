"""The mislabelled-examples experiment's config (:mod:`collide.experiments.mislabelled`,
paper §5.3). Imports no torch."""

from __future__ import annotations

from dataclasses import dataclass, field

from collide.checks import require
from collide.config import TrainConfig
from collide.experiments.configs.scanning import ScannedExperiment


@dataclass(frozen=True, kw_only=True)
class MislabelledExperiment(ScannedExperiment):
    """Flip the labels of ``flip_fraction`` of the training images, train, scan the training set.

    For each training seed ``s``: ``round(flip_fraction * n)`` of the ``n`` training images
    ``train`` uses (``train.train_limit``, else all 60,000) get another label, drawn with
    seed ``flip_seed + s``; the MLP is trained on them (a checkpoint keyed by the flips);
    then every flipped image and ``clean_scanned`` other training images (drawn with
    ``subset_seed + s``) are scanned. Do the largest collision sets single out the flipped
    ones, against the training loss and the confidence?

    The default is small enough for a 2-core machine in minutes: the first 1,000 training
    images (10 flipped) and 10 clean ones scanned, 3 seeds (60 exact sets). The full experiment is
    ``--set train.train_limit=null --set clean_scanned=600`` (600 flipped of 60,000 and
    as many clean ones: 1,200 exact sets a seed, about 2.5 CPU-hours a seed at 7 s each).

    Attributes:
        flip_fraction: the share of the training images whose label is flipped.
        flip_seed: seeds which images are flipped and their new labels (with the training seed added).
        clean_scanned: training images with their own label scanned beside every flipped one.
        train: how each seed's model is trained (on the flipped labels; seed replaced by each of seeds).
    """

    name: str = "mislabelled"
    flip_fraction: float = 0.01
    flip_seed: int = 0
    clean_scanned: int = 10
    train: TrainConfig = field(default_factory=lambda: TrainConfig(train_limit=1000, min_accuracy=0.8))

    def __post_init__(self) -> None:
        super().__post_init__()
        require(0 < self.flip_fraction < 1, f"expected 0 < flip_fraction < 1, got {self.flip_fraction}")
        require(self.flip_seed >= 0, f"expected flip_seed >= 0, got {self.flip_seed}")
        require(self.clean_scanned >= 1, f"expected clean_scanned >= 1, got {self.clean_scanned}")
        require(self.checkpoint != "shipped", "no shipped checkpoint was trained on flipped labels: expected "
                 "checkpoint auto or train (each seed's model is trained here)")


Config = MislabelledExperiment
