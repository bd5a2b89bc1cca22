"""Any classifier: a torchvision model or the user's own, at any ReLU call, on images.

``collide run model --model torchvision:resnet18 --weights FILE --layer layer2.1.relu#1
--image-root DIR``. Rows are the MNIST table's, method by init: gradient, exact where
its LP fits (``ExactConfig.max_entries``), paper where ``paper.lr`` is given (its rate
is tuned per model), each from the target and from an image of another class. Every
row is one polytope job of :mod:`collide.experiments.engine`, written with the model's
source (spec, weights file and hash, normalisation), so that evaluation and
``collide verify`` build the same model again.
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from collide.api import find_polytope
from collide.checks import require
from collide.config import (
    INITS,
    METHODS,
    ExactConfig,
    GradientConfig,
    PaperConfig,
    SampleConfig,
    resolve_device,
)
from collide.datasets.folders import check_images, list_folder, load_image, pick_images
from collide.errors import CollideError, ConfigError, DataError, LayerError
from collide.experiments.contract import ExperimentConfig, Job, Progress, job, no_progress
from collide.models.external import build, input_defaults, resolve_model
from collide.piecewise.budget import check_lp_size
from collide.polytope import dataset_avg_distance
from collide.results.records import RowRecord
from collide.solvers import solver_for
from collide.taps import check_units, layer_names, resolve_layer

NAME = "model"


@dataclass(frozen=True, kw_only=True)
class ModelExperiment(ExperimentConfig):
    """Colliding polytopes of any image classifier at one ReLU call site.

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
        layer: the ReLU call site where features collide, as `collide layers MODEL` names it.
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
        threads: torch's CPU threads inside a job.
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
        try:
            return resolve_layer(_skeleton(self), self.layer, torch.zeros(1, *self.input_shape()))
        except CollideError:  # validation says what is wrong, not the digest
            return self.layer

    def side(self) -> int:
        """The input size: the config's, else the torchvision weights' crop size."""
        side = self.input_size or input_defaults(self.model).get("input_size", 0)
        if not side:
            raise ConfigError(f"{self.model} has no torchvision transforms to take the input size from: "
                              "set input_size (e.g. --set input_size=64)")
        return int(side)

    def input_shape(self) -> tuple[int, int, int]:
        return (self.channels, self.side(), self.side())


Config = ModelExperiment


def _skeleton(config: ModelExperiment) -> torch.nn.Module:
    """The architecture with its normalisation, random weights: enough for names and shapes."""
    return _built(config.model, config.mean, config.std, config.input_size)


@functools.lru_cache(maxsize=2)
def _built(spec: str, mean: tuple[float, ...], std: tuple[float, ...], input_size: int) -> torch.nn.Module:
    # Read only (names, shapes, sizes): validation, digests and row planning share one build.
    return build(resolve_model(spec, "random", mean=mean, std=std, input_size=input_size))


def layers(config: ModelExperiment) -> list[str]:
    return layer_names(_skeleton(config), config.input_shape())


def _single_image(config: ModelExperiment) -> bool:
    return Path(config.image_root).is_file()


def rows(config: ModelExperiment) -> tuple[list[tuple[str, str]], list[str]]:
    """The rows (method, init) and notes on the ones left out, from the config and the
    model's shapes alone (no weights, no images): the same config, the same rows.

    Asked for explicitly, a method that cannot run is refused; left to the default, it
    is left out and a note says why.
    """
    notes: list[str] = []
    methods = list(config.methods)
    if not methods:
        methods = ["gradient", "exact"] + (["paper"] if config.paper.lr is not None else [])
        if config.paper.lr is None:
            notes.append("paper rows left out: the authors' scheme needs a learning rate tuned for this model "
                         "(--set paper.lr=...; benchmarks/solver.py tunes one)")
    elif "paper" in methods and config.paper.lr is None:
        raise ConfigError("paper rows need a learning rate tuned for this model: --set paper.lr=... "
                          "(benchmarks/solver.py tunes one), or leave paper out of methods")
    if "exact" in methods:
        try:
            check_lp_size(_skeleton(config), config.layer, torch.zeros(config.input_shape()),
                          max_entries=config.exact.max_entries)
        except ConfigError as exc:
            if config.methods:
                raise
            methods.remove("exact")
            notes.append(f"exact rows left out: {exc}")
    inits = list(config.inits)
    if _single_image(config) and "other" in inits:
        if config.inits != ("target", "other"):
            raise DataError(f"{config.image_root} is a single image: an 'other' init needs an image folder")
        inits.remove("other")
        notes.append("'other' rows left out: image_root is a single image")
    return list(itertools.product(methods, inits)), notes


