"""The patch-composition experiment (paper §4, Tables 5-6).

Offline by default on MNIST with LeNet-5; on an ImageNet-style folder with VGG-16 as
in the paper (``dataset="folder"``). Stages, each a plain function of keys and
``*, config`` as in :mod:`collide.experiments.mnist`: prepare, model (train or find weights), the
patch store (Dask into Zarr), the kNN index, the composition logits of each row,
evaluation, outputs. What differs between the two datasets is in
:mod:`collide.experiments.patch_sources`.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from collide._io import json_digest
from collide.config import PatchExperiment, resolve_device
from collide.errors import ConfigError
from collide.experiments import mnist
from collide.experiments import patch_sources as sources
from collide.models.zoo import load_checkpoint, load_model_source
from collide.objective import nonpositive_units
from collide.patches.compose import Composition, candidate_share, compose, initial_logits, weight_tv, window_patches
from collide.patches.extract import build_store, open_store, sample_ids
from collide.patches.knn import PatchIndex, StaleIndexError, as_vectors, exact_knn, recall_at_k
from collide.precision import full_precision
from collide.results import evaluation
from collide.results.store import write_row
from collide.solvers.gradient import solve_gradient
from collide.taps import preactivation
from collide.validity import criterion_for

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
    origin_key = {"patch": asdict(config.patch), "data": origin}
    return Path(config.cache_root) / f"{config.dataset}-patches-{json_digest(origin_key, 12)}.zarr"


def build_patches(*, config: PatchExperiment, scheduler: Any = "threads", progress: Progress = _noop) -> dict[str, Any]:
    """Patches of ``patch.share`` of each class's images, into a resumable Zarr store."""
    corpus = sources.corpus(config=config)
    ids = sample_ids(corpus.labels, config.patch.share, config.patch.seed)
    return build_store(
        _store_path(config), ids.tolist(), corpus.loader, image_shape=corpus.image_shape, config=config.patch,
        source=corpus.description, scheduler=scheduler, progress=progress,
    )


def _index_path(config: PatchExperiment) -> Path:
    key = json_digest(asdict(config.knn), 12)
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


# In ``candidate_rows``: the start image's own window patch, which is no store row.
OWN_PATCH = -1


@dataclass(frozen=True)
class _Neighbours:
    """The k nearest store patches of each window of one image, as the index found them.

    Shapes:
        rows: (G, k) store rows; found, exact: (G, k) distances of the index's answers
        and of the exact ones, each row ascending
    """

    rows: np.ndarray
    found: np.ndarray
    exact: np.ndarray
    seconds: float
    exact_seconds: float


def _read(patches: Any, rows: np.ndarray) -> np.ndarray:
    """uint8 patches at sorted, distinct ``rows`` of a Zarr or numpy array."""
    return np.asarray(patches.oindex[rows] if hasattr(patches, "oindex") else patches[rows])


def _as_uint8(windows: torch.Tensor) -> np.ndarray:
    """[0, 1] patches as the store holds them. (n, C, p, p) -> uint8"""
    return (windows * 255).round().clamp(0, 255).to(torch.uint8).numpy()


def _neighbours(
    image: torch.Tensor, index: PatchIndex, patches: Any, config: PatchExperiment,
    *, exclude: frozenset[bytes] = frozenset(),
) -> _Neighbours:
    """The ``knn.k`` nearest store patches of each window of ``image``, none in ``exclude``.

    An excluded patch is dropped from the answers and the next one moves up, in the
    index's answers and the exact oracle's alike, so recall compares like with like.
    The index answers distinct patches, so asking ``len(exclude)`` more is enough.

    Shapes:
        image: (C, H, W) in [0, 1]
    """
    k = config.knn.k
    queries = window_patches(image, config.patch.size, config.patch.stride).flatten(1).numpy().astype(np.float32)
    ask = max(k, min(k + len(exclude), len(index.items))) if exclude else k
    t0 = time.perf_counter()
    idx, dist = index.query(queries, ask, corpus=patches if index.basis is not None else None)
    seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    exact_idx, exact = exact_knn(queries, patches, ask, rows=index.items)
    exact_seconds = time.perf_counter() - t0
    if exclude:
        idx, dist = _without(idx, dist, patches, exclude, k)
        _, exact = _without(exact_idx, exact, patches, exclude, k)
    return _Neighbours(idx, dist, exact, seconds, exact_seconds)


