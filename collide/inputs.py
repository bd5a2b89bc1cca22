"""Input validation, written once: what every entry point refuses, and how it says so.

Each check raises a :class:`~collide.errors.DataError` (or the ``error`` given) whose
message names what was wrong, how much of it, and what to do about it; callers add the
fix that fits their setting (a checkpoint to retrain, a box to set).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from collide.errors import ConfigError, DataError

# How far outside the box an input may lie and still count as inside it: float32
# rounding of a value computed on [lower, upper] (a division by 255, a normalisation).
BOX_SLACK = 1e-6

Array = torch.Tensor | np.ndarray


def require_finite(x: Array, what: str, *, fix: str = "", error: type[Exception] = DataError) -> None:
    """Refuse ``x`` when it holds NaN or infinite values.

    The message says how many of how many values are not finite, then ``fix``.
    """
    finite = torch.isfinite(x) if isinstance(x, torch.Tensor) else np.isfinite(x)
    if bool(finite.all()):
        return
    bad, n = int((~finite).sum()), int(finite.size if isinstance(finite, np.ndarray) else finite.numel())
    raise error(f"{what} holds {bad} NaN or infinite values of {n}" + (f": {fix}" if fix else ""))


def require_in_box(x: torch.Tensor, what: str, lower: float, upper: float, *, fix: str = "") -> None:
    """Refuse a finite ``x`` with values outside ``[lower, upper]`` (by more than :data:`BOX_SLACK`)."""
    require_finite(x, what, fix=fix or "pass a finite input")
    lo, hi = float(x.min()), float(x.max())
    if lo < lower - BOX_SLACK or hi > upper + BOX_SLACK:
        raise DataError(f"{what} lies outside the valid input range (the input box [{lower}, {upper}]; min {lo:.4g}, "
                        f"max {hi:.4g})"
                        + (f": {fix}" if fix else ""))


def one_input(x: object, what: str) -> torch.Tensor:
    """``x`` as one float32 input on the CPU, without a batch dimension; refused when it is
    not a tensor or is a scalar."""
    if not isinstance(x, torch.Tensor):
        raise DataError(f"{what} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim == 0 or x.numel() == 0:
        raise DataError(f"{what} must be one input without a batch dimension, got shape {tuple(x.shape)}")
    return x.detach().to("cpu", torch.float32)


def require_float32(model: nn.Module) -> None:
    """The solvers take float32 models (and check vertices in float64 on copies of their own)."""
    other = {str(p.dtype) for p in model.parameters() if p.is_floating_point() and p.dtype != torch.float32}
    if other:
        raise ConfigError(f"the model's parameters are {', '.join(sorted(other))}; collide solves on float32 models "
                          "and rechecks every vertex in float64 itself: pass model.float()")