def validate(*, config: ModelExperiment) -> None:
    """Fail before any work on a bad model spec, layer, weights file, image folder or row."""
    try:
        check_units(_skeleton(config), config.layer, config.input_shape(), config.n_vertices)
    except LayerError as exc:
        raise LayerError(f"{exc}. Pass the layer with --layer NAME (`collide layers {config.model}` lists them; "
                         f"the default {ModelExperiment.layer!r} is ResNet's)") from None
    resolve_model(config.model, config.weights, seed=config.seed, mean=config.mean, std=config.std,
                  input_size=config.input_size)
    specs, _ = rows(config)
    pick_images(config.image_root, target=config.target, per_class=config.targets_per_class,
                need_other=any(init == "other" for _, init in specs))


def prepare(*, config: ModelExperiment, progress: Progress = no_progress) -> dict[str, Any]:
    """The weights (hashed), the rows, the targets, the images' mean distance."""
    source = resolve_model(config.model, config.weights, seed=config.seed, mean=config.mean, std=config.std,
                           input_size=config.input_size)
    specs, notes = rows(config)
    targets = pick_images(config.image_root, target=config.target, per_class=config.targets_per_class,
                          need_other=any(init == "other" for _, init in specs))
    check_images([t[k] for t in targets for k in ("target_path", "other_path")])
    side = config.side()
    if _single_image(config):
        distance = float("nan")  # one image: no dataset to measure
    else:
        _, items = list_folder(config.image_root)
        rng = np.random.default_rng(config.seed)
        picked = rng.choice(len(items), size=min(config.n_dataset_images, len(items)), replace=False)
        images = torch.stack([load_image(items[k][0], side, channels=config.channels) for k in sorted(picked)])
        distance = dataset_avg_distance(images, n_pairs=config.sample.n_dataset_pairs, seed=config.sample.seed)
    return {"model_source": source, "random_weights": bool(source["random"]), "targets": targets,
            "rows": [list(r) for r in specs], "notes": notes, "dataset_avg_distance": distance,
            "inputs": {"model": source}}


def plan(context: dict[str, Any], *, config: ModelExperiment) -> list[Job]:
    """One job per row: target ``k`` owns rows ``k*len(rows)`` on."""
    specs = context["rows"]
    n = len(specs)
    return [job(f"target-{k}-row-{k * n + i}-{method}-{init}", [k * n + i], target=target, method=method, init=init)
            for k, target in enumerate(context["targets"]) for i, (method, init) in enumerate(specs)]


def solve(job: Job, context: dict[str, Any], *, config: ModelExperiment,
          progress: Progress = no_progress) -> None:
    """Find the row's polytope with :func:`collide.find_polytope` and write its group."""
    source = context["model_source"]
    model = build(source)
    spec = job.spec
    method, init_name, images = spec["method"], spec["init"], spec["target"]
    side = config.side()
    target = load_image(images["target_path"], side, channels=config.channels)
    init_path = images["target_path"] if init_name == "target" else images["other_path"]
    init = target if init_name == "target" else load_image(init_path, side, channels=config.channels)
    solver = solver_for(method, getattr(config, method))
    for row in job.rows:
        poly = find_polytope(
            model, config.layer, target, init=init, n_vertices=config.n_vertices, method=solver,
            device=resolve_device(config.device),
            progress=lambda s, n, _d: progress(f"vertices ({method})", s, n),
        )
        RowRecord.of(
            poly, config=config, row=row, init=init_name, model=config.model + ("-random" if source["random"] else ""),
            model_source=source, loss=solver.loss_name,
            dataset_avg_distance=context["dataset_avg_distance"],
            extra_attrs={"target_path": images["target_path"], "init_path": init_path,
                         "target_class_name": images["target_class_name"], "seed": config.seed,
                         **solver.record},
        ).write(config.results_root)
