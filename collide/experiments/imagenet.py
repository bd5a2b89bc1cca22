"""The ImageNet experiment (paper §3.2, Tables 3-4): VGG-16 at fc6, in pixel space.

The model is named in each row by its weights file and hash (or as random weights), so
rows can be re-evaluated later. Each row is one polytope job of
:mod:`collide.experiments.engine`: ``collide.find_polytope`` from the target or an
image of another class.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from collide.api import find_polytope
from collide.checks import require
from collide.config import INITS, GradientConfig, SampleConfig, resolve_device
from collide.datasets.folders import check_images, list_folder, load_image, pick_images
from collide.experiments.contract import ExperimentConfig, Job, Progress, job, no_progress
from collide.models.vgg import NormalisedVGG, resolve_weights, vgg16_from_source
from collide.polytope import dataset_avg_distance
from collide.results.records import RowRecord
from collide.taps import check_units, layer_names

NAME = "imagenet"
# Every experiment reports L2 distances in the model's input units ([0, 1] pixels); the
# paper's 0-255 figures are converted for comparison in collide.results.reference.
PIXEL_SCALE = 1.0


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
        layer: the ReLU layer where features collide (VGG-16's fc6 pre-activation by default).
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


def _skeleton() -> NormalisedVGG:
    from torchvision.models import vgg16

    return NormalisedVGG(vgg16(weights=None))


def layers(config: ImagenetExperiment) -> list[str]:
    return layer_names(_skeleton(), (3, config.image_size, config.image_size))


def validate(*, config: ImagenetExperiment) -> None:
    """Fail before any work on a missing folder, layer or weights file."""
    _targets(config)
    check_units(_skeleton(), config.layer, (3, config.image_size, config.image_size), config.n_vertices)
    resolve_weights(config.weights, seed=config.seed)


def _targets(config: ImagenetExperiment) -> list[dict[str, str]]:
    return pick_images(config.image_root, target=config.target, per_class=config.targets_per_class,
                       need_other="other" in config.rows)


def prepare(*, config: ImagenetExperiment, progress: Progress = no_progress) -> dict[str, Any]:
    """The weights (hashed), the targets, the dataset's mean distance between images."""
    source = resolve_weights(config.weights, seed=config.seed)
    _, items = list_folder(config.image_root)
    rng = np.random.default_rng(config.seed)
    picked = rng.choice(len(items), size=min(config.n_dataset_images, len(items)), replace=False)
    images = torch.stack([load_image(items[k][0], config.image_size) for k in sorted(picked)])
    distance = dataset_avg_distance(images, n_pairs=config.sample.n_dataset_pairs, seed=config.sample.seed)
    targets = _targets(config)
    check_images([t[k] for t in targets for k in ("target_path", "other_path")])
    return {"model_source": source, "random_weights": bool(source["random"]), "targets": targets,
            "dataset_avg_distance": distance, "inputs": {"model": source}}


def plan(context: dict[str, Any], *, config: ImagenetExperiment) -> list[Job]:
    n = len(config.rows)
    return [job(f"target-{k}-row-{k * n + i}-{init}", [k * n + i], target=target)
            for k, target in enumerate(context["targets"]) for i, init in enumerate(config.rows)]


def solve(job: Job, context: dict[str, Any], *, config: ImagenetExperiment,
          progress: Progress = no_progress) -> None:
    """Find each row's vertices with :func:`collide.find_polytope` and write its group."""
    source = context["model_source"]
    model = vgg16_from_source(source)
    plan = job.spec["target"]
    target = load_image(plan["target_path"], config.image_size)
    for row in job.rows:
        init_name = config.rows[row % len(config.rows)]
        init_path = plan["target_path"] if init_name == "target" else plan["other_path"]
        init = target if init_name == "target" else load_image(init_path, config.image_size)
        poly = find_polytope(
            model, config.layer, target, init=init, n_vertices=config.n_vertices, method="gradient",
            device=resolve_device(config.device), config=config.gradient,
            progress=lambda s, n, _d: progress("vertices", s, n),
        )
        RowRecord.of(
            poly, config=config, row=row, init=init_name, loss=config.gradient.loss,
            model="vgg16-random" if source["random"] else "vgg16-imagenet", model_source=source,
            dataset_avg_distance=context["dataset_avg_distance"] * PIXEL_SCALE, pixel_scale=PIXEL_SCALE,
            extra_attrs={"target_path": plan["target_path"], "init_path": init_path,
                         "target_class_name": plan["target_class_name"], "seed": config.seed},
        ).write(config.results_root)
