"""The collision set's screening sizes by either HiGHS solver: ``collide.collision_size``
(the inscribed ball, and the dimension's search where the ball is flat) on the MNIST
models' sets, its ball LPs by the dual simplex (collide before ``ball.IPM_REGION_ROWS``)
and by the interior point as collide runs it (the rounds after one that adds fewer than
``ball.SIMPLEX_TAIL_ROWS`` rows handed to the simplex), alternating in one process, with
the radius and dimension each gives.

The sets are those of the first correctly classified test image of each of the first
``--targets`` digits of :data:`TARGET_DIGITS`, the 7 first (the target of every other
benchmark, ``benchmarks.common.collision_problem``): one set is not a result, and a
threshold set on one could be its shape. The simplex is the reference: it is what every
set used before, and it still takes sets with fewer than ``IPM_REGION_ROWS`` region rows.
Usage: ``python -m benchmarks.set_solvers [--reps N] [--targets N] [--layers
mlp:relu1,...]``; writes ``benchmarks/set_solvers.json`` with the machine (its load
average included).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import checkpoint, collision_problem, experiment, machine
from collide.api import _exact_set, collision_size
from collide.config import GeometryConfig
from collide.datasets.mnist import load_mnist
from collide.models.zoo import load_checkpoint
from collide.piecewise import ball

OUT = Path(__file__).parent / "set_solvers.json"
LAYERS = ("mlp:relu1", "mlp:relu2", "lenet5:relu3", "lenet5:relu2")
TARGET_DIGITS = (7, 0, 1, 2, 3, 4, 5, 6, 8, 9)
# IPM_REGION_ROWS values that force each solver whatever the set's size.
SOLVERS = {"simplex": 10**9, "interior point": 0}


def compare(model: torch.nn.Module, layer: str, target: torch.Tensor, *, reps: int) -> dict[str, Any]:
    """``collision_size`` of ``target`` by each solver, ``reps`` times, alternating; the
    seconds of each run and what it found."""
    cs = _exact_set(model, layer, target, GeometryConfig(), ())
    out: dict[str, Any] = {"region_rows": int(len(cs.bounds) - cs.n_fixed), "inputs": cs.input_dim,
                           "default": "interior point" if len(cs.bounds) - cs.n_fixed >= ball.IPM_REGION_ROWS
                           else "simplex"}
    chosen = ball.IPM_REGION_ROWS
    try:
        for _ in range(reps):
            for name, rows in SOLVERS.items():
                ball.IPM_REGION_ROWS = rows
                start = time.perf_counter()
                size = collision_size(model, layer, target)
                run = out.setdefault(name, {"seconds": []})
                run["seconds"].append(round(time.perf_counter() - start, 3))
                run.update(radius=size.radius, dim=size.dim, dim_method=size.dim_method)
    finally:
        ball.IPM_REGION_ROWS = chosen
    for name in SOLVERS:
        out[name]["median_s"] = statistics.median(out[name]["seconds"])
    ref, ipm = out["simplex"], out["interior point"]
    out["speedup"] = ref["median_s"] / ipm["median_s"]
    out["radius_rel_diff"] = abs(ref["radius"] - ipm["radius"]) / max(abs(ref["radius"]), 1e-300)
    out["same_dim"] = (ref["dim"], ref["dim_method"]) == (ipm["dim"], ipm["dim_method"])
    return out


def targets(arch: str, n: int) -> list[tuple[int, int, torch.Tensor]]:
    """``(test index, label, image)`` of the first test image the classifier gets right of
    each of the first ``n`` digits of :data:`TARGET_DIGITS`."""
    model, _ = load_checkpoint(checkpoint(arch))
    test = load_mnist(experiment(arch).data_root, "test")
    with torch.no_grad():
        right = model(test.images).argmax(-1) == test.labels
    out = []
    for digit in TARGET_DIGITS[:n]:
        index = int(torch.nonzero(right & (test.labels == digit))[0])
        out.append((index, digit, test.images[index]))
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--targets", type=int, default=3, choices=range(1, len(TARGET_DIGITS) + 1),
                        metavar="N", help=f"how many of the digits {TARGET_DIGITS} (1 to {len(TARGET_DIGITS)})")
    parser.add_argument("--layers", default=",".join(LAYERS), help="model:layer pairs, comma-separated")
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # as the experiments run: one LP per core
    result: dict[str, Any] = {"machine": machine(), "reps": args.reps, "ipm_region_rows": ball.IPM_REGION_ROWS,
                              "simplex_tail_rows": ball.SIMPLEX_TAIL_ROWS, "sets": []}
    problems: dict[str, dict[str, Any]] = {}
    for pair in args.layers.split(","):
        arch, layer = pair.split(":")
        if arch not in problems:
            problems[arch] = {"model": collision_problem(arch)["model"], "targets": targets(arch, args.targets)}
        for index, label, image in problems[arch]["targets"]:
            row = {"model": arch, "layer": layer, "target_index": index, "target_label": label,
                   **compare(problems[arch]["model"], layer, image, reps=args.reps)}
            print(json.dumps({k: row[k] for k in ("model", "layer", "target_index", "region_rows", "speedup",
                                                  "radius_rel_diff")}), flush=True)
            result["sets"].append(row)
    result["machine"]["load_average_after"] = machine()["load_average"]
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
