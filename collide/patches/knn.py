"""Nearest patches: a pynndescent index, an exact oracle, shards, and recall.

Vectors are patches flattened to float32 in [0, 1]. The index may work on a PCA
projection; its candidates are then re-ranked by exact distance in the full space, so
the answers are true distances whichever space found them.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from collide.config import KnnConfig
from collide.errors import ConfigError, DataError
from collide.inputs import require_finite
from collide.patches.index_file import (
    nndescent_from_state,
    nndescent_state,
    read_index_file,
    write_index_file,
)
from collide.threads import torch_threads_kept

# Raised with each change to what a saved index holds, so older files are rebuilt.
# 3: shard items are named by their first row in the whole store (distinct across shards).
# 4: arrays and JSON in an .npz instead of a pickle (nothing loaded can run code).
INDEX_FORMAT = 4


def _pynndescent_version() -> str:
    """From the package metadata: importing pynndescent compiles numba code, which must not
    happen where it is not needed (an exact index), nor inside a Prefect flow that patches
    ``print`` (numba then fails to type pynndescent's thread functions for the whole process)."""
    from importlib.metadata import version

    return version("pynndescent")


class StaleIndexError(DataError):
    """A saved index from an older version of this module."""


def as_vectors(patches: np.ndarray) -> np.ndarray:
    """uint8 patches (n, C, p, p) -> float32 vectors (n, C*p*p) in [0, 1]."""
    return (np.asarray(patches).reshape(len(patches), -1).astype(np.float32)) / 255.0


def _check(queries: np.ndarray, n_corpus: int, k: int) -> None:
    if queries.ndim != 2:
        raise DataError(f"expected queries of shape (Q, D), got {queries.shape}")
    require_finite(queries, "the queries", fix="the query patches are not finite: check the images they came from")
    if k > n_corpus:
        raise ConfigError(f"k={k} is larger than the store ({n_corpus} patches): lower k")


def exact_knn(
    queries: np.ndarray, corpus: Any, k: int, *, rows: np.ndarray | None = None, chunk: int = 65536,
    query_block: int = 1024, device: str = "cpu",
) -> tuple[np.ndarray, np.ndarray]:
    """Brute force, chunk by chunk over the corpus, merging the running top k.

    ``corpus`` is anything sliceable into uint8 patches (a Zarr array, a numpy array),
    read ``chunk`` rows at a time, so it never needs to fit in memory. ``rows``
    (sorted) restricts the search to those rows, e.g. an index's distinct patches.
    Queries go ``query_block`` at a time: the distance block is queries x chunk floats.

    Shapes:
        queries: (Q, D) float32 -> indices (Q, k) int64, distances (Q, k) float32
    """
    _check(queries, corpus.shape[0], k)
    if len(queries) > query_block:
        parts = [exact_knn(queries[i : i + query_block], corpus, k, rows=rows, chunk=chunk,
                           query_block=query_block, device=device) for i in range(0, len(queries), query_block)]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    q = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32)).to(device)
    q_sq = (q * q).sum(1, keepdim=True)
    best_d = torch.full((len(q), k), float("inf"), device=device)
    best_i = torch.zeros((len(q), k), dtype=torch.long, device=device)
    if rows is not None and len(rows) < k:
        raise ConfigError(f"k={k} is larger than the {len(rows)} distinct patches searched: lower k")
    for start in range(0, corpus.shape[0], chunk):
        raw = np.asarray(corpus[start : start + chunk])
        ids = np.arange(start, start + len(raw))
        if rows is not None:
            ids = rows[(rows >= start) & (rows < start + len(raw))]
            raw = raw[ids - start]
            if len(ids) == 0:
                continue
        block = torch.from_numpy(as_vectors(raw)).to(device)
        d2 = (q_sq - 2 * q @ block.T + (block * block).sum(1)).clamp_min(0)
        d = torch.cat([best_d, d2], 1)
        i = torch.cat([best_i, torch.from_numpy(ids).to(device).expand(len(q), -1)], 1)
        best_d, pos = d.topk(k, dim=1, largest=False)
        best_i = i.gather(1, pos)
    # The expansion |q|² - 2q·x + |x|² loses digits for near neighbours (float32
    # cancellation); the winners' distances are recomputed directly.
    idx = best_i.cpu().numpy()
    unique = np.unique(idx)
    rows = as_vectors(_take(corpus, unique))[np.searchsorted(unique, idx)]  # (Q, k, D)
    dist = np.linalg.norm(rows - np.asarray(queries, dtype=np.float32)[:, None], axis=2)
    order = np.argsort(dist, axis=1, kind="stable")
    return np.take_along_axis(idx, order, 1), np.take_along_axis(dist, order, 1).astype(np.float32)


