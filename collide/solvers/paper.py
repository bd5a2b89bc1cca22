"""The authors' vertex scheme, as one definition for table rows and benchmarks.

Momentum gradient descent on the paper's loss α·L₊ + β·L₋ⁱ with the authors' update
``v = m·v + (1−m)·g; x −= lr·v`` (``torch.optim.SGD(momentum=m, dampening=m)`` would
start its buffer at ``g`` instead of ``(1−m)·g``), a piecewise learning rate, clipping
to the input box, and a fixed number of steps: the paper has no stopping rule. The
authors solved one vertex after another; momentum and the loss are per vertex, so a
batch of vertices follows the same paths up to floating-point rounding, and this solves
them as one batch. (At large rates the paths are sensitive to rounding: on LeNet-5 at
lr 1 the batched and one-by-one runs end at errors 0.134 and 0.142.)
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch
from torch import nn

from collide.config import PaperConfig
from collide.errors import ConfigError, DataError
from collide.objective import feature_rel_error, loss_minus, loss_plus, max_nonpositive_violation
from collide.solvers.gradient import GradientResult, check_inputs, frozen_copy
from collide.taps import preactivation, site_of


def piecewise_lr(step: int, config: PaperConfig) -> float:
    """``lr`` for the first third of the steps, then ``lr·lr_drop``, then ``lr·lr_drop²``."""
    assert config.lr is not None, "resolve the learning rate first (PaperConfig.for_model)"
    return config.lr * config.lr_drop ** min(2, (3 * step) // config.steps)


def solve_paper(
    model: nn.Module,
    layer: str,
    target_pre: torch.Tensor,
    init: torch.Tensor,
    units: torch.Tensor,
    *,
    config: PaperConfig,
    device: str = "cpu",
    progress: Callable[[int, int, int], None] | None = None,
    record: Callable[[int, torch.Tensor], None] | None = None,
) -> GradientResult:
    """One vertex per batch row by the authors' scheme; the last iterate is the vertex.

    ``converged[k]`` says whether row k ends within ``config.rel_tol``/``neg_tol``;
    ``first_feasible[k]`` is the first step its relative feature error was at most
    ``config.rel_tol`` (-1 never).

    ``record(step, rel_error)``, when given, is called every step with each row's
    relative feature error (B,).

    Shapes:
        target_pre: (B, D); init: (B, *input); units: (B,)

    References:
        Li, Zhang, Malik (2019), §2; the authors' optimiser.
    """
    if target_pre.ndim != 2 or len(target_pre) != len(init) or len(units) != len(init):
        raise DataError(
            f"expected target_pre (B, D), init (B, ...), units (B,) with one B; got "
            f"{tuple(target_pre.shape)}, {tuple(init.shape)}, {tuple(units.shape)}"
        )
    check_inputs(init, "the init", config.lower, config.upper)
    if config.lr is None:
        raise ConfigError("paper.lr is not set: pass PaperConfig(lr=...) or config.for_model(arch)")
    net = frozen_copy(model, device)
    site = site_of(net, layer, init[:1].to(device, torch.float32))
    target = target_pre.detach().to(device, torch.float32)
    units = units.to(device)
    rows = torch.arange(len(init), device=device)
    x = init.detach().to(device, torch.float32).clone().requires_grad_(True)
    velocity = torch.zeros_like(x)
    first = torch.full((len(x),), -1, dtype=torch.long, device=device)
    start = time.perf_counter()
    for step in range(config.steps + 1):
        pre = preactivation(net, x, site)
        with torch.no_grad():
            rel = feature_rel_error(pre, target)
            if record is not None:
                record(step, rel)
            ok = rel <= config.rel_tol
            first = torch.where(ok & (first < 0), step, first)
        if step == config.steps:
            break
        if progress is not None and step % 50 == 0:
            progress(step, config.steps, 0)
        loss = config.alpha * loss_plus(pre, target) + config.beta * loss_minus(pre, target, units)
        (grad,) = torch.autograd.grad(loss.sum(), x)
        with torch.no_grad():
            velocity.mul_(config.momentum).add_(grad, alpha=1 - config.momentum)
            x.sub_(piecewise_lr(step, config) * velocity).clamp_(config.lower, config.upper)
    with torch.no_grad():
        rel = feature_rel_error(pre, target)
        viol = max_nonpositive_violation(pre, target)
        converged = (rel <= config.rel_tol) & (viol <= (math.inf if config.neg_tol is None else config.neg_tol))
        vertices = x.detach()
    if progress is not None:
        progress(config.steps, config.steps, int(converged.sum()))
    return GradientResult(
        vertices=vertices.cpu(),
        params=vertices.cpu(),
        steps=torch.full((len(x),), config.steps, dtype=torch.long),
        converged=converged.cpu(),
        rel_error=rel.cpu(),
        violation=viol.cpu(),
        pushed=pre.detach()[rows, units].cpu(),
        target_pushed=target[rows, units].cpu(),
        first_feasible=first.cpu(),
        seconds=time.perf_counter() - start,
    )