def _without(
    idx: np.ndarray, dist: np.ndarray, patches: Any, exclude: frozenset[bytes], k: int
) -> tuple[np.ndarray, np.ndarray]:
    """The first k answers of each query whose patch is not in ``exclude``. (Q, M) -> (Q, k)"""
    unique = np.unique(idx)
    banned = np.array([p.tobytes() in exclude for p in _read(patches, unique)])[np.searchsorted(unique, idx)]
    order = np.argsort(banned, axis=1, kind="stable")[:, :k]
    if np.take_along_axis(banned, order, 1).any():
        raise ConfigError(f"fewer than k={k} store patches remain once the target's own are left out: lower k")
    return np.take_along_axis(idx, order, 1), np.take_along_axis(dist, order, 1)


def _composition(start: torch.Tensor, candidate_rows: np.ndarray, patches: Any, config: PatchExperiment) -> Composition:
    """Every window's candidates: the start's own patch where ``OWN_PATCH``, else store rows.

    Shapes:
        start: (C, H, W); candidate_rows: (G, K) -> candidates (G, K, C, p, p) float32
    """
    own = window_patches(start, config.patch.size, config.patch.stride)  # (G, C, p, p)
    stored = candidate_rows != OWN_PATCH
    unique = np.unique(candidate_rows[stored])
    table = torch.from_numpy(as_vectors(_read(patches, unique))).view(-1, *own.shape[1:])
    candidates = own[:, None].expand(-1, candidate_rows.shape[1], -1, -1, -1).clone()
    candidates[torch.from_numpy(stored)] = table[torch.from_numpy(np.searchsorted(unique, candidate_rows[stored]))]
    return Composition(candidates.float(), tuple(start.shape), config.patch.stride)


def _distances(vertices: torch.Tensor, point: torch.Tensor) -> np.ndarray:
    """L2 distance of each vertex to ``point`` in input units, float64. (V, C, H, W) -> (V,)"""
    return (vertices.double() - point.double()).flatten(1).norm(dim=1).numpy()


