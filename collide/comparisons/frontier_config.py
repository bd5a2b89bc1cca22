"""How the approximation frontier is searched (:class:`FrontierConfig`). Apart from
:mod:`collide.comparisons.frontier` (which imports torch, SciPy and HiGHS) so that an
experiment's config can be built and refused without them."""

from __future__ import annotations

import math
from dataclasses import dataclass

from collide.errors import ConfigError

__all__ = ["DEFAULT_EPSILONS", "FrontierConfig"]

DEFAULT_EPSILONS = (0.0, 1e-3, 1e-2, 5e-2, 0.1, 0.2, 0.3)


@dataclass(frozen=True, kw_only=True)
class FrontierConfig:
    """How the frontier is searched.

    Args:
        epsilons: the feature-error budgets ε ≥ 0, in any order (0 is the exact QP).
        rel_tol: a point for ε is accepted once its bound E/R lies in
            ``[(1 − rel_tol) ε, ε]``.
        max_solves: penalised problems solved at most per ε before the best feasible
            point found is returned as ``loose``.
        dual_tol: L-BFGS-B's projected-gradient tolerance on the dual, relative to
            ``1 + ‖other‖²``.
        lower, upper: the input box.
        qp_tol: HiGHS's primal and dual feasibility tolerance for the ε = 0 QP.
    """

    epsilons: tuple[float, ...] = DEFAULT_EPSILONS
    rel_tol: float = 1e-3
    max_solves: int = 40
    dual_tol: float = 1e-11
    lower: float = 0.0
    upper: float = 1.0
    qp_tol: float = 1e-9

    def __post_init__(self) -> None:
        eps = self.epsilons
        if isinstance(eps, int | float) or not all(isinstance(e, int | float) and not isinstance(e, bool)
                                                    for e in eps):
            raise ConfigError(f"expected epsilons to be a list of numbers, got {eps!r}")
        object.__setattr__(self, "epsilons", tuple(float(e) for e in eps))
        if not self.epsilons:
            raise ConfigError("expected at least one epsilon, got none")
        bad = [e for e in self.epsilons if not math.isfinite(e) or e < 0]
        if bad:
            raise ConfigError(f"expected every epsilon finite and >= 0, got {bad}: a feature-error budget is "
                              "a relative error, 0 for an exact collision")
        if not 0 < self.rel_tol < 1:
            raise ConfigError(f"expected 0 < rel_tol < 1, got {self.rel_tol}")
        if self.max_solves < 1:
            raise ConfigError(f"expected max_solves >= 1, got {self.max_solves}")
        for name in ("dual_tol", "qp_tol"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"expected {name} > 0, got {getattr(self, name)}")
        if not self.lower < self.upper:
            raise ConfigError(f"expected lower < upper, got lower={self.lower}, upper={self.upper}")
