"""Item 11: the exact polytope at the largest input its dense LP takes, for each model of
the survey (:mod:`benchmarks.models`), measured rather than estimated.

For each torchvision classifier of the survey whose middle call site the exact method
addresses: the largest square side whose dense LP fits ``ExactConfig.max_entries``
(counted at each side from one forward pass, :func:`collide.piecewise.budget.largest_side`),
then one exact vertex there, in a child process of its own: the seconds it took, its
outcome and float64 feature error, its LP work, its equality rows (the target's positive
units) and their rank (where lower, the LP holds a basis of their row space instead:
:mod:`collide.piecewise.row_space`), and the process's peak resident memory
before the solve (the model, torch and the size search) and after it: where the second is
higher, the solve set it, so the memory is measured rather than rows x columns x 8 bytes.
Random weights (seed 0), the survey's photo at that side as the target and its mirror
image as the init; one LP at a time (``threads=1``). A solve past :data:`SOLVE_SECONDS` is
stopped and reported as such.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from benchmarks.common import in_child, peak_rss_gib
from benchmarks.models import MODELS, NATIVE_ONLY, SIDE, build, cat_photo, middle_site
from collide.config import ExactConfig
from collide.errors import CollideError
from collide.objective import saturated_units
from collide.piecewise.budget import largest_side, lp_entries
from collide.sites import probe
from collide.solvers.exact import solve_exact
from collide.taps import preactivation

# A child still solving after this is stopped and its model reported as unfinished.
SOLVE_SECONDS = 300


def largest_exact(model: nn.Module, layer: str, photo: Callable[[int], torch.Tensor], *, max_entries: int,
                  report: Callable[[dict[str, Any]], None] = lambda row: None) -> dict[str, Any]:
    """One exact vertex of ``model`` at ``layer`` at the largest side whose dense LP fits
    ``max_entries`` (``photo(side)`` the target, its mirror image the init), with the
    seconds and the memory it took; ``why`` where no side fits or no unit is saturated.
    ``report`` gets the side and the LP's size before the solve starts."""
    side = largest_side(model, layer, photo(SIDE), max_entries=max_entries)
    if side is None:
        return {"side": None, "why": f"no side fits {max_entries:.0e} entries"}
    image = photo(side)
    rows, entries = lp_entries(model, layer, image)
    with torch.no_grad():
        units = saturated_units(preactivation(model, image.unsqueeze(0), layer)[0], 1)
    row: dict[str, Any] = {"side": side, "lp_rows": rows, "lp_entries": entries, "input_dim": image.numel()}
    if not len(units):
        return {**row, "why": "the target saturates no unit at the layer"}
    report(row)
    before = peak_rss_gib()
    start = time.perf_counter()
    res = solve_exact(model, layer, image, image.flip(-1), units, config=ExactConfig(threads=1,
                                                                                     max_entries=max_entries))
    return {**row, "seconds": time.perf_counter() - start, "outcome": res.outcomes[0],
            "max_rel_error_f64": float(res.rel_error.max()), "lp_work": res.lp_work[0],
            "n_positive": res.n_positive, "rank_positive": res.rank_positive,
            "peak_rss_gib_before": before, "peak_rss_gib": peak_rss_gib()}


def _child(name: str, out: Any) -> None:
    torch.set_num_threads(1)
    try:
        model = build(name, SIDE)
        site = middle_site(probe(model, cat_photo(SIDE)[None]))
        if site is None or "exact" not in site.methods:
            out.put({"why": "the exact method does not address the middle call site"})
            return
        out.put({"layer": site.name})
        out.put(largest_exact(model, site.name, cat_photo, max_entries=ExactConfig().max_entries, report=out.put))
    except CollideError as exc:
        out.put({"why": str(exc)[:200]})


def measure(name: str) -> dict[str, Any]:
    """torchvision's ``name`` in a child process (its peak memory is the solve's, and a
    stuck LP is stopped after :data:`SOLVE_SECONDS`)."""
    return {"model": f"torchvision:{name}", **in_child(_child, (name,), seconds=SOLVE_SECONDS + 120)}


def run() -> list[dict[str, Any]]:
    rows = []
    for name in MODELS:
        if name in NATIVE_ONLY:  # built for one side: no smaller input to look for
            continue
        t = time.perf_counter()
        rows.append(measure(name))
        print(f"[bench] exact_sizes: {name} in {time.perf_counter() - t:.0f} s", flush=True)
    return rows
