"""Item 5: evaluating a polytope, 2000 samples, against classifying them one by one.

The polytope is the one the batched solver finds for the MNIST experiment's first row;
sampling (stick-breaking), combining and classifying are all timed.
"""

from __future__ import annotations

from typing import Any

import torch

from benchmarks.common import N_VERTICES, collision_problem, median_time
from collide.config import GradientConfig
from collide.polytope import combine, evaluate, sample_weights
from collide.solvers.gradient import solve_gradient

N_SAMPLES = 2000


def _evaluate(model: torch.nn.Module, vertices: torch.Tensor, target: torch.Tensor, batch_size: int) -> Any:
    gen = torch.Generator().manual_seed(0)
    weights = sample_weights(N_SAMPLES, len(vertices), sampler="stick", generator=gen)
    return evaluate(model, combine(weights, vertices), target, batch_size=batch_size)


def run(arch: str, *, repeats: int = 5) -> dict[str, Any]:
    p = collision_problem(arch)
    init = p["target"].unsqueeze(0).expand(N_VERTICES, *p["target"].shape)
    vertices = solve_gradient(p["model"], p["layer"], p["target_pre"].expand(N_VERTICES, -1), init, p["units"],
                              config=GradientConfig()).vertices
    batched_s, ev = median_time(lambda: _evaluate(p["model"], vertices, p["target"], 500), repeats)
    single_s, _ = median_time(lambda: _evaluate(p["model"], vertices, p["target"], 1), repeats)
    return {
        "model": arch,
        "n_samples": N_SAMPLES,
        "seconds": batched_s,
        "one_by_one_seconds": single_s,
        "speedup": single_s / batched_s,
        "success_rate": ev.success_rate,
    }
