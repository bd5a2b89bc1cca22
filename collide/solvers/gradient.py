"""The gradient vertex solver (paper §2), batched over every vertex of every polytope.

The authors found one vertex after another with momentum SGD over 20k-30k steps. Here
all vertices of a run form one batch: the loss is a sum of per-vertex terms, and Adam's
state is per element, so each vertex follows exactly the path it would follow alone,
while the model runs once per step for the whole batch.

A vertex is the *best* feasible point found, not the first: once an iterate meets the
collision criterion (``GradientConfig``) the solver keeps pushing the vertex's unit down,
keeps the feasible iterate where that unit is lowest, and stops the vertex when that
value has not improved by ``plateau_tol`` (relative) over ``plateau_window`` steps.
Stopping at the first feasible iterate would make vertex distances measure when the loop
stopped rather than how large the polytope is.
"""

from __future__ import annotations

import abc
import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from collide.activations import RELU_SATURATION, Saturation
from collide.config import GradientConfig
from collide.errors import DataError
from collide.inputs import require_finite, require_in_box
from collide.objective import (
    feature_rel_error,
    loss_minus,
    loss_plus,
    max_regime_violation,
    regime_penalty,
)
from collide.sites import Site
from collide.solvers.base import Found, Problem, Progress, Solver
from collide.solvers.param import Parameterisation, Pixels
from collide.taps import preactivation, site_of

# Past this factor the continuation no longer changes anything Adam does, and
# float32 would overflow long before float64 matters.
_MAX_WEIGHT_FACTOR = 1e8
_LOG_MAX_WEIGHT_FACTOR = math.log(_MAX_WEIGHT_FACTOR)


def _weight_factor(step: int, growth: float) -> float:
    """``min(growth ** step, 1e8)``, in log space: the power overflows past ~71k steps."""
    return math.exp(min(step * math.log(growth), _LOG_MAX_WEIGHT_FACTOR))


def _plateau_slack(anchor: torch.Tensor, config: GradientConfig) -> torch.Tensor:
    """How much lower than ``anchor`` the pushed unit must get to count as progress."""
    return config.plateau_tol * anchor.abs().nan_to_num(posinf=0.0).clamp_min(1e-6)




@dataclass(frozen=True)
class GradientResult:
    """Vertices found by :func:`solve_gradient`, on the CPU.

    ``converged[k]``: some iterate of row k met the criterion; ``vertices[k]`` is then
    the best such iterate, else the last one. ``steps[k]``: the step row k stopped at
    (``max_steps`` when it never reached a plateau); ``stalled[k]``: row k stopped
    before meeting the criterion because its feature error stopped falling
    (``GradientConfig.stall_window``); ``first_feasible[k]``: the first
    step it met the criterion (-1 never). ``pushed``/``target_pushed``: the pushed
    unit's pre-activation at the vertex and at the target.

    Shapes:
        vertices: (B, *input) float32
        params: the optimised parameters; the vertices themselves unless ``decode`` was given
        steps, converged, rel_error, violation, pushed, target_pushed, first_feasible: (B,)
    """

    vertices: torch.Tensor
    params: torch.Tensor
    steps: torch.Tensor
    converged: torch.Tensor
    rel_error: torch.Tensor
    violation: torch.Tensor
    pushed: torch.Tensor
    target_pushed: torch.Tensor
    first_feasible: torch.Tensor
    seconds: float
    stalled: torch.Tensor | None = None

    def summary(self, rows: slice = slice(None)) -> dict[str, Any]:
        """What a table row records of the solve of ``rows`` (one polytope's vertices)."""
        done = self.converged[rows]
        stalled = self.stalled[rows] if self.stalled is not None else torch.zeros_like(done)
        return {
            "seconds": self.seconds,
            "steps": self.steps[rows].tolist(),
            "first_feasible": self.first_feasible[rows].tolist(),
            "converged": bool(done.all()),
            "outcomes": ["converged" if c else "stalled" if s else "max_steps"
                         for c, s in zip(done.tolist(), stalled.tolist(), strict=True)],
        }


