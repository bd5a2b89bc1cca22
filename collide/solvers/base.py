"""A vertex solver as a value: its config, criterion and loss name, and ``solve``.

Every solver answers the same call, ``solver(model, site, problems)``: the checks all
solvers share run once there (a float32 model, every target and init one finite input
in the config's box, float32 matmuls without TF32), then the solver's own
:meth:`Solver.solve`. A new solver is one subclass; no caller branches on a method
name. The layer arrives as a resolved :class:`~collide.sites.Site`: it was named once,
at the API's edge.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, ClassVar, final

import torch
from torch import nn

from collide.activations import RELU_SATURATION, Saturation
from collide.errors import ConfigError, DataError
from collide.inputs import require_float32, require_in_box
from collide.objective import saturated_units
from collide.precision import full_precision
from collide.sites import Site, eval_mode, require_method
from collide.solvers.param import Parameterisation
from collide.taps import preactivation
from collide.validity import Criterion

Progress = Callable[[int, int, int], None]


@dataclass(frozen=True)
class Problem:
    """One target's polytope problem, checked.

    Shapes:
        target, init: (*input); target_pre: (D,), the target's pre-activation; units: (V,)
    """

    target: torch.Tensor
    init: torch.Tensor
    target_pre: torch.Tensor
    units: torch.Tensor


@dataclass(frozen=True)
class Found:
    """What a solver found for one problem: ``vertices`` (V, *input), the parameters it
    optimised (None where they are the vertices' own LP solutions), the solver's record
    and the input it started from."""

    vertices: torch.Tensor
    params: torch.Tensor | None
    record: dict[str, Any]
    init: torch.Tensor


def problem(
    model: nn.Module, site: Site, target: torch.Tensor, init: torch.Tensor | None, *, n_vertices: int,
    units: torch.Tensor | None = None, sat: Saturation = RELU_SATURATION,
) -> Problem:
    """``target``'s problem at ``site``: its pre-activation and the units its vertices push
    (default the first ``n_vertices`` saturated ones: ReLU's non-positive ones).

    Shapes:
        target, init: (*input), one input each
    """
    init = target if init is None else init
    if init.shape != target.shape:
        raise DataError(f"init has shape {tuple(init.shape)}, the target {tuple(target.shape)}: they must match")
    with full_precision(), torch.no_grad(), eval_mode(model):
        try:
            logits = model(target.unsqueeze(0))
            target_pre = preactivation(model, target.unsqueeze(0), site)[0]
        except RuntimeError as exc:
            raise DataError(f"the model cannot take the target of shape {tuple(target.shape)} as one input "
                            f"(pass it without a batch dimension): {exc}") from exc
    if logits.ndim != 2 or len(logits) != 1:
        raise DataError(f"for a target of shape {tuple(target.shape)} the model returned logits of shape "
                        f"{tuple(logits.shape)}, not (1, classes): pass the target without a batch dimension")
    if units is None:
        units = saturated_units(target_pre, n_vertices, sat=sat)
    return Problem(target=target, init=init, target_pre=target_pre, units=torch.as_tensor(units).long().flatten())


class Solver(abc.ABC):
    """A vertex solver: hyperparameters in ``config``, the vertices in :meth:`solve`.

    Class attributes say what the solver is: ``method`` (its name in tables and in
    ``method="..."``), ``config_type``, ``batches`` (whether several targets' vertices
    run as one batch), ``takes_param`` (whether it optimises a parameterisation other
    than the pixels) and ``exact`` (whether it needs the layer's flat pieces).
    """

    method: ClassVar[str]
    config_type: ClassVar[type]
    batches: ClassVar[bool] = False
    takes_param: ClassVar[bool] = False
    # Whether its vertices are exact collisions (an LP on the layer's flat pieces), or
    # approximate ones any activation that saturates allows.
    exact: ClassVar[bool] = False

    def __init__(self, config: Any = None) -> None:
        config = self.config_type() if config is None else config
        if not isinstance(config, self.config_type):
            raise ConfigError(f"method {self.method!r} takes config={self.config_type.__name__}(...), got a "
                              f"{type(config).__name__}")
        self.config = config

    @classmethod
    def for_model(cls, config: Any = None, *, arch: str | None = None) -> Solver:
        """This solver for a model of the zoo (``arch``); only a solver with settings tuned
        per model uses it."""
        return cls(config)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config!r})"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.config == self.config  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((type(self), self.config))

    def with_bounds(self, lower: float, upper: float) -> Solver:
        """This solver on the input box ``[lower, upper]``."""
        return type(self)(replace(self.config, lower=float(lower), upper=float(upper)))

    @property
    def criterion(self) -> Criterion:
        """What a vertex of this solver must meet (checked in float64 by :mod:`collide.validity`)."""
        neg = float("inf") if self.config.neg_tol is None else self.config.neg_tol
        return Criterion(rel_tol=self.config.rel_tol, neg_tol=neg, push_margin=self.config.push_margin,
                         saturation_tol=getattr(self.config, "saturation_tol", None))

    def saturation(self, site: Site) -> Saturation:
        """Where units of ``site``'s activation count as saturated for this solver."""
        return self.criterion.saturation(site)

    @property
    @abc.abstractmethod
    def loss_name(self) -> str:
        """The objective's name as a table's ``loss`` column writes it."""

    @property
    def record(self) -> dict[str, Any]:
        """Settings a stored row keeps beside the config (none by default)."""
        return {}

    @final
    def __call__(
        self, model: nn.Module, site: Site, targets: list[torch.Tensor], inits: list[torch.Tensor | None], *,
        n_vertices: int, units: torch.Tensor | None = None, device: str = "cpu",
        param: Parameterisation | None = None, progress: Progress | None = None,
    ) -> list[tuple[Problem, Found]]:
        """Each target's problem and vertices, after the checks every solver shares: a
        float32 model, each target (and init, for pixels) one finite input in the box.

        Shapes:
            targets, inits: T inputs (*input) each (an init None starts at its target); units: (V,)
        """
        if param is not None and not self.takes_param:
            raise ConfigError(f"a parameterisation other than pixels needs method='gradient', got {self.method!r}")
        if units is None and n_vertices < 1:
            raise ConfigError(f"expected n_vertices >= 1 (a vertex per pushed unit), got {n_vertices}")
        if units is not None and torch.as_tensor(units).numel() == 0:
            raise ConfigError("units is empty: give the units to push, one per vertex, or leave it None")
        require_method(site, "exact" if self.exact else "gradient")
        sat = self.saturation(site)
        require_float32(model)
        lower, upper = self.config.lower, self.config.upper
        problems = []
        for k, (target, init) in enumerate(zip(targets, inits, strict=True)):
            which = "" if len(targets) == 1 else f" {k}"
            require_in_box(target, f"the target{which}", lower, upper)
            if init is not None and param is None:
                require_in_box(init, f"the init{which}", lower, upper)
            problems.append(problem(model, site, target, init, n_vertices=n_vertices, units=units, sat=sat))
        with full_precision():
            found = self.solve(model, site, problems, device=device, param=param, progress=progress)
        return list(zip(problems, found, strict=True))

    @abc.abstractmethod
    def solve(
        self, model: nn.Module, site: Site, problems: list[Problem], *, device: str,
        param: Parameterisation | None, progress: Progress | None,
    ) -> list[Found]:
        """One :class:`Found` per problem, in order."""
