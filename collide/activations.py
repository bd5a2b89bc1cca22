"""The activations collisions can sit at, and where each one saturates.

A feature collision needs units whose pre-activation can change a lot while their
post-activation does not. ReLU has one flat side (z ≤ 0, post exactly 0); ReLU6,
Hardtanh and Hardsigmoid have two; Hardswish one. The paper's discussion says the same
holds approximately where a smooth activation saturates (sigmoid, tanh, ELU, ...): far
enough towards an asymptote, a large change of z moves φ(z) very little.

:class:`Activation` is one activation function: φ itself, its asymptotes, and, for the
piecewise-linear ones, the kinks where φ reaches them exactly. :class:`Saturation` is an
activation at a tolerance: the pre-activation thresholds past which a unit counts as
*saturated*,

- below ``below``: φ(z') stays within ``tol`` of the lower asymptote for every z' ≤ z;
- above ``above``: the same for the upper asymptote and every z' ≥ z.

The thresholds are what ReLU's 0 is in the paper's objective (:mod:`collide.objective`):
a unit the target has saturated may go anywhere in its saturated regime, one of them is
pushed deeper, and every other unit keeps its pre-activation. Piecewise-linear
activations use their flat pieces exactly (the tolerance does not apply), so ReLU's
thresholds are 0 and +inf, and its collisions stay exact. Non-monotone ones (GELU, SiLU,
Mish) dip below their asymptote before it: their regime starts past the dip, where
|φ(z) − asymptote| ≤ tol holds all the way to −inf.

References:
    Li, Zhang, Malik (2019), §6: the observations "hold approximately for any activation
    function that saturates, i.e. sigmoid, tanh or ELU".
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from collide.errors import ConfigError

# How far out the thresholds are searched, in pre-activation units, and how finely: far
# enough that every supported activation is within 1e-12 of its asymptote at the ends in
# float64, fine enough that the first crossing of the tolerance is never skipped.
_REACH = 60.0
_GRID = 240_001
_BISECTIONS = 80


@dataclass(frozen=True)
class Activation:
    """One activation function as collisions see it.

    ``lower``/``upper`` are φ's limits as z → −inf / +inf (None where φ grows without
    bound). ``flat_below``/``flat_above``: for a piecewise-linear φ, the kink at and past
    which φ equals that limit exactly (None: φ only approaches it). ``params`` holds the
    call's own settings (a Hardtanh's range, an ELU's alpha).
    """

    name: str
    fn: Callable[[torch.Tensor], torch.Tensor] = field(compare=False, repr=False)
    lower: float | None
    upper: float | None
    flat_below: float | None = None
    flat_above: float | None = None
    params: tuple[tuple[str, Any], ...] = ()

    @property
    def piecewise_linear(self) -> bool:
        """Whether every saturated regime is a flat piece (reached exactly, no tolerance)."""
        return all(flat is not None for limit, flat in ((self.lower, self.flat_below), (self.upper, self.flat_above))
                   if limit is not None)

    @property
    def two_sided(self) -> bool:
        return self.lower is not None and self.upper is not None

    def post(self, pre: torch.Tensor) -> torch.Tensor:
        """φ(pre), elementwise, in pre's dtype."""
        return self.fn(pre)

    def at(self, tol: float) -> Saturation:
        """This activation's saturated regimes at tolerance ``tol`` (ignored when piecewise linear)."""
        if self.piecewise_linear:
            return Saturation(activation=self, tol=0.0, below=_or(self.flat_below, -math.inf),
                              above=_or(self.flat_above, math.inf))
        if not (isinstance(tol, int | float) and tol > 0 and math.isfinite(tol)):
            raise ConfigError(f"expected saturation_tol > 0 (a distance from the activation's asymptote), got {tol!r}")
        below, above = _thresholds(self, float(tol))
        return Saturation(activation=self, tol=float(tol), below=below, above=above)


def _or(value: float | None, default: float) -> float:
    return default if value is None else value