def solve_rows(
    model_source: dict[str, Any], examples: dict[str, Any], *, config: PatchExperiment, progress: Progress = _noop
) -> list[dict[str, Any]]:
    """Optimise the composition logits of each row's vertices (one batch per row: rows
    may have different candidate sets).

    Besides the storage contract's arrays, each row group holds ``start`` (C, H, W),
    ``logits`` (V, G, K), ``candidate_rows`` (G, K) (store row of every candidate,
    ``OWN_PATCH`` for the start's own window patch), ``candidate_from_target`` (K,)
    (candidates that answer a query of the target's windows) and, per vertex,
    ``distance_to_start`` and ``distance_to_target`` (V,), L2 in [0, 1] input units.
    Row attrs add the means of those distances over all vertices (``*_all``: the
    evaluation's ``mean_distance_to_target`` counts valid vertices only), the share of
    composition weight on target-derived candidates (``target_weight_share``, mean over
    pixels and vertices) and recall@k over every kNN query the row's candidates came
    from (``knn_recall``, ``knn_queries``).
    """
    model = load_model_source(model_source)
    accuracy = None
    if model_source["kind"] == "checkpoint":
        accuracy = load_checkpoint(model_source["path"])[1]["test_accuracy"]
    start = sources.image(examples["start"], config=config)
    patches = open_store(_store_path(config))["patches"]
    index = PatchIndex.load(_index_path(config))
    near = _neighbours(start, index, patches, config)
    n_windows = len(near.rows)
    v, rows = config.n_vertices, list(config.rows)
    targets = {"self": examples["start"], "other": examples["other"]}
    device = resolve_device(config.device)
    distance, scale = sources.dataset_distance(config=config)
    summaries = []
    for k, name in enumerate(rows):
        target = sources.image(targets[name], config=config)
        # The paper's candidates: the start's own patch and its neighbours. The variant
        # adds the target's neighbours, never the target's own patches (nor copies of
        # them): with those, one-hot weights rebuild the target.
        queried = [near]
        widened = config.candidates_from == "start+target-neighbours" and name == "other"
        if widened:
            own_bytes = frozenset(p.tobytes() for p in _as_uint8(
                window_patches(target, config.patch.size, config.patch.stride)))
            queried.append(_neighbours(target, index, patches, config, exclude=own_bytes))
        candidate_rows = np.concatenate([np.full((n_windows, 1), OWN_PATCH), *(q.rows for q in queried)], 1)
        from_target = np.zeros(candidate_rows.shape[1], dtype=bool)
        from_target[1 + config.knn.k :] = widened
        comp = _composition(start, candidate_rows, patches, config)
        with torch.no_grad():
            pre = preactivation(model, target.unsqueeze(0), config.layer)[0]
        units = nonpositive_units(pre, v)
        logits0 = initial_logits(comp.candidates.shape[0], comp.n_candidates, own=config.own_logit)
        comp_dev = comp.to(device)
        with full_precision():
            result = solve_gradient(
                model, config.layer, pre.expand(v, -1), logits0.expand(v, -1, -1).clone(), units,
                config=config.gradient, device=device,
                progress=lambda s, n, _d, name=name: progress(f"vertices ({name})", s, n),
                decode=lambda theta, comp_dev=comp_dev: compose(theta, comp_dev),
                regularizer=lambda theta, comp_dev=comp_dev: config.tv_weight * weight_tv(theta, comp_dev),
            )
        init_image = compose(logits0[None], comp)[0]
        to_start, to_target = _distances(result.vertices, start), _distances(result.vertices, target)
        with torch.no_grad():
            share = candidate_share(result.params, comp, torch.from_numpy(from_target))
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
            "criterion": criterion_for("gradient", config.gradient).to_dict(),
            "row_kind": name,
            "target_index": targets[name],
            "init_index": examples["start"],
            "units": units.tolist(),
            "dataset_avg_distance": distance,
            "pixel_scale": scale,
            "composition": {"size": config.patch.size, "stride": config.patch.stride,
                            "candidates": comp.n_candidates, "own_logit": config.own_logit,
                            "candidates_from": "start+target-neighbours" if widened else "start",
                            "target_candidates": int(from_target.sum())},
            **_knn_facts(queried, index, patches, config),
            "target_weight_share": float(share.mean()),
            "mean_distance_to_start_all": float(to_start.mean()),
            "mean_distance_to_target_all": float(to_target.mean()),
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
                "start": start.numpy().astype(np.float32),
                "logits": result.params.numpy().astype(np.float32),
                "candidate_rows": candidate_rows.astype(np.int64),
                "candidate_from_target": from_target,
                "distance_to_start": to_start,
                "distance_to_target": to_target,
            },
            attrs,
        )
        summaries.append({"row": k, "method": "patches", "init": name, **solver})
    return summaries


def _knn_facts(queried: list[_Neighbours], index: PatchIndex, patches: Any, config: PatchExperiment) -> dict[str, Any]:
    """Recall@k and timings over every query a row's candidates came from."""
    return {
        "knn_recall": recall_at_k(np.concatenate([q.found for q in queried]),
                                  np.concatenate([q.exact for q in queried])),
        "knn_queries": int(sum(len(q.rows) for q in queried)),
        "knn_k": config.knn.k,
        "knn_query_seconds": sum(q.seconds for q in queried),
        "exact_query_seconds": sum(q.exact_seconds for q in queried),
        "n_patches": int(patches.shape[0]),
        "index_build_seconds": index.build_seconds,
    }


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
