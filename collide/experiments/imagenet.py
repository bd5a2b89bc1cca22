"""The ImageNet experiment (paper §3.2, Tables 3-4): VGG-16 at fc6, in pixel space.

Stages as in :mod:`collide.experiments.mnist`. The model is named in each row by its weights
file and hash (or as random weights), so rows can be re-evaluated later.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from collide.config import ImagenetExperiment, resolve_device
from collide.datasets.folders import list_folder, load_image
from collide.errors import DataError
from collide.experiments.mnist import Progress, _noop
from collide.models.vgg import NormalisedVGG, resolve_weights, vgg16_from_source
from collide.objective import nonpositive_units
from collide.polytope import dataset_avg_distance
from collide.precision import full_precision
from collide.results import evaluation
from collide.results.store import write_row
from collide.solvers.gradient import solve_gradient
from collide.taps import preactivation, resolve_layer
from collide.validity import criterion_for

# Every experiment reports L2 distances in the model's input units ([0, 1] pixels); the
# paper's 0-255 figures are converted for comparison in collide.results.reference.
PIXEL_SCALE = 1.0


def validate(*, config: ImagenetExperiment) -> None:
    """Fail before any work on a missing folder, layer or weights file."""
    prepare(config=config)


def prepare(*, config: ImagenetExperiment) -> dict[str, Any]:
    """Check the folder, the layer and the weights before any work; pick the images."""
    classes, items = list_folder(config.image_root)
    resolve_layer(_skeleton(), config.layer)
    source = resolve_weights(config.weights, seed=config.seed)
    if len(classes) < 2 and "other" in config.rows:
        raise DataError(f"{config.image_root} has one class: an 'other' init needs a second class")
    if config.target:
        wanted = (config.image_root.rstrip("/") + "/" + config.target.lstrip("/"))
        matches = [k for k, (p, _) in enumerate(items) if str(p) == wanted or str(p).endswith(config.target)]
        if not matches:
            raise DataError(f"target {config.target!r} is not an image under {config.image_root}")
        target = matches[0]
    else:
        target = 0
    other = next(k for k, (_, c) in enumerate(items) if c != items[target][1]) if len(classes) > 1 else target
    return {
        "model_source": source,
        "target_path": str(items[target][0]),
        "target_class_name": classes[items[target][1]],
        "other_path": str(items[other][0]),
        "other_class_name": classes[items[other][1]],
    }


def _skeleton() -> NormalisedVGG:
    from torchvision.models import vgg16

    return NormalisedVGG(vgg16(weights=None))


def solve_rows(plan: dict[str, Any], *, config: ImagenetExperiment, progress: Progress = _noop) -> list[dict[str, Any]]:
    """Find every row's vertices in one batch and write each row's group."""
    model = vgg16_from_source(plan["model_source"])
    size = config.image_size
    target = load_image(plan["target_path"], size)
    inits = {"target": target, "other": load_image(plan["other_path"], size)}
    with torch.no_grad():
        t_pre = preactivation(model, target.unsqueeze(0), config.layer)[0]
    units = nonpositive_units(t_pre, config.n_vertices)
    v, rows = config.n_vertices, list(config.rows)
    with full_precision():
        result = solve_gradient(
            model, config.layer, t_pre.expand(v * len(rows), -1),
            torch.stack([inits[r] for r in rows]).repeat_interleave(v, 0), units.repeat(len(rows)),
            config=config.gradient, device=resolve_device(config.device),
            progress=lambda s, n, _d: progress("vertices", s, n),
        )
    _, items = list_folder(config.image_root)
    rng = np.random.default_rng(config.seed)
    picked = rng.choice(len(items), size=min(config.n_dataset_images, len(items)), replace=False)
    images = torch.stack([load_image(items[k][0], size) for k in sorted(picked)])
    distance = dataset_avg_distance(images, n_pairs=config.sample.n_dataset_pairs, seed=config.sample.seed)
    summaries = []
    for k, init in enumerate(rows):
        part = slice(k * v, (k + 1) * v)
        solver = result.summary(part)
        attrs = {
            "experiment": config.name,
            "row": k,
            "model": "vgg16-random" if plan["model_source"]["random"] else "vgg16-imagenet",
            "model_source": plan["model_source"],
            "layer": config.layer,
            "method": "gradient",
            "init": init,
            "loss": config.gradient.loss,
            "criterion": criterion_for("gradient", config.gradient).to_dict(),
            "target_path": plan["target_path"],
            "init_path": plan["target_path"] if init == "target" else plan["other_path"],
            "target_class_name": plan["target_class_name"],
            "units": units.tolist(),
            "dataset_avg_distance": distance * PIXEL_SCALE,
            "pixel_scale": PIXEL_SCALE,
            "solver": solver,
            "sampler": config.sample.sampler,
            "seed": config.seed,
            "config": config.to_dict(),
            "config_digest": config.digest(),
        }
        write_row(
            config.results_root, config.name, k,
            {"vertices": result.vertices[part].numpy().astype(np.float32),
             "target": target.numpy().astype(np.float32),
             "init": inits[init].numpy().astype(np.float32)},
            attrs,
        )
        summaries.append({"row": k, "method": "gradient", "init": init, **solver})
    return summaries


# Every experiment evaluates and writes its rows the same way, from the store.
evaluate_row = evaluation.evaluate_experiment_row
write_outputs = evaluation.write_experiment_outputs


def run(*, config: ImagenetExperiment, progress: Progress = _noop) -> dict[str, Any]:
    """The whole experiment in plain Python, stage after stage, as the flow runs it."""
    start = time.perf_counter()
    plan = prepare(config=config)
    solve_rows(plan, config=config, progress=progress)
    for r in range(len(config.rows)):
        evaluate_row(r, config=config)
    outputs = write_outputs(config=config)
    return {**outputs, "random_weights": plan["model_source"]["random"], "seconds": time.perf_counter() - start}
