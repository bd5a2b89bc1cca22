"""Items 10 and 12: the exact LP's two forms side by side: dense rows over the input against
one variable vector per layer (:mod:`collide.piecewise.layered_lp`).

Item ``exact_forms``: the same 5 vertices (the MNIST experiment's target, init and pushed
units; one LP at a time, ``threads=1``) by both forms in one process, on the shipped MNIST
MLP at ``relu1`` and LeNet-5 at ``relu3``: median seconds, the largest distance between
the two forms' vertices (the dense form is the reference) and the float64 feature error
of each.

Item ``exact_resnet`` takes them to scale: torchvision's ResNet-18 (random weights) at
``layer2.1.relu#1``, one vertex at each side in :data:`RESNET_SIDES` by each form in a
child process of its own (peak memory of the process measured, not estimated): the
layered form's reading and solve, and the dense form's solve where its rows fit this
machine (:data:`DENSE_MEMORY_FACTOR`). The init is the image's mirror, as in
``exact_sizes``: with the target as its init, the vertex was the target itself (both
forms at 16 px, the dense form at 32 px, where the layered LP did not finish), so the LP
measured nothing: the L1 term outweighs what the pushed unit can gain. Each vertex's
largest move from the target is reported for that reason. A child still running
:data:`CHILD_SECONDS` after it started is stopped and reported as such.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from benchmarks.common import collision_problem, in_child, machine, median_time, peak_rss_gib
from collide.config import ExactConfig
from collide.piecewise.budget import lp_entries
from collide.solvers.exact import OPTIMAL, solve_exact

RESNET_LAYER = "layer2.1.relu#1"
RESNET_SIDES = (16, 32, 64)
# The dense form is tried where this many times its rows' bytes (lp_entries, every row
# before the all-zero ones are dropped) fit in half the machine's memory. A wide margin: at
# 32 px (3.9 GiB of rows) one vertex with the target as init peaked at 6.4 GiB, which a
# 24 GiB machine would hold, but the margin keeps a run on a smaller machine from swapping.
DENSE_MEMORY_FACTOR = 5
# A ResNet child still running this long after it started (its model, its reading and
# its LP together) is stopped and reported as unfinished: one stuck LP must not hold up
# the rest of `make bench`.
CHILD_SECONDS = 540


def _figures(seconds: float, res: Any) -> dict[str, Any]:
    return {"seconds": seconds, "form": res.form, "optimal": sum(o == OPTIMAL for o in res.outcomes),
            "max_rel_error_f64": float(res.rel_error.max()), "pieces": list(res.pieces),
            "rank_positive": res.rank_positive}


def compare_forms(model: torch.nn.Module, layer: str, target: torch.Tensor, init: torch.Tensor, units: torch.Tensor,
                  *, repeats: int = 1) -> dict[str, Any]:
    """Both forms on one polytope, one LP at a time: seconds, vertices' distance, outcomes."""
    config = ExactConfig(threads=1)

    def run(form: str) -> tuple[float, Any]:
        return median_time(lambda: solve_exact(model, layer, target, init, units, config=config, form=form),
                           repeats)

    dense_s, dense = run("dense")
    layered_s, layered = run("layered")
    both = np.isfinite(dense.vertices.numpy()) & np.isfinite(layered.vertices.numpy())
    _, entries = lp_entries(model, layer, target)
    return {
        "layer": layer, "vertices": len(units), "dense_entries": entries,
        "dense": _figures(dense_s, dense), "layered": _figures(layered_s, layered),
        "max_abs_vertex_diff": float(np.abs(dense.vertices.numpy() - layered.vertices.numpy())[both].max()),
        "layered_over_dense_seconds": layered_s / dense_s,
    }


def mnist_pair(arch: str, *, repeats: int = 1) -> dict[str, Any]:
    """Both forms on the MNIST experiment's polytope for ``arch`` (init: another digit)."""
    p = collision_problem(arch)
    return {"model": arch, **compare_forms(p["model"], p["layer"], p["target"], p["other"], p["units"],
                                           repeats=repeats)}


def _resnet_problem(side: int) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor, torch.Tensor]:
    import torchvision

    from collide.objective import saturated_units
    from collide.taps import preactivation

    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = torchvision.models.resnet18().eval()
    image = torch.rand(3, side, side, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        units = saturated_units(preactivation(model, image.unsqueeze(0), RESNET_LAYER)[0], 1)
    return model, image, image.flip(-1), units


def _resnet_side(side: int, form: str, out: Any) -> None:
    from collide.piecewise.layers import layered_net

    torch.set_num_threads(1)
    model, image, init, units = _resnet_problem(side)
    if form == "layered":
        t = time.perf_counter()
        net = layered_net(model, RESNET_LAYER, image)
        out.put({"read_seconds": time.perf_counter() - t, "nnz": net.nnz,
                 "variables": sum(c.size for c in net.calls), "peak_rss_gib_after_read": peak_rss_gib()})
        del net
    # The dense form past its default budget: resnet() chose to run it. The layered form
    # keeps the default, which only decides whether J⁺'s rank is taken densely.
    config = ExactConfig(threads=1, max_entries=2**62 if form == "dense" else ExactConfig().max_entries)
    t = time.perf_counter()
    res = solve_exact(model, RESNET_LAYER, image, init, units, config=config, form=form)
    vertex = res.vertices[0].numpy()
    got = {"solve_seconds": time.perf_counter() - t, "outcome": res.outcomes[0],
           "max_rel_error_f64": float(res.rel_error.max()), "peak_rss_gib": peak_rss_gib(), "vertex": vertex}
    if res.outcomes[0] == OPTIMAL:
        got["moved_from_target"] = float(np.abs(vertex - image.numpy()).max())
    out.put(got)


def resnet(side: int, *, ram_gib: float) -> dict[str, Any]:
    """ResNet-18 at ``side`` px: the dense LP's size, and one vertex by each form that fits
    ``ram_gib``, each in a child process (its peak memory is the form's, and a stuck LP is
    stopped); the two vertices' largest difference where both are optimal."""
    import torchvision

    model = torchvision.models.resnet18().eval()
    _, entries = lp_entries(model, RESNET_LAYER, torch.zeros(3, side, side))
    dense_gib = entries * 8 / 2**30
    row: dict[str, Any] = {"side": side, "layer": RESNET_LAYER, "dense_entries": entries, "dense_gib": dense_gib,
                           "dense_fits": entries <= ExactConfig().max_entries}
    vertices = {}
    for form in ("dense", "layered"):
        if form == "dense" and dense_gib * DENSE_MEMORY_FACTOR > ram_gib / 2:
            row[form] = {"skipped": f"its rows need {dense_gib:.0f} GiB"}
            continue
        got = in_child(_resnet_side, (side, form), seconds=CHILD_SECONDS)
        vertex = got.pop("vertex", None)
        if got.get("outcome") == OPTIMAL:
            vertices[form] = vertex
        row[form] = got
    if len(vertices) == 2:
        row["max_abs_vertex_diff"] = float(np.abs(vertices["dense"] - vertices["layered"]).max())
    return row


def run() -> dict[str, Any]:
    """Item ``exact_forms``: both forms on the MNIST experiment's polytopes."""
    return {"mnist": [mnist_pair(arch) for arch in ("mlp", "lenet5")]}


def run_resnet() -> list[dict[str, Any]]:
    """Item ``exact_resnet``: ResNet-18 at each side of :data:`RESNET_SIDES`."""
    ram_gib = machine()["ram_gib"]
    return [resnet(side, ram_gib=ram_gib) for side in RESNET_SIDES]
