"""The auditor's scan, measured: the cost of each stage per example, the whole test set's
time by extrapolation, and how stable the ranking is across training seeds and solver seeds.

Usage: ``python -m benchmarks.scan [--examples N] [--seeds-examples K] [--stages-only |
--solver-seeds-only | --experiment-only PER_CLASS]`` from the repository root; writes
``benchmarks/scan.json`` (the machine noted, its load average included: a figure taken
while something else ran says so). The model is the MNIST MLP at ``relu1`` as ``collide
run mnist`` trains it, at training seeds 0, 2 and 4 (seed 0 is the shipped checkpoint;
the others are trained here once and kept in ``data/checkpoints``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from benchmarks.common import experiment, machine, test_images
from collide.api import _exact_set, collision_geometry, collision_size, find_polytopes
from collide.audit import ScanConfig, rank_stability, scan
from collide.config import GeometryConfig
from collide.experiments import mnist
from collide.experiments.configs.scan import ScanExperiment
from collide.models.zoo import load_checkpoint
from collide.piecewise.ball import _ball_every_box_row, inscribed_ball
from collide.workers import job_cores

HERE = Path(__file__).parent
LAYER = "relu1"
SEEDS = (0, 2, 4)
TEST_SET = 10_000
# The scan experiment's exact-row geometry before it became a screen: 200 samples from 20
# chains, widths until their standard error is 5% of the mean (up to 64 directions).
SCAN_GEOMETRY_BEFORE = GeometryConfig(n_samples=200, chains=20, n_directions=4)


def _checkpoint(seed: int) -> str:
    config = experiment("mlp")
    config = dataclasses.replace(config, train=dataclasses.replace(config.train, seed=seed))
    return mnist.prepare(config=config)["checkpoint"]


def stage_costs(model: torch.nn.Module, images: torch.Tensor, config: ScanConfig) -> dict[str, Any]:
    """Seconds per example of each stage, each timed alone: the gradient polytopes of
    ``images`` in one batch (a batch of 20 spends most of its time on the slowest vertex),
    the exact screen of the first 20 one at a time, the certification of the first 2 one
    at a time and of the first two per core side by side, and ``collide.scan`` of
    ``images`` (the exact sets measured side by side)."""
    start = time.perf_counter()
    find_polytopes(model, LAYER, list(images), n_vertices=config.n_vertices, method="gradient",
                   config=config.gradient)
    gradient = (time.perf_counter() - start) / len(images)
    start = time.perf_counter()
    screened = images[:20]
    for x in screened:
        collision_size(model, LAYER, x, config=config.geometry)
    screen = (time.perf_counter() - start) / len(screened)
    start = time.perf_counter()
    certified = images[:2]
    for x in certified:
        collision_geometry(model, LAYER, x, config=config.geometry)
    certify = (time.perf_counter() - start) / len(certified)
    # Certified side by side: collide.scan does not, as this measures no faster.
    certified = images[: 2 * job_cores()]
    start = time.perf_counter()
    with ThreadPoolExecutor(job_cores()) as pool:
        list(pool.map(lambda x: collision_geometry(model, LAYER, x, config=config.geometry), certified))
    certify_side = (time.perf_counter() - start) / len(certified)
    # The whole screen as collide.scan runs it: the gradient batch, then the exact sets
    # measured side by side, one thread per core.
    start = time.perf_counter()
    scan(model, LAYER, images, config=dataclasses.replace(config, chunk=len(images), certify=0))
    whole = (time.perf_counter() - start) / len(images)
    return {"gradient_s": gradient, "gradient_batch": len(images), "exact_screen_s": screen, "certify_s": certify,
            "certify_side_by_side_s": certify_side,
            "screen_per_example_s": gradient + screen, "scan_per_example_s": whole, "scan_threads": job_cores(),
            **_test_set(whole, certify)}


def _test_set(scan_per_example: float, certify: float) -> dict[str, Any]:
    """The whole test set's hours at the measured rates: collide.scan's screen, then the
    50 most and 50 least blind certified one after another."""
    return {"test_set_hours": (scan_per_example * TEST_SET + certify * 2 * 50) / 3600,
            "test_set_note": f"collide.scan on {job_cores()} cores: {TEST_SET} examples screened, then the 50 most "
                             f"and 50 least blind certified one at a time ({certify:.1f} s each)"}


def exact_row_costs(model: torch.nn.Module, images: torch.Tensor) -> dict[str, Any]:
    """Seconds per example of the exact set's measurement in a screen, each alternative
    timed on the same examples in this process: the inscribed-ball LP with each
    coordinate measured from its near box face (the form it solves) against every box
    face a row with free columns (the form of the balls in a flat set's flat), and the scan's
    geometry (sizes only) against the same with four to eight width directions and the
    geometry the scan experiment's exact rows took first (before it screened with
    :func:`collide.scan`)."""
    lazy, every, worst = 0.0, 0.0, 0.0
    for x in images:
        cs = _exact_set(model, LAYER, x, GeometryConfig(), ())
        start = time.perf_counter()
        a = inscribed_ball(cs)
        lazy += time.perf_counter() - start
        start = time.perf_counter()
        b = _ball_every_box_row(cs, pinned=None)
        every += time.perf_counter() - start
        worst = max(worst, abs(a.radius - b.radius) / (1 + b.radius))
    out: dict[str, Any] = {"ball_boxed_s": lazy / len(images), "ball_every_box_row_s": every / len(images),
                           "ball_radius_max_rel_diff": worst, "examples": len(images), "machine": machine()}
    screen = ScanExperiment().geometry
    for name, config in (("geometry_scan_s", screen),
                         ("geometry_widths_s", dataclasses.replace(screen, sizes_only=False)),
                         ("geometry_before_s", SCAN_GEOMETRY_BEFORE)):
        start = time.perf_counter()
        for x in images:
            collision_geometry(model, LAYER, x, config=config)
        out[name] = (time.perf_counter() - start) / len(images)
    return out


def across_solver_seeds(model: torch.nn.Module, images: torch.Tensor, config: ScanConfig) -> dict[str, Any]:
    """The same model and examples scanned twice, at seed 0 and with every seed 1: the
    screen's sizes (radius, spread) and the scan experiment's screened mean width (4 to 8
    random directions), each ranking compared, and the largest change of a size."""
    frames = [scan(model, LAYER, images, config=dataclasses.replace(
        config, geometry=dataclasses.replace(config.geometry, seed=seed))) for seed in (0, 1)]
    out: dict[str, Any] = {}
    for by in ("radius", "spread"):
        a, b = (f.assign(size=f[by]) for f in frames)
        both = a.merge(b, on="index", suffixes=("_a", "_b"))
        out[f"{by} seed 0 vs 1"] = {**rank_stability(a, b),
                                    "max_abs_diff": float((both["size_a"] - both["size_b"]).abs().max())}
    widths = {}
    for seed in (0, 1):
        geometry = dataclasses.replace(ScanExperiment().geometry, seed=seed)
        widths[seed] = pd.DataFrame({"index": range(len(images)), "size": [
            float(collision_geometry(model, LAYER, x, config=geometry).widths.mean()) for x in images]})
    out["screened mean_width seed 0 vs 1"] = {**rank_stability(widths[0], widths[1]),
                                              "top10": rank_stability(widths[0], widths[1], top=0.1)}
    return out


def experiment_end_to_end(per_class: int) -> dict[str, Any]:
    """``collide run scan`` on the first ``per_class`` test images of each class, as a user
    runs it (a Prefect flow over a local Dask cluster, one worker per core), timed from
    the command's start to its end, a temporary Prefect server and results folder of its
    own included."""
    before = [round(x, 2) for x in os.getloadavg()]
    with tempfile.TemporaryDirectory(prefix="collide-scan-bench-") as tmp:
        env = {**os.environ, "PREFECT_HOME": str(Path(tmp) / "prefect")}
        command = [sys.executable, "-m", "flows.cli", "run", "scan", "--set", f"targets_per_class={per_class}",
                   "--set", f"results_root={Path(tmp) / 'results'}"]
        start = time.perf_counter()
        subprocess.run(command, cwd=HERE.parent, env=env, check=True, stdout=subprocess.DEVNULL)
        seconds = time.perf_counter() - start
        ranked = pd.read_parquet(Path(tmp) / "results" / "scan-ranking.parquet")
    n = len(ranked)
    return {"command": " ".join(command[1:3] + command[3:-2]), "examples": n,
            "per_job": ScanExperiment().targets_per_batch, "seconds": seconds,
            "per_example_s": seconds / n, "test_set_hours": seconds / n * TEST_SET / 3600,
            "workers": os.cpu_count(), "machine": {**machine(), "load_average_before": before}}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=60, help="test images scanned per model")
    parser.add_argument("--seeds-examples", type=int, default=30,
                        help="test images scanned again with other solver seeds")
    parser.add_argument("--stages-only", action="store_true",
                        help="measure the stages and the exact set's forms only, and keep the stored rank stability")
    parser.add_argument("--solver-seeds-only", action="store_true",
                        help="measure the ranking across solver seeds only, and keep the rest of scan.json")
    parser.add_argument("--experiment-only", type=int, metavar="PER_CLASS",
                        help="time `collide run scan` end to end on PER_CLASS test images of each digit only "
                             "(0: the whole test set), and keep the rest of scan.json")
    args = parser.parse_args(argv)
    path = HERE / "scan.json"
    if args.experiment_only is not None:
        kept = json.loads(path.read_text()) if path.is_file() else {}
        kept["experiment"] = experiment_end_to_end(args.experiment_only)
        path.write_text(json.dumps(kept, indent=1))
        print(json.dumps(kept["experiment"], indent=1))
        return kept
    images = torch.from_numpy(test_images(args.examples).copy()).float().div(255).unsqueeze(1)
    config = ScanConfig(chunk=args.examples)
    out: dict[str, Any] = {"machine": machine(), "layer": LAYER, "examples": args.examples,
                           "config": json.loads(json.dumps(dataclasses.asdict(config), default=str))}
    if args.solver_seeds_only:
        kept = json.loads(path.read_text())
        model, _ = load_checkpoint(_checkpoint(SEEDS[0]))
        k = min(args.seeds_examples, args.examples)
        kept["across_solver_seeds"] = across_solver_seeds(model, images[:k], dataclasses.replace(config, chunk=k))
        kept["across_solver_seeds_measured"] = {**machine(), "load_average_after": [
            round(x, 2) for x in os.getloadavg()]}
        path.write_text(json.dumps(kept, indent=1))
        print(json.dumps(kept["across_solver_seeds"], indent=1))
        return kept
    if args.stages_only:
        model, _ = load_checkpoint(_checkpoint(SEEDS[0]))
        out["stages"] = stage_costs(model, images[: min(100, args.examples)], config)
        out["exact_row"] = exact_row_costs(model, images[: min(10, args.examples)])
        out["machine"]["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
        kept = json.loads(path.read_text()) if path.is_file() else {}
        for key in ("scan_seconds", "radius_vs_spread", "across_training_seeds", "across_solver_seeds", "experiment"):
            if key in kept:
                out[key] = kept[key]
                out.setdefault("kept_from", kept["machine"].get("date"))
        path.write_text(json.dumps(out, indent=1))
        print(json.dumps({k: out[k] for k in ("stages", "exact_row")}, indent=1))
        return out
    if path.is_file() and "experiment" in (kept := json.loads(path.read_text())):
        out["experiment"] = kept["experiment"]  # timed on its own (--experiment-only)
    frames = {}
    for seed in SEEDS:
        model, _ = load_checkpoint(_checkpoint(seed))
        if seed == SEEDS[0]:
            out["stages"] = stage_costs(model, images[: min(100, args.examples)], config)
            out["exact_row"] = exact_row_costs(model, images[: min(10, args.examples)])
        start = time.perf_counter()
        frames[seed] = scan(model, LAYER, images, config=config)
        out.setdefault("scan_seconds", {})[str(seed)] = time.perf_counter() - start
    first = frames[SEEDS[0]]
    out["radius_vs_spread"] = rank_stability(first.assign(size=first["radius"]), first.assign(size=first["spread"]))
    out["across_training_seeds"] = {}
    for by in ("radius", "spread"):
        for other in SEEDS[1:]:
            a, b = (f.assign(size=f[by]) for f in (first, frames[other]))
            out["across_training_seeds"][f"{by} seed {SEEDS[0]} vs {other}"] = {
                **rank_stability(a, b), "top10": rank_stability(a, b, top=0.1)}
    def write() -> None:
        out["machine"]["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
        path.write_text(json.dumps(out, indent=1,
                                   default=lambda v: None if isinstance(v, float) and math.isnan(v) else v))

    write()  # what is measured so far, should the rest fail
    k = min(args.seeds_examples, args.examples)
    model, _ = load_checkpoint(_checkpoint(SEEDS[0]))
    out["across_solver_seeds"] = across_solver_seeds(model, images[:k], dataclasses.replace(config, chunk=k))
    write()
    shown = ("stages", "radius_vs_spread", "across_training_seeds", "across_solver_seeds")
    print(json.dumps({k: out[k] for k in shown}, indent=1))
    return out


if __name__ == "__main__":
    main()
