"""The collision objective of paper §2 and the measures of how well a point collides.

Notation: ``pre`` is the layer's pre-activation ỹ(u) of a batch, ``target`` is ỹᵗ, φ the
layer's activation and ``sat`` its saturated regimes (:class:`collide.activations.Saturation`;
ReLU's by default, where a unit is saturated when ỹᵗⱼ ≤ 0). The target's unsaturated
units must keep their pre-activations; its saturated units must stay in their regime.

The paper's terms, for ReLU and for any activation that saturates:

- L₊ = ½‖ỹ − ỹᵗ‖² over the unsaturated units (ReLU: the positive ones). Equal
  pre-activations give equal post-activations whatever φ is.
- L₋ⁱ = sᵢ·ỹᵢ + Σ_{j≠i saturated} |ỹⱼ − θⱼ|, with θⱼ the threshold of unit j's regime and
  sᵢ = +1 when unit i saturates at the lower asymptote (pushed down), −1 at the upper
  one (pushed up). ReLU has θ = 0 and s = +1: the paper's ỹᵢ + Σ|ỹⱼ|.

Shapes:
    pre, target: (B, D); target may also be (D,) and is then broadcast
    unit: (B,) long, the index of the pushed unit of each row
"""

from __future__ import annotations

import torch

from collide.activations import RELU, RELU_SATURATION, Activation, Saturation
from collide.errors import ConfigError
from collide.inputs import require_finite


def _thresholds(sat: Saturation, target: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """θⱼ per unit: the threshold of the regime unit j saturates in (0 where it does not)."""
    zero = torch.zeros((), dtype=like.dtype, device=like.device)
    low = torch.where(sat.low(target), zero + sat.below, zero)
    return low if sat.above == float("inf") else torch.where(sat.high(target), zero + sat.above, low)


def loss_plus(pre: torch.Tensor, target: torch.Tensor, *, sat: Saturation = RELU_SATURATION) -> torch.Tensor:
    """L₊ = ½‖(ỹ − ỹᵗ) on the unsaturated units‖², one value per row. (B,)"""
    free = ~sat.saturated(target)
    diff = torch.where(free, pre - target, torch.zeros_like(pre))
    return 0.5 * diff.pow(2).sum(-1)


def loss_minus(
    pre: torch.Tensor, target: torch.Tensor, unit: torch.Tensor, *, others: float = 1.0,
    sat: Saturation = RELU_SATURATION,
) -> torch.Tensor:
    """L₋ⁱ = sᵢ·ỹ_unit + others·Σ_{j≠unit saturated} |ỹⱼ − θⱼ|, one value per row. (B,)

    ``unit`` must be one of the target's saturated units. The paper has ``others=1``.
    """
    saturated = sat.saturated(target).expand_as(pre)
    chosen = torch.zeros_like(saturated).scatter_(-1, unit.view(-1, 1), True)
    if not bool((saturated & chosen).any(-1).all()):
        raise ConfigError("every pushed unit must be one of the target's saturated (ReLU: non-positive) units")
    rest = torch.where(saturated & ~chosen, (pre - _thresholds(sat, target, pre)).abs(), torch.zeros_like(pre)).sum(-1)
    sign = sat.sign(target).expand_as(pre).gather(-1, unit.view(-1, 1)).squeeze(-1)
    return sign * pre.gather(-1, unit.view(-1, 1)).squeeze(-1) + others * rest


def regime_penalty(pre: torch.Tensor, target: torch.Tensor, *, sat: Saturation = RELU_SATURATION) -> torch.Tensor:
    """½‖how far the target's saturated units have left their regime‖², one value per row
    (ReLU: ½‖relu(ỹ) on the non-positive units‖²). (B,)"""
    return 0.5 * (-sat.depth(pre, target)).clamp_min(0).pow(2).sum(-1)


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Anisotropic L1 total variation per example. (B, C, H, W) -> (B,)"""
    dh = (x[..., 1:, :] - x[..., :-1, :]).abs().flatten(1).sum(-1)
    dw = (x[..., :, 1:] - x[..., :, :-1]).abs().flatten(1).sum(-1)
    return dh + dw


def saturated_units(target: torch.Tensor, n: int, *, sat: Saturation = RELU_SATURATION) -> torch.Tensor:
    """The first ``n`` units, in index order, where the target is saturated (ReLU: non-positive).

    The authors push the i-th non-positive unit for vertex i. (D,) -> (n,)
    """
    require_finite(target, "the target's pre-activations at this layer",
                   fix="the model's weights (or the input) are not finite; check the checkpoint or weights file")
    idx = torch.nonzero(sat.saturated(target.flatten())).flatten()
    if len(idx) < n:
        what = "non-positive" if sat.activation == RELU else f"saturated ({sat.describe()})"
        fix = "" if sat.activation.piecewise_linear else ", or raise saturation_tol"
        raise ConfigError(
            f"the target has {len(idx)} {what} units at this layer, fewer than the "
            f"{n} vertices asked for: lower n_vertices or pick another layer{fix}"
        )
    return idx[:n]


def feature_rel_error(pre: torch.Tensor, target: torch.Tensor, *, act: Activation = RELU) -> torch.Tensor:
    """‖φ(ỹ) − φ(ỹᵗ)‖ / ‖φ(ỹᵗ)‖ per row: how far the features are. (B,)"""
    if act == RELU:
        post, tpost = pre.clamp_min(0), target.clamp_min(0).expand_as(pre)
    else:
        post, tpost = act.post(pre), act.post(target).expand_as(pre)
    return (post - tpost).norm(dim=-1) / tpost.norm(dim=-1).clamp_min(1e-12)


def max_regime_violation(pre: torch.Tensor, target: torch.Tensor, *, sat: Saturation = RELU_SATURATION) -> torch.Tensor:
    """Largest distance by which one of the target's saturated units has left its regime,
    per row (≤ 0 is ideal; ReLU: the largest ỹⱼ over the non-positive units). (B,)"""
    saturated = sat.saturated(target).expand_as(pre)
    return torch.where(saturated, -sat.depth(pre, target), torch.full_like(pre, -torch.inf)).amax(-1)
