"""Item 10: the exact LP's two forms side by side: dense rows over the input against one
variable vector per layer (:mod:`collide.piecewise.layered_lp`).

The same 5 vertices (the MNIST experiment's target, init and pushed units; one LP at a
time, ``threads=1``) by both forms in one process, on the shipped MNIST MLP at ``relu1``
and LeNet-5 at ``relu3``: median seconds, the largest distance between the two forms'
vertices (the dense form is the reference) and the float64 feature error of each.

Then scale, where the dense form cannot go: torchvision's ResNet-18 (random weights) at
``layer2.1.relu#1``, reading the layered maps and solving one vertex at each side in
:data:`RESNET_SIDES` (peak memory of the process measured, not estimated), the dense
form's size beside it. A side whose LP runs past :data:`LP_SECONDS` is reported as such.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from benchmarks.common import collision_problem, in_child, median_time, peak_rss_gib
from collide.config import ExactConfig
from collide.piecewise.budget import lp_entries
from collide.solvers.exact import OPTIMAL, solve_exact

RESNET_LAYER = "layer2.1.relu#1"
RESNET_SIDES = (32, 64)
# A ResNet LP still running after this is stopped and reported as unfinished.
LP_SECONDS = 240


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


def _resnet_side(side: int, out: Any) -> None:
    import torchvision

    from collide.objective import saturated_units
    from collide.piecewise.layers import layered_net
    from collide.taps import preactivation

    torch.set_num_threads(1)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = torchvision.models.resnet18().eval()
    image = torch.rand(3, side, side, generator=torch.Generator().manual_seed(0))
    t = time.perf_counter()
    net = layered_net(model, RESNET_LAYER, image)
    read_s = time.perf_counter() - t
    out.put({"read_seconds": read_s, "nnz": net.nnz, "variables": sum(c.size for c in net.calls),
             "peak_rss_gib_after_read": peak_rss_gib()})
    with torch.no_grad():
        units = saturated_units(preactivation(model, image.unsqueeze(0), RESNET_LAYER)[0], 1)
    t = time.perf_counter()
    res = solve_exact(model, RESNET_LAYER, image, image, units, config=ExactConfig(threads=1), form="layered")
    out.put({"solve_seconds": time.perf_counter() - t, "outcome": res.outcomes[0],
             "max_rel_error_f64": float(res.rel_error.max()),
             "peak_rss_gib": peak_rss_gib()})


def resnet(side: int) -> dict[str, Any]:
    """ResNet-18 at ``side`` px: the dense LP's size, the layered form's reading and one
    vertex, in a child process (its peak memory is the form's, and a stuck LP is stopped)."""
    import torchvision

    model = torchvision.models.resnet18().eval()
    _, entries = lp_entries(model, RESNET_LAYER, torch.zeros(3, side, side))
    row: dict[str, Any] = {"side": side, "layer": RESNET_LAYER, "dense_entries": entries,
                           "dense_gib": entries * 8 / 2**30, "dense_fits": entries <= ExactConfig().max_entries}
    return {**row, **in_child(_resnet_side, (side,), seconds=LP_SECONDS + 300)}


def run() -> dict[str, Any]:
    return {"mnist": [mnist_pair(arch) for arch in ("mlp", "lenet5")],
            "resnet18": [resnet(side) for side in RESNET_SIDES]}
