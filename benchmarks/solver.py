"""Item 1: the batched vertex solver against the authors' scheme, to one criterion.

Three ways to find the same 5 vertices of the MNIST experiment's first polytope:
collide's batched solver (all vertices in one batch, early stopping), the same solver
called once per vertex (what batching alone buys), and the authors' scheme
(:mod:`benchmarks.authors`). Iterations are forward/backward passes of the model: the
batch's longest vertex for the batched solver, the sum over vertices otherwise.
"""

from __future__ import annotations

from typing import Any

import torch

from benchmarks import authors
from benchmarks.common import N_VERTICES, collision_problem, median_time, timed
from collide.config import GradientConfig
from collide.vertices import solve_gradient

CRITERION = GradientConfig()


def _batched(problem: dict[str, Any], n: int) -> Any:
    init = problem["target"].unsqueeze(0).expand(n, *problem["target"].shape)
    return solve_gradient(problem["model"], problem["layer"], problem["target_pre"].expand(n, -1), init,
                          problem["units"][:n], config=CRITERION)


def _one_at_a_time(problem: dict[str, Any]) -> list[Any]:
    out = []
    for k in range(N_VERTICES):
        sub = {**problem, "units": problem["units"][k : k + 1]}
        out.append(_batched(sub, 1))
    return out


def run(arch: str, *, repeats: int = 3, authors_cap: int = authors.MAX_STEPS) -> dict[str, Any]:
    problem = collision_problem(arch)
    batched_s, batched = median_time(lambda: _batched(problem, N_VERTICES), repeats)
    single_s, singles = median_time(lambda: _one_at_a_time(problem), repeats)
    # The reference runs up to 5 x 30k steps: measured once.
    authors_s, ref = timed(lambda: authors.solve_sequential(
        problem["model"], problem["layer"], problem["target_pre"], problem["target"], problem["units"],
        criterion=CRITERION, max_steps=authors_cap))
    batched_iters = int(batched.steps.max())
    authors_iters = sum(r.steps for r in ref)
    return {
        "model": arch,
        "layer": problem["layer"],
        "n_vertices": N_VERTICES,
        "criterion": {"rel_tol": CRITERION.rel_tol, "neg_tol": CRITERION.neg_tol, "min_steps": CRITERION.min_steps},
        "batched": {
            "seconds": batched_s,
            "iterations": batched_iters,
            "steps_per_vertex": batched.steps.tolist(),
            "converged": int(batched.converged.sum()),
            "max_rel_error": float(batched.rel_error.max()),
            "max_violation": float(batched.violation.max()),
        },
        "one_at_a_time": {
            "seconds": single_s,
            "iterations": int(sum(int(r.steps.max()) for r in singles)),
            "converged": int(sum(int(r.converged.sum()) for r in singles)),
        },
        "authors": {
            "seconds": authors_s,
            "iterations": authors_iters,
            "steps_per_vertex": [r.steps for r in ref],
            "converged": sum(r.converged for r in ref),
            "cap": authors_cap,
            "max_rel_error": max(r.rel_error for r in ref),
            "max_violation": max(r.violation for r in ref),
            "lr_pieces": [list(p) for p in authors.LR_PIECES],
            "alpha_beta": [authors.ALPHA, authors.BETA],
        },
        "speedup_vs_authors": authors_s / batched_s,
        "speedup_vs_one_at_a_time": single_s / batched_s,
        "iteration_ratio": batched_iters / authors_iters,
        "torch_threads": torch.get_num_threads(),
    }
