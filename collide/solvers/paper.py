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

import dataclasses
import math
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from collide.activations import RELU_SATURATION, Saturation
from collide.config import PaperConfig
from collide.errors import ConfigError, DataError
from collide.inputs import require_in_box
from collide.objective import feature_rel_error, loss_minus, loss_plus, max_regime_violation
from collide.sites import Site
from collide.solvers.base import Progress
from collide.solvers.gradient import BatchedSolver, GradientResult, frozen_copy
from collide.solvers.param import Parameterisation
from collide.taps import preactivation, site_of

# The authors' learning rate per model on [0, 1] pixels: the best of the grid in
# benchmarks/solver.py (LR_GRID; lowest largest feature error of five vertices started
# from another digit after 6,000 steps), on each model's collision problem of Table 2,
# with the shipped checkpoints (collide/models/shipped/). The grid and every rate's error
# are in benchmarks/paper_lr.json (`python -m benchmarks.paper_lr`): on the MLP it is flat
# (0.232-0.240 from 1e-4 to 10), on LeNet-5 3 edges out 1 (0.0513 against 0.0545).
PAPER_TUNED_LR = {"mlp": 1e-4, "lenet5": 3.0}


def piecewise_lr(step: int, config: PaperConfig) -> float:
    """``lr`` for the first third of the steps, then ``lr·lr_drop``, then ``lr·lr_drop²``."""
    assert config.lr is not None, "resolve the learning rate first (PaperSolver(config, arch=...))"
    return config.lr * config.lr_drop ** min(2, (3 * step) // config.steps)


def solve_paper(
    model: nn.Module,
    layer: str | Site,
    target_pre: torch.Tensor,
    init: torch.Tensor,
    units: torch.Tensor,
    *,
    config: PaperConfig,
    device: str = "cpu",
    progress: Callable[[int, int, int], None] | None = None,
    record: Callable[[int, torch.Tensor], None] | None = None,
    sat: Saturation = RELU_SATURATION,
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
    require_in_box(init, "the init", config.lower, config.upper)
    if config.lr is None:
        raise ConfigError("paper.lr is not set: pass PaperConfig(lr=...) or PaperSolver(config, arch=...)")
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
            rel = feature_rel_error(pre, target, act=sat.activation)
            if record is not None:
                record(step, rel)
            ok = rel <= config.rel_tol
            first = torch.where(ok & (first < 0), step, first)
        if step == config.steps:
            break
        if progress is not None and step % 50 == 0:
            progress(step, config.steps, 0)
        loss = config.alpha * loss_plus(pre, target, sat=sat) + config.beta * loss_minus(pre, target, units, sat=sat)
        (grad,) = torch.autograd.grad(loss.sum(), x)
        with torch.no_grad():
            velocity.mul_(config.momentum).add_(grad, alpha=1 - config.momentum)
            x.sub_(piecewise_lr(step, config) * velocity).clamp_(config.lower, config.upper)
    with torch.no_grad():
        rel = feature_rel_error(pre, target, act=sat.activation)
        viol = max_regime_violation(pre, target, sat=sat)
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


class PaperSolver(BatchedSolver):
    """The authors' scheme (:func:`solve_paper`, :class:`PaperConfig`) at a rate for the model
    at hand: ``config.lr`` when set, else the rate tuned for ``arch`` (:data:`PAPER_TUNED_LR`).
    The authors' own rates are for 0-255 pixels, so there is no default for other models."""

    method = "paper"
    config_type = PaperConfig

    def __init__(self, config: PaperConfig | None = None, *, arch: str | None = None) -> None:
        super().__init__(config)
        if self.config.lr is None and arch is not None:
            if arch not in PAPER_TUNED_LR:
                raise ConfigError(f"no tuned paper.lr for model {arch!r} (tuned: {sorted(PAPER_TUNED_LR)}): set "
                                  "paper.lr, e.g. --set paper.lr=1e-4, or tune it with benchmarks/solver.py")
            self.config = dataclasses.replace(self.config, lr=PAPER_TUNED_LR[arch])
        if self.config.lr is None:
            raise ConfigError("the paper's scheme needs a learning rate for your model: pass "
                              f"config=PaperConfig(lr=...) (tuned for the zoo: {PAPER_TUNED_LR}; benchmarks/solver.py "
                              "tunes one)")

    @classmethod
    def for_model(cls, config: Any = None, *, arch: str | None = None) -> PaperSolver:
        return cls(config, arch=arch)

    @property
    def loss_name(self) -> str:
        return "paper"

    @property
    def record(self) -> dict[str, Any]:
        return {"paper_lr": self.config.lr}

    def run_batch(
        self, model: nn.Module, site: Site, target_pre: torch.Tensor, init: torch.Tensor, units: torch.Tensor, *,
        device: str, param: Parameterisation, progress: Progress | None,
    ) -> GradientResult:
        return solve_paper(model, site, target_pre, init, units, config=self.config, device=device, progress=progress,
                           sat=self.saturation(site))
