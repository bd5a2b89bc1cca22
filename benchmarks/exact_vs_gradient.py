"""Item 2: the exact (LP) solver against the batched gradient solver, side by side.

Both find the same 5 vertices (same target, init and pushed units); reported per
polytope: wall seconds, the largest relative feature error of its vertices, and the
average pairwise distance between them (how large the polytope is, in [0, 1] pixels).
"""

from __future__ import annotations

from typing import Any

from benchmarks.common import N_VERTICES, collision_problem, median_time
from collide.config import ExactConfig, GradientConfig
from collide.polytope import avg_pairwise_distance
from collide.solvers.exact import OPTIMAL, solve_exact
from collide.solvers.gradient import solve_gradient


def run(arch: str, *, repeats: int = 3) -> dict[str, Any]:
    p = collision_problem(arch)
    init = p["target"].unsqueeze(0).expand(N_VERTICES, *p["target"].shape)
    grad_s, grad = median_time(lambda: solve_gradient(
        p["model"], p["layer"], p["target_pre"].expand(N_VERTICES, -1), init, p["units"], config=GradientConfig()
    ), repeats)
    exact_s, exact = median_time(lambda: solve_exact(
        p["model"], p["layer"], p["target"], p["target"], p["units"], config=ExactConfig()
    ), repeats)
    return {
        "model": arch,
        "layer": p["layer"],
        "gradient": {
            "seconds": grad_s,
            "max_rel_error": float(grad.rel_error.max()),
            "vertex_avg_distance": avg_pairwise_distance(grad.vertices),
            "converged": int(grad.converged.sum()),
        },
        "exact": {
            "seconds": exact_s,
            "max_rel_error": float(exact.rel_error.max()),
            "vertex_avg_distance": avg_pairwise_distance(exact.vertices),
            "optimal": sum(o == OPTIMAL for o in exact.outcomes),
            "outcomes": list(exact.outcomes),
        },
        "exact_over_gradient_seconds": exact_s / grad_s,
    }
