"""The patch-composition experiment (paper §4, Tables 5-6).

Offline by default on MNIST with LeNet-5; on an ImageNet-style folder with VGG-16 as
in the paper (``dataset="folder"``). ``prepare`` trains (or finds) the model, extracts
the patch store (Dask into Zarr) and builds the kNN index; each start image is one
polytope job of :mod:`collide.experiments.engine`, whose rows are
``collide.find_polytope`` over composition logits. What differs between the two
datasets is in :mod:`collide.experiments.patch_sources`.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from collide._io import cache_lock, json_digest
from collide.api import find_polytope
from collide.config import (
    resolve_device,
)
from collide.errors import ConfigError
from collide.experiments import patch_sources as sources
from collide.experiments.configs.patches import PatchExperiment
from collide.experiments.contract import Job, Progress, job, no_progress
from collide.models.zoo import load_checkpoint, load_model_source
from collide.patches.compose import ComposedPatches, Composition, candidate_share, window_patches
from collide.patches.extract import build_store, open_store, sample_ids
from collide.patches.index_file import UnsafeIndexError
from collide.patches.knn import PatchIndex, StaleIndexError, as_vectors, exact_knn, recall_at_k
from collide.results.records import RowRecord

NAME = "patches"
Config = PatchExperiment


def layers(config: PatchExperiment) -> list[str]:
    return sources.layers(config=config)


def validate(*, config: PatchExperiment) -> None:
    sources.validate(config=config)


def _store_path(config: PatchExperiment) -> Path:
    origin = config.data_root if config.dataset == "mnist" else [config.image_root, config.image_size]
    key = json_digest({"patch": asdict(config.patch), "data": origin}, 12)
    return Path(config.cache_root) / f"{config.dataset}-patches-{key}.zarr"


def build_patches(*, config: PatchExperiment, scheduler: Any = "threads", progress: Progress = no_progress
                  ) -> dict[str, Any]:
    """Patches of ``patch.share`` of each class's images, into a resumable Zarr store."""
    corpus = sources.corpus(config=config)
    ids = sample_ids(corpus.labels, config.patch.share, config.patch.seed)
    return build_store(
        _store_path(config), ids.tolist(), corpus.loader, image_shape=corpus.image_shape, config=config.patch,
        source=corpus.description, scheduler=scheduler, progress=progress,
    )


def _index_path(config: PatchExperiment) -> Path:
    return _store_path(config).with_suffix(f".index-{json_digest(asdict(config.knn), 12)}.npz")


def build_index(*, config: PatchExperiment, progress: Progress = no_progress) -> dict[str, Any]:
    """The kNN index over the store (exact search for a small one), persisted next to it;
    reused when present."""
    path = _index_path(config)
    for pickled in path.parent.glob(f"{_store_path(config).stem}.index-*.pkl"):
        pickled.unlink()  # collide before format 4 pickled its indexes: never loaded, so removed
    if path.is_file():
        try:
            index = PatchIndex.load(path)
            return {"index": str(path), "build_seconds": index.build_seconds, "reused": True,
                    "distinct": len(index.items)}
        except (StaleIndexError, UnsafeIndexError):
            pass  # rebuilt below and saved over it: nothing in the old file was run
    store = open_store(_store_path(config))
    index = PatchIndex.build(store["patches"][...], config=config.knn, progress=progress)
    index.save(path)
    return {"index": str(path), "build_seconds": index.build_seconds, "reused": False, "distinct": len(index.items)}


def prepare(*, config: PatchExperiment, progress: Progress = no_progress, scheduler: Any = "threads"
            ) -> dict[str, Any]:
    """Data, model, patch store and index (each reused when on disk), the start images."""
    sources.prepare(config=config)
    trained = sources.model(config=config, progress=progress)
    # Runs of other experiments (other names) may share this store and index: one builds,
    # the others wait and reuse it, never rebuilding it under a writer.
    with cache_lock(_store_path(config), what=f"the patch store {_store_path(config)}"):
        store = build_patches(config=config, scheduler=scheduler, progress=progress)
        index = build_index(config=config, progress=progress)
    distance, scale = sources.dataset_distance(config=config)
    source = trained["model_source"]
    return {
        **trained, "random_weights": bool(source.get("random")), "store": store, "index": index,
        "targets": sources.examples(source, config=config), "dataset_avg_distance": distance, "pixel_scale": scale,
        "inputs": {"model": source, "patches": store["n_patches"]},
    }


def plan(context: dict[str, Any], *, config: PatchExperiment) -> list[Job]:
    """One job per start image, writing its ``rows`` (start ``k`` owns rows ``k*len(rows)`` on)."""
    distinct = context["index"]["distinct"]
    if config.knn.k > distinct:  # found here, before the run record or any row is written
        raise ConfigError(f"knn.k={config.knn.k} is larger than the store's {distinct} distinct patches "
                          "(larger than the store): lower knn.k")
    n = len(config.rows)
    return [job(f"start-{k}", list(range(k * n, (k + 1) * n)), examples=examples)
            for k, examples in enumerate(context["targets"])]


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


def solve(job: Job, context: dict[str, Any], *, config: PatchExperiment,
          progress: Progress = no_progress) -> None:
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
    source = context["model_source"]
    model = load_model_source(source)
    accuracy = load_checkpoint(source["path"])[1]["test_accuracy"] if source["kind"] == "checkpoint" else None
    examples = job.spec["examples"]
    start = sources.image(examples["start"], config=config)
    patches = open_store(_store_path(config))["patches"]
    index = PatchIndex.load(_index_path(config))
    near = _neighbours(start, index, patches, config)
    n_windows = len(near.rows)
    targets = {"self": examples["start"], "other": examples["other"]}
    for row, name in zip(job.rows, config.rows, strict=True):
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
        poly = find_polytope(
            model, config.layer, target, init=start, n_vertices=config.n_vertices, method="gradient",
            device=resolve_device(config.device), config=config.gradient,
            param=ComposedPatches(comp, own_logit=config.own_logit, tv_weight=config.tv_weight),
            progress=lambda s, n, _d, name=name: progress(f"vertices ({name})", s, n),
        )
        to_start, to_target = _distances(poly.vertices, start), _distances(poly.vertices, target)
        with torch.no_grad():
            share = candidate_share(poly.params, comp, torch.from_numpy(from_target))
        RowRecord.of(
            poly, config=config, row=row, init="start-composition", method="patches", loss=config.gradient.loss,
            model=_model_name(source, config), model_source=source,
            dataset_avg_distance=context["dataset_avg_distance"], pixel_scale=context["pixel_scale"],
            extra_attrs={
                "test_accuracy": accuracy, "row_kind": name, "target_index": targets[name],
                "init_index": examples["start"],
                "composition": {"size": config.patch.size, "stride": config.patch.stride,
                                "candidates": comp.n_candidates, "own_logit": config.own_logit,
                                "candidates_from": "start+target-neighbours" if widened else "start",
                                "target_candidates": int(from_target.sum())},
                **_knn_facts(queried, index, patches, config),
                "target_weight_share": float(share.mean()),
                "mean_distance_to_start_all": float(to_start.mean()),
                "mean_distance_to_target_all": float(to_target.mean()),
            },
            extra_arrays={
                "start": start.numpy().astype(np.float32),
                "logits": poly.params.numpy().astype(np.float32),  # type: ignore[union-attr]
                "candidate_rows": candidate_rows.astype(np.int64),
                "candidate_from_target": from_target,
                "distance_to_start": to_start,
                "distance_to_target": to_target,
            },
        ).write(config.results_root)


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
