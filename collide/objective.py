"""The collision objective of paper §2 and the measures of how well a point collides.

Notation: ``pre`` is the layer's pre-activation ỹ(u) of a batch, ``target`` is ỹᵗ.
The target's positive units must be matched exactly; its non-positive units must stay
non-positive.

Shapes:
    pre, target: (B, D); target may also be (D,) and is then broadcast
    unit: (B,) long, the index of the pushed unit of each row
"""

from __future__ import annotations

import torch

from collide.errors import ConfigError
from collide.inputs import require_finite


def _split(target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    pos = target > 0
    return pos, ~pos


def loss_plus(pre: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L₊ = ½‖ỹ ⊙ 1[ỹᵗ>0] − yᵗ‖², one value per row. (B,)"""
    pos, _ = _split(target)
    diff = torch.where(pos, pre - target, torch.zeros_like(pre))
    return 0.5 * diff.pow(2).sum(-1)


def loss_minus(pre: torch.Tensor, target: torch.Tensor, unit: torch.Tensor, *, others: float = 1.0) -> torch.Tensor:
    """L₋ⁱ = ỹ_unit + others·Σ_{j≠unit, ỹᵗⱼ≤0} |ỹⱼ|, one value per row. (B,)

    ``unit`` must be one of the target's non-positive units. The paper has ``others=1``.
    """
    _, neg = _split(target)
    neg = neg.expand_as(pre)
    chosen = torch.zeros_like(neg).scatter_(-1, unit.view(-1, 1), True)
    if not bool((neg & chosen).any(-1).all()):
        raise ConfigError("every pushed unit must be one of the target's non-positive units")
    rest = torch.where(neg & ~chosen, pre.abs(), torch.zeros_like(pre)).sum(-1)
    return pre.gather(-1, unit.view(-1, 1)).squeeze(-1) + others * rest


def positive_part_penalty(pre: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """½‖relu(ỹ) on the target's non-positive units‖², one value per row. (B,)"""
    _, neg = _split(target)
    return 0.5 * torch.where(neg, pre.clamp_min(0), torch.zeros_like(pre)).pow(2).sum(-1)


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Anisotropic L1 total variation per example. (B, C, H, W) -> (B,)"""
    dh = (x[..., 1:, :] - x[..., :-1, :]).abs().flatten(1).sum(-1)
    dw = (x[..., :, 1:] - x[..., :, :-1]).abs().flatten(1).sum(-1)
    return dh + dw


def nonpositive_units(target: torch.Tensor, n: int) -> torch.Tensor:
    """The first ``n`` units, in index order, where the target is non-positive.

    The authors push the i-th non-positive unit for vertex i. (D,) -> (n,)
    """
    require_finite(target, "the target's pre-activations at this layer",
                   fix="the model's weights (or the input) are not finite; check the checkpoint or weights file")
    idx = torch.nonzero(target.flatten() <= 0).flatten()
    if len(idx) < n:
        raise ConfigError(
            f"the target has {len(idx)} non-positive units at this layer, fewer than the "
            f"{n} vertices asked for: lower n_vertices or pick another layer"
        )
    return idx[:n]


def feature_rel_error(pre: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """‖relu(ỹ) − relu(ỹᵗ)‖ / ‖relu(ỹᵗ)‖ per row: how far the features are. (B,)"""
    post, tpost = pre.clamp_min(0), target.clamp_min(0).expand_as(pre)
    return (post - tpost).norm(dim=-1) / tpost.norm(dim=-1).clamp_min(1e-12)


def max_nonpositive_violation(pre: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Largest ỹⱼ over the target's non-positive units, per row (≤ 0 is ideal). (B,)"""
    _, neg = _split(target)
    neg = neg.expand_as(pre)
    return torch.where(neg, pre, torch.full_like(pre, -torch.inf)).amax(-1)
