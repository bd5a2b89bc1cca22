"""Item 6: the VGG-16 fc6 solver on a GPU, 5 vertices batched against one at a time.

Runs only where CUDA is available; elsewhere it reports why it was skipped. Weights
are random (seeded): speed does not depend on them, and nothing is downloaded. A fixed
number of solver steps is timed (no early stopping), and the achieved rate is set
against the card's measured float32 matrix-multiply rate.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from collide.config import GradientConfig
from collide.solvers.gradient import solve_gradient

STEPS = 50
N_VERTICES = 5
# VGG-16 at 224x224: about 15.5 GFLOP (multiply-adds counted as 2 FLOP: 31e9) per image
# forward; a solver step is a forward and a backward pass for the input (about 3x).
FLOP_PER_IMAGE_STEP = 3 * 2 * 15.5e9


def synchronize(device: str) -> None:
    """Wait for the device's queued kernels, so that a clock read after it means something."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def matmul_rate(n: int = 8192, repeats: int = 10, *, device: str = "cuda", seed: int = 0) -> float:
    """The device's measured float32 matmul rate, FLOP/s, under the precision switches in
    force (TF32 as torch's default allows, unless the caller switched it off)."""
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(n, n, generator=gen).to(device)
    b = torch.randn(n, n, generator=gen).to(device)
    a @ b
    synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    synchronize(device)
    return 2 * n**3 * repeats / (time.perf_counter() - start)


def _solve(model: torch.nn.Module, target_pre: torch.Tensor, init: torch.Tensor, units: torch.Tensor) -> float:
    # min_steps = max_steps: no vertex stops early, so every run does STEPS steps.
    config = GradientConfig(min_steps=STEPS, max_steps=STEPS)
    torch.cuda.synchronize()
    start = time.perf_counter()
    solve_gradient(model, "fc6", target_pre, init, units, config=config, device="cuda")
    torch.cuda.synchronize()
    return time.perf_counter() - start


def run() -> dict[str, Any]:
    if not torch.cuda.is_available():
        return {"skipped": "no CUDA device on this machine (no GPU machine was lent to this run)"}
    from collide.models.vgg import vgg16_from_source
    from collide.objective import saturated_units
    from collide.taps import preactivation

    model = vgg16_from_source({"weights": "random", "seed": 0})
    gen = torch.Generator().manual_seed(0)
    target = torch.rand(1, 3, 224, 224, generator=gen)
    with torch.no_grad():
        target_pre = preactivation(model, target, "fc6")
    units = saturated_units(target_pre[0], N_VERTICES)
    init = torch.rand(N_VERTICES, 3, 224, 224, generator=gen)
    _solve(model, target_pre, target, units[:1])  # warm-up: cuDNN autotuning, allocator
    batched = _solve(model, target_pre.expand(N_VERTICES, -1), init, units)
    single = sum(_solve(model, target_pre, init[k : k + 1], units[k : k + 1]) for k in range(N_VERTICES))
    peak = matmul_rate()
    achieved = FLOP_PER_IMAGE_STEP * N_VERTICES * STEPS / batched
    return {
        "device": torch.cuda.get_device_name(0),
        "steps": STEPS,
        "batched_seconds": batched,
        "one_at_a_time_seconds": single,
        "speedup": single / batched,
        "matmul_tflops": peak / 1e12,
        "achieved_tflops": achieved / 1e12,
        "share_of_matmul_rate": achieved / peak,
    }
