"""collide: find, verify and measure feature collisions in ReLU networks.

After Li, Zhang, Malik, "Approximate Feature Collisions in Neural Nets" (NeurIPS 2019).
The public API is :func:`find_polytope` and :func:`measure` (in memory, any model);
the experiments of the paper live in :mod:`collide.experiments`. The library never
imports Prefect; orchestration lives in ``tasks/`` and ``flows/``.
"""

from collide.api import (
    Geometry,
    Measurement,
    Polytope,
    check_polytope,
    collision_geometry,
    find_polytope,
    find_polytopes,
    measure,
)
from collide.config import ExactConfig, GradientConfig, PaperConfig
from collide.errors import CollideError
from collide.solvers import ExactSolver, GradientSolver, PaperSolver, Solver
from collide.taps import layers, preactivation, tap

__all__ = [
    "CollideError",
    "ExactConfig",
    "ExactSolver",
    "Geometry",
    "GradientConfig",
    "GradientSolver",
    "Measurement",
    "PaperConfig",
    "PaperSolver",
    "Polytope",
    "Solver",
    "check_polytope",
    "collision_geometry",
    "find_polytope",
    "find_polytopes",
    "measure",
    "layers",
    "preactivation",
    "tap",
]
