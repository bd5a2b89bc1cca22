"""The patch-composition experiment (paper §4, Tables 5-6).

Offline by default on MNIST with LeNet-5; on an ImageNet-style folder with VGG-16 as
in the paper (``dataset="folder"``). Stages, each a plain function of keys and
``*, config`` as in :mod:`collide.mnist`: prepare, model (train or find weights), the
patch store (Dask into Zarr), the kNN index, the composition logits of each row,
evaluation, outputs. What differs between the two datasets is in
:mod:`collide.patch_sources`.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from collide import evaluation, mnist
from collide import patch_sources as sources
from collide.compose import Composition, compose, initial_logits, weight_tv, window_patches
from collide.config import PatchExperiment, resolve_device
from collide.knn import PatchIndex, StaleIndexError, as_vectors, exact_knn, recall_at_k
from collide.models import load_checkpoint, load_model_source
from collide.objective import nonpositive_units
from collide.patches import build_store, open_store, sample_ids
from collide.store import write_row
from collide.taps import preactivation
from collide.vertices import solve_gradient

Progress = mnist.Progress
_noop = mnist._noop


def validate(*, config: PatchExperiment) -> None:
    sources.validate(config=config)


def prepare_data(*, config: PatchExperiment) -> dict[str, Any]:
    return sources.prepare(config=config)


def train_model(*, config: PatchExperiment, progress: Progress = _noop) -> dict[str, Any]:
    """The classifier, as a model source (checkpoint or VGG-16 weights) and its accuracy."""
    return sources.model(config=config, progress=progress)


def pick_examples(model_source: dict[str, Any], *, config: PatchExperiment) -> dict[str, Any]:
    return sources.examples(model_source, config=config)


def _store_path(config: PatchExperiment) -> Path:
    origin = config.data_root if config.dataset == "mnist" else [config.image_root, config.image_size]
    key = json.dumps({"patch": asdict(config.patch), "data": origin}, sort_keys=True)
    return Path(config.cache_root) / f"{config.dataset}-patches-{hashlib.sha256(key.encode()).hexdigest()[:12]}.zarr"


def build_patches(*, config: PatchExperiment, scheduler: Any = "threads", progress: Progress = _noop) -> dict[str, Any]:
    """Patches of ``patch.share`` of each class's images, into a resumable Zarr store."""
    corpus = sources.corpus(config=config)
    ids = sample_ids(corpus.labels, config.patch.share, config.patch.seed)
    return build_store(
        _store_path(config), ids.tolist(), corpus.loader, image_shape=corpus.image_shape, config=config.patch,
        source=corpus.description, scheduler=scheduler, progress=progress,
    )


def _index_path(config: PatchExperiment) -> Path:
    key = hashlib.sha256(json.dumps(asdict(config.knn), sort_keys=True).encode()).hexdigest()[:12]
    return _store_path(config).with_suffix(f".index-{key}.pkl")


def build_index(*, config: PatchExperiment, progress: Progress = _noop) -> dict[str, Any]:
    """The pynndescent index over the store, persisted next to it; reused when present."""
    path = _index_path(config)
    if path.is_file():
        try:
            index = PatchIndex.load(path)
            return {"index": str(path), "build_seconds": index.build_seconds, "reused": True}
        except StaleIndexError:
            pass  # rebuilt below and saved over it

    store = open_store(_store_path(config))
    patches = store["patches"][...]
    index = PatchIndex.build(patches, config=config.knn, progress=progress)
    index.save(path)
    return {"index": str(path), "build_seconds": index.build_seconds, "reused": False}


def _neighbours(
    image: torch.Tensor, index: PatchIndex, patches: Any, config: PatchExperiment
) -> tuple[torch.Tensor, dict[str, Any]]:
    """The k nearest store patches of each window of ``image``, and how well they were found.

    Shapes:
        image: (C, H, W) -> (G, k, C, p, p) in [0, 1]
    """
    own = window_patches(image, config.patch.size, config.patch.stride)
    queries = own.flatten(1).numpy().astype(np.float32)
    t0 = time.perf_counter()
    idx, dist = index.query(queries, config.knn.k, corpus=patches if index.basis is not None else None)
    query_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    _, exact = exact_knn(queries, patches, config.knn.k, rows=index.items)
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
        "index_build_seconds": index.build_seconds,
    }
    return found.view(len(idx), config.knn.k, *own.shape[1:]), facts


