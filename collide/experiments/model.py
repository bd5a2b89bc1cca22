"""Any classifier: a torchvision model or the user's own, at any activation call, on images.

``collide run model --model torchvision:resnet18 --weights FILE --layer layer2.1.relu#1
--image-root DIR``. Rows are the MNIST table's, method by init: gradient, exact where
its LP fits (``ExactConfig.max_entries``), paper where ``paper.lr`` is given (its rate
is tuned per model), each from the target and from an image of another class. Every
row is one polytope job of :mod:`collide.experiments.engine`, written with the model's
source (spec, weights file and hash, normalisation), so that evaluation and
``collide verify`` build the same model again.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np
import torch

from collide.api import find_polytope
from collide.config import (
    resolve_device,
)
from collide.datasets.folders import check_images, list_folder, load_image, pick_images
from collide.errors import ConfigError, DataError, LayerError
from collide.experiments.configs.model import ModelExperiment, skeleton
from collide.experiments.contract import Job, Progress, job, no_progress
from collide.models.external import build, resolve_model
from collide.piecewise.budget import check_lp_size
from collide.polytope import dataset_avg_distance
from collide.results.records import RowRecord
from collide.sites import require_method
from collide.skips import passed_by
from collide.solvers import solver_for
from collide.taps import check_units, layer_names, site_of

NAME = "model"
Config = ModelExperiment


def layers(config: ModelExperiment) -> list[str]:
    return layer_names(skeleton(config), config.input_shape())


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
            net, example = skeleton(config), torch.zeros(config.input_shape())
            require_method(site_of(net, config.layer, example.unsqueeze(0)), "exact")
            check_lp_size(net, config.layer, example, max_entries=config.exact.max_entries)
        except (ConfigError, LayerError) as exc:
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


def passed_by_note(config: ModelExperiment) -> list[str]:
    """A note where a skip connection passes by the layer (:mod:`collide.skips`): its
    collisions are the layer's features only, not the model's output."""
    model, example = skeleton(config), torch.zeros(1, *config.input_shape())
    site = site_of(model, config.layer, example)
    if site.name not in passed_by(model, example):
        return []
    return [f"layer {site.name}: a skip connection passes it by (the input reaches the output around it), so "
            "inputs that collide there can still be told apart by the model's output; a layer every path runs "
            f"through carries a collision on to the output (`collide layers {config.model}` marks which)"]


def validate(*, config: ModelExperiment) -> None:
    """Fail before any work on a bad model spec, layer, weights file, image folder or row."""
    try:
        check_units(skeleton(config), config.layer, config.input_shape(), config.n_vertices)
    except LayerError as exc:
        default = (f"; the default {ModelExperiment.layer!r} is ResNet's" if config.layer == ModelExperiment.layer
                   else "")
        raise LayerError(f"{exc}. Pass the layer with --layer NAME (`collide layers {config.model}` lists "
                         f"them{default})") from None
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
    notes += passed_by_note(config)
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
