"""Item 8: many targets per solver batch, against one job per target.

A scan of ``N_TARGETS`` MNIST test images with the MLP at ``relu1``: every target's
5-vertex gradient polytope (init = the target), solved with ``targets_per_batch`` of
them in one :func:`collide.find_polytopes` batch, for each batch size of
``BATCH_SIZES``; batch size 1 is today's one job per target, the reference. Reported
per size: polytopes per second, the valid vertices, and how far its vertices are from
the reference's (each vertex follows its own path; only rounding differs).
"""

from __future__ import annotations

import time
from typing import Any

import torch

from benchmarks.common import N_VERTICES, experiment
from collide.api import find_polytopes
from collide.config import GradientConfig
from collide.datasets.mnist import load_mnist
from collide.experiments import mnist
from collide.models.zoo import load_checkpoint

N_TARGETS = 100
BATCH_SIZES = (1, 5, 10, 25, 50, 100)


def run(arch: str = "mlp") -> dict[str, Any]:
    config = experiment(arch)
    context = mnist.prepare(config=config)
    model, _ = load_checkpoint(context["checkpoint"])
    targets = list(load_mnist(config.data_root, "test", limit=N_TARGETS).images)
    runs, reference = [], None
    for size in BATCH_SIZES:
        start = time.perf_counter()
        polys = []
        for first in range(0, len(targets), size):
            polys += find_polytopes(model, config.layer, targets[first:first + size], n_vertices=N_VERTICES,
                                    config=GradientConfig())
        seconds = time.perf_counter() - start
        vertices = torch.stack([p.vertices for p in polys])
        if reference is None:
            reference = vertices
        runs.append({
            "targets_per_batch": size, "seconds": seconds, "polytopes_per_second": len(polys) / seconds,
            "valid_vertices": int(sum(p.n_valid for p in polys)), "all_vertices": N_VERTICES * len(polys),
            "max_abs_diff_vs_one_per_job": float((vertices - reference).abs().nan_to_num().max()),
        })
    base = runs[0]["polytopes_per_second"]
    for r in runs:
        r["speedup"] = r["polytopes_per_second"] / base
    best = max(runs, key=lambda r: r["polytopes_per_second"])
    return {"model": arch, "layer": config.layer, "targets": len(targets), "runs": runs,
            "best_targets_per_batch": best["targets_per_batch"]}
