"""The patch-composition experiment (paper §4, Tables 5-6) on MNIST with LeNet-5.

Stages, each a plain function of keys and ``*, config`` as in :mod:`collide.mnist`:
prepare, train (shared with the MNIST experiment), build the patch store (Dask into
Zarr), build the kNN index, solve the composition logits of every row in one batch,
evaluate, write outputs.
"""

from __future__ import annotations

import functools
import hashlib
import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from collide import evaluation, mnist
from collide.compose import Composition, compose, initial_logits, weight_tv, window_patches
from collide.config import PatchExperiment, resolve_device
from collide.data import MNIST_FILES, ensure_mnist, load_mnist, mnist_files, read_idx
from collide.errors import ConfigError, DataError
from collide.knn import PatchIndex, as_vectors, exact_knn, recall_at_k
from collide.models import build_model, checkpoint_source, load_checkpoint
from collide.objective import nonpositive_units
from collide.patches import build_store, open_store, patches_per_image, sample_ids
from collide.polytope import dataset_avg_distance
from collide.store import write_row
from collide.taps import preactivation, resolve_layer
from collide.vertices import solve_gradient

Progress = mnist.Progress
_noop = mnist._noop


def validate(*, config: PatchExperiment) -> None:
    """Fail before any work on a layer the model lacks or a patch grid that cannot tile."""
    resolve_layer(build_model(config.train.arch), config.layer)
    patches_per_image(28, 28, config.patch.size, config.patch.stride)
    if (28 - config.patch.size) % config.patch.stride:
        raise ConfigError(
            f"patches of size {config.patch.size} at stride {config.patch.stride} do not tile a 28-pixel side: "
            "choose them with (28 - size) divisible by stride"
        )


def prepare_data(*, config: PatchExperiment) -> dict[str, Any]:
    validate(config=config)
    files = ensure_mnist(config.data_root, allow_download=config.allow_download)
    return {"data_root": config.data_root, "files": {k: str(v) for k, v in files.items()}}


def train_model(*, config: PatchExperiment, progress: Progress = _noop) -> dict[str, Any]:
    return mnist.train_model(config=config, progress=progress)  # type: ignore[arg-type]


def pick_examples(checkpoint: str, *, config: PatchExperiment) -> dict[str, int]:
    return mnist.pick_examples(checkpoint, config=config)  # type: ignore[arg-type]


@functools.lru_cache(maxsize=2)
def _train_images(images_path: str) -> np.ndarray:
    return read_idx(images_path)


def _load_train(images_path: str, ids: list[int]) -> np.ndarray:
    """Training images by id as uint8 (n, 1, 28, 28): the patch store's loader."""
    return _train_images(images_path)[np.asarray(ids)][:, None]


def _store_path(config: PatchExperiment) -> Path:
    key = json.dumps({"patch": asdict(config.patch), "data": str(config.data_root)}, sort_keys=True)
    return Path(config.cache_root) / f"mnist-patches-{hashlib.sha256(key.encode()).hexdigest()[:12]}.zarr"


def build_patches(*, config: PatchExperiment, scheduler: Any = "threads", progress: Progress = _noop) -> dict[str, Any]:
    """Patches of ``patch.share`` of each training class, into a resumable Zarr store."""
    files = mnist_files(config.data_root)
    if files is None:
        raise DataError(f"MNIST IDX files missing in {config.data_root}: run prepare_data first")
    labels = read_idx(files["train_labels"])
    ids = sample_ids(labels, config.patch.share, config.patch.seed)
    loader = functools.partial(_load_train, str(files["train_images"]))
    return build_store(
        _store_path(config), ids.tolist(), loader, image_shape=(1, 28, 28), config=config.patch,
        source={"dataset": "mnist", "split": "train", "file": MNIST_FILES["train_images"]},
        scheduler=scheduler, progress=progress,
    )


def _index_path(config: PatchExperiment) -> Path:
    key = hashlib.sha256(json.dumps(asdict(config.knn), sort_keys=True).encode()).hexdigest()[:12]
    return _store_path(config).with_suffix(f".index-{key}.pkl")


def build_index(*, config: PatchExperiment, progress: Progress = _noop) -> dict[str, Any]:
    """The pynndescent index over the store, persisted next to it; reused when present."""
    path = _index_path(config)
    if path.is_file():
        index = PatchIndex.load(path)
        return {"index": str(path), "build_seconds": index.build_seconds, "reused": True}
    store = open_store(_store_path(config))
    patches = store["patches"][...]
    index = PatchIndex.build(patches, config=config.knn, progress=progress)
    index.save(path)
    return {"index": str(path), "build_seconds": index.build_seconds, "reused": False}


def _neighbours(image: torch.Tensor, config: PatchExperiment) -> tuple[torch.Tensor, dict[str, Any]]:
    """The k nearest store patches of each window of ``image``, and how well they were found.

    Shapes:
        image: (C, H, W) -> (G, k, C, p, p) in [0, 1]
    """
    store = open_store(_store_path(config))
    patches = store["patches"]
    index = PatchIndex.load(_index_path(config))
    own = window_patches(image, config.patch.size, config.patch.stride)
    queries = own.flatten(1).numpy().astype(np.float32)
    t0 = time.perf_counter()
    idx, dist = index.query(queries, config.knn.k, corpus=patches if index.basis is not None else None)
    query_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    _, exact = exact_knn(queries, patches, config.knn.k)
    exact_seconds = time.perf_counter() - t0
    unique = np.unique(idx)
    table = torch.from_numpy(as_vectors(patches.oindex[unique]))
    found = table[torch.from_numpy(np.searchsorted(unique, idx))]  # (G, k, D)
    facts = {
        "knn_recall": recall_at_k(dist, exact),
        "knn_k": config.knn.k,
        "knn_query_seconds": query_seconds,
        "exact_query_seconds": exact_seconds,
        "n_patches": int(patches.shape[0]),
    }
    return found.view(len(idx), config.knn.k, *own.shape[1:]), facts