@dataclass(frozen=True)
class Saturation:
    """An activation's saturated regimes at a tolerance: pre-activations ≤ ``below`` are
    saturated at the lower asymptote, ≥ ``above`` at the upper one (±inf: no such side).

    Shapes (of the methods):
        target: (D,) or (B, D); pre: (B, D)
    """

    activation: Activation
    tol: float
    below: float
    above: float

    def low(self, target: torch.Tensor) -> torch.Tensor:
        """The target's units saturated at the lower asymptote. bool, target's shape"""
        return target <= self.below

    def high(self, target: torch.Tensor) -> torch.Tensor:
        """The target's units saturated at the upper asymptote. bool, target's shape"""
        return target >= self.above

    def saturated(self, target: torch.Tensor) -> torch.Tensor:
        return self.low(target) | self.high(target)

    def depth(self, pre: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """How far each unit sits past its threshold, towards its asymptote, on the
        target's saturated units (positive inside the regime; 0 on the other units)."""
        if math.isinf(self.above):  # one-sided: the common case, kept to ReLU's own arithmetic
            return torch.where(self.low(target), self.below - pre, torch.zeros_like(pre))
        return torch.where(self.low(target), self.below - pre,
                           torch.where(self.high(target), pre - self.above, torch.zeros_like(pre)))

    def sign(self, target: Any) -> Any:
        """+1 where deeper means lower (lower regime and unsaturated), −1 where it means
        higher (upper regime). float, target's shape and kind (a tensor or a numpy array)"""
        if not isinstance(target, torch.Tensor):
            return np.where(self.high(target), -1.0, 1.0)
        return torch.where(self.high(target), -1.0, 1.0).to(target.dtype)

    def describe(self) -> str:
        sides = [f"z <= {self.below:.4g}" if math.isfinite(self.below) else "",
                 f"z >= {self.above:.4g}" if math.isfinite(self.above) else ""]
        how = "its flat pieces" if self.activation.piecewise_linear else f"within {self.tol:g} of an asymptote"
        return f"{self.activation.name} saturated at {' or '.join(s for s in sides if s)} ({how})"


@functools.lru_cache(maxsize=256)
def _thresholds(act: Activation, tol: float) -> tuple[float, float]:
    z = torch.linspace(-_REACH, _REACH, _GRID, dtype=torch.float64)
    phi = act.fn(z)
    below = _edge(act, z, phi, act.lower, tol, from_left=True) if act.lower is not None else -math.inf
    above = _edge(act, z, phi, act.upper, tol, from_left=False) if act.upper is not None else math.inf
    return below, above


def _edge(act: Activation, z: torch.Tensor, phi: torch.Tensor, limit: float, tol: float, *, from_left: bool) -> float:
    """The last z, coming in from −inf (or +inf), up to which |φ − limit| ≤ tol holds throughout
    and grows all the way (so that deeper in the regime is always closer to the asymptote)."""
    ok = (phi - limit).abs() <= tol
    if not from_left:
        ok, z = ok.flip(0), z.flip(0)
    if not bool(ok[0]):
        raise ConfigError(f"saturation_tol={tol:g} is too small for {act.name}: at z = {float(z[0]):g} its output is "
                          f"still further than that from its asymptote {limit:g}; use a larger saturation_tol")
    if bool(ok.all()):
        raise ConfigError(f"saturation_tol={tol:g} spans the whole range of {act.name}: every unit would count as "
                          "saturated; use a smaller saturation_tol")
    first_bad = int(torch.nonzero(~ok)[0])
    dev = (phi - limit).abs() if from_left else (phi - limit).abs().flip(0)
    # A fall above rounding: far out the outputs underflow and wobble at 1e-300.
    turns = torch.nonzero(dev[1:first_bad] < dev[:first_bad - 1] - 1e-12).flatten()
    if len(turns):
        # Past the dip of GELU, SiLU or Mish (a tolerance deeper than the dip): going on
        # inwards would bring the output back towards the asymptote, not away from it.
        # The regime ends at the dip, where deeper still means closer to the asymptote.
        return float(z[int(turns[0])])
    inside, outside = float(z[first_bad - 1]), float(z[first_bad])
    for _ in range(_BISECTIONS):
        mid = 0.5 * (inside + outside)
        value = float(act.fn(torch.tensor(mid, dtype=torch.float64)))
        inside, outside = (mid, outside) if abs(value - limit) <= tol else (inside, mid)
    return inside


def _gelu(approximate: str) -> Callable[[torch.Tensor], torch.Tensor]:
    return functools.partial(F.gelu, approximate=approximate)


_SELU_LOWER = -1.0507009873554805 * 1.6732632423543772  # -scale * alpha


def lookup(op: str, params: Mapping[str, Any] | None = None) -> Activation | None:
    """The activation of a call site's ``op`` (a module class name or a functional name,
    any case) with the call's ``params``, or None where collide has no saturated regime
    for it (LeakyReLU and PReLU are injective; GLU and Tanhshrink do not saturate; Softsign
    approaches its asymptotes as 1/z, too slowly for a regime within reach)."""
    p = dict(params or {})
    key = tuple(sorted(p.items()))
    name = op.lower()
    if name in ("relu", "clamp", "threshold"):
        return Activation("relu", F.relu, lower=0.0, upper=None, flat_below=0.0, params=key)
    if name in ("relu6", "hardtanh"):
        lo, hi = (0.0, 6.0) if name == "relu6" else (float(p.get("min_val", -1.0)), float(p.get("max_val", 1.0)))
        return Activation(name, functools.partial(torch.clamp, min=lo, max=hi), lower=lo, upper=hi,
                          flat_below=lo, flat_above=hi, params=key)
    if name == "hardsigmoid":
        return Activation(name, F.hardsigmoid, lower=0.0, upper=1.0, flat_below=-3.0, flat_above=3.0, params=key)
    if name == "hardswish":
        return Activation(name, F.hardswish, lower=0.0, upper=None, flat_below=-3.0, params=key)
    if name == "sigmoid":
        return Activation(name, torch.sigmoid, lower=0.0, upper=1.0, params=key)
    if name == "tanh":
        return Activation(name, torch.tanh, lower=-1.0, upper=1.0, params=key)
    if name in ("elu", "celu"):
        alpha = float(p.get("alpha", 1.0))
        fn = functools.partial(F.elu if name == "elu" else F.celu, alpha=alpha)
        return Activation(name, fn, lower=-alpha, upper=None, params=key)
    if name == "selu":
        return Activation(name, F.selu, lower=_SELU_LOWER, upper=None, params=key)
    if name == "gelu":
        approximate = str(p.get("approximate", "none"))
        return Activation(f"gelu({approximate})" if approximate != "none" else "gelu", _gelu(approximate),
                          lower=0.0, upper=None, params=key)
    if name == "silu":
        return Activation(name, F.silu, lower=0.0, upper=None, params=key)
    if name == "mish":
        return Activation(name, F.mish, lower=0.0, upper=None, params=key)
    if name == "softplus":
        beta, threshold = float(p.get("beta", 1.0)), float(p.get("threshold", 20.0))
        return Activation(name, functools.partial(F.softplus, beta=beta, threshold=threshold), lower=0.0,
                          upper=None, params=key)
    if name == "logsigmoid":
        return Activation(name, F.logsigmoid, lower=None, upper=0.0, params=key)
    return None


RELU = lookup("relu")
assert RELU is not None
RELU_SATURATION = RELU.at(0.0)
