"""Item 3: the pynndescent patch index against exact chunked search.

Corpora are real MNIST patches: 8x8 windows at stride 4 of the training images, the
first ``n`` of them. Queries are test-image patches: the 36 windows of one image (the
patch experiment's workload) and the first 100,000 test patches. Both sides search the
same rows, each distinct patch once (``rows=index.items``), and recall@10 is tie-aware.

Each (size, method) runs in a fresh child process so its peak resident memory is its
own. Exact search of 100,000 queries costs hours at 1e6 patches on two cores (it is
linear in the number of queries: every query block scans the whole corpus), so it runs
on a fixed sample of ``N_EXACT`` of those queries and is scaled up linearly; the
results say so, and recall is measured on that sample.

At ``COMPARE_N`` patches the build with today's reference settings (``REFERENCE``)
and with the defaults (``CONFIG``) run in the same run, each in its own child, and the
build-time ratio is reported with both recalls. A sharded index is saved there too and
queried twice, each in a fresh child: loaded whole (:meth:`PatchIndex.load`) and from
its file one shard at a time (:class:`SavedIndex`); their answers must be equal, and
their peak memory is compared. The load average is noted beside every child.
``knn_grid.json`` is the grid the defaults were chosen from (measured once, at 3e5
patches, with its load averages; rerun with ``python -m benchmarks.knn grid``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from collide.config import KnnConfig

SIZES = (10_000, 100_000, 1_000_000)
K = 10
N_QUERIES = 100_000
N_EXACT = 2048
# Exact search: queries per pass. Its merge holds (block, 65536) distances and ids, about
# 12 bytes each: 1024 keeps that near 0.8 GB.
QUERY_BLOCK = 1024
CONFIG = KnnConfig(k=K, method="pynndescent")
# The settings before the build was tuned: the reference of the ratio.
REFERENCE = dataclasses.replace(CONFIG, n_neighbors=30, n_jobs=1, n_trees=0, n_iters=0, max_candidates=0,
                                low_memory=True)
COMPARE_N = 1_000_000
SHARDS = 4
GRID_FILE = Path(__file__).with_name("knn_grid.json")
GRID_N = 300_000
# Each entry changes today's settings; PCA entries re-rank in the full space.
GRID = ({}, {"n_jobs": 2}, {"n_neighbors": 20}, {"n_neighbors": 15}, {"n_trees": 8},
        {"n_neighbors": 20, "n_trees": 8}, {"n_neighbors": 15, "n_trees": 8}, {"max_candidates": 20},
        {"low_memory": False}, {"n_iters": 8}, {"n_components": 16},
        {"n_neighbors": 20, "n_trees": 8, "n_jobs": 2}, {"n_neighbors": 15, "n_trees": 8, "n_jobs": 2})


def corpus(n: int) -> np.ndarray:
    from benchmarks.common import train_images
    from collide.patches.extract import extract

    patches, _ = extract(train_images(limit=-(-n // 36)), 8, 4)
    return np.ascontiguousarray(patches[:n])


def queries() -> tuple[np.ndarray, np.ndarray]:
    """One image's windows (36, 64) and the bulk workload (N_QUERIES, 64), as float vectors."""
    from benchmarks.common import test_images
    from collide.patches.extract import extract
    from collide.patches.knn import as_vectors

    patches, _ = extract(test_images(limit=-(-N_QUERIES // 36)), 8, 4)
    return as_vectors(patches[:36]), as_vectors(patches[:N_QUERIES])


def exact_sample() -> np.ndarray:
    return np.sort(np.random.default_rng(0).choice(N_QUERIES, N_EXACT, replace=False))


def _distinct_rows(patches: np.ndarray) -> np.ndarray:
    _, first = np.unique(patches.reshape(len(patches), -1), axis=0, return_index=True)
    return np.sort(first)


def _load() -> float:
    return os.getloadavg()[0]


def _child(method: str, n: int, out: Path) -> dict[str, Any]:
    from benchmarks.common import median_time, proc_status_mib, timed
    from collide.patches.knn import PatchIndex, SavedIndex, exact_knn

    data = corpus(n)
    one, bulk = queries()
    config = {"index": CONFIG, "reference": REFERENCE, "sharded": dataclasses.replace(CONFIG, shards=SHARDS)}
    if method in config or method in ("loaded", "from_file"):
        # numba compiles pynndescent's kernels on first use (~30 s), the search ones for
        # each restored index too: a small warm-up keeps that out of the times and peaks.
        warm = PatchIndex.build(data[:2000], config=config.get(method, CONFIG))
        warm.query(one, K)
        PatchIndex.load(warm.save(out / f"warm-{method}.npz")).query(one, K)
    before = proc_status_mib("VmRSS")
    facts: dict[str, Any] = {"method": method, "n": n, "load_before": _load()}
    if method in config:
        build_s, index = timed(lambda: PatchIndex.build(data, config=config[method]))
        one_s, (_, one_d) = median_time(lambda: index.query(one, K))
        bulk_s, (_, bulk_d) = timed(lambda: index.query(bulk, K))
        facts.update(build_seconds=build_s, distinct=len(index.items), config=dataclasses.asdict(config[method]))
        if method == "sharded":
            index.save(out / "sharded.npz")
    elif method in ("loaded", "from_file"):
        sample = bulk[exact_sample()]
        load_s, index = timed(lambda: (PatchIndex.load if method == "loaded" else SavedIndex)(out / "sharded.npz"))
        one_s, (_, one_d) = timed(lambda: index.query(one, K))
        bulk_s, (bulk_i, bulk_d) = timed(lambda: index.query(sample, K))
        np.save(out / f"{method}-bulk-ids.npy", bulk_i)
        facts.update(open_seconds=load_s, build_seconds=0.0, distinct=len(index.items), measured_queries=N_EXACT)
    else:
        rows = _distinct_rows(data)
        sample = bulk[exact_sample()]

        def search(q: np.ndarray) -> np.ndarray:
            parts = [exact_knn(q[s : s + QUERY_BLOCK], data, K, rows=rows)[1] for s in range(0, len(q), QUERY_BLOCK)]
            return np.concatenate(parts)

        one_s, one_d = median_time(lambda: search(one))
        sample_s, bulk_d = timed(lambda: search(sample))
        bulk_s = sample_s * N_QUERIES / N_EXACT
        facts.update(build_seconds=0.0, distinct=len(rows), measured_queries=N_EXACT, measured_seconds=sample_s)
    np.save(out / f"{method}-one.npy", one_d)
    np.save(out / f"{method}-bulk.npy", bulk_d)
    facts.update(one_image_seconds=one_s, bulk_seconds=bulk_s, peak_mib=proc_status_mib("VmHWM") - before,
                 load_after=_load())
    return facts


def _measure(method: str, n: int, out: Path) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-m", "benchmarks.knn", method, str(n), str(out)],
                          check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def crossover(sizes: list[int], index_s: list[float], exact_s: list[float]) -> str:
    """Where the index's cost first drops below exact search's, in words.

    Between two measured sizes the costs are taken as power laws (straight lines in
    log-log), which is how both grow; past the largest size the last segment is
    extended, and the answer says it is extrapolated.
    """
    if index_s[0] < exact_s[0]:
        return f"already at the smallest size measured ({sizes[0]:.0e})"
    gap = [math.log(i / e) for i, e in zip(index_s, exact_s, strict=True)]
    logn = [math.log(n) for n in sizes]
    for k in range(1, len(sizes)):
        if gap[k] < 0:
            at = logn[k - 1] + (logn[k] - logn[k - 1]) * gap[k - 1] / (gap[k - 1] - gap[k])
            return f"about {math.exp(at):.1e} patches (interpolated between measured sizes)"
    slope = (gap[-1] - gap[-2]) / (logn[-1] - logn[-2])
    if slope >= 0:
        return f"not within the sizes measured, and the gap is not closing (up to {sizes[-1]:.0e})"
    at = logn[-1] - gap[-1] / slope
    return f"about {math.exp(at):.1e} patches (extrapolated beyond {sizes[-1]:.0e})"


def run(sizes: tuple[int, ...] = SIZES) -> dict[str, Any]:
    from collide.patches.knn import recall_at_k

    rows = []
    with tempfile.TemporaryDirectory(prefix="collide-knn-") as tmp:
        for n in sizes:
            out = Path(tmp) / str(n)
            out.mkdir()
            index, exact = _measure("index", n, out), _measure("exact", n, out)
            bulk_found = np.load(out / "index-bulk.npy")[exact_sample()]
            rows.append({
                "n": n, "distinct": index["distinct"], "index": index, "exact": exact,
                "recall_one_image": recall_at_k(np.load(out / "index-one.npy"), np.load(out / "exact-one.npy")),
                "recall_bulk": recall_at_k(bulk_found, np.load(out / "exact-bulk.npy")),
            })
    ns = [r["n"] for r in rows]
    workloads = {}
    for name, key in (("one_image", "one_image_seconds"), ("bulk", "bulk_seconds")):
        exact_s = [r["exact"][key] for r in rows]
        workloads[name] = {
            "query_only": crossover(ns, [r["index"][key] for r in rows], exact_s),
            "build_plus_query": crossover(ns, [r["index"][key] + r["index"]["build_seconds"] for r in rows], exact_s),
        }
    return {"k": K, "config": {"n_neighbors": CONFIG.n_neighbors, "epsilon": CONFIG.epsilon},
            "n_queries": N_QUERIES, "n_exact_sample": N_EXACT, "sizes": rows, "index_beats_exact": workloads,
            **compare(), "grid": json.loads(GRID_FILE.read_text()) if GRID_FILE.is_file() else None}


def compare(n: int = COMPARE_N) -> dict[str, Any]:
    """Today's build settings against the defaults, and the sharded index queried loaded
    whole against from its file, all at ``n`` patches in this run (one child each)."""
    from collide.patches.knn import recall_at_k

    with tempfile.TemporaryDirectory(prefix="collide-knn-") as tmp:
        out = Path(tmp)
        runs = {m: _measure(m, n, out) for m in ("reference", "index", "exact", "sharded", "loaded", "from_file")}
        exact = np.load(out / "exact-bulk.npy")
        recall = {m: recall_at_k(np.load(out / f"{m}-bulk.npy")[exact_sample()], exact)
                  for m in ("reference", "index", "sharded")}
        recall.update({m: recall_at_k(np.load(out / f"{m}-bulk.npy"), exact) for m in ("loaded", "from_file")})
        same = (np.array_equal(np.load(out / "loaded-bulk-ids.npy"), np.load(out / "from_file-bulk-ids.npy"))
                and np.array_equal(np.load(out / "loaded-bulk.npy"), np.load(out / "from_file-bulk.npy")))
    ref, new = runs["reference"], runs["index"]
    return {
        "build": {"n": n, "reference": ref, "default": new, "recall_reference": recall["reference"],
                  "recall_default": recall["index"], "build_ratio": new["build_seconds"] / ref["build_seconds"]},
        "sharded_query": {"n": n, "shards": SHARDS, "build": runs["sharded"], "recall_build": recall["sharded"],
                          "loaded": runs["loaded"], "from_file": runs["from_file"], "answers_equal": same,
                          "recall_loaded": recall["loaded"], "recall_from_file": recall["from_file"],
                          "peak_ratio": runs["from_file"]["peak_mib"] / runs["loaded"]["peak_mib"]},
    }


def grid(n: int = GRID_N) -> list[dict[str, Any]]:
    """Build time and recall@10 of each ``GRID`` entry at ``n`` patches, in one process
    (already warm), against exact search of the query sample; with the load average."""
    from benchmarks.common import timed
    from collide.patches.knn import PatchIndex, exact_knn, recall_at_k

    data = corpus(n)
    sample = queries()[1][exact_sample()]
    exact = exact_knn(sample, data, K, rows=_distinct_rows(data))[1]
    for jobs in (1, 2):
        PatchIndex.build(data[:3000], config=dataclasses.replace(CONFIG, n_jobs=jobs)).query(sample[:10], K)
    rows = []
    for change in GRID:
        config = dataclasses.replace(REFERENCE, **change)
        before = _load()
        build_s, index = timed(lambda config=config: PatchIndex.build(data, config=config))
        dist = index.query(sample, K, corpus=data)[1]
        rows.append({"n": n, "change": change, "build_seconds": build_s, "recall": recall_at_k(dist, exact),
                     "load": [before, _load()]})
    return rows


if __name__ == "__main__":
    if sys.argv[1] == "grid":
        GRID_FILE.write_text(json.dumps(grid(), indent=1) + "\n")
    else:
        print(json.dumps(_child(sys.argv[1], int(sys.argv[2]), Path(sys.argv[3]))))