def _composition(start: torch.Tensor, target: torch.Tensor | None, config: PatchExperiment) -> tuple[Composition, dict]:
    """Candidates of every window: the start's own patch first, then neighbours."""
    own = window_patches(start, config.patch.size, config.patch.stride)[:, None]
    near, facts = _neighbours(start, config)
    parts = [own, near]
    if target is not None:
        theirs = window_patches(target, config.patch.size, config.patch.stride)[:, None]
        parts += [theirs, _neighbours(target, config)[0]]
    return Composition(torch.cat(parts, 1).float(), tuple(start.shape), config.patch.stride), facts


def solve_rows(
    checkpoint: str, examples: dict[str, int], *, config: PatchExperiment, progress: Progress = _noop
) -> list[dict[str, Any]]:
    """Optimise the composition logits of each row's vertices (one batch per row: rows
    may have different candidate sets)."""
    model, meta = load_checkpoint(checkpoint)
    test = load_mnist(config.data_root, "test")
    start = test.images[examples["target_index"]]
    index_meta = PatchIndex.load(_index_path(config))
    v, rows = config.n_vertices, list(config.rows)
    targets = {"self": examples["target_index"], "other": examples["other_index"]}
    device = resolve_device(config.device)
    distance = dataset_avg_distance(test.images, n_pairs=config.sample.n_dataset_pairs, seed=config.sample.seed)
    summaries = []
    for k, name in enumerate(rows):
        target = test.images[targets[name]]
        extra = target if config.candidates_from == "start+target" and name == "other" else None
        comp, facts = _composition(start, extra, config)
        with torch.no_grad():
            pre = preactivation(model, target.unsqueeze(0), config.layer)[0]
        units = nonpositive_units(pre, v)
        logits0 = initial_logits(comp.candidates.shape[0], comp.n_candidates, own=config.own_logit)
        comp_dev = comp.to(device)
        result = solve_gradient(
            model, config.layer, pre.expand(v, -1), logits0.expand(v, -1, -1).clone(), units,
            config=config.gradient, device=device,
            progress=lambda s, n, _d, name=name: progress(f"vertices ({name})", s, n),
            decode=lambda theta, comp_dev=comp_dev: compose(theta, comp_dev),
            regularizer=lambda theta, comp_dev=comp_dev: config.tv_weight * weight_tv(theta, comp_dev),
        )
        init_image = compose(logits0[None], comp)[0]
        part = slice(0, v)
        solver = {
            "seconds": result.seconds,
            "steps": result.steps[part].tolist(),
            "converged": bool(result.converged[part].all()),
            "outcomes": ["converged" if c else "max_steps" for c in result.converged[part].tolist()],
        }
        attrs = {
            "experiment": config.name,
            "row": k,
            "model": f"mnist-{config.train.arch}",
            "model_source": checkpoint_source(checkpoint, meta["sha256"]),
            "checkpoint": checkpoint,
            "checkpoint_sha256": meta["sha256"],
            "test_accuracy": meta["test_accuracy"],
            "layer": config.layer,
            "method": "patches",
            "init": "start-composition",
            "loss": config.gradient.loss,
            "row_kind": name,
            "target_index": targets[name],
            "init_index": examples["target_index"],
            "units": units.tolist(),
            "dataset_avg_distance": distance,
            "pixel_scale": 1.0,
            "composition": {"size": config.patch.size, "stride": config.patch.stride,
                            "candidates": comp.n_candidates, "own_logit": config.own_logit,
                            "candidates_from": "start" if extra is None else "start+target"},
            "index_build_seconds": index_meta.build_seconds,
            **facts,
            "solver": solver,
            "sampler": config.sample.sampler,
            "config": config.to_dict(),
            "config_digest": config.digest(),
        }
        write_row(
            config.results_root, config.name, k,
            {
                "vertices": result.vertices[part].numpy().astype(np.float32),
                "target": target.numpy().astype(np.float32),
                "init": init_image.numpy().astype(np.float32),
                "logits": result.params[part].numpy().astype(np.float32),
            },
            attrs,
        )
        summaries.append({"row": k, "method": "patches", "init": name, **solver})
    return summaries


def evaluate_row(row: int, *, config: PatchExperiment) -> dict[str, Any]:
    return evaluation.evaluate_row(
        config.results_root, config.name, row, sample=config.sample, device=resolve_device(config.device)
    )


def write_outputs(*, config: PatchExperiment) -> dict[str, str]:
    return evaluation.write_outputs(
        config.results_root, config.name,
        title=f"{config.name}: patch compositions colliding at {config.layer} (boxes: largest differences)",
    )


def run(*, config: PatchExperiment, progress: Progress = _noop, scheduler: Any = "threads") -> dict[str, Any]:
    """The whole experiment in plain Python, stage after stage, as the flow runs it."""
    start = time.perf_counter()
    prepare_data(config=config)
    trained = train_model(config=config, progress=progress)
    examples = pick_examples(trained["checkpoint"], config=config)
    build_patches(config=config, scheduler=scheduler, progress=progress)
    build_index(config=config, progress=progress)
    solve_rows(trained["checkpoint"], examples, config=config, progress=progress)
    for r in range(len(config.rows)):
        evaluate_row(r, config=config)
        progress("evaluate", r + 1, len(config.rows))
    outputs = write_outputs(config=config)
    return {**outputs, "test_accuracy": trained["test_accuracy"], "seconds": time.perf_counter() - start}
