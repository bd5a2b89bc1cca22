"""Which vertices count: each solver's collision criterion, checked in float64.

A vertex enters a polytope's samples only when it meets the criterion its method
promises, recomputed here from the stored float32 vertex through a float64 copy of the
model, so that a table's numbers equal what a sceptic recomputes from the store:

- its relative feature error ‖φ(ỹ(v)) − φ(ỹᵗ)‖/‖φ(ỹᵗ)‖ is at most ``rel_tol`` (φ the
  layer's activation: ReLU, or one that saturates, :mod:`collide.activations`);
- every unit the target has saturated (ReLU: non-positive) has left its saturated regime
  by at most ``neg_tol`` (ReLU: is at most ``neg_tol``);
- its pushed unit ends at least ``push_margin``·max|ỹᵗ| deeper in its regime than the
  target's value (ReLU: below it; a vertex that did not move its unit is the target
  again, not a vertex of a polytope);
- where the method reports outcomes (the exact solver), the outcome is ``optimal``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from collide.activations import RELU_SATURATION, Saturation
from collide.copies import cast_copy
from collide.errors import DataError
from collide.objective import feature_rel_error, max_regime_violation
from collide.sites import Site
from collide.taps import preactivation, site_of

POLYTOPE_MIN_VERTICES = 2  # fewer valid vertices span no polytope to sample


@dataclass(frozen=True)
class Criterion:
    """What a vertex of one method must satisfy; stored with every row as a dict."""

    rel_tol: float
    neg_tol: float
    push_margin: float
    outcome: str | None = None
    saturation_tol: float | None = None

    def at(self, site: Site) -> Criterion:
        """This criterion for vertices at ``site``: the saturation tolerance is kept only
        where it means something, at an activation without flat pieces."""
        act = site.function
        keep = act is not None and not act.piecewise_linear
        return self if keep or self.saturation_tol is None else replace(self, saturation_tol=None)

    def saturation(self, site: Site) -> Saturation:
        """The saturated regimes vertices at ``site`` are held to."""
        act = site.function
        if act is None:
            raise DataError(f"{site.name!r} is a {site.op} call: {site.why_not()}")
        return RELU_SATURATION if act == RELU_SATURATION.activation else act.at(self.saturation_tol or 0.0)

    def to_dict(self) -> dict[str, Any]:
        """As JSON: an unchecked ``neg_tol`` (infinite) is None; ``saturation_tol`` is
        written only where it applies (rows at a ReLU read as they always did)."""
        neg = None if self.neg_tol == float("inf") else self.neg_tol
        out = {"rel_tol": self.rel_tol, "neg_tol": neg, "push_margin": self.push_margin, "outcome": self.outcome}
        return out if self.saturation_tol is None else out | {"saturation_tol": self.saturation_tol}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Criterion:
        neg, sat = raw.get("neg_tol"), raw.get("saturation_tol")
        return cls(rel_tol=float(raw["rel_tol"]), neg_tol=float("inf") if neg is None else float(neg),
                   push_margin=float(raw["push_margin"]), outcome=raw.get("outcome"),
                   saturation_tol=None if sat is None else float(sat))

    def describe(self) -> str:
        parts = [f"rel<={self.rel_tol:g}"]
        if self.neg_tol != float("inf"):
            parts.append(f"nonpos<={self.neg_tol:g}")
        parts.append(f"push>={self.push_margin:g}*max|t|")
        if self.saturation_tol is not None:
            parts.append(f"saturation<={self.saturation_tol:g}")
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
    net = cast_copy(model, device=device).eval()
    finite = torch.isfinite(vertices.flatten(1)).all(1)
    site = site_of(net, layer, t_in := target.unsqueeze(0).to(device, torch.float64))
    pre = preactivation(net, torch.nan_to_num(vertices).to(device, torch.float64), site).cpu()
    t_pre = preactivation(net, t_in, site).cpu()
    sat = criterion.saturation(site)
    nan = torch.tensor(float("nan"), dtype=torch.float64)
    rel = torch.where(finite, feature_rel_error(pre, t_pre, act=sat.activation), nan)
    viol = torch.where(finite, max_regime_violation(pre, t_pre, sat=sat), nan)
    units = units.long().cpu()
    pushed = torch.where(finite, pre[torch.arange(len(units)), units], nan)
    target_pushed = t_pre[0, units]
    # Deeper is lower at a lower asymptote, higher at an upper one: compare signed values.
    sign = sat.sign(t_pre[0])[units]
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
            what = "non-positive unit at" if sat is RELU_SATURATION else "saturated unit out of its regime by"
            reasons.append(f"{what} {float(viol[k]):.2g} > {criterion.neg_tol:g}")
        elif not float(sign[k] * pushed[k]) <= float(sign[k] * target_pushed[k]) - margin:
            where = "below" if float(sign[k]) > 0 else "above"
            reasons.append(f"pushed unit {float(pushed[k]):.3g} not {where} the target's "
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
