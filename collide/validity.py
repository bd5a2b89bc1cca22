"""Which vertices count: each solver's collision criterion, checked in float64.

A vertex enters a polytope's samples only when it meets the criterion its method
promises, recomputed here from the stored float32 vertex through a float64 copy of the
model, so that a table's numbers equal what a sceptic recomputes from the store:

- its relative feature error ‖relu(ỹ(v)) − relu(ỹᵗ)‖/‖relu(ỹᵗ)‖ is at most ``rel_tol``;
- every unit the target has non-positive is at most ``neg_tol``;
- its pushed unit ends at least ``push_margin``·max|ỹᵗ| below the target's value (a
  vertex that did not move its unit is the target again, not a vertex of a polytope);
- where the method reports outcomes (the exact solver), the outcome is ``optimal``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from collide.errors import DataError
from collide.objective import feature_rel_error, max_nonpositive_violation
from collide.sites import Site
from collide.taps import preactivation

POLYTOPE_MIN_VERTICES = 2  # fewer valid vertices span no polytope to sample


@dataclass(frozen=True)
class Criterion:
    """What a vertex of one method must satisfy; stored with every row as a dict."""

    rel_tol: float
    neg_tol: float
    push_margin: float
    outcome: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """As JSON: an unchecked ``neg_tol`` (infinite) is None."""
        neg = None if self.neg_tol == float("inf") else self.neg_tol
        return {"rel_tol": self.rel_tol, "neg_tol": neg, "push_margin": self.push_margin, "outcome": self.outcome}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Criterion:
        neg = raw.get("neg_tol")
        return cls(rel_tol=float(raw["rel_tol"]), neg_tol=float("inf") if neg is None else float(neg),
                   push_margin=float(raw["push_margin"]), outcome=raw.get("outcome"))

    def describe(self) -> str:
        parts = [f"rel<={self.rel_tol:g}"]
        if self.neg_tol != float("inf"):
            parts.append(f"nonpos<={self.neg_tol:g}")
        parts.append(f"push>={self.push_margin:g}*max|t|")
        if self.outcome:
            parts.append(f"outcome={self.outcome}")
        return ", ".join(parts)


@dataclass(frozen=True)
class VertexCheck:
    """Each vertex against its criterion, from a float64 forward pass.

    ``reasons[k]`` is "" for a valid vertex, else the first condition it failed.

    Shapes:
        valid, rel_error, violation, pushed, target_pushed: (V,)
    """

    valid: torch.Tensor
    rel_error: torch.Tensor
    violation: torch.Tensor
    pushed: torch.Tensor
    target_pushed: torch.Tensor
    margin: float
    reasons: tuple[str, ...]


@torch.no_grad()
def check_vertices(
    model: nn.Module,
    layer: str | Site,
    vertices: torch.Tensor,
    target: torch.Tensor,
    units: torch.Tensor,
    criterion: Criterion,
    *,
    outcomes: list[str] | None = None,
    device: str = "cpu",
) -> VertexCheck:
    """Recompute every vertex's features in float64 and hold them to ``criterion``.

    Args:
        model: the classifier (copied; not changed).
        layer: the collision layer.
        vertices: the stored vertices; rows that are not finite are invalid.
        target: the target input; units: the unit each vertex pushed.
        criterion: the method's criterion.
        outcomes: the solver's outcome per vertex, checked when ``criterion.outcome`` is set.

    Shapes:
        vertices: (V, *input); target: (*input); units: (V,)
    """
    if len(units) != len(vertices):
        raise DataError(f"{len(vertices)} vertices but {len(units)} pushed units")
    net = copy.deepcopy(model).to(device).double().eval()
    finite = torch.isfinite(vertices.flatten(1)).all(1)
    pre = preactivation(net, torch.nan_to_num(vertices).to(device, torch.float64), layer).cpu()
    t_pre = preactivation(net, target.unsqueeze(0).to(device, torch.float64), layer).cpu()
    nan = torch.tensor(float("nan"), dtype=torch.float64)
    rel = torch.where(finite, feature_rel_error(pre, t_pre), nan)
    viol = torch.where(finite, max_nonpositive_violation(pre, t_pre), nan)
    units = units.long().cpu()
    pushed = torch.where(finite, pre[torch.arange(len(units)), units], nan)
    target_pushed = t_pre[0, units]
    margin = criterion.push_margin * float(t_pre.abs().max())
    reasons = []
    for k in range(len(vertices)):
        if not bool(finite[k]):
            reasons.append("not finite" if outcomes is None else f"no vertex ({outcomes[k]})")
        elif criterion.outcome and outcomes is not None and outcomes[k] != criterion.outcome:
            reasons.append(f"outcome {outcomes[k]}")
        elif not float(rel[k]) <= criterion.rel_tol:
            reasons.append(f"feature error {float(rel[k]):.2g} > {criterion.rel_tol:g}")
        elif not float(viol[k]) <= criterion.neg_tol:
            reasons.append(f"non-positive unit at {float(viol[k]):.2g} > {criterion.neg_tol:g}")
        elif not float(pushed[k]) <= float(target_pushed[k]) - margin:
            reasons.append(f"pushed unit {float(pushed[k]):.3g} not below the target's "
                           f"{float(target_pushed[k]):.3g} by {margin:.2g}")
        else:
            reasons.append("")
    valid = torch.tensor([r == "" for r in reasons], dtype=torch.bool)
    return VertexCheck(valid, rel, viol, pushed, target_pushed, margin, tuple(reasons))


def hull_collides(samples_max_rel_error: float, criterion: Criterion) -> bool | None:
    """Whether a polytope's samples meet its method's feature-error criterion; None where
    there were no samples (NaN).

    At a first layer the pre-activation is affine in the input, so a convex combination of
    colliding vertices collides too. Past it, the hull can leave the collision set: the
    samples' success rate then measures the hull, not a collision (paper §3 claims the
    polytope at the first hidden layer only).
    """
    if samples_max_rel_error != samples_max_rel_error:  # NaN: no polytope was sampled
        return None
    return bool(samples_max_rel_error <= criterion.rel_tol)
