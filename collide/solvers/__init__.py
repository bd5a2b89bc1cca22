"""Vertex solvers as values (:class:`Solver`): the gradient solver, the authors' scheme, the exact LP.

``method="gradient"`` is sugar for ``GradientSolver(config)``; :func:`solver_for` is
the one place a method's name becomes its solver.
"""

from typing import Any

from collide.errors import ConfigError
from collide.solvers.base import Solver
from collide.solvers.exact import ExactSolver
from collide.solvers.gradient import GradientSolver
from collide.solvers.paper import PAPER_TUNED_LR, PaperSolver

SOLVERS: dict[str, type[Solver]] = {s.method: s for s in (GradientSolver, ExactSolver, PaperSolver)}

__all__ = ["PAPER_TUNED_LR", "SOLVERS", "ExactSolver", "GradientSolver", "PaperSolver", "Solver", "solver_for"]


def solver_for(method: str | Solver, config: Any = None, *, arch: str | None = None) -> Solver:
    """The solver ``method`` names, with ``config`` (its defaults when None); a :class:`Solver`
    is returned as it is. ``arch`` picks the paper scheme's tuned rate where ``config.lr`` is unset."""
    if isinstance(method, Solver):
        if config is not None:
            raise ConfigError(f"pass config= or a solver object, not both (got {method!r} and config={config!r})")
        return method
    if method not in SOLVERS:
        raise ConfigError(f"unknown method {method!r}: expected one of {tuple(SOLVERS)}")
    return SOLVERS[method].for_model(config, arch=arch)