def frozen_copy(model: nn.Module, device: str) -> nn.Module:
    model = copy.deepcopy(model).to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def solve_gradient(
    model: nn.Module,
    layer: str | Site,
    target_pre: torch.Tensor,
    init: torch.Tensor,
    units: torch.Tensor,
    *,
    config: GradientConfig,
    device: str = "cpu",
    progress: Callable[[int, int, int], None] | None = None,
    decode: Callable[[torch.Tensor], torch.Tensor] | None = None,
    regularizer: Callable[[torch.Tensor], torch.Tensor] | None = None,
    record: Callable[[int, torch.Tensor], None] | None = None,
    sat: Saturation = RELU_SATURATION,
) -> GradientResult:
    """Find one vertex per batch row by minimising α·L₊ + β·L₋ⁱ (+ penalty).

    Args:
        model: the classifier; it is copied, never changed.
        layer: the activation layer where features must collide.
        target_pre: the target's pre-activation at ``layer`` for each row.
        init: where each row's optimisation starts, inside the input box.
        units: the unit each row pushes deeper into saturation; a saturated (ReLU:
            non-positive) unit of its target.
        config: solver settings; see :class:`GradientConfig`.
        device: ``cpu`` or ``cuda``.
        progress: called as ``progress(step, max_steps, n_stopped)`` every 50 steps.
        decode: when given, ``init`` holds parameters θ and the input is ``decode(θ)``
            (e.g. patch-composition logits); θ is then not clipped to the box.
        regularizer: an extra per-row loss of θ, e.g. total variation. (B,)
        record: called as ``record(step, rel_error)`` every step with each row's relative
            feature error (B,), for benchmarks that compare solvers at equal error.
        sat: the layer activation's saturated regimes (ReLU's by default).

    Shapes:
        target_pre: (B, D); init: (B, *input); units: (B,)

    References:
        Li, Zhang, Malik (2019), §2, the optimisation problem for vertex i.
    """
    if target_pre.ndim != 2 or len(target_pre) != len(init) or len(units) != len(init):
        raise DataError(
            f"expected target_pre (B, D), init (B, ...), units (B,) with one B; got "
            f"{tuple(target_pre.shape)}, {tuple(init.shape)}, {tuple(units.shape)}"
        )
    if decode is None:
        require_in_box(init, "the init", config.lower, config.upper)
    else:
        require_finite(init, "the initial parameters", fix="start the parameterisation from finite values")
    require_finite(target_pre, "the target pre-activation",
                   fix="the model's weights (or the target) are not finite; check the checkpoint or weights file")
    net = frozen_copy(model, device)
    with torch.no_grad():
        first_input = init[:1].to(device, torch.float32)
        site = site_of(net, layer, first_input if decode is None else decode(first_input))
    target = target_pre.detach().to(device, torch.float32)
    units = units.to(device)
    u = init.detach().to(device, torch.float32).clone().requires_grad_(True)
    opt = torch.optim.Adam([u], lr=config.lr)
    lr_ratio = config.lr_end / config.lr
    n = len(u)
    rows = torch.arange(n, device=device)
    target_push = target[rows, units]
    # Deeper in saturation is lower at a lower asymptote, higher at an upper one: the
    # plateau test runs on signed values, lower is better.
    sign = sat.sign(target)[rows, units]
    # Per vertex: the best feasible iterate so far (lowest pushed unit); the value the
    # plateau test compares against, and how many feasible steps have not beaten it.
    # Infeasible steps do not count: early on the penalty is weak and the iterates leave
    # the collision set, which is no plateau.
    best = u.detach().clone()
    best_push = torch.full((n,), torch.inf, device=device)
    anchor_push = torch.full((n,), torch.inf, device=device)
    stale = torch.zeros(n, dtype=torch.long, device=device)
    feasible = torch.zeros(n, dtype=torch.bool, device=device)
    stopped = torch.zeros(n, dtype=torch.bool, device=device)
    steps = torch.full((n,), config.max_steps, dtype=torch.long, device=device)
    first = torch.full((n,), -1, dtype=torch.long, device=device)
    # Per vertex that has not met the criterion yet: its lowest feature error so far and
    # the steps since that last improved by stall_tol (the stall test).
    best_rel = torch.full((n,), torch.inf, device=device)
    rel_stale = torch.zeros(n, dtype=torch.long, device=device)
    stalled = torch.zeros(n, dtype=torch.bool, device=device)
    start = time.perf_counter()

    def forward(theta: torch.Tensor) -> torch.Tensor:
        return preactivation(net, theta if decode is None else decode(theta), site)

    for step in range(config.max_steps + 1):
        pre = forward(u)
        with torch.no_grad():
            rel = feature_rel_error(pre, target, act=sat.activation)
            if record is not None:
                record(step, rel)
            if step >= config.min_steps:
                violation = max_regime_violation(pre, target, sat=sat)
                meets = (rel <= config.rel_tol) & (violation <= config.neg_tol) & ~stopped
                push = sign * pre[rows, units]
                better = meets & (push < best_push)
                best[better] = u.detach()[better]
                best_push = torch.where(better, push, best_push)
                first = torch.where(meets & ~feasible, step, first)
                feasible |= meets
                moved = meets & (push < anchor_push - _plateau_slack(anchor_push, config))
                anchor_push = torch.where(moved, push, anchor_push)
                stale = torch.where(moved, 0, stale + meets.long())
                plateau = ~stopped & (stale >= config.plateau_window)
                if config.stall_window:
                    gained = rel < best_rel * (1 - config.stall_tol)
                    best_rel = torch.where(gained, rel, best_rel)
                    rel_stale = torch.where(gained | feasible, 0, rel_stale + 1)
                    stuck = ~stopped & ~feasible & (rel_stale >= config.stall_window)
                    stalled |= stuck
                    plateau |= stuck
                steps = torch.where(plateau, step, steps)
                stopped |= plateau
            if bool(stopped.all()) or step == config.max_steps:
                break
            if progress is not None and step % 50 == 0:
                progress(step, config.max_steps, int(stopped.sum()))
        loss = config.beta * loss_minus(pre, target, units, others=config.others_weight, sat=sat)
        if config.loss == "penalty":
            factor = _weight_factor(step, config.growth)
            loss = loss + factor * (
                config.alpha * loss_plus(pre, target, sat=sat) + config.gamma * regime_penalty(pre, target, sat=sat)
            )
        else:
            loss = loss + config.alpha * loss_plus(pre, target, sat=sat)
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
            u[stopped] = best[stopped]
    with torch.no_grad():
        # A vertex that never met the criterion keeps its last iterate, for inspection.
        final = torch.where(feasible.view(-1, *[1] * (u.ndim - 1)), best, u.detach())
        pre = forward(final)
        images = final if decode is None else decode(final)
        rel = feature_rel_error(pre, target, act=sat.activation)
        viol = max_regime_violation(pre, target, sat=sat)
        push = pre[rows, units]
    if progress is not None:
        progress(config.max_steps, config.max_steps, int(stopped.sum()))
    return GradientResult(
        vertices=images.cpu(),
        params=final.cpu(),
        steps=steps.cpu(),
        converged=feasible.cpu(),
        rel_error=rel.cpu(),
        violation=viol.cpu(),
        pushed=push.cpu(),
        target_pushed=target_push.cpu(),
        first_feasible=first.cpu(),
        seconds=time.perf_counter() - start,
        stalled=stalled.cpu(),
    )


