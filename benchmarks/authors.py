"""The authors' vertex optimizer, reimplemented as the reference for the solver benchmark.

From their TF1 scripts (see DESIGN.md, "Facts from the authors' code"): one vertex after
another, momentum ``v = 0.99 v + 0.01 g; θ -= lr·v`` from ``v = 0``, a hand-tuned
piecewise learning rate between 0.1 and 0.001, the paper's loss α·L₊ + β·L₋ⁱ with
(α, β) = (100, 10) in pixel space, and clipping to the input box after every step.
The only addition is the stopping rule: the collision criterion of collide's solver,
checked every step, so both run to the same goal. Pixels stay in collide's [0, 1].

The update is written out rather than taken from ``torch.optim.SGD(momentum=0.99,
dampening=0.99)``: that optimizer starts its buffer at the first gradient itself
(``v = g``, not ``0.01 g``), so its first steps are 100 times the authors'.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import torch
from torch import nn

from collide.config import GradientConfig
from collide.objective import feature_rel_error, loss_minus, loss_plus, max_nonpositive_violation
from collide.taps import preactivation

ALPHA, BETA = 100.0, 10.0
MOMENTUM = 0.99
MAX_STEPS = 30_000
# (first step, lr): large steps to get near the optimum, smaller ones to settle.
LR_PIECES = ((0, 0.1), (10_000, 0.01), (20_000, 0.001))


def piecewise_lr(step: int) -> float:
    lr = LR_PIECES[0][1]
    for first, value in LR_PIECES:
        if step >= first:
            lr = value
    return lr


@dataclass(frozen=True)
class AuthorsResult:
    """One vertex of the authors' scheme. ``steps`` is the cap when not converged."""

    vertex: torch.Tensor
    steps: int
    converged: bool
    rel_error: float
    violation: float
    seconds: float


def solve_one(
    model: nn.Module, layer: str, target_pre: torch.Tensor, init: torch.Tensor, unit: int, *,
    criterion: GradientConfig, max_steps: int = MAX_STEPS, alpha: float = ALPHA, beta: float = BETA,
) -> AuthorsResult:
    """Optimise one vertex from ``init`` until ``criterion`` holds or ``max_steps``.

    Shapes:
        target_pre: (D,); init: (*input), one example
    """
    net = copy.deepcopy(model).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    target = target_pre.detach().unsqueeze(0)
    units = torch.tensor([unit])
    x = init.detach().clone().unsqueeze(0).requires_grad_(True)
    velocity = torch.zeros_like(x)
    start = time.perf_counter()
    for step in range(max_steps + 1):
        pre = preactivation(net, x, layer)
        with torch.no_grad():
            rel = float(feature_rel_error(pre, target)[0])
            viol = float(max_nonpositive_violation(pre, target)[0])
        if step >= criterion.min_steps and rel <= criterion.rel_tol and viol <= criterion.neg_tol:
            return AuthorsResult(x.detach()[0], step, True, rel, viol, time.perf_counter() - start)
        if step == max_steps:
            break
        loss = alpha * loss_plus(pre, target) + beta * loss_minus(pre, target, units)
        (grad,) = torch.autograd.grad(loss.sum(), x)
        with torch.no_grad():
            velocity.mul_(MOMENTUM).add_(grad, alpha=1 - MOMENTUM)
            x.sub_(piecewise_lr(step) * velocity).clamp_(criterion.lower, criterion.upper)
    return AuthorsResult(x.detach()[0], max_steps, False, rel, viol, time.perf_counter() - start)


def solve_sequential(
    model: nn.Module, layer: str, target_pre: torch.Tensor, init: torch.Tensor, units: torch.Tensor, *,
    criterion: GradientConfig, max_steps: int = MAX_STEPS,
) -> list[AuthorsResult]:
    """The authors' order: vertex i pushes ``units[i]``, one vertex after another."""
    return [solve_one(model, layer, target_pre, init, int(u), criterion=criterion, max_steps=max_steps)
            for u in units.tolist()]
