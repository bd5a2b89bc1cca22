"""Run every benchmark and rewrite ``benchmarks/results.md`` and ``results.json``.

Usage: ``python -m benchmarks.run [--only ITEM,...]`` (the items: :data:`ITEMS`)
from the repository root (``make bench`` does this). MNIST is fetched and the
classifiers are trained first when they are not under ``data/`` yet.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks import (
    batching,
    evaluation,
    exact_forms,
    exact_sizes,
    exact_vs_gradient,
    extraction,
    gpu,
    jacobian,
    knn,
    models,
    solver,
)
from benchmarks.common import MODELS, checkpoint, machine
from benchmarks.report import EXACT_GOAL_SECONDS, _s, markdown

HERE = Path(__file__).parent
ITEMS = ("solver", "exact", "knn", "extraction", "evaluation", "gpu", "jacobian", "models", "batching", "exact_forms",
         "exact_sizes", "exact_resnet")


def _notes(r: dict[str, Any]) -> list[str]:
    """Measured explanations of figures that miss their targets."""
    notes = []
    for s in r.get("solver", []):
        ref = s["reference"]
        if s["grid_choice"] in (solver.LR_GRID[0], solver.LR_GRID[-1]):
            notes.append(f"solver {s['model']}: the reference's best rate {s['grid_choice']:g} is at the edge of the "
                         "grid, so a better one may lie outside it: extend LR_GRID before quoting the ratio.")
        notes.append(
            f"solver {s['model']}: the authors' scheme (best lr of the grid, {s['grid_choice']:g}) ends at a "
            f"largest relative feature error of {ref['max_rel_error']:.3g} after {ref['config']['steps']} steps "
            f"and {ref['at_authors_steps']['max_rel_error']:.3g} after {ref['at_authors_steps']['steps']}: the "
            "paper's loss has its minimum away from an exact collision (L-^i pulls every other non-positive "
            "unit towards 0 and is linear in the pushed one), so it never meets collide's 1e-2. The speed-up "
            "is therefore taken at its best error, not at collide's criterion.")
    for e in r.get("exact", []):
        if "reference" not in e:
            continue
        x, one = e["exact"], e["exact_one_thread"]
        work = x.get("lp_work") or []
        lps = sum(w["lps"] for w in work)
        limit = EXACT_GOAL_SECONDS.get(e["model"])
        if limit is None or x["seconds"] <= limit:
            continue
        cause = (
            f"exact {e['model']} ({e['layer']}): {_s(x['seconds'])} per polytope on every core, "
            f"{_s(one['seconds'])} on one, against the target of {limit:g} s. The polytope took {lps} LPs for "
            f"{len(work)} vertices")
        if lps > len(work):
            cause += (" (the target sits on ties of its linear pieces, so each vertex also solves the LP without "
                      "the tied rows and the LP on the adjacent piece it points to, and re-linearises there")
            outdone = sum(w.get("outdone", 0) for w in work)
            cause += (f"; {outdone} of the LPs on the target's piece stopped early, outdone by the adjacent "
                      "vertex)" if outdone else ")")
        if work and work[0]["region_rows_total"]:
            cause += (f"; with region rows added where violated, an LP held at most "
                      f"{max(w['region_rows'] for w in work)} of the {work[0]['region_rows_total']} region "
                      f"rows, in {max(w['rounds'] for w in work)} rounds at most per vertex")
        notes.append(cause + ". What is left is HiGHS's dual simplex itself, whose every iteration prices both "
                     "split columns of every input coordinate.")
    sizes = r.get("exact_sizes") or []
    stuck = [x for x in sizes if "unfinished" in x or x.get("outcome", "optimal") != "optimal"]
    held = [x["lp_work"]["region_rows"] for x in stuck if "lp_work" in x]
    if stuck:
        notes.append(
            "exact_sizes: at the largest input the dense LP fits, "
            + "; ".join(f"{x['model']} " + (x["unfinished"] if "unfinished" in x else f"ended {x['outcome']}")
                        for x in stuck)
            + ". The dense form's entry budget bounds memory, not time"
            + (f": these LPs (random weights, up to {max(held)} region rows in the model when it ended) are where "
               "HiGHS's simplex stalls or gives up." if held else
               ": a vertex stopped at the limit was still being solved (random weights)."))
    if str(r["machine"].get("scipy", "")).startswith("1.15."):
        notes.append("scipy 1.15's linprog has a large regression (scipy issue 22655): the exact solver's "
                     "reference is slower than on other versions, and its ratio is inflated.")
    k = r.get("knn") or {}
    if "build" in k and k["build"]["build_ratio"] > 0.5:
        bd = k["build"]
        notes.append(
            f"kNN build at {bd['n']:.0e}: the defaults took {bd['build_ratio']:.2f}x today's time, not 0.5x. Half "
            "of their gain is a second numba thread (n_jobs 2), which needs a free core: the load average was "
            f"{bd['default']['load_before']:.2f} -> {bd['default']['load_after']:.2f} during their build. In the "
            "grid, one change at a time never reached 0.5x at recall@10 >= 0.99, and PCA to 16 dimensions lost "
            "recall (0.95).")
    ex = r.get("extraction")
    if ex and "dask_over_numpy" in ex:
        ratio = ex["dask_over_numpy"][str(max(extraction.SIZES))]
        if ratio < 0.9:
            loads = [x["load"][0] for x in ex["runs"] if "load" in x]
            notes.append(
                f"extraction: Dask reached {ratio:.2f}x numpy's patches/s (rounds: "
                + ", ".join(f"{x:.2f}" for x in ex["dask_over_numpy_rounds"])
                + f"), not 0.9x, at load averages {min(loads, default=float('nan')):.2f}-"
                f"{max(loads, default=float('nan')):.2f}. The two paths do not do the same work: the Dask path "
                "compresses and writes every chunk into Zarr, the numpy path holds its patches in memory and writes "
                "nothing. The Dask path also spreads one corpus over two worker threads, Zarr's event-loop thread "
                "and its codec pool, each waiting for a core when others load the machine; the numpy path is one "
                "thread and barely notices.")
    if ex and ex["peak_growth"]["dask"] >= 1.5:
        runs = {(x["method"], x["n_images"]): x for x in ex["runs"]}
        small, big = (runs[("dask", n)] for n in extraction.SIZES)
        notes.append(
            f"extraction: the Dask path's peak rose from {small['peak_mib']:.1f} to {big['peak_mib']:.1f} MiB "
            f"({ex['peak_growth']['dask']:.2f}x) while the numpy path's rose {ex['peak_growth']['numpy']:.1f}x. "
            f"Each task writes and drops about {ex.get('task_bytes', 2**20) / 2**20:.0f} MiB of chunks; what grows "
            "with the corpus is whatever "
            "every task reads per image: look for per-image metadata read by each task (once, the image "
            "ids kept in the Zarr attrs did this: 2.25x).")
    return notes


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(ITEMS), help=f"comma-separated subset of {','.join(ITEMS)}")
    parser.add_argument("--out", default=str(HERE), help="folder for results.md and results.json")
    args = parser.parse_args(argv)
    only = [x for x in args.only.split(",") if x]
    unknown = sorted(set(only) - set(ITEMS))
    if unknown:
        parser.error(f"unknown items {unknown}: expected some of {ITEMS}")
    start = time.perf_counter()
    results: dict[str, Any] = {"machine": machine()}
    for arch in MODELS:  # fetch and train first (with every thread), so no benchmark times it
        checkpoint(arch)
    # The in-process items run tiny tensors (5 MNIST images) where a second thread buys
    # nothing, and on a shared 2-core machine an oversubscribed OpenMP pool made single
    # runs up to 10x slower. One thread for both collide and its references; the kNN and
    # extraction children keep torch's default.
    torch.set_num_threads(1)
    results["machine"]["torch_threads"] = torch.get_num_threads()
    steps = {
        "solver": lambda: [solver.run(arch) for arch in MODELS],
        "exact": lambda: [exact_vs_gradient.run(arch) for arch in MODELS],
        "knn": knn.run,
        "extraction": extraction.run,
        "evaluation": lambda: [evaluation.run(arch) for arch in MODELS],
        "gpu": gpu.run,
        "jacobian": jacobian.run,
        "models": models.run,
        "batching": batching.run,
        "exact_forms": exact_forms.run,
        "exact_sizes": exact_sizes.run,
        "exact_resnet": exact_forms.run_resnet,
    }
    for item in only:
        t = time.perf_counter()
        print(f"[bench] {item} ...", flush=True)
        results[item] = steps[item]()
        print(f"[bench] {item} done in {time.perf_counter() - t:.0f} s", flush=True)
    results["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    results["seconds"] = time.perf_counter() - start
    out = Path(args.out)
    # A partial run (--only) keeps the other items of the last full run, each marked with
    # the date it was measured, rather than dropping them from the results file.
    earlier = out / "results.json"
    if earlier.exists() and set(only) != set(ITEMS):
        old = json.loads(earlier.read_text())
        dates = old.get("carried_over", {})
        for item in ITEMS:
            if item not in only and item in old:
                results[item] = old[item]
                results.setdefault("carried_over", {})[item] = dates.get(item, old["machine"]["date"])
    results["notes"] = _notes(results)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2, default=float) + "\n")
    (out / "results.md").write_text(markdown(results))
    print((out / "results.md").read_text())
    return results


if __name__ == "__main__":
    main()
