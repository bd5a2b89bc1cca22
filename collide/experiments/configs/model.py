"""The any-model experiment's config (:mod:`collide.experiments.model`): any classifier
at any activation call site. Imports no torch: the model is built (once, with random weights)
only where names and shapes are needed."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from collide.checks import require
from collide.config import INITS, METHODS, ExactConfig, GradientConfig, PaperConfig, SampleConfig
from collide.errors import CollideError, ConfigError
from collide.experiments.contract import ExperimentConfig

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True, kw_only=True)
class ModelExperiment(ExperimentConfig):
    """Colliding polytopes of any image classifier at one activation call site.

    ``model`` is ``torchvision:NAME`` or ``package.module:factory`` (a function of no
    arguments). ``weights``: a state dict file, ``torchvision`` (the torch cache, or a
    download where the internet answers) or ``random`` (only on request; every output
    then says so). ``layer`` is a call site as ``collide layers MODEL`` lists it.
    ``image_root`` is a folder of class folders or one image. ``input_size``, ``mean``
    and ``std`` default to the torchvision weights' transforms (else no normalisation,
    and ``input_size`` must be given); inputs are [0, 1] pixels, normalised inside the
    model. ``methods`` empty means gradient, exact where its LP fits, and paper where
    ``paper.lr`` is set; ``inits`` the starts (``other``: an image of another class).

    Attributes:
        name: names the outputs: <name>.zarr, <name>.parquet, <name>-vertices.png under results_root.
        model: the classifier: torchvision:NAME or package.module:factory (a function of no arguments).
        weights: a state dict file, torchvision (the torch cache or a download), or random (on request).
        layer: the activation call site where features collide, as `collide layers MODEL` names it.
        image_root: a folder of class folders, or one image.
        target: an image inside image_root to collide with ("": the first image of the first class).
        targets_per_class: 0: one target; n > 0: the first n images of every class.
        input_size: image side in pixels (0: the torchvision weights' own).
        channels: image channels: 1 or 3.
        mean: per-channel mean the model expects (empty: the torchvision weights', else none).
        std: per-channel standard deviation, with mean.
        n_vertices: vertices per polytope, each pushing one of the target's non-positive units.
        methods: gradient, exact and/or paper (empty: gradient, exact where its LP fits, paper where paper.lr is set).
        inits: where vertices start: target and/or other (an image of another class).
        seed: seeds random weights and the images sampled for the dataset's distance.
        n_dataset_images: images sampled for the dataset's average distance.
        results_root: where the stores, tables and figures go.
        device: auto (a GPU where there is one, else the CPU), cpu or cuda[:n].
        threads: torch's and BLAS's CPU threads inside a job.
        gradient: the gradient vertex solver's settings.
        exact: the exact LP vertex solver's settings.
        paper: the authors' momentum scheme's settings (needs paper.lr here: no tuned rate for other models).
        sample: how each polytope's samples are drawn and the dataset's distance measured.
    """

    name: str = "model"
    model: str = "torchvision:resnet18"
    weights: str = "torchvision"
    layer: str = "layer2.1.relu#1"
    image_root: str = "data/raw/images"
    target: str = ""
    targets_per_class: int = 0
    input_size: int = 0
    channels: int = 3
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    n_vertices: int = 5
    methods: tuple[str, ...] = ()
    inits: tuple[str, ...] = ("target", "other")
    seed: int = 0
    n_dataset_images: int = 200
    results_root: str = "data/results"
    device: str = "auto"
    threads: int = 1
    gradient: GradientConfig = field(default_factory=GradientConfig)
    exact: ExactConfig = field(default_factory=ExactConfig)
    paper: PaperConfig = field(default_factory=PaperConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)

    def __post_init__(self) -> None:
        self.check_common()
        require(all(m in METHODS for m in self.methods), f"expected methods from {METHODS}, got {self.methods!r}")
        require(bool(self.inits) and all(i in INITS for i in self.inits),
                 f"expected inits from {INITS}, got {self.inits!r}")
        require(self.targets_per_class >= 0, f"expected targets_per_class >= 0, got {self.targets_per_class}")
        require(not (self.target and self.targets_per_class), "give target or targets_per_class, not both")
        require(self.input_size >= 0, f"expected input_size >= 0 (0: the weights' own), got {self.input_size}")
        require(self.channels in (1, 3), f"expected channels 1 or 3, got {self.channels}")
        require(len(self.mean) == len(self.std), f"expected mean and std of one length, got {self.mean}, {self.std}")
        require(bool(self.weights), "expected weights: a state dict file, 'torchvision', or 'random'")
        require(bool(self.layer), "expected a layer: `collide layers MODEL` lists them")
        require(self.n_dataset_images >= 2, f"expected n_dataset_images >= 2, got {self.n_dataset_images}")
        require(self.threads >= 1, f"expected threads >= 1, got {self.threads}")

    def digest_layer(self) -> str:
        import torch  # for a digest, never to build or refuse a config

        from collide.taps import resolve_layer

        try:
            return resolve_layer(skeleton(self), self.layer, torch.zeros(1, *self.input_shape()))
        except CollideError:  # validation says what is wrong, not the digest
            return self.layer

    def side(self) -> int:
        """The input size: the config's, else the torchvision weights' crop size."""
        from collide.models.external import input_defaults  # torch: a run's question, not a config's

        side = self.input_size or input_defaults(self.model).get("input_size", 0)
        if not side:
            raise ConfigError(f"{self.model} has no torchvision transforms to take the input size from: "
                              "set input_size (e.g. --set input_size=64)")
        return int(side)

    def input_shape(self) -> tuple[int, int, int]:
        return (self.channels, self.side(), self.side())


Config = ModelExperiment


def skeleton(config: ModelExperiment) -> torch.nn.Module:
    """The architecture with its normalisation, random weights: enough for names and shapes."""
    return _built(config.model, config.mean, config.std, config.input_size)


@functools.lru_cache(maxsize=2)
def _built(spec: str, mean: tuple[float, ...], std: tuple[float, ...], input_size: int) -> torch.nn.Module:
    # Read only (names, shapes, sizes): validation, digests and row planning share one build.
    from collide.models.external import build, resolve_model

    return build(resolve_model(spec, "random", mean=mean, std=std, input_size=input_size))
