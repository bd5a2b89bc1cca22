"""Item 2: the exact (LP) solver against its reference and against the gradient solver.

The same 5 vertices (same target, init and pushed units) four ways, in one process:

- ``exact``: collide's LP path (HiGHS through highspy, inequality rows added where violated,
  the vertices' LPs side by side on every core: ``ExactConfig()``);
- ``exact_one_thread``: the same, one LP at a time (``threads=1``);
- ``reference``: the path before it, one scipy ``linprog`` per vertex with every row
  (``lp_solver="linprog"``, one at a time);
- ``gradient``: the batched gradient solver.

Reported per polytope: median wall seconds, the largest relative feature error of its
vertices, the average pairwise distance between them (how large the polytope is, in
[0, 1] pixels), and how far collide's vertices are from the reference's.
"""

from __future__ import annotations

from importlib.metadata import version
from typing import Any

import numpy as np
import scipy

from benchmarks.common import N_VERTICES, collision_problem, median_time
from collide.config import ExactConfig, GradientConfig
from collide.polytope import avg_pairwise_distance
from collide.solvers.exact import OPTIMAL, solve_exact
from collide.solvers.gradient import solve_gradient

# The reference takes a minute a polytope on LeNet-5: timed once there.
REFERENCE_REPEATS = {"mlp": 3, "lenet5": 1}


def _exact_figures(seconds: float, res: Any) -> dict[str, Any]:
    return {
        "seconds": seconds,
        "max_rel_error": float(res.rel_error.max()),
        "vertex_avg_distance": avg_pairwise_distance(res.vertices),
        "optimal": sum(o == OPTIMAL for o in res.outcomes),
        "outcomes": list(res.outcomes),
        "pieces": list(res.pieces),
        "lp_work": list(res.lp_work),
    }


def run(arch: str, *, repeats: int = 3) -> dict[str, Any]:
    p = collision_problem(arch)
    init = p["target"].unsqueeze(0).expand(N_VERTICES, *p["target"].shape)
    grad_s, grad = median_time(lambda: solve_gradient(
        p["model"], p["layer"], p["target_pre"].expand(N_VERTICES, -1), init, p["units"], config=GradientConfig()
    ), repeats)

    def exact(config: ExactConfig, n: int) -> tuple[float, Any]:
        return median_time(lambda: solve_exact(p["model"], p["layer"], p["target"], p["target"], p["units"],
                                               config=config), n)

    ref_s, ref = exact(ExactConfig(lp_solver="linprog", threads=1), REFERENCE_REPEATS.get(arch, repeats))
    one_s, one = exact(ExactConfig(threads=1), repeats)
    exact_s, ex = exact(ExactConfig(), repeats)
    both = np.isfinite(ex.vertices.numpy()) & np.isfinite(ref.vertices.numpy())
    return {
        "model": arch,
        "layer": p["layer"],
        "versions": {"highspy": version("highspy"), "scipy": scipy.__version__},
        "gradient": {
            "seconds": grad_s,
            "max_rel_error": float(grad.rel_error.max()),
            "vertex_avg_distance": avg_pairwise_distance(grad.vertices),
            "converged": int(grad.converged.sum()),
        },
        "exact": _exact_figures(exact_s, ex),
        "exact_one_thread": _exact_figures(one_s, one),
        "reference": _exact_figures(ref_s, ref),
        "reference_repeats": REFERENCE_REPEATS.get(arch, repeats),
        "max_abs_vertex_diff_vs_reference": float(np.abs(ex.vertices.numpy() - ref.vertices.numpy())[both].max()),
        "speedup_vs_reference": ref_s / exact_s,
        "speedup_vs_reference_one_thread": ref_s / one_s,
        "exact_over_gradient_seconds": exact_s / grad_s,
    }

