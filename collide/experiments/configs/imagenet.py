"""The ImageNet experiment's config (:mod:`collide.experiments.imagenet`): VGG-16 at fc6
on an ImageNet-style folder. Imports no torch."""

from __future__ import annotations

from dataclasses import dataclass, field

from collide.checks import require
from collide.config import INITS, GradientConfig, SampleConfig
from collide.experiments.contract import ExperimentConfig


@dataclass(frozen=True, kw_only=True)
class ImagenetExperiment(ExperimentConfig):
    """VGG-16 collisions at the fc6 pre-activation in pixel space (paper §3.2, Tables 3-4).

    ``image_root`` is an ImageNet-style folder (one subfolder per class). The target is
    ``target`` (a path inside it) or the first image of the first class; ``init="other"``
    rows start from the first image of another class. ``targets_per_class`` > 0 takes the
    first that many images of every class as targets instead, target ``k`` owning rows
    ``k*len(rows)`` on; each row is one polytope job. ``weights`` is ``torchvision``
    (IMAGENET1K_V1, downloaded or cached), a local file, or ``random`` (explicit only).
    Distances are L2 in [0, 1] pixel units, as for every experiment (the paper's are
    0-255: divide them by 255 to compare).

    Attributes:
        name: names the outputs: <name>.zarr, <name>.parquet, <name>-vertices.png under results_root.
        layer: the activation layer where features collide (VGG-16's fc6 pre-activation by default).
        n_vertices: vertices per polytope, each pushing one of the target's non-positive units.
        target_label: checked to lie in 0..9 like every experiment's; the target is chosen by target instead.
        rows: the inits of the table's rows: target and/or other (an image of another class).
        image_root: the ImageNet-style folder (one subfolder per class).
        target: an image inside image_root to collide with ("": the first image of the first class).
        image_size: image side in pixels (at least 32).
        weights: VGG-16's weights: torchvision (IMAGENET1K_V1), a state dict file, or random.
        seed: seeds random weights and the images sampled for the dataset's distance.
        n_dataset_images: images sampled for the dataset's average distance.
        results_root: where the stores, tables and figures go.
        device: auto (a GPU where there is one, else the CPU), cpu or cuda[:n].
        gradient: the gradient vertex solver's settings.
        sample: how each polytope's samples are drawn and the dataset's distance measured.
        targets_per_class: 0: one target; n > 0: the first n images of every class.
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
    targets_per_class: int = 0

    def digest_layer(self) -> str:
        from collide.models.vgg import NormalisedVGG  # torch: for a digest, never to build or refuse a config

        return NormalisedVGG.collide_aliases.get(self.layer, self.layer)

    def __post_init__(self) -> None:
        self.check_common()
        require(self.targets_per_class >= 0, f"expected targets_per_class >= 0, got {self.targets_per_class}")
        require(not (self.target and self.targets_per_class), "give target or targets_per_class, not both")
        require(all(r in INITS for r in self.rows), f"expected rows from {INITS}, got {self.rows!r}")
        require(self.image_size >= 32, f"expected image_size >= 32 (VGG-16 pools 5 times), got {self.image_size}")
        require(bool(self.weights), "expected weights: 'torchvision', a file path, or 'random'")
        require(self.n_dataset_images >= 2, f"expected n_dataset_images >= 2, got {self.n_dataset_images}")


Config = ImagenetExperiment
