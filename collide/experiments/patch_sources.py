"""Where the patch experiment's images and model come from: MNIST or an image folder.

``config`` is the patch experiment's config (typed ``Any`` here: its class lives in
:mod:`collide.experiments.patches`, which imports this module).

Each source answers the same questions: which images make the corpus (with labels,
for the per-class share), how to load a list of them as uint8 (a picklable loader
for Dask), which model to use, which images are the start and the other target, and
how far apart the dataset's images are.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from collide.datasets.folders import check_images, list_folder, load_image
from collide.datasets.mnist import MNIST_FILES, ensure_mnist, load_mnist, mnist_files, read_idx
from collide.errors import ConfigError, DataError
from collide.experiments import mnist
from collide.models.vgg import NormalisedVGG, resolve_weights
from collide.models.zoo import build_model, checkpoint_source
from collide.patches.extract import LoadImages, patches_per_image
from collide.polytope import dataset_avg_distance
from collide.taps import check_units, layer_names


@dataclass(frozen=True)
class Corpus:
    """The images patches are taken from. ``loader(ids)`` -> uint8 (n, C, H, W)."""

    labels: np.ndarray
    loader: LoadImages
    image_shape: tuple[int, int, int]
    description: dict[str, Any]


def image_side(config: Any) -> int:
    return 28 if config.dataset == "mnist" else config.image_size


def _model_skeleton(config: Any) -> torch.nn.Module:
    if config.dataset == "mnist":
        return build_model(config.train.arch)
    from torchvision.models import vgg16

    return NormalisedVGG(vgg16(weights=None))


def layers(*, config: Any) -> list[str]:
    """The layers of the dataset's model that ``layer`` accepts."""
    side = image_side(config)
    return layer_names(_model_skeleton(config), (1 if config.dataset == "mnist" else 3, side, side))


def validate(*, config: Any) -> None:
    """Fail before any work on a layer the model lacks or a patch grid that cannot tile."""
    side = image_side(config)
    patches_per_image(side, side, config.patch.size, config.patch.stride)
    if (side - config.patch.size) % config.patch.stride:
        raise ConfigError(
            f"patches of size {config.patch.size} at stride {config.patch.stride} do not tile a {side}-pixel "
            "side: choose them with (side - size) divisible by stride"
        )
    side = image_side(config)
    check_units(_model_skeleton(config), config.layer, (1 if config.dataset == "mnist" else 3, side, side),
                config.n_vertices)


def prepare(*, config: Any) -> dict[str, Any]:
    if config.dataset == "mnist":
        files = ensure_mnist(config.data_root, allow_download=config.allow_download)
        return {"dataset": "mnist", "files": {k: str(v) for k, v in files.items()}}
    classes, items = list_folder(config.image_root)
    if len(classes) < 2 and "other" in config.rows:
        raise DataError(f"{config.image_root} has one class: the 'other' row needs a second class")
    return {"dataset": "folder", "classes": len(classes), "images": len(items)}


def model(*, config: Any, progress: Any) -> dict[str, Any]:
    """The classifier: MNIST's LeNet-5 trained (or reused), or VGG-16's weights."""
    if config.dataset == "mnist":
        trained = mnist.train_model(config=config, progress=progress)  # type: ignore[arg-type]
        return {"model_source": checkpoint_source(trained["checkpoint"], trained["sha256"]),
                "test_accuracy": trained["test_accuracy"], "reused": trained["reused"]}
    source = resolve_weights(config.weights, seed=config.train.seed)
    return {"model_source": source, "test_accuracy": None, "reused": True}


def examples(model_source: dict[str, Any], *, config: Any) -> list[dict[str, Any]]:
    """Each job's start image and its other row's target, as references :func:`image` loads.

    MNIST: the first correctly classified test image of ``target_label`` (or the first
    ``targets_per_class`` of every class) and the first test image of another label.
    A folder: the first image of the first class (or the first ``targets_per_class`` of
    every class) and the first image of another class.
    """
    if config.dataset == "mnist":
        picked = mnist.pick_targets(model_source["path"], data_root=config.data_root, label=config.target_label,
                                    per_class=config.targets_per_class)
        return [{"start": p["target_index"], "other": p["other_index"]} for p in picked]
    _, items = list_folder(config.image_root)
    per_class = config.targets_per_class
    starts = [0] if per_class == 0 else [
        k for c in sorted({c for _, c in items}) for k in [i for i, (_, cc) in enumerate(items) if cc == c][:per_class]
    ]
    out = []
    for k in starts:
        other = next((str(p) for p, c in items if c != items[k][1]), str(items[k][0]))
        out.append({"start": str(items[k][0]), "other": other})
    check_images([ref for e in out for ref in (e["start"], e["other"])])
    return out


def image(ref: Any, *, config: Any) -> torch.Tensor:
    """One image in [0, 1]. (C, H, W)"""
    if config.dataset == "mnist":
        return _mnist_test(config.data_root)[int(ref)]
    return load_image(ref, config.image_size)


@functools.lru_cache(maxsize=2)
def _mnist_test(root: str) -> torch.Tensor:
    return load_mnist(root, "test").images


@functools.lru_cache(maxsize=2)
def _idx(path: str) -> np.ndarray:
    return read_idx(path)


def _load_mnist(images_path: str, ids: list[int]) -> np.ndarray:
    return _idx(images_path)[np.asarray(ids)][:, None]


def _load_folder(paths: tuple[str, ...], size: int, ids: list[int]) -> np.ndarray:
    return np.stack([(load_image(paths[i], size).numpy() * 255).round().astype(np.uint8) for i in ids])


def corpus(*, config: Any) -> Corpus:
    if config.dataset == "mnist":
        files = mnist_files(config.data_root)
        if files is None:
            raise DataError(f"MNIST IDX files missing in {config.data_root}: run prepare first")
        return Corpus(
            labels=read_idx(files["train_labels"]),
            loader=functools.partial(_load_mnist, str(files["train_images"])),
            image_shape=(1, 28, 28),
            description={"dataset": "mnist", "split": "train", "file": MNIST_FILES["train_images"]},
        )
    _, items = list_folder(config.image_root)
    paths = tuple(str(p) for p, _ in items)
    return Corpus(
        labels=np.array([c for _, c in items]),
        loader=functools.partial(_load_folder, paths, config.image_size),
        image_shape=(3, config.image_size, config.image_size),
        description={"dataset": "folder", "root": config.image_root, "size": config.image_size},
    )


def dataset_distance(*, config: Any) -> tuple[float, float]:
    """Mean L2 between seeded pairs of the dataset's images, and the pixel scale it is in.

    Every experiment reports distances in the model's input units ([0, 1] pixels), so
    the scale is 1 for both sources; it stays in the row attrs for the tables.
    """
    if config.dataset == "mnist":
        images = _mnist_test(config.data_root)
    else:
        _, items = list_folder(config.image_root)
        rng = np.random.default_rng(config.sample.seed)
        picked = sorted(rng.choice(len(items), size=min(config.n_dataset_images, len(items)), replace=False))
        images = torch.stack([load_image(items[k][0], config.image_size) for k in picked])
    distance = dataset_avg_distance(images, n_pairs=config.sample.n_dataset_pairs, seed=config.sample.seed)
    return distance, 1.0