def solve_rows(
    model_source: dict[str, Any], examples: dict[str, Any], *, config: PatchExperiment, progress: Progress = _noop
) -> list[dict[str, Any]]:
    """Optimise the composition logits of each row's vertices (one batch per row: rows
    may have different candidate sets)."""
    model = load_model_source(model_source)
    accuracy = None
    if model_source["kind"] == "checkpoint":
        accuracy = load_checkpoint(model_source["path"])[1]["test_accuracy"]
    start = sources.image(examples["start"], config=config)
    patches = open_store(_store_path(config))["patches"]
    index = PatchIndex.load(_index_path(config))
    own = window_patches(start, config.patch.size, config.patch.stride)[:, None]
    near, facts = _neighbours(start, index, patches, config)
    v, rows = config.n_vertices, list(config.rows)
    targets = {"self": examples["start"], "other": examples["other"]}
    device = resolve_device(config.device)
    distance, scale = sources.dataset_distance(config=config)
    summaries = []
    for k, name in enumerate(rows):
        target = sources.image(targets[name], config=config)
        # Candidates of every window: the start's own patch first, then its neighbours,
        # and with "start+target" the other target's own patch and neighbours too.
        parts = [own, near]
        widened = config.candidates_from == "start+target" and name == "other"
        if widened:
            theirs = window_patches(target, config.patch.size, config.patch.stride)[:, None]
            parts += [theirs, _neighbours(target, index, patches, config)[0]]
        comp = Composition(torch.cat(parts, 1).float(), tuple(start.shape), config.patch.stride)
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
        solver = result.summary()
        attrs = {
            "experiment": config.name,
            "row": k,
            "model": _model_name(model_source, config),
            "model_source": model_source,
            "test_accuracy": accuracy,
            "layer": config.layer,
            "method": "patches",
            "init": "start-composition",
            "loss": config.gradient.loss,
            "row_kind": name,
            "target_index": targets[name],
            "init_index": examples["start"],
            "units": units.tolist(),
            "dataset_avg_distance": distance,
            "pixel_scale": scale,
            "composition": {"size": config.patch.size, "stride": config.patch.stride,
                            "candidates": comp.n_candidates, "own_logit": config.own_logit,
                            "candidates_from": "start+target" if widened else "start"},
            **facts,
            "solver": solver,
            "sampler": config.sample.sampler,
            "config": config.to_dict(),
            "config_digest": config.digest(),
        }
        write_row(
            config.results_root, config.name, k,
            {
                "vertices": result.vertices.numpy().astype(np.float32),
                "target": target.numpy().astype(np.float32),
                "init": init_image.numpy().astype(np.float32),
                "logits": result.params.numpy().astype(np.float32),
            },
            attrs,
        )
        summaries.append({"row": k, "method": "patches", "init": name, **solver})
    return summaries


def _model_name(source: dict[str, Any], config: PatchExperiment) -> str:
    if config.dataset == "mnist":
        return f"mnist-{config.train.arch}"
    return "vgg16-random" if source.get("random") else "vgg16-imagenet"


# Every experiment evaluates and writes its rows the same way, from the store.
evaluate_row = evaluation.evaluate_experiment_row
write_outputs = evaluation.write_experiment_outputs


def run(*, config: PatchExperiment, progress: Progress = _noop, scheduler: Any = "threads") -> dict[str, Any]:
    """The whole experiment in plain Python, stage after stage, as the flow runs it."""
    start = time.perf_counter()
    prepare_data(config=config)
    trained = train_model(config=config, progress=progress)
    examples = pick_examples(trained["model_source"], config=config)
    build_patches(config=config, scheduler=scheduler, progress=progress)
    build_index(config=config, progress=progress)
    solve_rows(trained["model_source"], examples, config=config, progress=progress)
    for r in range(len(config.rows)):
        evaluate_row(r, config=config)
        progress("evaluate", r + 1, len(config.rows))
    outputs = write_outputs(config=config)
    return {**outputs, "test_accuracy": trained["test_accuracy"],
            "random_weights": bool(trained["model_source"].get("random")), "seconds": time.perf_counter() - start}
