"""The ImageNet experiment (paper §3.2, Tables 3-4): VGG-16 at fc6, in pixel space.

The model is named in each row by its weights file and hash (or as random weights), so
rows can be re-evaluated later. Each row is one polytope job of
:mod:`collide.experiments.engine`: ``collide.find_polytope`` from the target or an
image of another class.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from collide.api import find_polytope
from collide.config import resolve_device
from collide.datasets.folders import check_images, list_folder, load_image, pick_images
from collide.experiments.configs.imagenet import ImagenetExperiment
from collide.experiments.contract import Job, Progress, job, no_progress
from collide.models.vgg import NormalisedVGG, resolve_weights, vgg16_from_source
from collide.polytope import dataset_avg_distance
from collide.results.records import RowRecord
from collide.taps import check_units, layer_names

NAME = "imagenet"
# Every experiment reports L2 distances in the model's input units ([0, 1] pixels); the
# paper's 0-255 figures are converted for comparison in collide.results.reference.
PIXEL_SCALE = 1.0


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