class BatchedSolver(Solver):
    """A solver whose vertices, of every target at once, form one batch of the model."""

    batches = True

    @abc.abstractmethod
    def run_batch(
        self, model: nn.Module, site: Site, target_pre: torch.Tensor, init: torch.Tensor, units: torch.Tensor, *,
        device: str, param: Parameterisation, progress: Progress | None,
    ) -> GradientResult:
        """One vertex per row. Shapes: target_pre (B, D); init (B, *θ); units (B,)"""

    def solve(
        self, model: nn.Module, site: Site, problems: list[Problem], *, device: str,
        param: Parameterisation | None, progress: Progress | None,
    ) -> list[Found]:
        params = [param if param is not None else Pixels(pr.init) for pr in problems]
        sizes = [len(pr.units) for pr in problems]
        result = self.run_batch(
            model, site,
            torch.cat([pr.target_pre.expand(v, -1) for pr, v in zip(problems, sizes, strict=True)]),
            torch.cat([p.initial(v) for p, v in zip(params, sizes, strict=True)]),
            torch.cat([pr.units for pr in problems]),
            device=device, param=params[0], progress=progress,
        )
        found, start = [], 0
        for pr, p, v in zip(problems, params, sizes, strict=True):
            rows = slice(start, start + v)
            start += v
            init = pr.init
            if param is not None:
                with torch.no_grad():
                    init = p.decode(p.initial(1))[0].float()  # type: ignore[misc]
            record = result.summary(rows)
            if len(problems) > 1:
                # A polytope's share of the batch, so that seconds add up over a table.
                record.update(seconds=result.seconds / len(problems), batch_seconds=result.seconds,
                              batch_targets=len(problems))
            found.append(Found(result.vertices[rows], result.params[rows], record, init))
        return found


class GradientSolver(BatchedSolver):
    """collide's gradient solver (:func:`solve_gradient`, :class:`GradientConfig`); it also
    optimises parameterisations other than the pixels (patch compositions)."""

    method = "gradient"
    config_type = GradientConfig
    takes_param = True

    @property
    def loss_name(self) -> str:
        return self.config.loss

    def run_batch(
        self, model: nn.Module, site: Site, target_pre: torch.Tensor, init: torch.Tensor, units: torch.Tensor, *,
        device: str, param: Parameterisation, progress: Progress | None,
    ) -> GradientResult:
        on = param.on(device)
        return solve_gradient(model, site, target_pre, init, units, config=self.config, device=device,
                              progress=progress, decode=on.decode, regularizer=on.regularizer,
                              sat=self.saturation(site))
