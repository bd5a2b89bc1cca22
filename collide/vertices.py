"""The gradient vertex solver (paper §2), batched over every vertex of every polytope.

The authors found one vertex after another with momentum SGD over 20k-30k steps. Here
all vertices of a run form one batch: the loss is a sum of per-vertex terms, and Adam's
state is per element, so each vertex follows exactly the path it would follow alone,
while the model runs once per step for the whole batch. A vertex stops moving the step
it meets the collision criterion (``GradientConfig``).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from collide.config import GradientConfig
from collide.errors import DataError
from collide.objective import (
    feature_rel_error,
    loss_minus,
    loss_plus,
    max_nonpositive_violation,
    positive_part_penalty,
)
from collide.taps import preactivation, resolve_layer

# Past this factor the continuation no longer changes anything Adam does, and
# float32 would overflow long before float64 matters.
_MAX_WEIGHT_FACTOR = 1e8


@dataclass(frozen=True)
class GradientResult:
    """Vertices found by :func:`solve_gradient`, on the CPU.

    Shapes:
        vertices: (B, *input) float32
        params: the optimised parameters; the vertices themselves unless ``decode`` was given
        steps, converged, rel_error, violation: (B,)
    """

    vertices: torch.Tensor
    params: torch.Tensor
    steps: torch.Tensor
    converged: torch.Tensor
    rel_error: torch.Tensor
    violation: torch.Tensor
    seconds: float

    def summary(self, rows: slice = slice(None)) -> dict[str, Any]:
        """What a table row records of the solve of ``rows`` (one polytope's vertices)."""
        done = self.converged[rows]
        return {
            "seconds": self.seconds,
            "steps": self.steps[rows].tolist(),
            "converged": bool(done.all()),
            "outcomes": ["converged" if c else "max_steps" for c in done.tolist()],
        }


def _frozen_copy(model: nn.Module, device: str) -> nn.Module:
    model = copy.deepcopy(model).to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def check_inputs(x: torch.Tensor, what: str, lower: float, upper: float) -> None:
    if not torch.isfinite(x).all():
        raise DataError(f"{what} holds NaN or infinite values")
    if float(x.min()) < lower - 1e-6 or float(x.max()) > upper + 1e-6:
        raise DataError(
            f"{what} lies outside the valid input range [{lower}, {upper}] "
            f"(min {float(x.min()):.4g}, max {float(x.max()):.4g})"
        )


def solve_gradient(
    model: nn.Module,
    layer: str,
    target_pre: torch.Tensor,
    init: torch.Tensor,
    units: torch.Tensor,
    *,
    config: GradientConfig,
    device: str = "cpu",
    progress: Callable[[int, int, int], None] | None = None,
    decode: Callable[[torch.Tensor], torch.Tensor] | None = None,
    regularizer: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> GradientResult:
    """Find one vertex per batch row by minimising α·L₊ + β·L₋ⁱ (+ penalty).

    Args:
        model: the classifier; it is copied, never changed.
        layer: the ReLU layer where features must collide.
        target_pre: the target's pre-activation at ``layer`` for each row.
        init: where each row's optimisation starts, inside the input box.
        units: the unit each row pushes down; a non-positive unit of its target.
        config: solver settings; see :class:`GradientConfig`.
        device: ``cpu`` or ``cuda``.
        progress: called as ``progress(step, max_steps, n_done)`` every 50 steps.
        decode: when given, ``init`` holds parameters θ and the input is ``decode(θ)``
            (e.g. patch-composition logits); θ is then not clipped to the box.
        regularizer: an extra per-row loss of θ, e.g. total variation. (B,)

    Shapes:
        target_pre: (B, D); init: (B, *input); units: (B,)

    References:
        Li, Zhang, Malik (2019), §2, the optimisation problem for vertex i.
    """
    resolve_layer(model, layer)
    if target_pre.ndim != 2 or len(target_pre) != len(init) or len(units) != len(init):
        raise DataError(
            f"expected target_pre (B, D), init (B, ...), units (B,) with one B; got "
            f"{tuple(target_pre.shape)}, {tuple(init.shape)}, {tuple(units.shape)}"
        )
    if decode is None:
        check_inputs(init, "the init", config.lower, config.upper)
    elif not torch.isfinite(init).all():
        raise DataError("the initial parameters hold NaN or infinite values")
    if not torch.isfinite(target_pre).all():
        raise DataError("the target pre-activation holds NaN or infinite values")
    net = _frozen_copy(model, device)
    target = target_pre.detach().to(device, torch.float32)
    units = units.to(device)
    u = init.detach().to(device, torch.float32).clone().requires_grad_(True)
    opt = torch.optim.Adam([u], lr=config.lr)
    lr_ratio = config.lr_end / config.lr
    n = len(u)
    done = torch.zeros(n, dtype=torch.bool, device=device)
    steps = torch.full((n,), config.max_steps, dtype=torch.long, device=device)
    frozen = u.detach().clone()
    start = time.perf_counter()
    def forward(theta: torch.Tensor) -> torch.Tensor:
        return preactivation(net, theta if decode is None else decode(theta), layer)

    for step in range(config.max_steps + 1):
        pre = forward(u)
        with torch.no_grad():
            if step >= config.min_steps:
                meets = (feature_rel_error(pre, target) <= config.rel_tol) & (
                    max_nonpositive_violation(pre, target) <= config.neg_tol
                )
                new = meets & ~done
                if bool(new.any()):
                    frozen[new] = u.detach()[new]
                    steps[new] = step
                    done |= new
            if bool(done.all()) or step == config.max_steps:
                break
            if progress is not None and step % 50 == 0:
                progress(step, config.max_steps, int(done.sum()))
        loss = config.beta * loss_minus(pre, target, units)
        if config.loss == "penalty":
            factor = min(config.growth**step, _MAX_WEIGHT_FACTOR)
            loss = loss + factor * (
                config.alpha * loss_plus(pre, target) + config.gamma * positive_part_penalty(pre, target)
            )
        else:
            loss = loss + config.alpha * loss_plus(pre, target)
        if regularizer is not None:
            loss = loss + regularizer(u)
        opt.zero_grad(set_to_none=True)
        loss.sum().backward()
        for group in opt.param_groups:
            group["lr"] = config.lr * lr_ratio ** (step / config.max_steps)
        opt.step()
        with torch.no_grad():
            if decode is None:
                u.clamp_(config.lower, config.upper)
            u[done] = frozen[done]
    with torch.no_grad():
        final = torch.where(done.view(-1, *[1] * (u.ndim - 1)), frozen, u.detach())
        pre = forward(final)
        images = final if decode is None else decode(final)
        rel = feature_rel_error(pre, target)
        viol = max_nonpositive_violation(pre, target)
    if progress is not None:
        progress(config.max_steps, config.max_steps, int(done.sum()))
    return GradientResult(
        vertices=images.cpu(),
        params=final.cpu(),
        steps=steps.cpu(),
        converged=done.cpu(),
        rel_error=rel.cpu(),
        violation=viol.cpu(),
        seconds=time.perf_counter() - start,
    )