def recall_at_k(found: np.ndarray, exact: np.ndarray, *, rtol: float = 1e-5) -> float:
    """Share of answers as near as the exact k-th neighbour, from true distances.

    Patch corpora hold many identical patches (MNIST's blank background), so two
    correct answers can differ in which of the tied items they list; comparing
    distances instead of ids counts every tie as the hit it is.

    Shapes:
        found, exact: (Q, k) distances, each row sorted ascending
    """
    if found.shape != exact.shape:
        raise DataError(f"answers differ in shape: {found.shape} vs {exact.shape}")
    kth = exact[:, -1:]
    return float((found <= kth * (1 + rtol) + 1e-6).mean())


class _BruteForce:
    """Exact search with pynndescent's ``query`` signature, for stores too small to index."""

    def __init__(self, vectors: np.ndarray) -> None:
        self.vectors = vectors
        self.norms = (vectors.astype(np.float64) ** 2).sum(1)

    def query(self, q: np.ndarray, k: int, epsilon: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        q64 = q.astype(np.float64)
        d2 = (q64 ** 2).sum(1)[:, None] - 2 * q64 @ self.vectors.T.astype(np.float64) + self.norms[None]
        order = np.argsort(d2, axis=1, kind="stable")[:, :k]
        # The expansion ranks; the distances themselves are recomputed directly (no cancellation).
        dist = np.linalg.norm(self.vectors[order].astype(np.float64) - q64[:, None], axis=2)
        return order, dist.astype(np.float32)


def _nndescent_options(config: KnnConfig, n: int) -> dict[str, Any]:
    """NNDescent's keyword arguments for ``n`` vectors; a 0 in the config leaves
    pynndescent's default, which depends on ``n``."""
    import numba  # loaded with pynndescent already

    # numba refuses more threads than its pool holds (a thread per core unless
    # NUMBA_NUM_THREADS says otherwise): the default of 2 would fail on one core.
    options: dict[str, Any] = {"n_neighbors": min(config.n_neighbors, n - 1), "random_state": config.seed,
                               "n_jobs": min(config.n_jobs, numba.config.NUMBA_NUM_THREADS),
                               "low_memory": config.low_memory}
    for name in ("n_trees", "n_iters", "max_candidates"):
        if getattr(config, name):
            options[name] = getattr(config, name)
    return options


@dataclass
class _Shard:
    ids: np.ndarray  # first store row of each indexed item's patch, over the whole store
    index: Any  # pynndescent.NNDescent


def _digests(rows: np.ndarray) -> np.ndarray:
    """A 128-bit fingerprint of each patch, to find identical ones across shards.

    Shapes:
        rows: (n, ...) uint8 -> (n, 2) uint64
    """
    flat = np.ascontiguousarray(rows.reshape(len(rows), -1))
    joined = b"".join(hashlib.blake2b(row.tobytes(), digest_size=16).digest() for row in flat)
    return np.frombuffer(joined, dtype=np.uint64).reshape(len(flat), 2)


def _first_rows(digests: list[np.ndarray], rows: list[np.ndarray]) -> list[np.ndarray]:
    """Each item renamed to the first store row holding the same patch, in any shard."""
    flat, flat_rows = np.concatenate(digests), np.concatenate(rows)
    _, first, inverse = np.unique(flat, axis=0, return_index=True, return_inverse=True)
    named = flat_rows[first][inverse.ravel()]
    return np.split(named, np.cumsum([len(r) for r in rows])[:-1])


class PatchIndex:
    """Approximate kNN over a patch array, optionally sharded and PCA-reduced.

    Each distinct patch is indexed once per shard and named by its first row in the
    whole store, and answers merged from several shards are deduplicated by that name:
    a query's k answers are k distinct patches, however duplicates fall across shards.
    """

    def __init__(self, shards: list[_Shard], mean: np.ndarray | None, basis: np.ndarray | None,
                 n_items: int, config: KnnConfig, build_seconds: float) -> None:
        self.shards = shards
        self.mean = mean
        self.basis = basis
        self.n_items = n_items
        self.config = config
        self.build_seconds = build_seconds
        self.format = INDEX_FORMAT
        self._items = np.unique(np.concatenate([shard.ids for shard in shards]))

    @property
    def items(self) -> np.ndarray:
        """The store rows the index holds, one per distinct patch of the store, sorted."""
        return self._items

    @classmethod
    def build(cls, corpus: Any, *, config: KnnConfig,
              progress: Callable[[str, int, int], None] | None = None) -> PatchIndex:
        """Index ``corpus`` (uint8 patches, any sliceable array), shard by shard."""
        n = corpus.shape[0]
        if n < 2:
            raise DataError(f"the patch store holds {n} patch(es): nothing to index")
        brute = config.method == "exact" or (config.method == "auto" and n < config.exact_below)
        if not brute:
            from pynndescent import NNDescent  # numba compiles on first import: only when needed
        start = time.perf_counter()
        mean = basis = None
        if config.n_components:
            rng = np.random.default_rng(config.seed)
            sample = as_vectors(corpus[np.sort(rng.choice(n, size=min(n, 20000), replace=False))])
            mean = sample.mean(0)
            dims = min(config.n_components, sample.shape[1])
            _, _, vt = np.linalg.svd(sample - mean, full_matrices=False)
            basis = vt[:dims].T.astype(np.float32)
        bounds = np.linspace(0, n, config.shards + 1).astype(int)
        indexes, rows, digests = [], [], []
        for s, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
            raw = np.asarray(corpus[lo:hi])
            # Identical patches (MNIST's blank background: ~40% of it) form a clique at
            # distance 0 that traps graph search; one copy of each is indexed.
            _, first = np.unique(raw.reshape(len(raw), -1), axis=0, return_index=True)
            first = np.sort(first)
            vectors = as_vectors(raw[first])
            if basis is not None:
                vectors = ((vectors - mean) @ basis).astype(np.float32)
            if len(vectors) < 2:
                raise DataError(f"patches {lo}..{hi} of the store are all identical: nothing to index")
            if brute:
                nn: Any = _BruteForce(vectors)
            else:
                # numba launches its threads here (a prepared index's queries run serially),
                # and sets their count where torch reads its own.
                with torch_threads_kept():
                    nn = NNDescent(vectors, **_nndescent_options(config, len(vectors)))
                    nn.prepare()
            indexes.append(nn)
            rows.append(lo + first.astype(np.int64))
            # Fingerprints, not the patches, are kept across shards: memory stays one
            # shard's patches plus 16 bytes per distinct patch.
            if config.shards > 1:
                digests.append(_digests(raw[first]))
            if progress is not None and config.shards > 1:  # one shard is one step: no bar
                progress("index (shards)", s + 1, config.shards)
        if digests:
            rows = _first_rows(digests, rows)
        shards = [_Shard(ids, nn) for ids, nn in zip(rows, indexes, strict=True)]
        return cls(shards, mean, basis, n, config, time.perf_counter() - start)

    def query(self, queries: np.ndarray, k: int, *, corpus: Any = None) -> tuple[np.ndarray, np.ndarray]:
        """The k nearest items of each query, merged over shards.

        A PCA-reduced index needs ``corpus``: its ``rerank * k`` candidates are
        re-ranked by exact distance in the full space. A full-space index ignores it.

        Shapes:
            queries: (Q, D) float32 -> indices (Q, k) int64, distances (Q, k) float32
        """
        _check_query(queries, k, self.n_items, len(self.items), self.basis is not None, corpus)
        return _query_shards(self.shards, queries, k, mean=self.mean, basis=self.basis, config=self.config,
                             corpus=corpus)

    def save(self, path: str | Path) -> Path:
        """Write the index as arrays and JSON (:mod:`collide.patches.index_file`), atomically."""
        meta: dict[str, Any] = {
            "format": self.format, "pynndescent": _pynndescent_version(), "n_items": self.n_items,
            "config": asdict(self.config), "build_seconds": self.build_seconds, "shards": [],
        }
        arrays: dict[str, np.ndarray] = {}
        if self.basis is not None:
            arrays["mean"], arrays["basis"] = self.mean, self.basis
        for s, shard in enumerate(self.shards):
            arrays[f"s{s}.ids"] = shard.ids
            if isinstance(shard.index, _BruteForce):
                meta["shards"].append({"kind": "exact"})
                arrays[f"s{s}.vectors"] = shard.index.vectors
            else:
                state, parts = nndescent_state(shard.index, f"s{s}.")
                meta["shards"].append({"kind": "pynndescent", "state": state})
                arrays.update(parts)
        return write_index_file(path, meta, arrays)

    @staticmethod
    def load(path: str | Path) -> PatchIndex:
        """An index :meth:`save` wrote. A file from another collide or pynndescent version
        is :class:`StaleIndexError` (rebuild it); one that is not an index at all, or
        whose graph points outside its data, is refused before anything walks it."""
        meta, arrays = _read_checked(path)
        shards = [_read_shard(meta, arrays, s, path) for s in range(len(meta["shards"]))]
        mean = arrays["mean"] if "mean" in arrays else None
        basis = arrays["basis"] if "basis" in arrays else None
        return PatchIndex(shards, mean, basis, int(meta["n_items"]), KnnConfig(**meta["config"]),
                          float(meta["build_seconds"]))


class SavedIndex:
    """A saved index queried from its file, one shard in memory at a time.

    :meth:`PatchIndex.load` holds every shard's vectors and graph at once, which caps
    the store at what fits in RAM; here each shard is read, queried and dropped before
    the next, so the peak is one shard (plus the ids of all, 8 bytes per item). Answers
    equal the loaded index's exactly: both run :func:`_query_shards` on the same shards
    in the same order. Each query rereads the shards: it suits a few large batches.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        meta, arrays = _read_checked(self.path)
        self.n_items = int(meta["n_items"])
        self.config = KnnConfig(**meta["config"])
        self.mean = arrays["mean"] if "mean" in arrays else None
        self.basis = arrays["basis"] if "basis" in arrays else None
        self.n_shards = len(meta["shards"])
        self._items = np.unique(np.concatenate([arrays[f"s{s}.ids"] for s in range(self.n_shards)]))

    @property
    def items(self) -> np.ndarray:
        """The store rows the index holds, one per distinct patch of the store, sorted."""
        return self._items

    def _shards(self) -> Iterator[_Shard]:
        meta, arrays = _read_checked(self.path)
        for s in range(self.n_shards):
            yield _read_shard(meta, arrays, s, self.path)

    def query(self, queries: np.ndarray, k: int, *, corpus: Any = None) -> tuple[np.ndarray, np.ndarray]:
        """As :meth:`PatchIndex.query`, reading the shards from the file in turn.

        Shapes:
            queries: (Q, D) float32 -> indices (Q, k) int64, distances (Q, k) float32
        """
        _check_query(queries, k, self.n_items, len(self.items), self.basis is not None, corpus)
        return _query_shards(self._shards(), queries, k, mean=self.mean, basis=self.basis, config=self.config,
                             corpus=corpus)


def _read_checked(path: str | Path) -> tuple[dict[str, Any], Any]:
    """An index file's meta and (lazily read) arrays, refused when stale."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"no index at {path}: build it first")
    meta, arrays = read_index_file(path)
    if meta.get("format") != INDEX_FORMAT or meta.get("pynndescent") != _pynndescent_version():
        raise StaleIndexError(f"{path} was built by an older collide (or another pynndescent): "
                              "delete it, or rebuild it")
    return meta, arrays


def _read_shard(meta: dict[str, Any], arrays: Any, s: int, path: Path) -> _Shard:
    """Shard ``s`` of a saved index, bounds-checked before anything walks it."""
    spec = meta["shards"][s]
    ids = arrays[f"s{s}.ids"]
    if spec["kind"] == "exact":
        nn: Any = _BruteForce(arrays[f"s{s}.vectors"])
    else:
        nn = nndescent_from_state(spec["state"], arrays, f"s{s}.", str(path))
    if len(ids) != len(nn.vectors if spec["kind"] == "exact" else nn._raw_data):
        raise StaleIndexError(f"{path}: shard {s} names {len(ids)} items for data of another size: rebuild")
    if ids.size and not 0 <= ids.min() <= ids.max() < int(meta["n_items"]):
        raise StaleIndexError(f"{path}: shard {s} names store rows outside the store: rebuild")
    return _Shard(ids, nn)


def _check_query(queries: np.ndarray, k: int, n_items: int, n_distinct: int, projected: bool, corpus: Any) -> None:
    _check(queries, n_items, k)
    if k > n_distinct:
        raise ConfigError(f"k={k} is larger than the {n_distinct} distinct patches of the store: lower k")
    if projected and corpus is None:
        raise DataError("this index works on a PCA projection: pass corpus= so answers get true distances")


def _query_shards(shards: Iterable[_Shard], queries: np.ndarray, k: int, *, mean: np.ndarray | None,
                  basis: np.ndarray | None, config: KnnConfig, corpus: Any) -> tuple[np.ndarray, np.ndarray]:
    """Each shard's candidates, re-ranked in the full space when projected, merged.

    Shapes:
        queries: (Q, D) float32 -> indices (Q, k) int64, distances (Q, k) float32
    """
    rerank = basis is not None  # only a projection's distances need correcting
    want = k * (config.rerank if rerank else 1)
    q = np.asarray(queries, dtype=np.float32)
    if basis is not None:
        q = ((q - mean) @ basis).astype(np.float32)
    found_i, found_d = [], []
    for shard in shards:
        kk = min(want, len(shard.ids))
        i, d = shard.index.query(q, k=kk, epsilon=config.epsilon)
        found_i.append(shard.ids[i])
        found_d.append(d)
        # The loop name would hold this shard while a lazy source reads the next.
        del shard
    idx, dist = np.concatenate(found_i, 1), np.concatenate(found_d, 1)
    if rerank:
        dist = np.stack([_distances(corpus, row, qv) for row, qv in zip(idx, queries, strict=True)])
    return _merge(idx, dist, k)


def _distances(corpus: Any, rows: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Exact distances from ``query`` to the patches at ``rows``, each read once. (M,) -> (M,)"""
    unique, inverse = np.unique(rows, return_inverse=True)
    return np.linalg.norm(as_vectors(_take(corpus, unique)) - query, axis=1)[inverse.ravel()]


def _merge(idx: np.ndarray, dist: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest distinct items of each row of the shards' answers.

    A patch held by several shards comes back once from each, under one name and at
    one distance; all copies but one are dropped. Each shard answers with distinct
    items of its own, so at least k distinct ones remain whenever one shard gave k.

    Shapes:
        idx, dist: (Q, M) -> (Q, k), (Q, k) sorted by distance
    """
    by_id = np.argsort(idx, axis=1, kind="stable")
    sorted_ids = np.take_along_axis(idx, by_id, 1)
    repeat = np.zeros(idx.shape, dtype=bool)
    repeat[:, 1:] = sorted_ids[:, 1:] == sorted_ids[:, :-1]
    dist = dist.astype(np.float64, copy=True)
    np.put_along_axis(dist, by_id, np.where(repeat, np.inf, np.take_along_axis(dist, by_id, 1)), 1)
    order = np.argsort(dist, axis=1, kind="stable")[:, :k]
    best = np.take_along_axis(dist, order, 1)
    if not np.isfinite(best).all():
        raise DataError(f"the shards found fewer than k={k} distinct patches for some query")
    return np.take_along_axis(idx, order, 1), best.astype(np.float32)


def _take(corpus: Any, rows: np.ndarray) -> np.ndarray:
    """Rows of a numpy or Zarr array by integer index, in the order given."""
    order = np.argsort(rows)
    if hasattr(corpus, "oindex"):
        picked = corpus.oindex[rows[order]]
    else:
        picked = np.asarray(corpus)[rows[order]]
    out = np.empty_like(picked)
    out[order] = picked
    return out
